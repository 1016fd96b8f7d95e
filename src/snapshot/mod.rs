//! Unpacked layers as directories keyed by chain ID, and writable snapshots on top of them.
//!
//! Like containerd's snapshotters, [`Snapshotter::prepare`] and [`Snapshotter::view`] return the
//! mounts to make as data ([`Mount`]); this module never mounts anything.
//!
//! Layout under the snapshotter's root:
//!
//! ```text
//! snapshots/<chain-id hex>/fs          a committed layer, overlay-style whiteouts
//! snapshots/<chain-id hex>/meta.json   SnapshotInfo
//! active/<key>/{fs,work,meta.json}     a writable snapshot (overlay upper and work dirs)
//! tmp/<pid>-<n>/                       work in progress; renamed into place when complete
//! active/<key>/rootfs                   directory snapshots: the step's root, a full copy
//! views/<chain-id hex>/                 directory snapshots: merged layers read by COPY --from
//! flat/<chain-id hex>/                  directory snapshots: a step's root kept for the next
//! ```
//!
//! Every snapshot appears at its final path by one `rename`, so a crash leaves only a stale
//! directory in `tmp/`, removed by the next [`Snapshotter::new`] once its process is gone.

mod chain;
mod flatcache;
mod flatten;
mod treediff;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use chain::{chain_ids, ChainId};
pub use flatten::{flatten, remove_any};
pub use treediff::{diff_into, MountPoints, TreeIndex};

/// The kind of [`Mount`] that is no mount: a plain directory to use as it is (directory
/// snapshots, see [`Snapshotter::with_directory_copies`]).
pub const DIR_MOUNT: &str = "dir";

/// What runtimes mount over every container's root: never in a layer (relative paths).
pub const RUNTIME_MOUNT_POINTS: [&str; 5] = ["dev", "proc", "sys", "etc/hosts", "etc/resolv.conf"];

/// An overlay mount with `options`, plus `userxattr` where overlayfs keeps its marks in
/// `user.overlay.*` (rootless kiln's user namespace, see `layer::overlay`), so every mounter
/// sees the same opaque marks as the differ.
pub fn overlay_mount(mut options: Vec<String>) -> Mount {
    if crate::layer::overlay::user_xattrs() {
        options.push("userxattr".to_string());
    }
    Mount {
        kind: "overlay".to_string(),
        source: PathBuf::from("overlay"),
        options,
    }
}

use crate::layer::{extract_layer, ExtractOptions, LayerError};
use crate::oci::{Compression, DiffId};

/// A mount to make, as data: `mount -t <kind> -o <options joined by ','> <source> <target>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// `overlay` or `bind`.
    #[serde(rename = "type")]
    pub kind: String,
    pub source: PathBuf,
    pub options: Vec<String>,
}

impl Mount {
    /// The options as one `-o` argument.
    pub fn options_string(&self) -> String {
        self.options.join(",")
    }
}

/// What is known about a committed snapshot (its `meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub chain_id: ChainId,
    pub diff_id: DiffId,
    pub parent: Option<ChainId>,
    /// Size of the uncompressed layer tar, when the snapshot was unpacked from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The boot (`/proc/sys/kernel/random/boot_id`) the snapshot was written in, its files not
    /// synced to disk: after a crash of the machine they may be lost, so a later boot discards
    /// the snapshot (it is made again from its layer blob, which the store did sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced_boot: Option<String>,
}

