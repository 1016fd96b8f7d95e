//! What a step changed in a directory snapshot, as an overlay-style upper directory, so the one
//! layer writer (`layer::write_overlay_diff`) makes its tar.
//!
//! Before the step, [`TreeIndex::of`] records every entry's inode and change time. After it, an
//! entry is changed when its inode differs (it was replaced) or its ctime, mtime, mode, owner or
//! size moved: the kernel updates ctime on every write, chmod, chown or xattr change, and
//! nothing can set it back, so no content comparison is needed. This mirrors what overlayfs
//! copies up: a touched file is in the layer even when it ends up equal. A deleted entry
//! becomes a whiteout, a directory that replaced what was there an opaque directory.
//!
//! Changed non-directories are hard-linked into the upper directory (the root filesystem is
//! thrown away afterwards, so nothing writes them again); directories are made anew with their
//! metadata.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode};

use super::flatten::{copy_meta, copy_node, set_times};

#[derive(Debug, Clone)]
struct Before {
    ino: u64,
    /// Directories: birth time, since a directory removed and made again may get the same
    /// inode number back, and must then be opaque.
    born: Option<(i64, u32, Option<u64>)>,
    is_dir: bool,
    ctime: (i64, i64),
    mtime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    children: Vec<OsString>,
}

impl Before {
    fn of(meta: &fs::Metadata) -> Before {
        Before {
            ino: meta.ino(),
            born: None,
            is_dir: meta.is_dir(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            children: Vec::new(),
        }
    }

    fn same_object(&self, meta: &fs::Metadata, path: &Path) -> bool {
        self.ino == meta.ino()
            && self.is_dir == meta.is_dir()
            && (!self.is_dir || self.born == birth_time(path))
    }

    /// `ctime` false for the parents of mount targets, whose entries were added and removed
    /// again (their times put back) where a runtime would have mounted.
    fn changed(&self, meta: &fs::Metadata, ctime: bool) -> bool {
        let now = Before::of(meta);
        (ctime && self.ctime != now.ctime)
            || (self.mtime, self.mode, self.uid, self.gid)
                != (now.mtime, now.mode, now.uid, now.gid)
            || (!self.is_dir && self.size != now.size)
    }
}

/// Every entry of a tree, by path relative to its root ("" is the root).
#[derive(Debug, Clone, Default)]
pub struct TreeIndex {
    entries: HashMap<PathBuf, Before>,
}

/// When directory `path` (not followed) was made (statx), and its inode generation where the
/// filesystem has one (`FS_IOC_GETVERSION`: it changes when an inode number is reused, within
/// the clock tick that could give two directories the same birth time).
fn birth_time(path: &Path) -> Option<(i64, u32, Option<u64>)> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let st = statx(
        rustix::fs::CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BTIME,
    )
    .ok()?;
    let generation = generation(path);
    (st.stx_mask & StatxFlags::BTIME.bits() != 0).then_some((
        st.stx_btime.tv_sec,
        st.stx_btime.tv_nsec,
        generation,
    ))
}

fn generation(path: &Path) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut version: libc::c_long = 0;
    // SAFETY: FS_IOC_GETVERSION writes one long through the pointer, which lives on the stack.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_GETVERSION as _, &mut version) };
    (r == 0).then_some(version as u64)
}

fn with_path(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl TreeIndex {
    /// Records the tree under `root`.
    pub fn of(root: &Path) -> io::Result<TreeIndex> {
        let mut index = TreeIndex::default();
        let meta = fs::symlink_metadata(root).map_err(with_path(root))?;
        index.add(root, PathBuf::new(), &meta)?;
        Ok(index)
    }

    fn add(&mut self, root: &Path, rel: PathBuf, meta: &fs::Metadata) -> io::Result<()> {
        let mut before = Before::of(meta);
        if meta.is_dir() {
            let dir = root.join(&rel);
            before.born = birth_time(&dir);
            for entry in fs::read_dir(&dir).map_err(with_path(&dir))? {
                let entry = entry.map_err(with_path(&dir))?;
                let child = rel.join(entry.file_name());
                let path = root.join(&child);
                let m = fs::symlink_metadata(&path).map_err(with_path(&path))?;
                before.children.push(entry.file_name());
                self.add(root, child, &m)?;
            }
        }
        self.entries.insert(rel, before);
        Ok(())
    }
}

/// Where a step had mounts (relative paths): their contents never reach a layer, and they
/// themselves only as new empty directories.
#[derive(Debug, Clone, Copy, Default)]
pub struct MountPoints<'a> {
    /// What every runtime mounts (`dev`, `etc/hosts`, …).
    pub runtime: &'a [PathBuf],
    /// `RUN --mount` targets: chroot isolation puts their parents' times back after the
    /// command, so a change of ctime alone does not count there.
    pub run: &'a [PathBuf],
}

/// What [`diff_into`] found besides the change.
#[derive(Debug, Clone, Default)]
pub struct DiffOutcome {
    /// The directories made in the upper dir (relative paths).
    pub made_dirs: Vec<PathBuf>,
    /// Whether the root is still exactly its parent plus the upper dir: nothing left under a
    /// mount point that the layer leaves out.
    pub clean: bool,
}

