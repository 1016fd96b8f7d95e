//! Store integration tests: atomic ingest, concurrency across threads and processes, crash
//! safety under SIGKILL, tags, GC, and interoperability with skopeo and umoci.
//!
//! Multi-process tests re-run this test binary with `child_process_entry` and a role in
//! `KILN_STORE_TEST_CHILD`.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln::oci::Digest;
use kiln::store::{Descriptor, GcOptions, Store, StoreError};

const CHILD_ENV: &str = "KILN_STORE_TEST_CHILD";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A small xorshift generator; tests need variety, not quality.
struct Rng(u64);
impl Rng {
    fn seeded() -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t ^ u64::from(std::process::id()).rotate_left(32) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every blob is at the path named by its digest, and index.json parses.
fn assert_store_consistent(store: &Store) {
    for name in files_in(store.blobs_dir()) {
        let digest: Digest = format!("sha256:{name}").parse().unwrap();
        store
            .verify_blob(&digest)
            .unwrap_or_else(|e| panic!("blob {name} is corrupt: {e}"));
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(store.layout_dir().join("index.json")).unwrap())
            .expect("index.json parses");
    assert_eq!(index["schemaVersion"], 2);
    store.list_tags().unwrap();
}

fn child(role: &str, root: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "store::child_process_entry",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, role)
    .env("KILN_STORE_TEST_ROOT", root)
    .stdout(Stdio::null());
    cmd
}

/// Data every process derives identically: blob `i` of the shared set.
fn shared_blob(i: usize) -> Vec<u8> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
    r.bytes(50_000 + i * 3_001)
}

#[test]
#[ignore = "entry point for child processes of other tests"]
fn child_process_entry() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let root = PathBuf::from(std::env::var("KILN_STORE_TEST_ROOT").unwrap());
    let store = Store::open(&root).unwrap();
    match role.as_str() {
        "same-blobs" => {
            for i in 0..8 {
                let data = shared_blob(i);
                let digest = Digest::of(&data);
                let mut ing = store
                    .ingest(Some(&digest), Some(data.len() as u64))
                    .unwrap();
                for chunk in data.chunks(4096) {
                    ing.write_all(chunk).unwrap();
                }
                assert_eq!(ing.commit().unwrap().digest, digest);
            }
        }
        "tagger" => {
            let me: usize = std::env::var("KILN_STORE_TEST_ID")
                .unwrap()
                .parse()
                .unwrap();
            let per: usize = std::env::var("KILN_STORE_TEST_TAGS")
                .unwrap()
                .parse()
                .unwrap();
            let blob = store.write_blob(b"{}").unwrap();
            let desc = Descriptor::new(MANIFEST, blob.digest, blob.size);
            for j in 0..per {
                store
                    .tag(&format!("example.com/p{me}/img:t{j}"), &desc)
                    .unwrap();
            }
        }
        "crash-writer" => {
            // Write blobs and tags until killed.
            let mut rng = Rng::seeded();
            let mut n = 0u64;
            loop {
                let len = rng.below(300_000) as usize + 1;
                let data = rng.bytes(len);
                let digest = Digest::of(&data);
                let mut ing = store
                    .ingest(Some(&digest), Some(data.len() as u64))
                    .unwrap();
                for chunk in data.chunks(8192) {
                    ing.write_all(chunk).unwrap();
                }
                let info = ing.commit().unwrap();
                if n.is_multiple_of(3) {
                    let desc = Descriptor::new(MANIFEST, info.digest, info.size);
                    store
                        .tag(&format!("example.com/crash:{}", n % 50), &desc)
                        .unwrap();
                }
                if n.is_multiple_of(5) {
                    // Leave an uncommitted write in flight sometimes.
                    let mut ing = store.ingest(None, None).unwrap();
                    ing.write_all(&data).unwrap();
                    std::mem::forget(ing);
                }
                n += 1;
            }
        }
        "hold-ingest" => {
            // Keep an ingest open until stdin closes.
            let mut ing = store.ingest(None, None).unwrap();
            ing.write_all(b"in flight").unwrap();
            ing.flush().unwrap();
            let out = std::env::var("KILN_STORE_TEST_OUT").unwrap();
            fs::write(format!("{out}.tmp"), ing.path().to_str().unwrap()).unwrap();
            fs::rename(format!("{out}.tmp"), &out).unwrap();
            let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
            drop(ing);
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn open_creates_a_valid_layout_and_reopens() {
    let dir = tmp();
    let root = dir.path().join("root");
    let store = Store::open(&root).unwrap();
    let layout: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("oci/oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("oci/index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"], serde_json::json!([]));
    assert!(root.join("oci/blobs/sha256").is_dir());
    assert!(root.join("ingest").is_dir());
    assert!(root.join("lock").is_file());
    assert_eq!(store.layout_dir(), root.join("oci"));
    drop(store);
    Store::open(&root).unwrap();
}

#[test]
fn open_rejects_a_broken_layout_naming_the_file() {
    let dir = tmp();
    Store::open(dir.path()).unwrap();
    fs::write(dir.path().join("oci/index.json"), b"{not json").unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Json { .. }), "{err}");
    assert!(err.to_string().contains("index.json"), "{err}");

    let dir = tmp();
    Store::open(dir.path()).unwrap();
    fs::write(
        dir.path().join("oci/oci-layout"),
        br#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::InvalidLayout { .. })
    ));
}

