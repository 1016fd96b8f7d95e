//! Layer and cache hot paths: parallel gzip of a 64 MiB tar-like stream (fresh, and with every
//! chunk found in the chunk index, as after a one-file change), and hashing a 2,000-file context
//! for COPY's cache key (cold, and with the metadata cache warm), and unpacking a gzip layer
//! of 3,000 files of mixed sizes, as a base image's layer is unpacked into a snapshot.

use std::io::Write as _;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::context::copy::{hash_sources, CopyRequest};
use kiln::context::hashcache::FileHashCache;
use kiln::layer::pargzip::{ChunkIndex, ParallelGzip};
use kiln::layer::{
    extract_layer, write_overlay_diff, Compression, DiffOptions, ExtractOptions, LayerWriter,
};
use kiln::oci::Digest;

/// Source-like text: words from a small vocabulary, deterministic.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "fn", "let", "self", "return", "import", "value", "config", "request", "the",
    ];
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn gzip(c: &mut Criterion) {
    let data = text(64 << 20, 7);
    let mut group = c.benchmark_group("pargzip");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    group.bench_function("fresh level 6", |b| {
        b.iter(|| {
            let mut w = ParallelGzip::new(std::io::sink(), 6);
            w.write_all(&data).unwrap();
            w.finish().unwrap();
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let index = Arc::new(ChunkIndex::new(dir.path().join("chunks"), &blobs));
    let mut w = ParallelGzip::new(Vec::new(), 6);
    w.write_all(&data).unwrap();
    let (blob, placements) = w.finish().unwrap();
    let digest = Digest::of(&blob);
    std::fs::write(blobs.join(digest.hex()), &blob).unwrap();
    index.record(&digest, 6, &placements);
    group.bench_function("all chunks reused", |b| {
        b.iter(|| {
            let mut w = ParallelGzip::new(std::io::sink(), 6).with_index(index.clone());
            w.write_all(&data).unwrap();
            w.finish().unwrap();
        })
    });
    group.finish();
}

fn context_hash(c: &mut Criterion) {
    let ctx = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for i in 0..2000 {
        let d = ctx.path().join(format!("src/m{}", i % 40));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}.py")), text(12_000, i)).unwrap();
    }
    let req = CopyRequest {
        source_root: ctx.path(),
        ignore: None,
        sources: vec![".".into()],
        dest: ".".into(),
        workdir: "/app".into(),
        dest_root: ctx.path(),
        chown: None,
        chmod: None,
        parents: false,
        excludes: Vec::new(),
        source_date_epoch: None,
        preserve_owner: false,
        seeded: None,
        contents: None,
    };
    let mut group = c.benchmark_group("context hash (2,000 files, 24 MB)");
    group.sample_size(10);
    group.bench_function("cold", |b| {
        b.iter(|| hash_sources(&req, &FileHashCache::in_memory()).unwrap())
    });
    // Files written just now are "racy" and never remembered; age them first.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in walk(ctx.path()) {
        let f = std::fs::File::options().write(true).open(&entry).unwrap();
        f.set_modified(old).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let warm = FileHashCache::load(state.path(), ctx.path());
    hash_sources(&req, &warm).unwrap();
    group.bench_function("warm metadata cache", |b| {
        b.iter(|| hash_sources(&req, &warm).unwrap())
    });
    group.finish();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A layer written from a 2,000-file directory, as a COPY's commit does: the files read and
/// tarred, the DiffID hashed, gzip compressed fresh, and with every chunk found in the index
/// (a rebuild of the same files).
fn layer_diff(c: &mut Criterion) {
    let tree = tempfile::tempdir().unwrap();
    for i in 0..2000 {
        let d = tree.path().join(format!("app/m{}", i % 40));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}.py")), text(12_000, i)).unwrap();
    }
    let store = tempfile::tempdir().unwrap();
    let blobs = store.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let index = Arc::new(ChunkIndex::new(store.path().join("chunks"), &blobs));
    let write = |index: Option<&Arc<ChunkIndex>>| {
        let mut w = LayerWriter::new(Vec::new(), Compression::Gzip, None).unwrap();
        if let Some(i) = index {
            w = w.with_chunk_index(i.clone());
        }
        write_overlay_diff(tree.path(), &mut w, &DiffOptions::default()).unwrap();
        w.finish().unwrap()
    };
    let (info, blob) = write(None);
    let digest = Digest::of(&blob);
    std::fs::write(blobs.join(digest.hex()), &blob).unwrap();
    index.record(&digest, 6, &info.gzip_chunks);
    let mut group = c.benchmark_group("layer from a directory (2,000 files, 24 MB)");
    group.throughput(Throughput::Bytes(info.uncompressed_size));
    group.sample_size(10);
    group.bench_function("fresh gzip", |b| b.iter(|| write(None)));
    group.bench_function("all chunks reused", |b| b.iter(|| write(Some(&index))));
    group.finish();
}

/// A base-image-like gzip layer (3,000 files from 200 bytes to 400 KB, about 64 MB, in 60
/// directories) unpacked into an empty directory: inflate, DiffID, and file creation.
fn extract(c: &mut Criterion) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut total = 0u64;
    for i in 0..3000u64 {
        // Mostly small files, a few large ones, as in /usr.
        let len = match i % 10 {
            0 => 400_000,
            1..=3 => 30_000,
            _ => 200 + (i as usize * 37) % 8_000,
        };
        let data = text(len, i);
        total += data.len() as u64;
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, format!("usr/lib/d{}/f{i}", i % 60), &data[..])
            .unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("extract a gzip layer (3,000 files)");
    group.throughput(Throughput::Bytes(total));
    group.sample_size(10);
    let mut n = 0;
    group.bench_function("into an empty directory", |b| {
        // The directory is made, and the last one deleted, off the clock.
        b.iter_batched(
            || {
                let _ = std::fs::remove_dir_all(scratch.path().join(format!("t{n}")));
                n += 1;
                let target = scratch.path().join(format!("t{n}"));
                std::fs::create_dir(&target).unwrap();
                target
            },
            |target| {
                extract_layer(
                    &layer[..],
                    Compression::Gzip,
                    &target,
                    &ExtractOptions::default(),
                )
                .unwrap()
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, gzip, context_hash, layer_diff, extract);
criterion_main!(benches);
