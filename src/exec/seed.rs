//! A COPY rebuilt after a small change writes mostly the files it wrote last time. Creating
//! thousands of files is what such a rebuild costs (inode allocation in the kernel), so the new
//! step's upper directory is first seeded with hard links to the files of the previous build
//! of the same step, on the same parent snapshot: the copy keeps a seeded file only when it is
//! byte for byte and in every attribute what it would write (`context::copy`), replaces the
//! others, and what it did not write is removed again before the layer is made. Snapshots are
//! never written in place (the copy replaces files, it does not rewrite them; later steps see
//! the snapshot read-only through overlayfs), so sharing inodes between them is safe.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use std::collections::{BTreeMap, HashMap};

use crate::oci::Digest;
use crate::snapshot::{ChainId, Snapshotter};

use crate::context::copy::Seeded;

/// The snapshot the previous build of a COPY made on the same parent, and what each regular
/// file in it holds by path (empty when unknown: then files are compared byte for byte).
#[derive(Debug, Clone)]
pub struct Donor {
    pub dir: std::path::PathBuf,
    pub contents: HashMap<String, Digest>,
}

/// Where each COPY step's last snapshot is remembered; the version changes with the format.
const DONORS_DIR: &str = "copy-donors-v2";

/// `<state root>/copy-donors-v2/<step location hex>`: the snapshot a COPY step made last, on
/// which parent, and the content digest of each regular file in it by path.
#[derive(serde::Serialize, serde::Deserialize)]
struct DonorRecord {
    chain: Digest,
    parent: Option<Digest>,
    files: BTreeMap<String, Digest>,
}

impl DonorRecord {
    fn read(path: &Path) -> Option<DonorRecord> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }
}

impl Donor {
    /// The snapshot the previous build of the COPY at `location` made on `parent`, if it is
    /// still there, and what its files hold.
    pub fn find(
        state_root: &Path,
        snapshots: &Snapshotter,
        location: &Digest,
        parent: Option<&ChainId>,
    ) -> Option<Donor> {
        let record = DonorRecord::read(&state_root.join(DONORS_DIR).join(location.hex()))?;
        if record.parent.as_ref() != parent.map(|p| &p.0) {
            return None;
        }
        let chain = ChainId(record.chain);
        snapshots.exists(&chain).then(|| Donor {
            dir: snapshots.fs_path(&chain),
            contents: record.files.into_iter().collect(),
        })
    }

    /// Remembers the snapshot a COPY made and what its files hold, for the next build of it.
    /// Only a hint: failures cost the next build its seeding, nothing else.
    pub fn remember(
        state_root: &Path,
        location: &Digest,
        chain: &ChainId,
        parent: Option<&ChainId>,
        files: BTreeMap<String, Digest>,
    ) {
        let dir = state_root.join(DONORS_DIR);
        let record = DonorRecord {
            chain: chain.0.clone(),
            parent: parent.map(|p| p.0.clone()),
            files,
        };
        let Ok(mut tmp) =
            fs::create_dir_all(&dir).and_then(|()| tempfile::NamedTempFile::new_in(&dir))
        else {
            return;
        };
        let written = serde_json::to_writer(io::BufWriter::new(tmp.as_file_mut()), &record);
        if written.is_ok() {
            let _ = tmp.persist(dir.join(location.hex()));
        }
    }

    /// Drops the records whose snapshot is gone (for prune).
    pub fn drop_stale(state_root: &Path, snapshots: &Snapshotter) {
        let Ok(entries) = fs::read_dir(state_root.join(DONORS_DIR)) else {
            return;
        };
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            let live =
                DonorRecord::read(&path).is_some_and(|r| snapshots.exists(&ChainId(r.chain)));
            if !live {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// What was seeded, to undo what the copy did not claim.
pub struct Seeding {
    pub seeded: Seeded,
    files: Vec<String>,
    dirs: Vec<String>,
}

/// Mirrors `donor`'s directories into `upper` and hard-links its regular files there, a
/// directory at a time on every core (it is all system calls, and they scale).
pub fn seed(donor: &Donor, upper: &Path) -> io::Result<Seeding> {
    let roots = DirRoots {
        donor: open_dir(&donor.dir)?,
        upper: open_dir(upper)?,
    };
    let queue = DirQueue::new(String::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let found: Vec<io::Result<Found>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| seed_dirs(&roots, &queue)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a seeding thread panicked")))
            })
            .collect()
    });
    let mut seeding = Seeding {
        seeded: Seeded {
            contents: donor.contents.clone(),
            ..Seeded::default()
        },
        files: Vec::new(),
        dirs: Vec::new(),
    };
    for part in found {
        let part = part?;
        seeding.seeded.inodes.extend(part.inodes);
        seeding.files.extend(part.files);
        seeding.dirs.extend(part.dirs);
    }
    Ok(seeding)
}