#[test]
fn io_errors_name_their_path() {
    let dir = tmp();
    let file = dir.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let err = Store::open(&file.join("root")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[test]
fn commit_is_atomic_and_leaves_no_ingest_file() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let data = b"hello blob".repeat(1000);
    let digest = Digest::of(&data);
    let mut ing = store
        .ingest(Some(&digest), Some(data.len() as u64))
        .unwrap();
    ing.write_all(&data[..5000]).unwrap();
    ing.flush().unwrap();
    assert!(!store.has_blob(&digest));
    assert!(!store.blob_path(&digest).exists());
    assert!(ing.path().starts_with(store.ingest_dir()));
    assert_eq!(files_in(store.ingest_dir()).len(), 1);
    ing.write_all(&data[5000..]).unwrap();
    let info = ing.commit().unwrap();
    assert_eq!((info.digest.clone(), info.size), (digest.clone(), 10_000));
    assert!(store.has_blob(&digest));
    assert_eq!(store.blob_size(&digest).unwrap(), 10_000);
    assert_eq!(store.read_blob(&digest).unwrap(), data);
    store.verify_blob(&digest).unwrap();
    assert!(files_in(store.ingest_dir()).is_empty());
}

#[test]
fn digest_mismatch_leaves_nothing() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let wrong = Digest::of(b"something else");
    let mut ing = store.ingest(Some(&wrong), None).unwrap();
    ing.write_all(b"actual content").unwrap();
    let err = ing.commit().unwrap_err();
    assert!(
        matches!(&err, StoreError::DigestMismatch { expected, actual, .. }
            if expected == &wrong && actual == &Digest::of(b"actual content")),
        "{err}"
    );
    assert!(files_in(store.ingest_dir()).is_empty());
    assert!(files_in(store.blobs_dir()).is_empty());
}

#[test]
fn size_mismatch_short_and_long() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let data = b"0123456789";
    let digest = Digest::of(data);

    let mut ing = store.ingest(Some(&digest), Some(11)).unwrap();
    ing.write_all(data).unwrap();
    let err = ing.commit().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SizeMismatch {
                expected: 11,
                actual: 10,
                ..
            }
        ),
        "{err}"
    );

    let mut ing = store.ingest(None, Some(4)).unwrap();
    assert!(
        ing.write_all(data).is_err(),
        "writing past the expected size fails"
    );
    drop(ing);

    assert!(files_in(store.ingest_dir()).is_empty());
    assert!(files_in(store.blobs_dir()).is_empty());
}

