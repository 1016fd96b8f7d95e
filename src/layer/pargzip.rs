//! Parallel gzip in the way of pigz: the input is cut into fixed 1 MiB chunks, each chunk is
//! deflated on its own thread and ended with a sync flush, and the pieces are written in order
//! between one gzip header and one trailer. The output is a single standard gzip member that
//! any gunzip reads.
//!
//! The bytes depend only on the input and the level, never on the number of threads or on
//! timing: chunk boundaries are fixed offsets and chunks share no dictionary. That keeps layer
//! digests reproducible across machines.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

/// Input bytes per independently compressed chunk.
const CHUNK: usize = 1 << 20;

/// gzip header: deflate, no flags, mtime 0, no extra flags, OS "unknown" (what flate2 writes).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

type Pending = JoinHandle<io::Result<Vec<u8>>>;

pub struct ParallelGzip<W: Write> {
    out: W,
    level: u32,
    buf: Vec<u8>,
    pending: VecDeque<Pending>,
    max_in_flight: usize,
    crc: crc32fast::Hasher,
    size: u64,
    header_written: bool,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(out: W, level: u32) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        ParallelGzip {
            out,
            level: level.min(9),
            buf: Vec::with_capacity(CHUNK),
            pending: VecDeque::new(),
            // Two chunks per core keeps every core busy while bounding memory to a few MiB.
            max_in_flight: threads.clamp(1, 16) * 2,
            crc: crc32fast::Hasher::new(),
            size: 0,
            header_written: false,
        }
    }

    fn start_chunk(&mut self) -> io::Result<()> {
        if self.pending.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let level = self.level;
        self.pending
            .push_back(std::thread::spawn(move || deflate_chunk(&chunk, level)));
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(handle) = self.pending.pop_front() else {
            return Ok(());
        };
        let bytes = handle
            .join()
            .map_err(|_| io::Error::other("a gzip worker thread panicked"))??;
        self.write_header()?;
        self.out.write_all(&bytes)
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.out.write_all(&HEADER)?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Compresses what is left, writes the final block and the trailer; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
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
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.crc.update(data);
        self.size += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let take = (CHUNK - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == CHUNK {
                self.start_chunk()?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
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
        w.finish().unwrap()
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

    #[test]
    fn round_trips_empty_small_and_multi_chunk_inputs() {
        for len in [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12_345] {
            let data = sample(len);
            let z = gz(&data, 6);
            assert_eq!(gunzip(&z), data, "length {len}");
            assert_eq!(&z[..2], &[0x1f, 0x8b]);
        }
    }

    #[test]
    fn output_is_deterministic_and_compresses() {
        let data = sample(3 * CHUNK + 5);
        let a = gz(&data, 6);
        assert_eq!(a, gz(&data, 6));
        assert!(a.len() < data.len() / 2, "{} of {}", a.len(), data.len());
    }

    #[test]
    fn incompressible_input_round_trips() {
        let mut x: u64 = 1;
        let data: Vec<u8> = (0..2 * CHUNK + 3)
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
}