/// An active directory snapshot: what its root held when prepared (until the step is
/// compared), then what the comparison found.
#[derive(Debug, Default)]
struct ActiveCopy {
    index: Option<TreeIndex>,
    outcome: Option<treediff::DiffOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ActiveInfo {
    key: String,
    parent: Option<ChainId>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Io(#[from] crate::oci::IoError),
    #[error("snapshot metadata {path}: {source}")]
    Metadata {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("layer for {chain_id} has DiffID {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        chain_id: ChainId,
        expected: DiffId,
        actual: DiffId,
    },
    #[error("snapshot {0} does not exist")]
    NotFound(ChainId),
    #[error("active snapshot {0:?} does not exist")]
    ActiveNotFound(String),
    #[error("active snapshot {0:?} already exists")]
    ActiveExists(String),
    #[error("invalid snapshot key {0:?}: use 1-128 of [A-Za-z0-9._-], not starting with '.'")]
    InvalidKey(String),
    #[error("snapshot {chain_id} is the parent of {children:?}")]
    InUse {
        chain_id: ChainId,
        children: Vec<String>,
    },
    #[error("snapshotter root {0} contains ',' or ':', which overlay mount options cannot carry")]
    InvalidRoot(PathBuf),
    #[error("snapshot {0}: parent chain is too long or has a cycle")]
    BadChain(ChainId),
}

type Result<T> = std::result::Result<T, SnapshotError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| {
        SnapshotError::Io(crate::oci::IoError {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Linux rename(2) of a directory onto a non-empty one.
fn already_there(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc_errno) if libc_errno == rustix::io::Errno::NOTEMPTY.raw_os_error()
        || libc_errno == rustix::io::Errno::EXIST.raw_os_error())
}

const MAX_CHAIN: usize = 500;

pub struct Snapshotter {
    root: PathBuf,
    /// Directory snapshots: an active snapshot is a full copy of its parent, diffed afterwards.
    copies: bool,
    /// Each active directory snapshot's state, by key.
    indexes: Mutex<HashMap<String, ActiveCopy>>,
}

/// A layer extracted by [`Snapshotter::extract`], waiting to be installed; dropped, its
/// temporary directory is removed.
pub struct Unpacked {
    tmp: PathBuf,
    info: SnapshotInfo,
}

impl Unpacked {
    pub fn chain_id(&self) -> &ChainId {
        &self.info.chain_id
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Starts extractions into a snapshotter's temporary directory ([`Snapshotter::extract_starter`]).
#[derive(Debug, Clone)]
pub struct ExtractStarter {
    tmp_dir: PathBuf,
}

impl ExtractStarter {
    /// Makes the temporary directory for the layer `diff_id` on top of `parent`.
    pub fn begin(&self, parent: Option<&ChainId>, diff_id: &DiffId) -> Result<PendingExtract> {
        let tmp = new_tmp_path(&self.tmp_dir);
        fs::create_dir(&tmp).map_err(io_err("create directory", &tmp))?;
        let unpacked = Unpacked {
            tmp,
            info: SnapshotInfo {
                chain_id: ChainId::of(parent, diff_id),
                diff_id: diff_id.clone(),
                parent: parent.cloned(),
                size: None,
                unsynced_boot: None,
            },
        };
        let fs_dir = unpacked.tmp.join("fs");
        fs::create_dir(&fs_dir).map_err(io_err("create directory", &fs_dir))?;
        Ok(PendingExtract(unpacked))
    }
}

/// A layer extraction whose directory is made and whose bytes are still to come
/// ([`Snapshotter::begin_extract`]).
pub struct PendingExtract(Unpacked);

impl PendingExtract {
    /// The snapshot this extraction is for.
    pub fn chain_id(&self) -> &ChainId {
        &self.0.info.chain_id
    }

    /// Extracts the layer `reader` yields and checks its DiffID.
    pub fn run(self, reader: impl Read + Send, compression: Compression) -> Result<Unpacked> {
        let mut unpacked = self.0;
        let fs_dir = unpacked.tmp.join("fs");
        let stats = extract_layer(reader, compression, &fs_dir, &ExtractOptions::overlay())?;
        if stats.diff_id != unpacked.info.diff_id {
            return Err(SnapshotError::DiffIdMismatch {
                chain_id: unpacked.info.chain_id.clone(),
                expected: unpacked.info.diff_id.clone(),
                actual: stats.diff_id,
            });
        }
        unpacked.info.size = Some(stats.uncompressed_size);
        Ok(unpacked)
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Snapshotter {
    /// Opens (creating if needed) a snapshotter rooted at `root` and removes temporary directories
    /// left by processes that no longer run.
    pub fn new(root: impl Into<PathBuf>) -> Result<Snapshotter> {
        let root = root.into();
        if root
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .any(|&b| b == b',' || b == b':')
        {
            return Err(SnapshotError::InvalidRoot(root));
        }
        let s = Snapshotter {
            root,
            copies: false,
            indexes: Mutex::new(HashMap::new()),
        };
        for dir in [s.snapshots_dir(), s.active_dir(), s.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        }
        // Every snapshot starts life in tmp/ (then one rename puts it in place).
        spread_new_dirs(&s.tmp_dir());
        s.cleanup_stale()?;
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes active snapshots plain directories: a copy of the parent's merged layers that
    /// needs no mount, compared with what it held when the step ends. For chroot isolation and
    /// for user namespaces where overlayfs is refused. Committed snapshots are the same layer
    /// directories either way.
    pub fn with_directory_copies(mut self) -> Snapshotter {
        self.copies = true;
        self
    }

    /// Whether active snapshots are directory copies.
    pub fn copies(&self) -> bool {
        self.copies
    }

    fn views_dir(&self) -> PathBuf {
        self.root.join("views")
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn active_dir(&self) -> PathBuf {
        self.root.join("active")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn snapshot_dir(&self, chain_id: &ChainId) -> PathBuf {
        self.snapshots_dir().join(chain_id.0.hex())
    }

    /// The unpacked layer's directory (overlay-style whiteouts), to use as a lower dir.
    pub fn fs_path(&self, chain_id: &ChainId) -> PathBuf {
        self.snapshot_dir(chain_id).join("fs")
    }

    fn active_path(&self, key: &str) -> Result<PathBuf> {
        let ok = !key.is_empty()
            && key.len() <= 128
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(SnapshotError::InvalidKey(key.to_string()));
        }
        Ok(self.active_dir().join(key))
    }

    /// The upper dir of an active snapshot: what a build step changed, to be diffed into a layer.
    pub fn upper_dir(&self, key: &str) -> Result<PathBuf> {
        let dir = self.active_path(key)?;
        if !dir.is_dir() {
            return Err(SnapshotError::ActiveNotFound(key.to_string()));
        }
        Ok(dir.join("fs"))
    }

    /// Marks a snapshot as used now (its `meta.json` mtime), for least-recently-used pruning.
    pub fn touch(&self, chain_id: &ChainId) {
        if let Ok(f) = fs::File::open(self.snapshot_dir(chain_id).join("meta.json")) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// When the snapshot was last used (see [`Snapshotter::touch`]).
    pub fn last_used(&self, chain_id: &ChainId) -> Option<std::time::SystemTime> {
        fs::metadata(self.snapshot_dir(chain_id).join("meta.json"))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Bytes the snapshot's files take (the sum of their lengths).
    pub fn disk_size(&self, chain_id: &ChainId) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else {
                return 0;
            };
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.fs_path(chain_id))
    }

    pub fn exists(&self, chain_id: &ChainId) -> bool {
        self.info(chain_id).is_ok()
    }

    /// The snapshot's metadata. A snapshot an earlier boot wrote without syncing is removed
    /// here and reported missing (see [`SnapshotInfo::unsynced_boot`]).
    pub fn info(&self, chain_id: &ChainId) -> Result<SnapshotInfo> {
        let path = self.snapshot_dir(chain_id).join("meta.json");
        match fs::read(&path) {
            Ok(bytes) => {
                let info: SnapshotInfo = serde_json::from_slice(&bytes)
                    .map_err(|source| SnapshotError::Metadata { path, source })?;
                match &info.unsynced_boot {
                    Some(boot) if Some(boot) != boot_id().as_ref() => {
                        let _ = self.discard(&self.snapshot_dir(chain_id));
                        Err(SnapshotError::NotFound(chain_id.clone()))
                    }
                    _ => Ok(info),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SnapshotError::NotFound(chain_id.clone()))
            }
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Every committed snapshot.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>> {
        let dir = self.snapshots_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(digest) = format!("sha256:{name}").parse() else {
                continue;
            };
            match self.info(&ChainId(digest)) {
                Ok(info) => out.push(info),
                Err(SnapshotError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        Ok(out)
    }

    /// Unpacks a layer on top of `parent` as snapshot `ChainID(parent, diff_id)` and checks that
    /// the tar's DiffID is `diff_id`. If the snapshot exists already, returns it without reading.
    pub fn unpack(
        &self,
        parent: Option<&ChainId>,
        diff_id: &DiffId,
        reader: impl Read + Send,
        compression: Compression,
    ) -> Result<SnapshotInfo> {
        let chain_id = ChainId::of(parent, diff_id);
        if let Ok(info) = self.info(&chain_id) {
            return Ok(info);
        }
        if let Some(parent) = parent {
            if !self.exists(parent) {
                return Err(SnapshotError::NotFound(parent.clone()));
            }
        }
        let unpacked = self.extract(parent, diff_id, reader, compression)?;
        self.install_unpacked(unpacked)
    }

    /// Extracts a layer meant to go on top of `parent` into a temporary directory and checks its
    /// DiffID, without making it a snapshot yet. An overlay layer's directory does not depend on
    /// its parent's files, so the layers of one image can be extracted side by side and then
    /// installed bottom first ([`Snapshotter::install_unpacked`]).
    pub fn extract(
        &self,
        parent: Option<&ChainId>,
        diff_id: &DiffId,
        reader: impl Read + Send,
        compression: Compression,
    ) -> Result<Unpacked> {
        self.begin_extract(parent, diff_id)?
            .run(reader, compression)
    }

    /// [`extract`](Snapshotter::extract) in two halves: the temporary directory now, the
    /// layer's bytes later, on whatever thread reads them (a download's, for one).
    pub fn begin_extract(
        &self,
        parent: Option<&ChainId>,
        diff_id: &DiffId,
    ) -> Result<PendingExtract> {
        self.extract_starter().begin(parent, diff_id)
    }

    /// An owned [`begin_extract`](Snapshotter::begin_extract), for threads and callbacks that
    /// cannot borrow the snapshotter.
    pub fn extract_starter(&self) -> ExtractStarter {
        ExtractStarter {
            tmp_dir: self.tmp_dir(),
        }
    }

    /// Makes an extracted layer the snapshot it was extracted for; its parent must be installed.
    pub fn install_unpacked(&self, mut unpacked: Unpacked) -> Result<SnapshotInfo> {
        if let Some(parent) = &unpacked.info.parent {
            if !self.exists(parent) {
                return Err(SnapshotError::NotFound(parent.clone()));
            }
        }
        let tmp = std::mem::take(&mut unpacked.tmp);
        let result = self.install(&tmp, &unpacked.info);
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Writes `info` into `tmp` and renames `tmp` to the snapshot's path. A snapshot that another
    /// process installed first wins, and `tmp` is removed.
    ///
    /// The files are not synced: a snapshot is a cache of a layer blob the store has synced,
    /// and only a crash of the machine (a new boot) can lose what a process wrote, so the
    /// snapshot records its boot and a later boot discards it. A `syncfs` here flushed every
    /// dirty page of the filesystem, other programs' too, on the build's critical path. Without
    /// a boot ID to record, it syncs as before.
    fn install(&self, tmp: &Path, info: &SnapshotInfo) -> Result<SnapshotInfo> {
        let info = &SnapshotInfo {
            unsynced_boot: boot_id(),
            ..info.clone()
        };
        if info.unsynced_boot.is_none() {
            let dir = fs::File::open(tmp).map_err(io_err("open", tmp))?;
            rustix::fs::syncfs(&dir).map_err(|e| io_err("sync", tmp)(e.into()))?;
        }
        write_json(&tmp.join("meta.json"), info)?;
        let dest = self.snapshot_dir(&info.chain_id);
        match fs::rename(tmp, &dest) {
            Ok(()) => {
                sync_dir(&self.snapshots_dir())?;
                Ok(info.clone())
            }
            Err(e) if already_there(&e) => {
                let _ = fs::remove_dir_all(tmp);
                self.info(&info.chain_id)
            }
            Err(e) => Err(io_err("rename into place", &dest)(e)),
        }
    }

    /// The `fs` dirs of `chain_id` and its ancestors, top first (overlay's lowerdir order).
    pub fn lower_dirs(&self, chain_id: &ChainId) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut next = Some(chain_id.clone());
        while let Some(id) = next {
            if out.len() >= MAX_CHAIN {
                return Err(SnapshotError::BadChain(chain_id.clone()));
            }
            let info = self.info(&id)?;
            self.touch(&id);
            out.push(self.fs_path(&id));
            next = info.parent;
        }
        Ok(out)
    }

    /// Creates writable snapshot `key` on top of `parent` (or empty) and returns how to mount it.
    pub fn prepare(&self, key: &str, parent: Option<&ChainId>) -> Result<Vec<Mount>> {
        let dest = self.active_path(key)?;
        if let Some(parent) = parent {
            if !self.exists(parent) {
                return Err(SnapshotError::NotFound(parent.clone()));
            }
        }
        if dest.exists() {
            return Err(SnapshotError::ActiveExists(key.to_string()));
        }
        let tmp = self.new_tmp()?;
        let result = (|| {
            for sub in ["fs", "work"] {
                let d = tmp.join(sub);
                fs::create_dir(&d).map_err(io_err("create directory", &d))?;
            }
            if self.copies {
                let rootfs = tmp.join("rootfs");
                let reused = parent
                    .is_some_and(|p| flatcache::take(&self.root, p, &rootfs, &self.new_tmp_path()));
                if !reused {
                    fs::create_dir(&rootfs).map_err(io_err("create directory", &rootfs))?;
                    if let Some(parent) = parent {
                        flatten(&self.lower_dirs(parent)?, &rootfs)
                            .map_err(io_err("copy the parent layers into", &rootfs))?;
                    }
                }
            }
            let info = ActiveInfo {
                key: key.to_string(),
                parent: parent.cloned(),
            };
            write_json(&tmp.join("meta.json"), &info)?;
            match fs::rename(&tmp, &dest) {
                Ok(()) => Ok(()),
                Err(e) if already_there(&e) => Err(SnapshotError::ActiveExists(key.to_string())),
                Err(e) => Err(io_err("rename into place", &dest)(e)),
            }
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if self.copies {
            let rootfs = dest.join("rootfs");
            let index = TreeIndex::of(&rootfs).map_err(io_err("index", &rootfs))?;
            let active = ActiveCopy {
                index: Some(index),
                outcome: None,
            };
            self.lock_indexes().insert(key.to_string(), active);
            // Change times come from a clock that ticks every few milliseconds: a step's first
            // write must fall on a later tick than the copy's last, or it would look unchanged.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.mounts(key)
    }

    fn lock_indexes(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveCopy>> {
        self.indexes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Directory snapshots: writes what the step changed in active snapshot `key`'s root into
    /// its upper dir (whiteouts, opaque dirs); `mount_points` were mounted over during the step
    /// and are left out. The root stays for [`Snapshotter::commit`] to keep for the next step.
    /// Does nothing for overlay snapshots or when done already.
    pub fn settle(&self, key: &str, mount_points: MountPoints<'_>) -> Result<()> {
        let Some(index) = self
            .lock_indexes()
            .get_mut(key)
            .and_then(|a| a.index.take())
        else {
            return Ok(());
        };
        let dir = self.active_path(key)?;
        let rootfs = dir.join("rootfs");
        let upper = dir.join("fs");
        let outcome = diff_into(&rootfs, &index, &upper, mount_points, true).map_err(io_err(
            "compare the step's root with its parent in",
            &rootfs,
        ))?;
        if let Some(a) = self.lock_indexes().get_mut(key) {
            a.outcome = Some(outcome);
        }
        Ok(())
    }

    /// Whether the root of directory snapshot `key` (claimed into `dir`) is exactly its parent
    /// plus the layer: the comparison found nothing left out, and every directory it put in
    /// the upper dir is still there (the runtime's stub cleaning may remove some).
    fn root_is_exact(&self, key: &str, dir: &Path) -> bool {
        let Some(ActiveCopy {
            outcome: Some(outcome),
            ..
        }) = self.lock_indexes().remove(key)
        else {
            return false;
        };
        outcome.clean
            && outcome
                .made_dirs
                .iter()
                .all(|d| dir.join("fs").join(d).is_dir())
    }

    fn active_info(&self, key: &str) -> Result<ActiveInfo> {
        let path = self.active_path(key)?.join("meta.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| SnapshotError::Metadata { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SnapshotError::ActiveNotFound(key.to_string()))
            }
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// How to mount active snapshot `key`: a read-write bind of its dir when it has no parent,
    /// else an overlay of its parents (top first) under its upper dir.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let info = self.active_info(key)?;
        let dir = self.active_path(key)?;
        if self.copies {
            return Ok(vec![Mount {
                kind: DIR_MOUNT.to_string(),
                source: dir.join("rootfs"),
                options: Vec::new(),
            }]);
        }
        let upper = dir.join("fs");
        let Some(parent) = info.parent else {
            return Ok(vec![Mount {
                kind: "bind".to_string(),
                source: upper,
                options: vec!["rbind".to_string(), "rw".to_string()],
            }]);
        };
        let lowers = self.lower_dirs(&parent)?;
        let mut options = vec![
            lowerdir_option(&lowers),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", dir.join("work").display()),
        ];
        if volatile_supported() {
            options.push("volatile".to_string());
        }
        Ok(vec![overlay_mount(options)])
    }

    /// A read-only view of committed snapshot `chain_id`: a read-only bind of a single layer, or
    /// an overlay of lower dirs only.
    pub fn view(&self, chain_id: &ChainId) -> Result<Vec<Mount>> {
        let lowers = self.lower_dirs(chain_id)?;
        if self.copies {
            return self.view_copy(chain_id, &lowers);
        }
        if let [only] = lowers.as_slice() {
            return Ok(vec![Mount {
                kind: "bind".to_string(),
                source: only.clone(),
                options: vec!["rbind".to_string(), "ro".to_string()],
            }]);
        }
        Ok(vec![overlay_mount(vec![lowerdir_option(&lowers)])])
    }

    /// A read-only view without mounts: the layer itself, or its merged layers copied once
    /// into `views/<chain-id hex>` (removed with the snapshot).
    fn view_copy(&self, chain_id: &ChainId, lowers: &[PathBuf]) -> Result<Vec<Mount>> {
        let dir = match lowers {
            [only] => only.clone(),
            _ => {
                let dest = self.views_dir().join(chain_id.0.hex());
                if !dest.is_dir() {
                    let tmp = self.new_tmp()?;
                    let made = flatten(lowers, &tmp)
                        .map_err(io_err("copy the layers into", &tmp))
                        .and_then(|()| {
                            fs::create_dir_all(self.views_dir())
                                .map_err(io_err("create directory", &self.views_dir()))
                        });
                    if let Err(e) = made {
                        let _ = fs::remove_dir_all(&tmp);
                        return Err(e);
                    }
                    match fs::rename(&tmp, &dest) {
                        Ok(()) => {}
                        Err(e) if already_there(&e) => {
                            let _ = fs::remove_dir_all(&tmp);
                        }
                        Err(e) => return Err(io_err("rename into place", &dest)(e)),
                    }
                }
                dest
            }
        };
        Ok(vec![Mount {
            kind: DIR_MOUNT.to_string(),
            source: dir,
            options: vec!["ro".to_string()],
        }])
    }

    /// Turns active snapshot `key` into committed snapshot `ChainID(parent, diff_id)`, where
    /// `diff_id` is the DiffID of the layer made from its upper dir. If that snapshot exists
    /// already, the active one is discarded.
    pub fn commit(&self, key: &str, diff_id: &DiffId) -> Result<SnapshotInfo> {
        self.settle(key, MountPoints::default())?;
        let active = self.active_info(key)?;
        let src = self.active_path(key)?;
        let chain_id = ChainId::of(active.parent.as_ref(), diff_id);
        // Claim the active dir first, so a crash leaves a stale temp rather than a half snapshot.
        let tmp = self.new_tmp_path();
        fs::rename(&src, &tmp).map_err(io_err("rename", &src))?;
        let result = (|| {
            let work = tmp.join("work");
            fs::remove_dir_all(&work).map_err(io_err("remove", &work))?;
            let rootfs = tmp.join("rootfs");
            if self.root_is_exact(key, &tmp) {
                flatcache::keep(&self.root, &chain_id, &rootfs, &self.new_tmp_path());
            } else if rootfs.exists() {
                fs::remove_dir_all(&rootfs).map_err(io_err("remove", &rootfs))?;
            }
            let info = SnapshotInfo {
                chain_id: chain_id.clone(),
                diff_id: diff_id.clone(),
                parent: active.parent.clone(),
                size: None,
                unsynced_boot: None,
            };
            self.install(&tmp, &info)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Removes committed snapshot `chain_id`, unless a snapshot is built on it.
    pub fn remove(&self, chain_id: &ChainId) -> Result<()> {
        if !self.exists(chain_id) {
            return Err(SnapshotError::NotFound(chain_id.clone()));
        }
        let mut children: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|s| s.parent.as_ref() == Some(chain_id))
            .map(|s| s.chain_id.to_string())
            .collect();
        for key in self.active_keys()? {
            if let Ok(a) = self.active_info(&key) {
                if a.parent.as_ref() == Some(chain_id) {
                    children.push(format!("active {key}"));
                }
            }
        }
        if !children.is_empty() {
            return Err(SnapshotError::InUse {
                chain_id: chain_id.clone(),
                children,
            });
        }
        let view = self.views_dir().join(chain_id.0.hex());
        if view.exists() {
            self.discard(&view)?;
        }
        flatcache::forget(&self.root, chain_id, &self.new_tmp_path());
        self.discard(&self.snapshot_dir(chain_id))
    }

    /// Removes active snapshot `key` (which must not be mounted).
    pub fn remove_active(&self, key: &str) -> Result<()> {
        let dir = self.active_path(key)?;
        if !dir.exists() {
            return Err(SnapshotError::ActiveNotFound(key.to_string()));
        }
        self.lock_indexes().remove(key);
        self.discard(&dir)
    }

    /// Keys of the active snapshots.
    pub fn active_keys(&self) -> Result<Vec<String>> {
        let dir = self.active_dir();
        let mut keys = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            if let Some(name) = entry.file_name().to_str() {
                keys.push(name.to_string());
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Moves `dir` out of sight in one rename, then deletes it.
    fn discard(&self, dir: &Path) -> Result<()> {
        let tmp = self.new_tmp_path();
        fs::rename(dir, &tmp).map_err(io_err("rename", dir))?;
        fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))
    }

    /// Removes temporary directories whose creating process no longer runs. Returns how many.
    pub fn cleanup_stale(&self) -> Result<usize> {
        let dir = self.tmp_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| {
                pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
            });
            if !alive {
                let path = entry.path();
                let result = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                result.map_err(io_err("remove stale", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn new_tmp_path(&self) -> PathBuf {
        new_tmp_path(&self.tmp_dir())
    }

    fn new_tmp(&self) -> Result<PathBuf> {
        let path = self.new_tmp_path();
        fs::create_dir(&path).map_err(io_err("create directory", &path))?;
        Ok(path)
    }
}

/// A fresh name in `tmp_dir`: the pid makes it unique between processes (and lets a later
/// process find it stale), the counter within this one.
fn new_tmp_path(tmp_dir: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    tmp_dir.join(format!("{}-{nanos}-{n}", std::process::id()))
}

/// This boot's ID, `None` where the kernel does not give one.
pub(crate) fn boot_id() -> Option<String> {
    static BOOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .clone()
}

/// Asks ext2/3/4 to place each directory made in `dir` as its own top-level tree (the
/// `FS_TOPDIR_FL` attribute, `chattr +T`): the Orlov allocator then puts it in a block group
/// with many free inodes, instead of next to its parent. On ext4 without a journal, creating
/// an inode skips the ones freed in the last minutes, so a tree unpacked in the group where the
/// last build's snapshots were just deleted took 1.4-2.3 s for debian:bookworm-slim's 6,000
/// entries instead of 0.16-0.3 s. Best effort: other filesystems refuse or ignore it.
fn spread_new_dirs(dir: &Path) {
    use rustix::fs::IFlags;
    let Ok(fd) = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return;
    };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&fd) {
        if !flags.contains(IFlags::TOPDIR) {
            let _ = rustix::fs::ioctl_setflags(&fd, flags | IFlags::TOPDIR);
        }
    }
}

/// Whether overlayfs has the `volatile` option (Linux 5.10+): then a writable snapshot's
/// mount ignores fsync and syncfs. dpkg fsyncs every file it unpacks (5,400 fsyncs, 0.45 s
/// of an apt-get install of 58 packages here), and none of it buys anything: an active
/// snapshot whose build dies is discarded (`exec::sweep`), never mounted again, and a
/// committed snapshot records the boot it was written in, so a later boot unpacks it again
/// from its (fsynced) blob instead of trusting unsynced files.
fn volatile_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        kernel_at_least(&release, (5, 10))
    })
}

/// `6.1.0-13-amd64` ≥ (5, 10)? Unparsable releases count as old.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (next(), next()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

fn lowerdir_option(lowers: &[PathBuf]) -> String {
    let joined: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", joined.join(":"))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| SnapshotError::Metadata {
        path: path.to_path_buf(),
        source,
    })?;
    let mut f = fs::File::create(path).map_err(io_err("create", path))?;
    f.write_all(&bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    fn diff(n: u8) -> DiffId {
        DiffId(Digest::of(&[n]))
    }

    #[test]
    fn mounts_are_data() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshotter::new(tmp.path().join("snap")).unwrap();
        // Fake committed snapshots: metadata and an fs dir are all the snapshotter looks at.
        let c0 = ChainId::of(None, &diff(0));
        let c1 = ChainId::of(Some(&c0), &diff(1));
        for (c, p, d) in [(&c0, None, diff(0)), (&c1, Some(c0.clone()), diff(1))] {
            let dir = s.snapshot_dir(c);
            fs::create_dir_all(dir.join("fs")).unwrap();
            let info = SnapshotInfo {
                chain_id: c.clone(),
                diff_id: d,
                parent: p,
                size: None,
                unsynced_boot: None,
            };
            write_json(&dir.join("meta.json"), &info).unwrap();
        }
        assert_eq!(
            s.lower_dirs(&c1).unwrap(),
            vec![s.fs_path(&c1), s.fs_path(&c0)]
        );

        let m = s.prepare("step-1", Some(&c1)).unwrap();
        let active = s.root().join("active/step-1");
        assert_eq!(
            m,
            vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!(
                        "lowerdir={}:{}",
                        s.fs_path(&c1).display(),
                        s.fs_path(&c0).display()
                    ),
                    format!("upperdir={}", active.join("fs").display()),
                    format!("workdir={}", active.join("work").display()),
                ]
                .into_iter()
                .chain(volatile_supported().then(|| "volatile".to_string()))
                .collect(),
            }]
        );
        assert!(matches!(
            s.prepare("step-1", None),
            Err(SnapshotError::ActiveExists(_))
        ));
        let m = s.prepare("base", None).unwrap();
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, s.root().join("active/base/fs"));

        assert_eq!(s.view(&c0).unwrap()[0].kind, "bind");
        assert_eq!(s.view(&c0).unwrap()[0].options, ["rbind", "ro"]);
        assert_eq!(s.view(&c1).unwrap()[0].kind, "overlay");

        // Parents in use cannot be removed; children first.
        assert!(matches!(s.remove(&c0), Err(SnapshotError::InUse { .. })));
        s.remove_active("step-1").unwrap();
        assert!(matches!(s.remove(&c1), Ok(())));
        assert!(!s.exists(&c1));
        s.remove(&c0).unwrap();

        // Commit of an empty-based snapshot.
        fs::write(s.upper_dir("base").unwrap().join("hello"), b"hi").unwrap();
        let info = s.commit("base", &diff(9)).unwrap();
        assert_eq!(info.chain_id, ChainId::of(None, &diff(9)));
        assert_eq!(
            fs::read(s.fs_path(&info.chain_id).join("hello")).unwrap(),
            b"hi"
        );
        assert!(!s.root().join("active/base").exists());
        assert!(!s.snapshot_dir(&info.chain_id).join("work").exists());
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn snapshots_an_earlier_boot_did_not_sync_are_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshotter::new(tmp.path().join("snap")).unwrap();
        let boot = boot_id().expect("the kernel gives a boot ID");
        let make = |n: u8, unsynced_boot: Option<String>| {
            let c = ChainId::of(None, &diff(n));
            let dir = s.snapshot_dir(&c);
            fs::create_dir_all(dir.join("fs")).unwrap();
            let info = SnapshotInfo {
                chain_id: c.clone(),
                diff_id: diff(n),
                parent: None,
                size: None,
                unsynced_boot,
            };
            write_json(&dir.join("meta.json"), &info).unwrap();
            c
        };
        let synced = make(1, None);
        let this_boot = make(2, Some(boot));
        let other_boot = make(3, Some("00000000-0000-0000-0000-000000000000".into()));
        assert!(s.exists(&synced));
        assert!(s.exists(&this_boot));
        assert!(!s.exists(&other_boot));
        assert!(
            !s.snapshot_dir(&other_boot).exists(),
            "removed, to be made again"
        );
        assert_eq!(s.list().unwrap().len(), 2);

        // What this process installs records this boot.
        s.prepare("k", None).unwrap();
        let info = s.commit("k", &diff(4)).unwrap();
        assert_eq!(info.unsynced_boot, boot_id());
        assert_eq!(s.info(&info.chain_id).unwrap(), info);
    }

    #[test]
    fn kernel_releases_compare() {
        assert!(kernel_at_least("6.1.0-13-amd64\n", (5, 10)));
        assert!(kernel_at_least("5.10.0", (5, 10)));
        assert!(!kernel_at_least("5.4.0-150-generic", (5, 10)));
        assert!(!kernel_at_least("4.19.0", (5, 10)));
        assert!(!kernel_at_least("", (5, 10)));
        assert!(!kernel_at_least("garbage", (5, 10)));
    }

    #[test]
    fn new_snapshots_are_spread_on_ext4() {
        // ext2/3/4 all report this magic; elsewhere the flag is not expected.
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let s = Snapshotter::new(tmp.path().join("snap")).unwrap();
        let on_ext4 = rustix::fs::statfs(tmp.path()).unwrap().f_type as i64 == EXT4_SUPER_MAGIC;
        let fd = fs::File::open(s.tmp_dir()).unwrap();
        let flags = rustix::fs::ioctl_getflags(&fd).unwrap_or(rustix::fs::IFlags::empty());
        assert_eq!(
            flags.contains(rustix::fs::IFlags::TOPDIR),
            on_ext4,
            "tmp/ of a snapshotter on ext4 has FS_TOPDIR_FL (chattr +T)"
        );
    }

    #[test]
    fn keys_are_validated() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshotter::new(tmp.path()).unwrap();
        for bad in ["", "../x", "a/b", ".hidden", &"k".repeat(129)] {
            assert!(
                matches!(s.prepare(bad, None), Err(SnapshotError::InvalidKey(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Snapshotter::new(tmp.path().join("a:b")),
            Err(SnapshotError::InvalidRoot(_))
        ));
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshotter::new(tmp.path()).unwrap();
        // pid 0 never names a live process under /proc; garbage names are stale too.
        fs::create_dir_all(s.tmp_dir().join("0-1-1/fs/deep")).unwrap();
        fs::create_dir_all(s.tmp_dir().join("garbage")).unwrap();
        let live = s.new_tmp().unwrap();
        let s = Snapshotter::new(tmp.path()).unwrap();
        let left: Vec<_> = fs::read_dir(s.tmp_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![live]);
    }
}
