//! An in-process pipe between two threads that carries a byte stream in 1 MiB pieces, with the
//! buffers going back to the writer once read (a few buffers reused, no page faults per MiB).
//! Used to run the reading of a layer's files, its compression and its hashes side by side.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};

pub const PIECE: usize = 1 << 20;
/// Pieces between writer and reader: bounds memory to a few MiB.
const IN_FLIGHT: usize = 4;

pub fn pipe() -> (PipeWriter, PipeReader) {
    let (pieces_tx, pieces) = mpsc::sync_channel(IN_FLIGHT);
    let (spare_tx, spare) = mpsc::sync_channel(IN_FLIGHT + 2);
    (
        PipeWriter {
            buf: Vec::with_capacity(PIECE),
            pieces: Some(pieces_tx),
            spare,
        },
        PipeReader {
            pieces,
            spare: spare_tx,
        },
    )
}

pub struct PipeWriter {
    buf: Vec<u8>,
    /// `None` once closed.
    pieces: Option<SyncSender<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
}

impl PipeWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIECE));
        let piece = std::mem::replace(&mut self.buf, next);
        match &self.pieces {
            Some(tx) if tx.send(piece).is_ok() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the reading end of the pipe stopped",
            )),
        }
    }

    /// Sends what is buffered and ends the stream.
    pub fn close(mut self) -> io::Result<()> {
        self.send()?;
        self.pieces = None;
        Ok(())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > PIECE {
            self.send()?;
        }
        let take = data.len().min(PIECE);
        self.buf.extend_from_slice(&data[..take]);
        Ok(take)
    }

    /// Pieces are sent when full; a flush does not cut one short (that would only add sends).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct PipeReader {
    pieces: Receiver<Vec<u8>>,
    spare: SyncSender<Vec<u8>>,
}

impl PipeReader {
    /// The next piece; `None` when the writer closed the pipe or went away.
    pub fn next_piece(&self) -> Option<Vec<u8>> {
        self.pieces.recv().ok()
    }

    /// Hands a read piece back for reuse.
    pub fn give_back(&self, mut piece: Vec<u8>) {
        piece.clear();
        // Dropped instead when the writer has enough spares already.
        let _ = self.spare.try_send(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_a_stream_in_order_across_threads() {
        let data: Vec<u8> = (0..3 * PIECE + 777).map(|i| (i % 253) as u8).collect();
        let (mut w, r) = pipe();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for part in sent.chunks(4099) {
                w.write_all(part).unwrap();
            }
            w.close().unwrap();
        });
        let mut got = Vec::new();
        while let Some(piece) = r.next_piece() {
            assert!(piece.len() <= PIECE);
            got.extend_from_slice(&piece);
            r.give_back(piece);
        }
        writer.join().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn a_writer_whose_reader_is_gone_gets_an_error() {
        let (mut w, r) = pipe();
        drop(r);
        let err = (0..10)
            .map(|_| w.write_all(&vec![1u8; PIECE]))
            .find_map(Result::err);
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
    }
}
