//! Layer taps: a layer's bytes handed to a consumer as they arrive from the registry, beside the
//! store's ingest, so that the layer can be unpacked while it downloads instead of after.
//!
//! The consumer reads a [`TapReader`] on a thread of its own. Until the download has been
//! verified and committed to the store it cannot know that what it read is the blob the
//! manifest names, so it must keep its result aside until the pull returns `Ok`.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use crate::oci::BlobRef;

/// Bytes gathered before they are sent: one message per this many bytes, not per HTTP chunk.
const BATCH: usize = 256 * 1024;
/// Batches in flight per layer. A full channel makes the download wait for the consumer, so a
/// tap holds at most `BATCH * DEPTH` bytes (8 MiB) whatever the layer's size.
const DEPTH: usize = 32;

/// Gets the layers of a pull as they download.
pub trait LayerTap: Send + Sync {
    /// Layer `index` (bottom first) of the image whose config blob is `config` starts
    /// downloading from its first byte. Returning a sender gets its bytes as they arrive.
    fn layer_started(&self, index: usize, layer: &BlobRef, config: &[u8]) -> Option<TapSender>;
}

/// A [`LayerTap`] shared by a pull's download tasks.
#[derive(Clone)]
pub struct SharedTap(pub Arc<dyn LayerTap>);

impl std::fmt::Debug for SharedTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTap")
    }
}

enum TapMessage {
    Data(Vec<u8>),
    /// The download restarted from zero or failed: what was sent is not the layer.
    Abandoned,
}

/// A tap and the reader that gets what it sends.
pub fn channel() -> (TapSender, TapReader) {
    let (tx, rx) = sync_channel(DEPTH);
    (
        TapSender {
            tx: Some(tx),
            pending: Vec::with_capacity(BATCH),
        },
        TapReader {
            rx,
            current: Vec::new(),
            pos: 0,
            failed: false,
        },
    )
}

/// The download's end of a tap. Dropped without [`finish`](TapSender::finish), it tells the
/// reader the layer was not delivered.
pub struct TapSender {
    tx: Option<SyncSender<TapMessage>>,
    pending: Vec<u8>,
}

impl TapSender {
    /// Passes on the next bytes of the blob. Blocks while the reader is `DEPTH` batches behind;
    /// a reader that has gone away only ends the tap, never the download.
    pub fn send(&mut self, bytes: &[u8]) {
        if self.tx.is_none() {
            return;
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= BATCH {
            let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
            self.deliver(TapMessage::Data(batch));
        }
    }

    /// Whether the reader still takes bytes.
    pub fn is_open(&self) -> bool {
        self.tx.is_some()
    }

    /// The whole blob was sent and verified: the reader gets the rest, then end of file.
    pub fn finish(mut self) {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.deliver(TapMessage::Data(batch));
        }
        self.tx = None;
    }

    fn deliver(&mut self, message: TapMessage) {
        if let Some(tx) = &self.tx {
            if tx.send(message).is_err() {
                self.tx = None;
            }
        }
    }
}

impl Drop for TapSender {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(TapMessage::Abandoned);
        }
    }
}

/// The consumer's end of a tap: the blob's bytes, then end of file once the download was
/// verified, or an error if it was not.
pub struct TapReader {
    rx: Receiver<TapMessage>,
    current: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl Read for TapReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.failed {
                return Err(abandoned());
            }
            match self.rx.recv() {
                Ok(TapMessage::Data(batch)) => {
                    self.current = batch;
                    self.pos = 0;
                }
                Ok(TapMessage::Abandoned) => {
                    self.failed = true;
                    return Err(abandoned());
                }
                // The sender finished: every byte has been read.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn abandoned() -> io::Error {
    // Not `Interrupted`: readers retry that one.
    io::Error::other("the layer's download restarted or failed before it was verified")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut reader: TapReader) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn a_finished_tap_delivers_every_byte_in_order() {
        let (mut tx, rx) = channel();
        let reader = std::thread::spawn(move || read_all(rx));
        let mut expected = Vec::new();
        for i in 0..5000u32 {
            let chunk: Vec<u8> = (0..(i % 700)).map(|b| (b ^ i) as u8).collect();
            tx.send(&chunk);
            expected.extend_from_slice(&chunk);
        }
        tx.finish();
        assert_eq!(reader.join().unwrap().unwrap(), expected);
    }

    #[test]
    fn a_dropped_tap_is_an_error_not_end_of_file() {
        let (mut tx, rx) = channel();
        tx.send(b"partial");
        drop(tx);
        let err = read_all(rx).unwrap_err();
        assert!(err.to_string().contains("before it was verified"), "{err}");
    }

    #[test]
    fn a_reader_that_left_does_not_stop_the_sender() {
        let (mut tx, rx) = channel();
        drop(rx);
        for _ in 0..(DEPTH * 4) {
            tx.send(&[7u8; BATCH]);
        }
        assert!(!tx.is_open());
        tx.finish();
    }
}
