//! The only writer of blobs: an OCI image layout under `<root>/oci`, written through `ingest/`
//! (hash while writing, fsync, verify, rename, fsync the directory), tags in `index.json`, a file
//! lock shared by every kiln process using the root, and garbage collection from the tags.
//!
//! Layout of a store root:
//!
//! ```text
//! <root>/lock                     flock: shared for reads and ingest set-up, exclusive for
//!                                 index.json updates, GC and ingest cleanup
//! <root>/oci/oci-layout           {"imageLayoutVersion":"1.0.0"}
//! <root>/oci/index.json           tagged manifests/indexes (rewritten atomically)
//! <root>/oci/blobs/sha256/<hex>   committed content, never written in place
//! <root>/ingest/<pid>-<n>-<t>.tmp one in-flight write, flock'ed by its writer
//! <root>/ingest/<hex>.partial     a resumable download of a known digest, flock'ed while written
//! <root>/blob-sources-v1/<hex>    registry repositories the blob is known to live in (mount hints)
//! ```
//!
//! Crash safety: a blob only appears at its final path by `rename` of a complete, fsynced and
//! verified file, and `index.json` is only replaced by `rename`. A process killed at any point
//! leaves at worst an unlocked file in `ingest/` (removed by the next [`Store::open`] or
//! [`Store::gc`]) or a stale `oci/index.json.tmp` (removed by [`Store::open`]).
//!
//! Tags: each `index.json` entry carries `org.opencontainers.image.ref.name` = the full reference
//! (`docker.io/library/python:3.12-slim`), valid under the OCI annotation grammar, so
//! `skopeo inspect oci:<root>/oci:docker.io/library/python:3.12-slim` finds it (skopeo splits
//! the transport argument at the first `:`, so the layout path must not contain one), and
//! `io.containerd.image.name` = the same reference, as containerd writes it.

mod error;
mod fsutil;
mod gc;
mod image;
mod index;
mod ingest;
mod platforms;
mod sources;

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::oci::Descriptor;
pub use error::{Result, StoreError};
pub use gc::{GcOptions, GcReport};
pub use image::StoredImage;
pub use index::{validate_tag, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME};
pub use ingest::{BlobInfo, Ingest};

use crate::oci::{Digest, DigestingReader};
use fsutil::{create_dir_all, replace_file, LockGuard};

/// Content of `oci-layout`.
pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// A store root. Cheap to clone; every clone and every other process opening the same root
/// coordinate through `<root>/lock`.
#[derive(Debug, Clone)]
pub struct Store {
    paths: Arc<Paths>,
}

#[derive(Debug)]
struct Paths {
    root: PathBuf,
    oci: PathBuf,
    blobs: PathBuf,
    index: PathBuf,
    index_tmp: PathBuf,
    ingest: PathBuf,
    lock: PathBuf,
}