#[test]
fn existing_blob_is_success_and_drop_discards() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let a = store.write_blob(b"same").unwrap();
    let b = store.write_blob(b"same").unwrap();
    assert_eq!(a, b);
    let mut ing = store.ingest(Some(&a.digest), Some(4)).unwrap();
    ing.write_all(b"same").unwrap();
    assert_eq!(ing.commit().unwrap(), a);
    assert_eq!(
        files_in(store.blobs_dir()),
        vec![a.digest.hex().to_string()]
    );

    let mut ing = store.ingest(None, None).unwrap();
    ing.write_all(b"abandoned").unwrap();
    let path = ing.path().to_path_buf();
    assert!(path.exists());
    drop(ing);
    assert!(!path.exists());
    assert!(files_in(store.ingest_dir()).is_empty());

    let ing = store.ingest(None, None).unwrap();
    let path = ing.path().to_path_buf();
    ing.abort();
    assert!(!path.exists());
    assert!(matches!(
        store.open_blob(&Digest::of(b"absent")),
        Err(StoreError::BlobNotFound(_))
    ));
}

#[test]
fn concurrent_writers_of_the_same_blob_in_threads() {
    let dir = tmp();
    let root = Arc::new(dir.path().to_path_buf());
    Store::open(&root).unwrap();
    let data = Arc::new(Rng(7).bytes(1_000_000));
    let digest = Digest::of(&data);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (root, data, digest) = (root.clone(), data.clone(), digest.clone());
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                let mut ing = store
                    .ingest(Some(&digest), Some(data.len() as u64))
                    .unwrap();
                for chunk in data.chunks(10_000) {
                    ing.write_all(chunk).unwrap();
                }
                ing.commit().unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().digest, digest);
    }
    let store = Store::open(&root).unwrap();
    assert_eq!(files_in(store.blobs_dir()), vec![digest.hex().to_string()]);
    assert!(files_in(store.ingest_dir()).is_empty());
    assert_store_consistent(&store);
}

#[test]
fn concurrent_writers_of_the_same_blobs_in_processes() {
    let dir = tmp();
    Store::open(dir.path()).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| child("same-blobs", dir.path()).spawn().unwrap())
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "child failed");
    }
    let store = Store::open(dir.path()).unwrap();
    let expected: BTreeSet<String> = (0..8)
        .map(|i| Digest::of(&shared_blob(i)).hex().to_string())
        .collect();
    let found: BTreeSet<String> = files_in(store.blobs_dir()).into_iter().collect();
    assert_eq!(found, expected);
    assert!(files_in(store.ingest_dir()).is_empty());
    assert_store_consistent(&store);
}

