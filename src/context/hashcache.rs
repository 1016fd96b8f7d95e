//! Content digests of build-context files, remembered across builds by their metadata so an
//! unchanged file is never read twice: `(path, size, mtime, ctime, inode, device) → sha256`.
//! One file per context directory under `<state root>/context-v1/`, written atomically.
//!
//! A file whose mtime or ctime is within the last two seconds is hashed but not remembered:
//! a write in the same clock tick after hashing could leave size and times unchanged (git's
//! "racy clean" problem).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, DigestingWriter};

/// Bump when the file format or the digest meaning changes.
pub const CONTEXT_DIR: &str = "context-v1";

const RACY_WINDOW_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
    digest: Digest,
}

impl Entry {
    fn matches(&self, m: &fs::Metadata) -> bool {
        self.size == m.size()
            && self.mtime_ns == mtime_ns(m)
            && self.ctime_ns == ctime_ns(m)
            && self.ino == m.ino()
            && self.dev == m.dev()
    }
}

fn mtime_ns(m: &fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

fn ctime_ns(m: &fs::Metadata) -> i128 {
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

/// Remembered digests for one source directory (a build context).
#[derive(Debug, Default)]
pub struct FileHashCache {
    /// Where the cache is saved; `None` keeps it in memory only.
    file: Option<PathBuf>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Files hashed this run that changed too recently to be saved (see the module comment):
    /// kept for this process only, so that the COPY that hashed one for its key does not
    /// read it again to write it (a fresh CI checkout is all such files).
    recent: Mutex<HashMap<String, Entry>>,
    dirty: Mutex<bool>,
    /// Files actually read (for tests and the progress display).
    pub reads: std::sync::atomic::AtomicU64,
    /// Files changed this recently are not remembered (see the module comment).
    racy_window_ns: i128,
}

impl FileHashCache {
    /// An in-memory cache (nothing persisted).
    pub fn in_memory() -> FileHashCache {
        FileHashCache {
            racy_window_ns: RACY_WINDOW_NS,
            ..Default::default()
        }
    }

    /// The cache for `context_dir` under `state_root`; a missing or unreadable file is an empty
    /// cache (it is only an accelerator).
    pub fn load(state_root: &Path, context_dir: &Path) -> FileHashCache {
        let canonical = fs::canonicalize(context_dir).unwrap_or_else(|_| context_dir.into());
        let name = Digest::of(canonical.as_os_str().as_encoded_bytes()).hex()[..32].to_string();
        let file = state_root.join(CONTEXT_DIR).join(format!("{name}.json"));
        let entries = fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileHashCache {
            file: Some(file),
            entries: Mutex::new(entries),
            racy_window_ns: RACY_WINDOW_NS,
            ..Default::default()
        }
    }

    /// The sha256 of the regular file at `path` (known to the cache as `rel`, its path
    /// relative to the context as bytes: a name need not be UTF-8).
    pub fn digest(
        &self,
        rel: impl AsRef<[u8]>,
        path: &Path,
        meta: &fs::Metadata,
    ) -> io::Result<Digest> {
        let rel = key(rel.as_ref());
        let rel = rel.as_ref();
        if let Ok(entries) = self.entries.lock() {
            if let Some(e) = entries.get(rel).filter(|e| e.matches(meta)) {
                return Ok(e.digest.clone());
            }
        }
        if let Ok(recent) = self.recent.lock() {
            if let Some(e) = recent.get(rel).filter(|e| e.matches(meta)) {
                return Ok(e.digest.clone());
            }
        }
        let digest = hash_file(path)?;
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let racy = now_ns - mtime_ns(meta).max(ctime_ns(meta)) < self.racy_window_ns;
        let entry = Entry {
            size: meta.size(),
            mtime_ns: mtime_ns(meta),
            ctime_ns: ctime_ns(meta),
            ino: meta.ino(),
            dev: meta.dev(),
            digest: digest.clone(),
        };
        if racy {
            if let Ok(mut recent) = self.recent.lock() {
                recent.insert(rel.to_string(), entry);
            }
        } else if let (Ok(mut entries), Ok(mut dirty)) = (self.entries.lock(), self.dirty.lock()) {
            entries.insert(rel.to_string(), entry);
            *dirty = true;
        }
        Ok(digest)
    }

    /// Writes the cache back if it learnt anything (temp file, fsync, rename). Errors are
    /// returned for the caller to report as a warning: a lost cache only costs time.
    pub fn save(&self) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty.lock().map(|d| *d).unwrap_or(false) {
            return Ok(());
        }
        let bytes = {
            let entries = self
                .entries
                .lock()
                .map_err(|_| io::Error::other("hash cache lock poisoned"))?;
            serde_json::to_vec(&*entries).map_err(io::Error::other)?
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(file).map_err(|e| e.error)?;
        Ok(())
    }
}

/// A path's key in the cache file (JSON keys are strings): the path itself when it is UTF-8,
/// else a NUL (which no path holds) and its bytes in hex, so no two paths share a key.
fn key(rel: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(rel) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => {
            let mut k = String::with_capacity(1 + 2 * rel.len());
            k.push('\0');
            for b in rel {
                k.push_str(&format!("{b:02x}"));
            }
            std::borrow::Cow::Owned(k)
        }
    }
}

/// sha256 of a file's bytes, read in 256 KiB blocks.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut f = fs::File::open(path)?;
    let mut w = DigestingWriter::new(io::sink());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
    }
    Ok(w.finish().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_read_again_and_changes_are_seen() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let f = ctx.path().join("a.txt");
        fs::write(&f, "one").unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let meta = fs::symlink_metadata(&f).unwrap();
        let mut cache = FileHashCache::load(state.path(), ctx.path());
        // The file's ctime is now (set_modified changes it); a real one would be older.
        cache.racy_window_ns = 0;
        let d1 = cache.digest("a.txt", &f, &meta).unwrap();
        assert_eq!(d1, Digest::of(b"one"));
        cache.save().unwrap();

        let again = FileHashCache::load(state.path(), ctx.path());
        assert_eq!(again.digest("a.txt", &f, &meta).unwrap(), d1);
        assert_eq!(again.reads.load(std::sync::atomic::Ordering::Relaxed), 0);

        fs::write(&f, "two").unwrap();
        let meta = fs::symlink_metadata(&f).unwrap();
        assert_eq!(
            again.digest("a.txt", &f, &meta).unwrap(),
            Digest::of(b"two")
        );
        assert_eq!(again.reads.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn names_that_are_not_utf8_have_keys_of_their_own() {
        assert_eq!(key(b"a.txt"), "a.txt");
        assert_eq!(key(b"caf\xe9"), "\u{0}636166e9");
        assert_ne!(key(b"caf\xe9"), key(b"caf\xe8"));
        assert_ne!(key(b"caf\xe9"), key("caf\u{fffd}".as_bytes()));
    }

    #[test]
    fn a_file_changed_just_now_is_read_once_per_run_and_never_saved() {
        let state = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let f = ctx.path().join("fresh.txt");
        fs::write(&f, "fresh").unwrap();
        let meta = fs::symlink_metadata(&f).unwrap();
        let cache = FileHashCache::load(state.path(), ctx.path());
        for _ in 0..2 {
            assert_eq!(
                cache.digest("fresh.txt", &f, &meta).unwrap(),
                Digest::of(b"fresh")
            );
        }
        assert_eq!(cache.reads.load(std::sync::atomic::Ordering::Relaxed), 1);
        cache.save().unwrap();
        let next_run = FileHashCache::load(state.path(), ctx.path());
        next_run.digest("fresh.txt", &f, &meta).unwrap();
        assert_eq!(next_run.reads.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