impl Store {
    /// The default state root: `$KILN_ROOT`, else `/var/lib/kiln` when running as root (euid
    /// 0), else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
    pub fn default_root() -> Result<PathBuf> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        default_root_from(var("KILN_ROOT"), euid, var("XDG_DATA_HOME"), var("HOME"))
    }

    /// Opens the store at `root`, creating the layout if needed, validating an existing one, and
    /// removing ingest files that no live process holds.
    pub fn open(root: &Path) -> Result<Store> {
        let oci = root.join("oci");
        let paths = Paths {
            root: root.to_path_buf(),
            blobs: oci.join("blobs").join(Digest::ALGORITHM),
            index: oci.join("index.json"),
            index_tmp: oci.join("index.json.tmp"),
            ingest: root.join("ingest"),
            lock: root.join("lock"),
            oci,
        };
        create_dir_all(&paths.blobs)?;
        create_dir_all(&paths.ingest)?;
        let store = Store {
            paths: Arc::new(paths),
        };
        let _lock = store.lock_exclusive()?;
        store.init_layout()?;
        store.clean_ingest(None)?;
        Ok(store)
    }

    fn init_layout(&self) -> Result<()> {
        let p = &self.paths;
        let layout = p.oci.join("oci-layout");
        match fs::read(&layout) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                        path: layout.clone(),
                        source,
                    })?;
                let version = v.get("imageLayoutVersion").and_then(|v| v.as_str());
                if !version.is_some_and(|v| v.starts_with("1.")) {
                    return Err(StoreError::InvalidLayout {
                        path: p.oci.clone(),
                        reason: format!("unsupported imageLayoutVersion {version:?}"),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                replace_file(
                    &layout,
                    &p.oci.join("oci-layout.tmp"),
                    OCI_LAYOUT.as_bytes(),
                )?;
            }
            Err(e) => return Err(StoreError::io("read", &layout)(e)),
        }
        // A crash between writing and renaming the index leaves this behind.
        match fs::remove_file(&p.index_tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove", &p.index_tmp)(e))
            }
            _ => {}
        }
        if p.index.exists() {
            self.read_index()?;
        } else {
            self.write_index(&index::ImageIndex::empty())?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.paths.root
    }

    /// The OCI image layout directory (`<root>/oci`), as skopeo/umoci/podman address it.
    pub fn layout_dir(&self) -> &Path {
        &self.paths.oci
    }

    pub fn ingest_dir(&self) -> &Path {
        &self.paths.ingest
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.paths.blobs
    }

    /// Where the blob with `digest` lives once committed (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.paths.blobs.join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens a committed blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::BlobNotFound(digest.clone())
            } else {
                StoreError::io("open blob", &path)(e)
            }
        })
    }

    /// Reads a whole committed blob (for manifests and configs, not layers).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut f = self.open_blob(digest)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(StoreError::io("read blob", self.blob_path(digest)))?;
        Ok(buf)
    }

    pub fn blob_size(&self, digest: &Digest) -> Result<u64> {
        Ok(self
            .open_blob(digest)?
            .metadata()
            .map_err(StoreError::io("stat blob", self.blob_path(digest)))?
            .len())
    }

    /// Re-hashes a committed blob and checks it against its name.
    pub fn verify_blob(&self, digest: &Digest) -> Result<BlobInfo> {
        let path = self.blob_path(digest);
        let mut r = DigestingReader::new(self.open_blob(digest)?);
        std::io::copy(&mut r, &mut std::io::sink()).map_err(StoreError::io("read blob", &path))?;
        let (actual, size) = r.finish();
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
                size,
            });
        }
        Ok(BlobInfo {
            digest: actual,
            size,
        })
    }

    /// Writes `bytes` as a blob (through ingest) and returns its digest and size.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<BlobInfo> {
        let digest = Digest::of(bytes);
        if self.freshen(&digest)? {
            return Ok(BlobInfo {
                digest,
                size: bytes.len() as u64,
            });
        }
        let mut ingest = self.ingest(Some(&digest), Some(bytes.len() as u64))?;
        std::io::Write::write_all(&mut ingest, bytes)
            .map_err(StoreError::io("write", ingest.path()))?;
        ingest.commit()
    }

    /// True if the blob exists; its mtime is then bumped so that a garbage collection running
    /// before the caller tags something that refers to it keeps it (see [`GcOptions::grace`]).
    pub fn freshen(&self, digest: &Digest) -> Result<bool> {
        let _lock = self.lock_shared()?;
        Ok(self.freshen_locked(digest))
    }

    fn lock_exclusive(&self) -> Result<LockGuard> {
        LockGuard::exclusive(&self.paths.lock)
    }

    fn lock_shared(&self) -> Result<LockGuard> {
        LockGuard::shared(&self.paths.lock)
    }
}

fn default_root_from(
    kiln_root: Option<PathBuf>,
    euid: u32,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf> {
    if let Some(root) = kiln_root {
        return Ok(root);
    }
    if euid == 0 {
        return Ok(PathBuf::from("/var/lib/kiln"));
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(data) = xdg_data_home.filter(|p| p.is_absolute()) {
        return Ok(data.join("kiln"));
    }
    match home.filter(|p| p.is_absolute()) {
        Some(home) => Ok(home.join(".local/share/kiln")),
        None => Err(StoreError::NoRoot(
            "set KILN_ROOT, XDG_DATA_HOME or HOME to an absolute path",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_order() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            default_root_from(p("/k"), 0, p("/x"), p("/h")).unwrap(),
            PathBuf::from("/k")
        );
        assert_eq!(
            default_root_from(None, 0, p("/x"), p("/h")).unwrap(),
            PathBuf::from("/var/lib/kiln")
        );
        assert_eq!(
            default_root_from(None, 1000, p("/x"), p("/h")).unwrap(),
            PathBuf::from("/x/kiln")
        );
        assert_eq!(
            default_root_from(None, 1000, p("rel"), p("/h")).unwrap(),
            PathBuf::from("/h/.local/share/kiln")
        );
        assert!(default_root_from(None, 1000, None, None).is_err());
    }
}