#[test]
fn tag_untag_resolve_list_round_trip() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let m1 = store.write_blob(br#"{"schemaVersion":2}"#).unwrap();
    let m2 = store.write_blob(br#"{"schemaVersion":2,"x":1}"#).unwrap();
    let d1 = Descriptor::new(MANIFEST, m1.digest.clone(), m1.size);
    let mut d2 = Descriptor::new(MANIFEST, m2.digest.clone(), m2.size);
    d2.platform = Some(kiln::oci::Platform::parse("linux/arm64").unwrap());

    let py = "docker.io/library/python:3.12-slim";
    let local = "localhost:5000/team/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    store.tag(py, &d1).unwrap();
    store.tag(local, &d2).unwrap();
    let got = store.resolve(py).unwrap().unwrap();
    assert_eq!(got.digest, m1.digest);
    assert_eq!(got.ref_name(), Some(py));
    assert_eq!(got.annotation("io.containerd.image.name"), Some(py));
    let platform = store.resolve(local).unwrap().unwrap().platform;
    assert_eq!(platform.map(|p| p.architecture), Some("arm64".to_string()));
    let names: Vec<String> = store
        .list_tags()
        .unwrap()
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(names, vec![py.to_string(), local.to_string()]);

    // Retagging replaces.
    store.tag(py, &d2).unwrap();
    assert_eq!(store.resolve(py).unwrap().unwrap().digest, m2.digest);
    assert_eq!(store.list_tags().unwrap().len(), 2);

    assert_eq!(store.untag(py).unwrap().unwrap().digest, m2.digest);
    assert!(store.untag(py).unwrap().is_none());
    assert!(store.resolve(py).unwrap().is_none());
    assert_eq!(store.list_tags().unwrap().len(), 1);

    // Tags survive reopening; index.json is plain OCI.
    let store = Store::open(dir.path()).unwrap();
    assert!(store.resolve(local).unwrap().is_some());

    assert!(matches!(
        store.tag("bad tag", &d1),
        Err(StoreError::InvalidTag { .. })
    ));
    let missing = Descriptor::new(MANIFEST, Digest::of(b"nope"), 4);
    assert!(matches!(
        store.tag("example.com/x:y", &missing),
        Err(StoreError::BlobNotFound(_))
    ));
}

#[test]
fn concurrent_taggers_in_processes_lose_no_update() {
    let dir = tmp();
    Store::open(dir.path()).unwrap();
    let (n, m) = (4, 25);
    let children: Vec<_> = (0..n)
        .map(|i| {
            child("tagger", dir.path())
                .env("KILN_STORE_TEST_ID", i.to_string())
                .env("KILN_STORE_TEST_TAGS", m.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    // And threads in this process at the same time.
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let root = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                let blob = store.write_blob(b"{}").unwrap();
                let desc = Descriptor::new(MANIFEST, blob.digest, blob.size);
                for j in 0..m {
                    store
                        .tag(&format!("example.com/thread{t}:t{j}"), &desc)
                        .unwrap();
                }
            })
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "child failed");
    }
    for t in threads {
        t.join().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let tags: BTreeSet<String> = store
        .list_tags()
        .unwrap()
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(tags.len(), (n + 2) * m);
    for i in 0..n {
        for j in 0..m {
            assert!(tags.contains(&format!("example.com/p{i}/img:t{j}")));
        }
    }
}

#[test]
fn sigkill_at_random_times_leaves_a_valid_store() {
    let dir = tmp();
    Store::open(dir.path()).unwrap();
    let mut rng = Rng::seeded();
    for _round in 0..6 {
        let mut c = child("crash-writer", dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        // Child::kill sends SIGKILL.
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(
        !files_in(store.blobs_dir()).is_empty(),
        "the writer committed nothing; the test proves little"
    );
    assert_store_consistent(&store);
    let stray: Vec<String> = files_in(store.ingest_dir());
    assert!(
        stray.is_empty(),
        "stale ingest files survived open: {stray:?}"
    );
    assert!(!store.layout_dir().join("index.json.tmp").exists());
    // Every tag points at a blob that exists.
    for (name, d) in store.list_tags().unwrap() {
        assert!(store.has_blob(&d.digest), "{name} dangles");
    }
}

#[test]
fn open_and_gc_keep_ingest_files_of_live_processes() {
    let dir = tmp();
    Store::open(dir.path()).unwrap();
    let out = dir.path().join("holder-path");
    let mut holder = child("hold-ingest", dir.path())
        .env("KILN_STORE_TEST_OUT", &out)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while !out.exists() {
        assert!(waited < 1000, "the holder never reported its ingest file");
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    let line = fs::read_to_string(&out).unwrap();
    let live = PathBuf::from(&line);
    assert!(live.exists(), "{line}");
    // A stale file: what a killed writer leaves behind.
    let stale = dir.path().join("ingest/999999-0-000000000.tmp");
    fs::write(&stale, b"junk").unwrap();

    let store = Store::open(dir.path()).unwrap();
    assert!(live.exists(), "open removed a live ingest file");
    assert!(!stale.exists(), "open kept a stale ingest file");
    fs::write(&stale, b"junk").unwrap();
    let report = store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        })
        .unwrap();
    assert_eq!(report.removed_ingest_files, 1);
    assert!(live.exists(), "gc removed a live ingest file");

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert!(!live.exists(), "the holder's drop removes its file");
}

/// Writes config + one layer + manifest (+ an index over it) and returns the descriptors.
struct Image {
    config: Descriptor,
    layer: Descriptor,
    manifest: Descriptor,
    index: Descriptor,
}

fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn write_image(store: &Store, seed: &str) -> Image {
    let layer_bytes = tar_with_file("hello.txt", format!("hello {seed}\n").as_bytes());
    let layer = store.write_blob(&layer_bytes).unwrap();
    let config_json = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"], "Env": [format!("SEED={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest.to_string()]},
    });
    let config = store
        .write_blob(&serde_json::to_vec(&config_json).unwrap())
        .unwrap();
    let config = Descriptor::new(CONFIG, config.digest, config.size);
    let layer = Descriptor::new(LAYER_TAR, layer.digest, layer.size);
    let manifest_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config,
        "layers": [layer],
    });
    let m = store
        .write_blob(&serde_json::to_vec(&manifest_json).unwrap())
        .unwrap();
    let mut manifest = Descriptor::new(MANIFEST, m.digest, m.size);
    manifest.extra.insert(
        "platform".into(),
        serde_json::json!({"architecture":"amd64","os":"linux"}),
    );
    let index_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [manifest],
    });
    let i = store
        .write_blob(&serde_json::to_vec(&index_json).unwrap())
        .unwrap();
    let index = Descriptor::new(INDEX, i.digest, i.size);
    Image {
        config,
        layer,
        manifest,
        index,
    }
}