/// Writes what changed under `root` since `before` into `upper` (an existing empty directory).
/// `keep_root`: the root lives on (as the next step's), so changed files are copied into
/// `upper` rather than hard-linked (a later step may rewrite them in place).
pub fn diff_into(
    root: &Path,
    before: &TreeIndex,
    upper: &Path,
    mounts: MountPoints<'_>,
    keep_root: bool,
) -> io::Result<DiffOutcome> {
    let mount_points: Vec<PathBuf> = mounts.runtime.iter().chain(mounts.run).cloned().collect();
    let mut d = Differ {
        root,
        before,
        upper,
        mount_points: &mount_points,
        run_mounts: mounts.run,
        made: Vec::new(),
        made_set: HashSet::new(),
        keep_root,
        links: HashMap::new(),
        clean: true,
    };
    d.walk(Path::new(""), false)?;
    // Adding entries moved the directories' times: set them last.
    for rel in d.made.iter().rev() {
        let meta = fs::symlink_metadata(root.join(rel)).map_err(with_path(rel))?;
        set_times(&upper.join(rel), &meta)?;
    }
    Ok(DiffOutcome {
        made_dirs: d.made,
        clean: d.clean,
    })
}

struct Differ<'a> {
    root: &'a Path,
    before: &'a TreeIndex,
    upper: &'a Path,
    mount_points: &'a [PathBuf],
    run_mounts: &'a [PathBuf],
    made: Vec<PathBuf>,
    made_set: HashSet<PathBuf>,
    keep_root: bool,
    /// Upper path of each multiply-linked root inode copied so far, to link the others to.
    links: HashMap<(u64, u64), PathBuf>,
    clean: bool,
}