struct DirRoots {
    donor: OwnedFd,
    upper: OwnedFd,
}

/// What one seeding thread made.
#[derive(Default)]
struct Found {
    inodes: Vec<u64>,
    files: Vec<String>,
    dirs: Vec<String>,
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn open_subdir(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    open_dir_at(root, if rel.is_empty() { "." } else { rel })
}

/// A directory below `dir`, never through a symlink.
fn open_dir_at(dir: &OwnedFd, path: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Directories (relative paths) waiting to be seeded, shared by the seeding threads; a thread
/// that finds it empty waits while others may still add to it. Paths, not open directories,
/// wait here: a wide tree would otherwise hold thousands of descriptors.
struct DirQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    waiting: Vec<String>,
    busy: usize,
    failed: bool,
}

impl DirQueue {
    fn new(first: String) -> DirQueue {
        DirQueue {
            state: Mutex::new(QueueState {
                waiting: vec![first],
                busy: 0,
                failed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next directory to seed; `None` once all are done or one failed.
    fn take(&self) -> Option<String> {
        let mut state = self.lock();
        loop {
            if state.failed {
                return None;
            }
            if let Some(rel) = state.waiting.pop() {
                state.busy += 1;
                return Some(rel);
            }
            if state.busy == 0 {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Ends a directory, queueing the subdirectories it found (or failing them all).
    fn done(&self, subdirs: Vec<String>, ok: bool) {
        let mut state = self.lock();
        state.busy -= 1;
        state.failed |= !ok;
        state.waiting.extend(subdirs);
        self.ready.notify_all();
    }
}

fn seed_dirs(roots: &DirRoots, queue: &DirQueue) -> io::Result<Found> {
    let mut found = Found::default();
    while let Some(rel) = queue.take() {
        let mut subdirs = Vec::new();
        let result = seed_dir(roots, &rel, &mut found, &mut subdirs);
        queue.done(subdirs, result.is_ok());
        result?;
    }
    Ok(found)
}

/// Seeds the entries of one directory; its subdirectories are made here and queued.
fn seed_dir(
    roots: &DirRoots,
    rel: &str,
    found: &mut Found,
    subdirs: &mut Vec<String>,
) -> io::Result<()> {
    let donor = open_subdir(&roots.donor, rel)?;
    let upper = open_subdir(&roots.upper, rel)?;
    for entry in rustix::fs::Dir::read_from(&donor)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let Ok(name_str) = name.to_str() else {
            // Names that are not UTF-8 are left to the copy.
            continue;
        };
        let child = if rel.is_empty() {
            name_str.to_string()
        } else {
            format!("{rel}/{name_str}")
        };
        let file_type = match entry.file_type() {
            FileType::Unknown => FileType::from_raw_mode(
                rustix::fs::statat(&donor, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
            ),
            t => t,
        };
        if file_type == FileType::Directory {
            let st = rustix::fs::statat(&donor, name, AtFlags::SYMLINK_NOFOLLOW)?;
            rustix::fs::mkdirat(&upper, name, Mode::from_raw_mode(0o700))?;
            let made = open_dir_at(&upper, name)?;
            // Owner first: a chown may clear set-id bits the mode then puts back.
            rustix::fs::fchown(
                &made,
                Some(rustix::fs::Uid::from_raw(st.st_uid)),
                Some(rustix::fs::Gid::from_raw(st.st_gid)),
            )?;
            rustix::fs::fchmod(&made, Mode::from_raw_mode(st.st_mode & 0o7777))?;
            // A directory the copy made over a file of the parent is opaque; keep it so.
            let from = open_dir_at(&donor, name)?;
            let mut flag = [0u8; 1];
            if rustix::fs::fgetxattr(&from, crate::layer::overlay::opaque_xattr(), &mut flag)
                .is_ok_and(|n| n == 1)
                && flag == *b"y"
            {
                rustix::fs::fsetxattr(
                    &made,
                    crate::layer::overlay::opaque_xattr(),
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )?;
            }
            found.dirs.push(child.clone());
            subdirs.push(child);
        } else if file_type == FileType::RegularFile {
            rustix::fs::linkat(&donor, name, &upper, name, AtFlags::empty())?;
            found.inodes.push(entry.ino());
            found.files.push(child);
        }
        // Symlinks and whiteouts are cheap or rare: the copy makes them as usual.
    }
    Ok(())
}

/// Removes from `upper` the seeded files and (then empty) directories the copy did not claim,
/// giving the directories around them their times back: the layer is what a copy without
/// seeding would have made.
pub fn unseed(upper: &Path, seeding: &Seeding) -> io::Result<()> {
    let claimed = seeding
        .seeded
        .claimed
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut touched_parents = std::collections::BTreeMap::new();
    let mut remember_parent = |rel: &str| {
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p).to_string();
        touched_parents.entry(parent.clone()).or_insert_with(|| {
            fs::symlink_metadata(upper.join(&parent))
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec()))
        });
    };
    let mut removed = Vec::new();
    for file in &seeding.files {
        if !claimed.contains(file) {
            remember_parent(file);
            removed.push(upper.join(file));
        }
    }
    // Deepest first, so a directory whose seeded subtree is all gone goes too.
    let mut dirs: Vec<&String> = seeding
        .dirs
        .iter()
        .filter(|d| !claimed.contains(*d))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for path in &removed {
        fs::remove_file(path)?;
    }
    for dir in dirs {
        let path = upper.join(dir);
        let empty = fs::read_dir(&path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if empty {
            remember_parent(dir);
            fs::remove_dir(&path)?;
        }
    }
    for (parent, times) in touched_parents {
        let (Some((secs, nanos)), Ok(dir)) = (times, fs::File::open(upper.join(&parent))) else {
            continue;
        };
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs.max(0) as u64, nanos as u32);
        let _ = dir.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A donor tree several directories wide and deep, with modes, owners and an opaque mark.
    fn donor_tree(dir: &Path) {
        for d in 0..6 {
            for s in 0..3 {
                let sub = dir.join(format!("d{d}/s{s}"));
                fs::create_dir_all(&sub).unwrap();
                fs::write(sub.join("f"), format!("{d}{s}")).unwrap();
            }
        }
        std::os::unix::fs::symlink("f", dir.join("d0/s0/link")).unwrap();
        fs::set_permissions(dir.join("d1"), fs::Permissions::from_mode(0o2750)).unwrap();
        std::os::unix::fs::chown(dir.join("d2"), Some(1234), Some(5678)).unwrap();
        rustix::fs::lsetxattr(
            dir.join("d3"),
            crate::layer::overlay::opaque_xattr(),
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("setting a trusted.* xattr needs root");
    }

    #[test]
    fn mirrors_directories_and_links_files() {
        let work = tempfile::tempdir().unwrap();
        let (donor, upper) = (work.path().join("donor"), work.path().join("upper"));
        fs::create_dir(&upper).unwrap();
        donor_tree(&donor);
        let donor = Donor {
            dir: donor,
            contents: HashMap::new(),
        };
        let seeding = seed(&donor, &upper).unwrap();
        assert_eq!(seeding.files.len(), 18);
        assert_eq!(seeding.dirs.len(), 24);
        for d in 0..6 {
            for s in 0..3 {
                let rel = format!("d{d}/s{s}/f");
                let (a, b) = (
                    fs::metadata(donor.dir.join(&rel)).unwrap(),
                    fs::metadata(upper.join(&rel)).unwrap(),
                );
                assert_eq!(a.ino(), b.ino(), "{rel} is not a hard link");
                assert!(seeding.seeded.inodes.contains(&a.ino()));
            }
        }
        // Symlinks are left to the copy.
        assert!(fs::symlink_metadata(upper.join("d0/s0/link")).is_err());
        let m = |p: &str| fs::symlink_metadata(upper.join(p)).unwrap();
        assert_eq!(m("d1").mode() & 0o7777, 0o2750);
        assert_eq!((m("d2").uid(), m("d2").gid()), (1234, 5678));
        let mut flag = [0u8; 1];
        assert_eq!(
            rustix::fs::lgetxattr(
                upper.join("d3"),
                crate::layer::overlay::opaque_xattr(),
                &mut flag
            )
            .ok(),
            Some(1)
        );
        assert!(rustix::fs::lgetxattr(
            upper.join("d4"),
            crate::layer::overlay::opaque_xattr(),
            &mut flag
        )
        .is_err());
    }

    #[test]
    fn a_failure_is_an_error_not_a_half_answer() {
        let work = tempfile::tempdir().unwrap();
        let (donor, upper) = (work.path().join("donor"), work.path().join("upper"));
        fs::create_dir(&upper).unwrap();
        donor_tree(&donor);
        // Already there in the upper directory: making it fails.
        fs::create_dir(upper.join("d5")).unwrap();
        let donor = Donor {
            dir: donor,
            contents: HashMap::new(),
        };
        assert!(seed(&donor, &upper).is_err());
    }
}