#[test]
fn gc_keeps_what_tags_reach_and_removes_the_rest() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let kept = write_image(&store, "kept");
    let dropped = write_image(&store, "dropped");
    let orphan = store.write_blob(b"orphan").unwrap();
    // A referrer (signature-like artifact) whose subject is the kept manifest, tagged itself.
    let sig_blob = store.write_blob(b"sig").unwrap();
    let referrer_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": Descriptor::new("application/vnd.oci.empty.v1+json", sig_blob.digest.clone(), sig_blob.size),
        "layers": [],
        "subject": kept.manifest,
    });
    let referrer = store
        .write_blob(&serde_json::to_vec(&referrer_json).unwrap())
        .unwrap();
    let extra_root = store.write_blob(b"cache record target").unwrap();

    store.tag("example.com/app:kept", &kept.index).unwrap();
    store
        .tag(
            "example.com/app:sig",
            &Descriptor::new(MANIFEST, referrer.digest.clone(), referrer.size),
        )
        .unwrap();

    // Within the grace period nothing goes.
    let report = store.gc(&GcOptions::default()).unwrap();
    assert!(report.removed_blobs.is_empty());
    assert!(report.kept_recent >= 5);

    let report = store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            extra_roots: vec![extra_root.digest.clone()],
            ..GcOptions::default()
        })
        .unwrap();
    for d in [
        &kept.index.digest,
        &kept.manifest.digest,
        &kept.config.digest,
        &kept.layer.digest,
        &referrer.digest,
        &sig_blob.digest,
        &extra_root.digest,
    ] {
        assert!(store.has_blob(d), "gc removed reachable {d}");
    }
    let mut expected_removed = vec![
        dropped.index.digest.clone(),
        dropped.manifest.digest.clone(),
        dropped.config.digest.clone(),
        dropped.layer.digest.clone(),
        orphan.digest.clone(),
    ];
    expected_removed.sort();
    assert_eq!(report.removed_blobs, expected_removed);
    for d in &expected_removed {
        assert!(!store.has_blob(d));
    }
    assert!(report.removed_bytes > 0);

    store.untag("example.com/app:kept").unwrap();
    store.untag("example.com/app:sig").unwrap();
    store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        })
        .unwrap();
    assert!(files_in(store.blobs_dir()).is_empty());
}