impl Differ<'_> {
    /// Whether mount point `rel` (or what is under it) is as before the step, or a new empty
    /// directory: else the root holds what no layer has.
    fn untouched(&self, rel: &Path, meta: &fs::Metadata, prev: Option<&Before>) -> bool {
        let path = self.root.join(rel);
        let Some(p) = prev else {
            return meta.is_dir() && fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none());
        };
        if !p.same_object(meta, &path) || p.changed(meta, false) {
            return false;
        }
        if !meta.is_dir() {
            return true;
        }
        let Ok(entries) = fs::read_dir(&path) else {
            return false;
        };
        let mut count = 0;
        for e in entries {
            let Ok(e) = e else { return false };
            count += 1;
            let child = rel.join(e.file_name());
            let (Ok(m), Some(before)) = (
                fs::symlink_metadata(self.root.join(&child)),
                self.before.entries.get(&child),
            ) else {
                return false;
            };
            if !self.untouched(&child, &m, Some(before)) {
                return false;
            }
        }
        count == p.children.len()
    }

    /// Compares directory `rel`'s children; `fresh` when the directory is new (all of it is).
    fn walk(&mut self, rel: &Path, fresh: bool) -> io::Result<()> {
        let dir = self.root.join(rel);
        let mut now: Vec<OsString> = fs::read_dir(&dir)
            .map_err(with_path(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(with_path(&dir))?;
        now.sort();
        for name in &now {
            let child = rel.join(name);
            let path = self.root.join(&child);
            let meta = fs::symlink_metadata(&path).map_err(with_path(&path))?;
            let prev = if fresh {
                None
            } else {
                self.before.entries.get(&child)
            };
            if self.mount_points.contains(&child) {
                if prev.is_none() && meta.is_dir() {
                    self.make_dir(&child, &meta, false)?;
                }
                if !self.untouched(&child, &meta, prev) {
                    self.clean = false;
                }
                continue;
            }
            match prev {
                None if meta.is_dir() => {
                    self.make_dir(&child, &meta, false)?;
                    self.walk(&child, true)?;
                }
                None => self.link(&child)?,
                Some(p) if p.same_object(&meta, &path) => {
                    let holds_mount = self
                        .run_mounts
                        .iter()
                        .any(|m| m != &child && m.starts_with(&child));
                    if p.changed(&meta, !holds_mount) {
                        if meta.is_dir() {
                            self.make_dir(&child, &meta, false)?;
                        } else {
                            self.link(&child)?;
                        }
                    }
                    if meta.is_dir() {
                        self.walk(&child, false)?;
                    }
                }
                Some(_) if meta.is_dir() => {
                    self.make_dir(&child, &meta, true)?;
                    self.walk(&child, true)?;
                }
                Some(_) => self.link(&child)?,
            }
        }
        if fresh {
            return Ok(());
        }
        let Some(prev) = self.before.entries.get(rel) else {
            return Ok(());
        };
        for name in &prev.children {
            let child = rel.join(name);
            if now.binary_search(name).is_ok() {
                continue;
            }
            if self.mount_points.contains(&child) {
                self.clean = false;
            } else {
                self.whiteout(&child)?;
            }
        }
        Ok(())
    }

    /// Makes the upper directory's parents of `rel`, as the root has them.
    fn parents(&mut self, rel: &Path) -> io::Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if parent.as_os_str().is_empty() || self.made_set.contains(parent) {
            return Ok(());
        }
        let path = self.root.join(parent);
        let meta = fs::symlink_metadata(&path).map_err(with_path(&path))?;
        self.make_dir(parent, &meta, false)
    }

    fn make_dir(&mut self, rel: &Path, meta: &fs::Metadata, opaque: bool) -> io::Result<()> {
        if self.made_set.contains(rel) {
            return Ok(());
        }
        self.parents(rel)?;
        let to = self.upper.join(rel);
        fs::create_dir(&to).map_err(with_path(&to))?;
        copy_meta(&self.root.join(rel), &to, meta)?;
        if opaque {
            rustix::fs::lsetxattr(
                &to,
                crate::layer::overlay::opaque_xattr(),
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| with_path(&to)(e.into()))?;
        }
        self.made.push(rel.to_path_buf());
        self.made_set.insert(rel.to_path_buf());
        Ok(())
    }

    /// A changed non-directory into the upper dir: hard-linked when the root is thrown away
    /// (linkat without AT_SYMLINK_FOLLOW links a symlink itself), else copied, hard links
    /// among the copies kept.
    fn link(&mut self, rel: &Path) -> io::Result<()> {
        self.parents(rel)?;
        let (from, to) = (self.root.join(rel), self.upper.join(rel));
        if !self.keep_root {
            return fs::hard_link(&from, &to).map_err(with_path(&to));
        }
        let meta = fs::symlink_metadata(&from).map_err(with_path(&from))?;
        if meta.nlink() > 1 {
            let id = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&id) {
                return fs::hard_link(first, &to).map_err(with_path(&to));
            }
            self.links.insert(id, to.clone());
        }
        copy_node(&from, &to, &meta)
    }

    fn whiteout(&mut self, rel: &Path) -> io::Result<()> {
        self.parents(rel)?;
        let to = self.upper.join(rel);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &to,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(|e| with_path(&to)(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_deletions_and_replaced_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, upper) = (tmp.path().join("root"), tmp.path().join("upper"));
        for d in ["same/deep", "edited", "replaced", "dev"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("same/deep/f"), "f").unwrap();
        fs::write(root.join("edited/f"), "old").unwrap();
        fs::write(root.join("replaced/old"), "x").unwrap();
        fs::write(root.join("gone"), "x").unwrap();
        let before = TreeIndex::of(&root).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(root.join("edited/f"), "new").unwrap();
        fs::remove_file(root.join("gone")).unwrap();
        fs::remove_dir_all(root.join("replaced")).unwrap();
        fs::create_dir(root.join("replaced")).unwrap();
        fs::write(root.join("replaced/new"), "y").unwrap();
        fs::write(root.join("dev/null"), "not a device").unwrap();
        fs::create_dir(&upper).unwrap();
        let dev = [PathBuf::from("dev")];
        let mounts = MountPoints {
            runtime: &dev,
            run: &[],
        };
        diff_into(&root, &before, &upper, mounts, false).unwrap();

        let mut found = Vec::new();
        for e in walkdir(&upper) {
            found.push(e);
        }
        found.sort();
        assert_eq!(
            found,
            ["edited", "edited/f", "gone", "replaced", "replaced/new"]
        );
        assert_eq!(fs::read_to_string(upper.join("edited/f")).unwrap(), "new");
        let m = fs::symlink_metadata(upper.join("gone")).unwrap();
        use std::os::unix::fs::FileTypeExt as _;
        assert!(m.file_type().is_char_device() && m.rdev() == 0);
        let mut buf = [0u8; 1];
        let opaque = crate::layer::overlay::opaque_xattr();
        assert!(rustix::fs::lgetxattr(upper.join("replaced"), opaque, &mut buf).is_ok());
        assert!(rustix::fs::lgetxattr(upper.join("edited"), opaque, &mut buf).is_err());
    }

    /// ext4 hands a removed directory's inode number straight to the next mkdir: that is a new
    /// directory all the same (it failed as a changed one with a whiteout for its old entry).
    #[test]
    fn a_directory_made_again_with_a_reused_inode_is_opaque() {
        let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        for i in 0..20 {
            let (root, upper) = (
                tmp.path().join(format!("r{i}")),
                tmp.path().join(format!("u{i}")),
            );
            fs::create_dir_all(root.join("d")).unwrap();
            fs::write(root.join("d/old"), "x").unwrap();
            let before = TreeIndex::of(&root).unwrap();
            fs::remove_dir_all(root.join("d")).unwrap();
            fs::create_dir(root.join("d")).unwrap();
            fs::create_dir(&upper).unwrap();
            diff_into(&root, &before, &upper, MountPoints::default(), i % 2 == 0).unwrap();
            assert_eq!(walkdir(&upper), ["d"], "round {i}");
            let mut buf = [0u8; 1];
            let opaque = crate::layer::overlay::opaque_xattr();
            assert!(
                rustix::fs::lgetxattr(upper.join("d"), opaque, &mut buf).is_ok(),
                "round {i}"
            );
        }
    }

    fn walkdir(root: &Path) -> Vec<String> {
        fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    go(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        go(root, root, &mut out);
        out
    }
}
