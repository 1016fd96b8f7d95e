//! A writer that passes a stream on and computes its sha256 on a thread of its own. Writing a
//! layer hashes every tar byte (the DiffID) and every compressed byte (the blob digest) besides
//! reading, chunking and compressing them; with the hashes beside it instead of in line, the
//! thread that compresses no longer waits for sha256.

use std::io::{self, Write};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use super::pipe::{pipe, PipeWriter};
use super::Digest;

pub struct HashAhead<W: Write> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

enum Hasher {
    /// Dropping the writer unfinished closes the pipe, which ends the hashing thread.
    Thread(PipeWriter, JoinHandle<Digest>),
    /// When no thread could be started: hashed in line, as a plain digesting writer does.
    Inline(Box<Sha256>),
}

impl<W: Write> HashAhead<W> {
    pub fn new(inner: W) -> Self {
        let (to_hasher, pieces) = pipe();
        let spawned = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                while let Some(piece) = pieces.next_piece() {
                    sha.update(&piece);
                    pieces.give_back(piece);
                }
                Digest::from_hasher(sha)
            });
        let hasher = match spawned {
            Ok(thread) => Hasher::Thread(to_hasher, thread),
            Err(_) => Hasher::Inline(Box::new(Sha256::new())),
        };
        HashAhead {
            inner,
            hasher,
            written: 0,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The sha256 and length of everything written, and the inner writer.
    pub fn finish(self) -> io::Result<(Digest, u64, W)> {
        let digest = match self.hasher {
            Hasher::Thread(to_hasher, thread) => {
                to_hasher.close()?;
                thread
                    .join()
                    .map_err(|_| io::Error::other("the hashing thread panicked"))?
            }
            Hasher::Inline(sha) => Digest::from_hasher(*sha),
        };
        Ok((digest, self.written, self.inner))
    }
}

impl<W: Write> Write for HashAhead<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        match &mut self.hasher {
            Hasher::Thread(to_hasher, _) => to_hasher.write_all(&data[..n])?,
            Hasher::Inline(sha) => sha.update(&data[..n]),
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::pipe::PIECE;

    #[test]
    fn passes_everything_on_and_hashes_it_whatever_the_write_sizes() {
        let data: Vec<u8> = (0..5 * PIECE + 123).map(|i| (i * 7 % 251) as u8).collect();
        for size in [511, 4096, PIECE - 1, PIECE, 3 * PIECE + 5] {
            let mut w = HashAhead::new(Vec::new());
            for piece in data.chunks(size) {
                w.write_all(piece).unwrap();
            }
            let (digest, len, out) = w.finish().unwrap();
            assert_eq!(out, data, "write size {size}");
            assert_eq!(len, data.len() as u64);
            assert_eq!(digest, Digest::of(&data));
        }
        let (digest, len, out) = HashAhead::new(Vec::new()).finish().unwrap();
        assert_eq!((digest, len, out.len()), (Digest::of(b""), 0, 0));
    }
}