#[test]
fn resumable_ingest_continues_a_partial_download() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let data = Rng(3).bytes(700_000);
    let digest = Digest::of(&data);
    let size = Some(data.len() as u64);

    let mut ing = store.ingest_resume(&digest, size).unwrap();
    assert_eq!(ing.offset(), 0);
    assert!(ing.is_resumable());
    ing.write_all(&data[..300_000]).unwrap();
    drop(ing); // connection lost

    let mut ing = store.ingest_resume(&digest, size).unwrap();
    assert_eq!(ing.offset(), 300_000);
    // A second writer of the same digest meanwhile gets a private ingest from zero.
    let mut other = store.ingest_resume(&digest, size).unwrap();
    assert_eq!(other.offset(), 0);
    assert!(!other.is_resumable());
    other.write_all(&data).unwrap();

    ing.write_all(&data[300_000..]).unwrap();
    assert_eq!(ing.written(), data.len() as u64);
    assert_eq!(ing.commit().unwrap().digest, digest);
    assert_eq!(other.commit().unwrap().digest, digest);
    store.verify_blob(&digest).unwrap();
    assert!(files_in(store.ingest_dir()).is_empty());

    // Partial files survive Store::open (that is their point) but a corrupt one is discarded
    // at commit.
    let d2 = Digest::of(b"the real content");
    let mut ing = store.ingest_resume(&d2, Some(16)).unwrap();
    ing.write_all(b"the fake").unwrap();
    drop(ing);
    let store = Store::open(dir.path()).unwrap();
    let mut ing = store.ingest_resume(&d2, Some(16)).unwrap();
    assert_eq!(ing.offset(), 8);
    ing.write_all(b" content").unwrap();
    assert!(matches!(
        ing.commit(),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(files_in(store.ingest_dir()).is_empty());
    let mut ing = store.ingest_resume(&d2, Some(16)).unwrap();
    assert_eq!(ing.offset(), 0);
    ing.write_all(b"the real content").unwrap();
    ing.commit().unwrap();

    // GC removes old unlocked partials.
    let d3 = Digest::of(b"abandoned download");
    let mut ing = store.ingest_resume(&d3, None).unwrap();
    ing.write_all(b"aband").unwrap();
    drop(ing);
    let report = store
        .gc(&GcOptions {
            partial_max_age: Duration::ZERO,
            ..GcOptions::default()
        })
        .unwrap();
    assert_eq!(report.removed_ingest_files, 1);
    assert!(files_in(store.ingest_dir()).is_empty());
}

fn require_tool(tool: &str, package: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is required by this test and was not found: install it (apt-get install -y {package})"
    );
}

#[test]
fn skopeo_and_umoci_read_the_layout() {
    require_tool("skopeo", "skopeo");
    require_tool("umoci", "umoci");
    let dir = tmp();
    let root = dir.path().join("root");
    let store = Store::open(&root).unwrap();
    let image = write_image(&store, "interop");
    let by_manifest = "docker.io/library/kiln-test:1.0";
    let by_index = "localhost:5000/kiln/multi:latest";
    store.tag(by_manifest, &image.manifest).unwrap();
    store.tag(by_index, &image.index).unwrap();
    let layout = store.layout_dir().to_str().unwrap().to_string();
    assert!(
        !layout.contains(':'),
        "skopeo splits oci:<path>:<ref> at the first ':'"
    );

    // skopeo reports the digest of what the tag points at (the index for `by_index`, after
    // choosing the linux/amd64 manifest from it).
    for (name, top) in [(by_manifest, &image.manifest), (by_index, &image.index)] {
        let out = Command::new("skopeo")
            .args([
                "--override-os",
                "linux",
                "--override-arch",
                "amd64",
                "inspect",
            ])
            .arg(format!("oci:{layout}:{name}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], top.digest.to_string(), "{name}");
        assert_eq!(v["Layers"][0], image.layer.digest.to_string());
        assert_eq!(v["Env"][0], "SEED=interop");
    }

    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{layout}:{by_manifest}"))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(),
        "hello interop\n"
    );
    // umoci only reads; the store is still consistent for kiln.
    assert_store_consistent(&Store::open(&root).unwrap());
}

#[test]
fn verify_blob_detects_corruption() {
    let dir = tmp();
    let store = Store::open(dir.path()).unwrap();
    let info = store.write_blob(b"pristine").unwrap();
    assert_eq!(store.verify_blob(&info.digest).unwrap(), info);
    fs::write(store.blob_path(&info.digest), b"tampered").unwrap();
    assert!(matches!(
        store.verify_blob(&info.digest),
        Err(StoreError::DigestMismatch { .. })
    ));
}
