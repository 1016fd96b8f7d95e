//! A writer that passes a stream on in 1 MiB pieces and computes its sha256 on a thread of its
//! own. Writing a layer hashes every tar byte (the DiffID) as well as reading, chunking and
//! compressing it; with the hash beside it instead of in line, the thread that reads the files
//! is no longer the one that waits for sha256.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

const PIECE: usize = 1 << 20;
/// Pieces between the writer and the hashing thread: bounds memory at a few MiB.
const IN_FLIGHT: usize = 4;

pub struct HashAhead<W: Write> {
    inner: W,
    buf: Vec<u8>,
    to_hasher: Option<SyncSender<Vec<u8>>>,
    /// Emptied pieces coming back, so the same few buffers are reused (no page faults per MiB).
    spare: Receiver<Vec<u8>>,
    /// Dropping the writer unfinished closes the channel, which ends the thread.
    hasher: Option<JoinHandle<Digest>>,
    written: u64,
}

impl<W: Write> HashAhead<W> {
    pub fn new(inner: W) -> Self {
        let (to_hasher, pieces) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (give_back, spare) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
        let hasher = std::thread::spawn(move || {
            let mut sha = Sha256::new();
            for mut piece in pieces {
                sha.update(&piece);
                piece.clear();
                // Dropped instead when the writer has enough spares already.
                let _ = give_back.try_send(piece);
            }
            Digest::from_hasher(sha)
        });
        HashAhead {
            inner,
            buf: Vec::with_capacity(PIECE),
            to_hasher: Some(to_hasher),
            spare,
            hasher: Some(hasher),
            written: 0,
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    fn pass_on(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.inner.write_all(&self.buf)?;
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIECE));
        let piece = std::mem::replace(&mut self.buf, next);
        let sent = self.to_hasher.as_ref().map(|tx| tx.send(piece));
        if !matches!(sent, Some(Ok(()))) {
            return Err(io::Error::other("the hashing thread stopped"));
        }
        Ok(())
    }

    /// Passes the rest on; the sha256 and length of everything written, and the inner writer.
    pub fn finish(mut self) -> io::Result<(Digest, u64, W)> {
        self.pass_on()?;
        drop(self.to_hasher.take());
        let digest = self
            .hasher
            .take()
            .map(|h| h.join())
            .ok_or_else(|| io::Error::other("the hashing thread is gone"))?
            .map_err(|_| io::Error::other("the hashing thread panicked"))?;
        Ok((digest, self.written, self.inner))
    }
}

impl<W: Write> Write for HashAhead<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > PIECE {
            self.pass_on()?;
        }
        // A write larger than a piece is cut into pieces (copied once into the buffer).
        let take = data.len().min(PIECE);
        self.buf.extend_from_slice(&data[..take]);
        self.written += take as u64;
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pass_on()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
