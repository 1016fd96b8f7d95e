//! Parallel gzip in the way of pigz: the input is cut into chunks, each chunk is deflated on
//! its own thread and ended with a sync flush, and the pieces are written in order between one
//! gzip header and one trailer. The output is a single standard gzip member any gunzip reads.
//!
//! Chunk boundaries are content-defined (a gear rolling hash, 256 KiB to 4 MiB, about 1 MiB on
//! average), so the bytes depend only on the input and the level, never on the number of
//! threads, on timing or on how the input was split into writes: layer digests stay
//! reproducible. Content-defined boundaries also re-synchronise after an insertion, so when a
//! layer differs from an earlier one in a few files, most chunks are the same as before; a
//! [`ChunkIndex`] remembers where each compressed chunk lives in a stored blob, and such chunks
//! are copied instead of compressed again.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::oci::Digest;

const MIN_CHUNK: usize = 256 << 10;
const MAX_CHUNK: usize = 4 << 20;
/// 20 bits: a boundary every 1 MiB on average after the minimum.
const BOUNDARY_MASK: u64 = (1 << 20) - 1;
/// The gear hash only sees the last 64 bytes, so hashing starts 64 bytes before the minimum.
const HASH_FROM: usize = MIN_CHUNK - 64;

/// gzip header: deflate, no flags, mtime 0, no extra flags, OS "unknown" (what flate2 writes).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// 256 fixed pseudo-random words for the gear hash (splitmix64 of the byte value).
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut z = (i as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// What names a chunk in the index: the BLAKE3 hash of its input. A cryptographic hash, so
/// compressed bytes are only ever found for exactly the input they came from; BLAKE3 rather
/// than sha256 because this sees every byte of every layer written, and on this kind of machine
/// it is several times faster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkKey(pub [u8; 32]);

impl ChunkKey {
    pub fn of(input: &[u8]) -> ChunkKey {
        ChunkKey(*blake3::hash(input).as_bytes())
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A compressed chunk as it was written: the key of its input, and where its deflate bytes sit
/// in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlacement {
    pub input: ChunkKey,
    pub offset: u64,
    pub len: u64,
}

/// Where earlier compressed chunks can be found: `<dir>/<input key hex>-<level>` holds
/// `<blob hex> <offset> <len>`, pointing into a content-addressed blob under `blobs_dir`.
#[derive(Debug, Clone)]
pub struct ChunkIndex {
    dir: PathBuf,
    blobs_dir: PathBuf,
}

impl ChunkIndex {
    pub fn new(dir: impl Into<PathBuf>, blobs_dir: impl Into<PathBuf>) -> ChunkIndex {
        ChunkIndex {
            dir: dir.into(),
            blobs_dir: blobs_dir.into(),
        }
    }

    fn entry(&self, input: &ChunkKey, level: u32) -> PathBuf {
        self.dir.join(format!("{}-{level}", input.hex()))
    }

    /// The compressed bytes of a chunk seen before, if its blob is still there.
    fn lookup(&self, input: &ChunkKey, level: u32) -> Option<Vec<u8>> {
        let text = fs::read_to_string(self.entry(input, level)).ok()?;
        let mut parts = text.split_whitespace();
        let (blob, offset, len) = (parts.next()?, parts.next()?, parts.next()?);
        if blob.len() != 64 || !blob.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let (offset, len): (u64, usize) = (offset.parse().ok()?, len.parse().ok()?);
        if len > 2 * MAX_CHUNK {
            return None;
        }
        let file = fs::File::open(self.blobs_dir.join(blob)).ok()?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, offset).ok()?;
        Some(bytes)
    }

    /// Remembers where the chunks of the committed blob `blob` are. Best effort: a missing
    /// entry only means compressing again.
    pub fn record(&self, blob: &Digest, level: u32, chunks: &[ChunkPlacement]) {
        if fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        for c in chunks {
            let path = self.entry(&c.input, level);
            if path.exists() {
                continue;
            }
            let tmp = self
                .dir
                .join(format!(".{}.{}", c.input.hex(), std::process::id()));
            let text = format!("{} {} {}\n", blob.hex(), c.offset, c.len);
            if fs::write(&tmp, text).is_ok() && fs::rename(&tmp, &path).is_err() {
                let _ = fs::remove_file(&tmp);
            }
        }
    }
}

type Pending = JoinHandle<io::Result<(Vec<u8>, ChunkKey)>>;

pub struct ParallelGzip<W: Write> {
    out: W,
    level: u32,
    buf: Vec<u8>,
    /// Rolling hash and length of the chunk being filled.
    hash: u64,
    pending: VecDeque<Pending>,
    max_in_flight: usize,
    crc: crc32fast::Hasher,
    size: u64,
    written: u64,
    header_written: bool,
    index: Option<Arc<ChunkIndex>>,
    placements: Vec<ChunkPlacement>,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(out: W, level: u32) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        ParallelGzip {
            out,
            level: level.min(9),
            buf: Vec::with_capacity(MIN_CHUNK * 2),
            hash: 0,
            pending: VecDeque::new(),
            // Two chunks per core keeps every core busy while bounding memory.
            max_in_flight: threads.clamp(1, 16) * 2,
            crc: crc32fast::Hasher::new(),
            size: 0,
            written: 0,
            header_written: false,
            index: None,
            placements: Vec::new(),
        }
    }

    /// Reuses compressed chunks found in `index` (the output bytes are the same either way).
    pub fn with_index(mut self, index: Arc<ChunkIndex>) -> Self {
        self.index = Some(index);
        self
    }

    fn start_chunk(&mut self) -> io::Result<()> {
        if self.pending.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(MIN_CHUNK * 2));
        let level = self.level;
        let index = self.index.clone();
        self.pending.push_back(std::thread::spawn(move || {
            let input = ChunkKey::of(&chunk);
            if let Some(bytes) = index.as_ref().and_then(|i| i.lookup(&input, level)) {
                return Ok((bytes, input));
            }
            deflate_chunk(&chunk, level).map(|bytes| (bytes, input))
        }));
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(handle) = self.pending.pop_front() else {
            return Ok(());
        };
        let (bytes, input) = handle
            .join()
            .map_err(|_| io::Error::other("a gzip worker thread panicked"))??;
        self.write_header()?;
        self.out.write_all(&bytes)?;
        self.placements.push(ChunkPlacement {
            input,
            offset: self.written,
            len: bytes.len() as u64,
        });
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.out.write_all(&HEADER)?;
            self.header_written = true;
            self.written += HEADER.len() as u64;
        }
        Ok(())
    }

    /// Compresses what is left, writes the final block and the trailer; returns the writer and
    /// where each chunk went (for [`ChunkIndex::record`] once the blob is stored).
    pub fn finish(mut self) -> io::Result<(W, Vec<ChunkPlacement>)> {
        if !self.buf.is_empty() {
            self.start_chunk()?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.write_header()?;
        // An empty final block ends the deflate stream the sync-flushed chunks left open.
        self.out.write_all(&final_block(self.level)?)?;
        self.out
            .write_all(&self.crc.clone().finalize().to_le_bytes())?;
        // ISIZE is the input length modulo 2^32 (RFC 1952).
        self.out.write_all(&(self.size as u32).to_le_bytes())?;
        Ok((self.out, self.placements))
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.crc.update(data);
        self.size += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let len = self.buf.len();
            if len < HASH_FROM {
                // Nothing before HASH_FROM can end a chunk or reach the hash.
                let take = (HASH_FROM - len).min(rest.len());
                self.buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                continue;
            }
            match find_boundary(&mut self.hash, len, rest) {
                Some(cut) => {
                    self.buf.extend_from_slice(&rest[..cut]);
                    rest = &rest[cut..];
                    self.hash = 0;
                    self.start_chunk()?;
                }
                None => {
                    self.buf.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Rolls the gear hash over `data`, which continues a chunk of `len` bytes (at least
/// `HASH_FROM`), and returns how many of its bytes end that chunk, if it ends in `data`: at the
/// first byte after `MIN_CHUNK` where the hash's low bits are zero, or at `MAX_CHUNK`. Two
/// tight loops (before `MIN_CHUNK` the hash is only rolled) because this sees every byte of
/// every layer.
fn find_boundary(hash: &mut u64, len: usize, data: &[u8]) -> Option<usize> {
    let mut h = *hash;
    // Byte i makes the chunk len + i + 1 long; it may end there from MIN_CHUNK on.
    let limit = (MAX_CHUNK - len).min(data.len());
    let roll_only = MIN_CHUNK.saturating_sub(len + 1).min(limit);
    for &b in &data[..roll_only] {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
    }
    for (i, &b) in data[roll_only..limit].iter().enumerate() {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h & BOUNDARY_MASK == 0 {
            *hash = h;
            return Some(roll_only + i + 1);
        }
    }
    *hash = h;
    (len + limit == MAX_CHUNK).then_some(limit)
}

/// Raw deflate of one chunk ending in a sync flush (byte-aligned, not final).
fn deflate_chunk(chunk: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut z = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(chunk.len() / 2 + 1024);
    let mut input = chunk;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let before = z.total_in();
        z.compress_vec(input, &mut out, flate2::FlushCompress::Sync)
            .map_err(io::Error::other)?;
        let used = (z.total_in() - before) as usize;
        input = &input[used..];
        // Done once all input is consumed and the flush left spare room (nothing pending).
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

fn final_block(level: u32) -> io::Result<Vec<u8>> {
    let mut z = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(64);
    z.compress_vec(&[], &mut out, flate2::FlushCompress::Finish)
        .map_err(io::Error::other)?;
    Ok(out)
}

/// Whether `path` looks like a chunk index entry (for pruning).
pub fn is_index_entry(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() > 65 && n.as_bytes()[64] == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut w = ParallelGzip::new(Vec::new(), level);
        // Odd write sizes cross chunk boundaries in every way.
        for piece in data.chunks(77_777) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap().0
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 7;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if i % 3 == 0 {
                    b'a' + (x >> 24) as u8 % 26
                } else {
                    b' '
                }
            })
            .collect()
    }

    /// The boundaries of the first, byte-at-a-time version, which every stored layer and chunk
    /// index entry was made with: the fast loop must cut in exactly the same places.
    fn reference_boundaries(data: &[u8]) -> Vec<usize> {
        let (mut cuts, mut hash, mut len) = (Vec::new(), 0u64, 0usize);
        for (i, &b) in data.iter().enumerate() {
            if len >= HASH_FROM {
                hash = (hash << 1).wrapping_add(GEAR[b as usize]);
            }
            len += 1;
            if (len >= MIN_CHUNK && hash & BOUNDARY_MASK == 0) || len >= MAX_CHUNK {
                cuts.push(i + 1);
                hash = 0;
                len = 0;
            }
        }
        cuts
    }

    #[test]
    fn boundaries_match_the_byte_at_a_time_definition() {
        // Text-like data (boundaries by hash) and a run of one byte (boundaries by MAX_CHUNK).
        let mut data = sample(9 * MAX_CHUNK);
        data.extend(std::iter::repeat_n(b'x', 2 * MAX_CHUNK + 77));
        data.extend(sample(3 * MAX_CHUNK + 5));
        let expected = reference_boundaries(&data);
        assert!(expected.len() > 10, "{}", expected.len());
        for write_size in [1_000_003, 65_536, 4_999, MIN_CHUNK, MAX_CHUNK + 1] {
            let mut w = ParallelGzip::new(Vec::new(), 1);
            for piece in data.chunks(write_size) {
                w.write_all(piece).unwrap();
            }
            let (_, placements) = w.finish().unwrap();
            let mut want = expected.clone();
            if want.last() != Some(&data.len()) {
                want.push(data.len());
            }
            assert_eq!(placements.len(), want.len(), "write size {write_size}");
            let mut at = 0;
            for (p, &end) in placements.iter().zip(&want) {
                assert_eq!(
                    p.input,
                    ChunkKey::of(&data[at..end]),
                    "chunk ending at {end}"
                );
                at = end;
            }
        }
    }

    #[test]
    fn round_trips_empty_small_and_multi_chunk_inputs() {
        for len in [
            0,
            1,
            100,
            MIN_CHUNK - 1,
            MIN_CHUNK + 1,
            MAX_CHUNK + 1,
            5 * MAX_CHUNK + 12_345,
        ] {
            let data = sample(len);
            let z = gz(&data, 6);
            assert_eq!(gunzip(&z), data, "length {len}");
            assert_eq!(&z[..2], &[0x1f, 0x8b]);
        }
    }

    #[test]
    fn output_is_deterministic_and_compresses() {
        let data = sample(3 * MAX_CHUNK + 5);
        let a = gz(&data, 6);
        assert_eq!(a, gz(&data, 6));
        assert!(a.len() < data.len() / 2, "{} of {}", a.len(), data.len());
    }

    #[test]
    fn incompressible_input_round_trips() {
        let mut x: u64 = 1;
        let data: Vec<u8> = (0..2 * MAX_CHUNK + 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(gunzip(&gz(&data, 9)), data);
        assert_eq!(gunzip(&gz(&data, 1)), data);
    }

    fn gz_with(
        data: &[u8],
        index: &Arc<ChunkIndex>,
        write_size: usize,
    ) -> (Vec<u8>, Vec<ChunkPlacement>) {
        let mut w = ParallelGzip::new(Vec::new(), 6).with_index(index.clone());
        for piece in data.chunks(write_size) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn chunks_are_content_defined_and_reused_from_stored_blobs() {
        let d = tempfile::tempdir().unwrap();
        let blobs = d.path().join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        let index = Arc::new(ChunkIndex::new(d.path().join("chunks"), &blobs));
        let data = sample(12 * MAX_CHUNK);
        let (first, placements) = gz_with(&data, &index, 65_536);
        assert!(placements.len() > 8, "{}", placements.len());
        // The same bytes whatever the write sizes.
        assert_eq!(gz_with(&data, &index, 1_000_003).0, first);
        let blob = Digest::of(&first);
        fs::write(blobs.join(blob.hex()), &first).unwrap();
        index.record(&blob, 6, &placements);

        // Insert bytes near the start: boundaries re-synchronise after it, so most chunks
        // are found in the index; the result is exactly a fresh compression.
        let mut edited = data.clone();
        edited.splice(1000..1000, b"inserted!".iter().copied());
        let fresh = gz(&edited, 6);
        let (reused, new_placements) = gz_with(&edited, &index, 65_536);
        assert_eq!(reused, fresh);
        assert_eq!(gunzip(&reused), edited);
        let shared = new_placements
            .iter()
            .filter(|p| placements.iter().any(|q| q.input == p.input))
            .count();
        assert!(
            shared + 2 >= new_placements.len(),
            "{shared} of {}",
            new_placements.len()
        );
    }
}
