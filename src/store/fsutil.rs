//! Small filesystem helpers: durable atomic replacement, directory fsync, the store-wide lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::error::{Result, StoreError};

/// fsync a directory so that renames and unlinks inside it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Replaces `path` with `bytes`: write `tmp` (same directory), fsync, rename over `path`,
/// fsync the directory. Readers see the old or the new content, never a torn file. The caller
/// must hold whatever lock makes it the only writer of `tmp`.
pub(crate) fn replace_file(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(tmp).map_err(StoreError::io("create", tmp))?;
    f.write_all(bytes).map_err(StoreError::io("write", tmp))?;
    f.sync_all().map_err(StoreError::io("fsync", tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(StoreError::io("rename into place", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// `mkdir -p`, naming the directory on failure.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))
}

/// A held lock on the store's `lock` file. Each guard opens its own file description, so the
/// lock excludes other threads of this process as well as other processes; it is released on
/// drop (or when the process dies).
#[derive(Debug)]
pub(crate) struct LockGuard {
    _file: File,
}

impl LockGuard {
    fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(StoreError::io("open lock file", path))
    }

    pub(crate) fn exclusive(path: &Path) -> Result<LockGuard> {
        let file = Self::open(path)?;
        file.lock()
            .map_err(StoreError::io("take exclusive lock on", path))?;
        Ok(LockGuard { _file: file })
    }

    pub(crate) fn shared(path: &Path) -> Result<LockGuard> {
        let file = Self::open(path)?;
        file.lock_shared()
            .map_err(StoreError::io("take shared lock on", path))?;
        Ok(LockGuard { _file: file })
    }
}

/// Tries to take an exclusive lock on an existing file without blocking: `Ok(true)` if it
/// is ours now, `Ok(false)` if another open file description holds it.
pub(crate) fn try_lock_file(file: &File, path: &Path) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(StoreError::io("try to lock", path)(e)),
    }
}
