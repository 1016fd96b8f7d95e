//! Where blobs are known to live in registries (`registry/repository`), as Docker's
//! distribution metadata remembers them: a pull records the repository it fetched each blob
//! from and a push the repository it pushed to, so a later push to the same registry can
//! mount a blob instead of uploading it.
//!
//! `<root>/blob-sources-v1/<hex>` holds one `registry/repository` per line. Lines are appended
//! with `O_APPEND` (one short write each, so concurrent writers never interleave) and
//! duplicates are dropped when reading. The records are hints: a stale one costs a mount
//! attempt that the registry answers with an ordinary upload.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::PathBuf;

use super::error::{Result, StoreError};
use super::Store;
use crate::oci::Digest;

/// Directory name under the state root; the version changes if the format does.
const DIR: &str = "blob-sources-v1";
/// Records kept per blob (the newest win).
const MAX_SOURCES: usize = 32;

impl Store {
    fn sources_path(&self, digest: &Digest) -> PathBuf {
        self.root().join(DIR).join(digest.hex())
    }

    /// Remembers that `digest` exists in `repository` (`registry/name`, e.g.
    /// `127.0.0.1:5000/library/busybox`).
    pub fn record_blob_source(&self, digest: &Digest, repository: &str) -> Result<()> {
        if repository.is_empty() || repository.contains('\n') {
            return Ok(());
        }
        if self.blob_sources(digest)?.iter().any(|r| r == repository) {
            return Ok(());
        }
        let path = self.sources_path(digest);
        if let Some(dir) = path.parent() {
            super::fsutil::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        file.write_all(format!("{repository}\n").as_bytes())
            .map_err(StoreError::io("append to", &path))
    }

    /// Repositories `digest` is known to live in, newest first, without duplicates.
    pub fn blob_sources(&self, digest: &Digest) -> Result<Vec<String>> {
        let path = self.sources_path(digest);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        let mut out: Vec<String> = Vec::new();
        for line in text.lines().rev().map(str::trim).filter(|l| !l.is_empty()) {
            if !out.iter().any(|o| o == line) {
                out.push(line.to_string());
            }
            if out.len() == MAX_SOURCES {
                break;
            }
        }
        Ok(out)
    }

    /// Forgets the records of a blob that was deleted.
    pub(crate) fn forget_blob_sources(&self, digest: &Digest) {
        let _ = fs::remove_file(self.sources_path(digest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_recorded_once_and_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let digest = Digest::of(b"layer");
        assert!(store.blob_sources(&digest).unwrap().is_empty());
        store.record_blob_source(&digest, "r:5000/a").unwrap();
        store.record_blob_source(&digest, "r:5000/b").unwrap();
        store.record_blob_source(&digest, "r:5000/a").unwrap();
        store.record_blob_source(&digest, "bad\nname").unwrap();
        assert_eq!(
            store.blob_sources(&digest).unwrap(),
            vec!["r:5000/b".to_string(), "r:5000/a".to_string()]
        );
        store.forget_blob_sources(&digest);
        assert!(store.blob_sources(&digest).unwrap().is_empty());
    }
}
