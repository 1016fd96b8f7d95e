//! Writing blobs: content is invisible until committed (containerd's local content store).
//!
//! An [`Ingest`] is a file in `<root>/ingest/` that its writer holds an exclusive `flock` on for
//! its whole life, so a cleaner (which holds the store's exclusive lock) can tell a live write
//! from a stale one by trying that lock. Files are created and locked under the store's shared
//! lock, so a cleaner never sees a new file before it is locked.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::{Result, StoreError};
use super::fsutil::{sync_dir, try_lock_file};
use super::Store;
use crate::oci::{Digest, HashAhead};

const TMP_SUFFIX: &str = ".tmp";
const PARTIAL_SUFFIX: &str = ".partial";

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// The file under an ingest: skips the first `skip` bytes written (a resumed prefix that is
/// only being re-hashed) and buffers the rest into the file.
struct Sink {
    file: BufWriter<File>,
    skip: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.skip > 0 {
            let n = usize::try_from(self.skip).map_or(buf.len(), |s| s.min(buf.len()));
            self.skip -= n as u64;
            return Ok(n);
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// An in-flight blob write. Write the content, then [`commit`](Ingest::commit). Dropping it
/// uncommitted removes its file (except a resumable ingest, whose partial file stays for the
/// next [`Store::ingest_resume`]).
pub struct Ingest {
    store: Store,
    path: PathBuf,
    writer: Option<HashAhead<Sink>>,
    expected: Option<Digest>,
    expected_size: Option<u64>,
    offset: u64,
    resumable: bool,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("path", &self.path)
            .field("expected", &self.expected)
            .field("expected_size", &self.expected_size)
            .field("offset", &self.offset)
            .field("written", &self.written())
            .field("resumable", &self.resumable)
            .finish()
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Starts writing a blob. `expected` and `expected_size`, when given, are checked at
    /// [`Ingest::commit`]; writing more than `expected_size` bytes fails at once.
    pub fn ingest(&self, expected: Option<&Digest>, expected_size: Option<u64>) -> Result<Ingest> {
        let _lock = self.lock_shared()?;
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let (path, file) = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self
                .ingest_dir()
                .join(format!("{pid}-{n}-{nanos:09}{TMP_SUFFIX}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io("create ingest file", &path)(e)),
            }
        };
        if !try_lock_file(&file, &path)? {
            // Nobody else can know this name yet.
            return Err(StoreError::io("lock new ingest file", &path)(
                io::Error::new(io::ErrorKind::WouldBlock, "locked by another process"),
            ));
        }
        Ok(Ingest {
            store: self.clone(),
            path,
            writer: Some(HashAhead::new(Sink {
                file: BufWriter::with_capacity(256 * 1024, file),
                skip: 0,
            })),
            expected: expected.cloned(),
            expected_size,
            offset: 0,
            resumable: false,
        })
    }

    /// Starts or continues a resumable write of the blob `expected` in
    /// `ingest/<hex>.partial`. [`Ingest::offset`] says how many bytes are already there (ask
    /// the registry for `Range: bytes=<offset>-` and write the rest); they have been re-hashed.
    ///
    /// If another writer (thread or process) holds that partial file, this does not wait: it
    /// returns a fresh private ingest at offset 0, and whichever commits second finds the blob
    /// present, which is success.
    pub fn ingest_resume(&self, expected: &Digest, expected_size: Option<u64>) -> Result<Ingest> {
        let path = self
            .ingest_dir()
            .join(format!("{}{PARTIAL_SUFFIX}", expected.hex()));
        let lock = self.lock_shared()?;
        let file = loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(StoreError::io("open partial ingest file", &path))?;
            if !try_lock_file(&file, &path)? {
                drop(lock);
                return self.ingest(Some(expected), expected_size);
            }
            // Between our open and our lock, the previous holder may have committed (renamed
            // the file into blobs/) or discarded it: only keep a file still at `path`.
            let ours = file.metadata().map_err(StoreError::io("stat", &path))?;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => break file,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("stat", &path)(e)),
            }
        };
        drop(lock);

        let mut len = file
            .metadata()
            .map_err(StoreError::io("stat", &path))?
            .len();
        if expected_size.is_some_and(|s| len > s) {
            file.set_len(0).map_err(StoreError::io("truncate", &path))?;
            len = 0;
        }
        let mut reader = file
            .try_clone()
            .map_err(StoreError::io("duplicate handle of", &path))?;
        let mut writer = HashAhead::new(Sink {
            file: BufWriter::with_capacity(256 * 1024, file),
            skip: len,
        });
        // Re-hash the prefix already on disk (the Sink drops these bytes instead of writing).
        reader
            .seek(SeekFrom::Start(0))
            .map_err(StoreError::io("seek", &path))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut rehashed = 0u64;
        while rehashed < len {
            let n = reader
                .read(&mut buf)
                .map_err(StoreError::io("read partial ingest file", &path))?;
            if n == 0 {
                break;
            }
            let n = usize::try_from(len - rehashed).map_or(n, |rest| rest.min(n));
            writer
                .write_all(&buf[..n])
                .map_err(StoreError::io("re-hash", &path))?;
            rehashed += n as u64;
        }
        // Append from exactly what was hashed.
        let sink = writer.get_mut();
        sink.skip = 0;
        let file = sink.file.get_mut();
        file.set_len(rehashed)
            .map_err(StoreError::io("truncate", &path))?;
        file.seek(SeekFrom::Start(rehashed))
            .map_err(StoreError::io("seek", &path))?;
        Ok(Ingest {
            store: self.clone(),
            path,
            writer: Some(writer),
            expected: Some(expected.clone()),
            expected_size,
            offset: rehashed,
            resumable: true,
        })
    }

    /// Removes ingest files that no live writer holds: every unlocked `.tmp` file, and unlocked
    /// `.partial` files older than `partial_max_age` (never, if `None`). The caller holds the
    /// store's exclusive lock. Returns how many files were removed.
    pub(crate) fn clean_ingest(&self, partial_max_age: Option<Duration>) -> Result<usize> {
        let dir = self.ingest_dir();
        let entries = fs::read_dir(dir).map_err(StoreError::io("list", dir))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_tmp = name.ends_with(TMP_SUFFIX);
            let is_partial = name.ends_with(PARTIAL_SUFFIX);
            if !is_tmp && !is_partial {
                continue;
            }
            let file = match OpenOptions::new().read(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("open ingest file", &path)(e)),
            };
            let meta = file.metadata().map_err(StoreError::io("stat", &path))?;
            if !meta.is_file() {
                continue;
            }
            if is_partial {
                let Some(max_age) = partial_max_age else {
                    continue;
                };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .unwrap_or_default();
                if age < max_age {
                    continue;
                }
            }
            if try_lock_file(&file, &path)? {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove stale ingest file", &path)(e)),
                }
            }
        }
        Ok(removed)
    }
}

impl Store {
    /// If the blob exists, bumps its mtime (so a GC's grace period covers a blob someone just
    /// "wrote" again) and returns true. The caller holds the shared lock.
    pub(crate) fn freshen_locked(&self, digest: &Digest) -> bool {
        let target = self.blob_path(digest);
        if !target.is_file() {
            return false;
        }
        if let Ok(f) = OpenOptions::new().write(true).open(&target) {
            let _ = f.set_modified(SystemTime::now());
        }
        true
    }
}

impl Ingest {
    /// The ingest file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes that were already present when this ingest was opened (non-zero only for a
    /// resumed partial download).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Total bytes of the blob so far, including [`offset`](Ingest::offset).
    pub fn written(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.written())
    }

    pub fn is_resumable(&self) -> bool {
        self.resumable
    }

    /// Makes the blob durable and visible: fsync, check size and digest, rename into
    /// `blobs/sha256/<hex>` (an existing blob is success), fsync the directory. On a mismatch
    /// the ingest file is removed and nothing stays behind.
    pub fn commit(mut self) -> Result<BlobInfo> {
        let Some(writer) = self.writer.take() else {
            unreachable!("an Ingest holds its writer until commit or drop");
        };
        let path = self.path.clone();
        let (digest, size, sink) = match writer.finish() {
            Ok(finished) => finished,
            Err(e) => {
                remove_quietly(&path);
                return Err(StoreError::io("hash", &path)(e));
            }
        };
        let file = match sink.file.into_inner() {
            Ok(f) => f,
            Err(e) => {
                let err = StoreError::io("write", &path)(e.into_error());
                remove_quietly(&path);
                return Err(err);
            }
        };
        if let Err(e) = file.sync_all() {
            remove_quietly(&path);
            return Err(StoreError::io("fsync", &path)(e));
        }
        if let Some(expected) = self.expected_size.filter(|&s| s != size) {
            remove_quietly(&path);
            return Err(StoreError::SizeMismatch {
                digest: self.expected.clone(),
                expected,
                actual: size,
            });
        }
        if let Some(expected) = self.expected.clone().filter(|e| e != &digest) {
            remove_quietly(&path);
            return Err(StoreError::DigestMismatch {
                expected,
                actual: digest,
                size,
            });
        }
        // Under the shared lock, so a GC (exclusive) sees either no blob or one freshly
        // modified, which its grace period protects until a tag refers to it.
        let _lock = match self.store.lock_shared() {
            Ok(lock) => lock,
            Err(e) => {
                remove_quietly(&path);
                return Err(e);
            }
        };
        let target = self.store.blob_path(&digest);
        if self.store.freshen_locked(&digest) {
            remove_quietly(&path);
        } else {
            // The mtime is the last write, which may be long ago for a slow download.
            let _ = file.set_modified(SystemTime::now());
            fs::rename(&path, &target).map_err(|e| {
                remove_quietly(&path);
                StoreError::io("rename into blobs", &target)(e)
            })?;
            sync_dir(self.store.blobs_dir())?;
        }
        drop(file);
        Ok(BlobInfo { digest, size })
    }

    /// Discards the write, removing its file (a resumable partial file too).
    pub fn abort(mut self) {
        self.writer = None;
        remove_quietly(&self.path);
    }
}

fn remove_quietly(path: &Path) {
    let _ = fs::remove_file(path);
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(w) = self.writer.as_mut() else {
            return Err(io::Error::other("ingest already finished"));
        };
        if let Some(limit) = self.expected_size {
            if w.written().saturating_add(buf.len() as u64) > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob {} is longer than the expected {limit} bytes",
                        self.expected
                            .as_ref()
                            .map_or_else(|| "being ingested".to_string(), |d| d.to_string())
                    ),
                ));
            }
        }
        w.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            // A resumable ingest keeps its prefix for the next attempt (BufWriter's drop
            // flushes it); any other is discarded.
            if !self.resumable {
                remove_quietly(&self.path);
            }
            drop(writer);
        }
    }
}
