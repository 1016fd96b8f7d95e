//! Directory snapshots without mounts: the merged view of a stack of layer directories
//! (overlay-style whiteouts and opaque marks) copied into one plain directory, as a writable
//! root filesystem for chroot isolation or for a user namespace that refuses overlayfs.
//!
//! Files are copied (a reflink where the filesystem has them, else `copy_file_range`), never
//! hard-linked: a RUN may rewrite a file in place, and the layer directories must not change.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, Timespec, Timestamps};

/// Copies the merged view of `lowers` (top first) into `dest`, an existing empty directory.
/// `dest` keeps its own mode, owner and times: an overlay's root is its upper directory, never
/// a layer's (a base made from a 0700 temp dir still runs as 0755, and a USER can reach `/`).
pub fn flatten(lowers: &[PathBuf], dest: &Path) -> io::Result<()> {
    for lower in lowers.iter().rev() {
        let mut links = HashMap::new();
        apply_dir(lower, dest, &mut links)?;
    }
    Ok(())
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `dir` carries overlayfs's opaque mark, under either prefix: a state root may hold
/// snapshots made as root (`trusted.`) and in a user namespace (`user.`).
fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| matches!(rustix::fs::lgetxattr(dir, *name, &mut buf), Ok(n) if n > 0 && buf[0] == b'y'))
}

/// Removes whatever is at `path` (a directory with its contents); nothing there is success.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn with_path(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Applies one layer directory `src` onto `dest`: whiteouts delete, opaque directories replace,
/// everything else is copied over what is there.
fn apply_dir(src: &Path, dest: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(src).map_err(with_path(src))? {
        let entry = entry.map_err(with_path(src))?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(with_path(&from))?;
        if is_whiteout(&meta) {
            remove_any(&to).map_err(with_path(&to))?;
            continue;
        }
        if meta.is_dir() {
            let existing = fs::symlink_metadata(&to).ok();
            match existing {
                Some(m) if m.is_dir() && !is_opaque(&from) => {}
                Some(_) => {
                    remove_any(&to).map_err(with_path(&to))?;
                    fs::create_dir(&to).map_err(with_path(&to))?;
                }
                None => fs::create_dir(&to).map_err(with_path(&to))?,
            }
            apply_dir(&from, &to, links)?;
            copy_meta(&from, &to, &meta)?;
            continue;
        }
        remove_any(&to).map_err(with_path(&to))?;
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, &to).map_err(with_path(&to))?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), to.clone());
        }
        copy_node(&from, &to, &meta)?;
    }
    Ok(())
}

/// Copies one non-directory (file, symlink, device, fifo, socket) with its metadata.
pub(super) fn copy_node(from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let ft = meta.file_type();
    if ft.is_file() {
        let mut src = fs::File::open(from).map_err(with_path(from))?;
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(with_path(to))?;
        if rustix::fs::ioctl_ficlone(&dst, &src).is_err() {
            io::copy(&mut src, &mut dst).map_err(with_path(to))?;
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(from).map_err(with_path(from))?;
        std::os::unix::fs::symlink(target, to).map_err(with_path(to))?;
    } else {
        let kind = if ft.is_char_device() {
            FileType::CharacterDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else if ft.is_fifo() {
            FileType::Fifo
        } else {
            FileType::Socket
        };
        rustix::fs::mknodat(
            rustix::fs::CWD,
            to,
            kind,
            Mode::from_raw_mode(0o600),
            meta.rdev(),
        )
        .map_err(|e| with_path(to)(e.into()))?;
    }
    copy_meta(from, to, meta)
}

/// Owner, mode, xattrs (overlayfs's own excepted) and times of `from` onto `to`, in the order
/// that keeps them: chown clears set-ID bits and file capabilities, so it goes first.
pub(super) fn copy_meta(from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(with_path(to))?;
    let symlink = meta.file_type().is_symlink();
    if !symlink {
        rustix::fs::chmod(to, Mode::from_raw_mode(meta.mode() & 0o7777))
            .map_err(|e| with_path(to)(e.into()))?;
    }
    copy_xattrs(from, to)?;
    set_times(to, meta)
}

/// Sets `to`'s access and modification times to `meta`'s (not following a symlink).
pub(super) fn set_times(to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        to,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| with_path(to)(e.into()))
}

fn copy_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(from, &mut names) {
        Ok(n) => n,
        // A filesystem without xattrs has none to copy.
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(with_path(from)(e.into())),
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if crate::layer::overlay::is_overlay_xattr(name) {
            continue;
        }
        let mut value = vec![0u8; 64 * 1024];
        let Ok(len) = rustix::fs::lgetxattr(from, name, &mut value) else {
            continue;
        };
        rustix::fs::lsetxattr(to, name, &value[..len], rustix::fs::XattrFlags::empty())
            .map_err(|e| with_path(to)(io::Error::other(format!("set xattr {name}: {e}"))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_layers_win_whiteouts_delete_and_opaque_dirs_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let (low, up, out) = (
            tmp.path().join("low"),
            tmp.path().join("up"),
            tmp.path().join("out"),
        );
        fs::create_dir_all(low.join("keep")).unwrap();
        fs::create_dir_all(low.join("opq")).unwrap();
        fs::write(low.join("keep/a"), "low a").unwrap();
        fs::write(low.join("keep/b"), "low b").unwrap();
        fs::write(low.join("opq/old"), "old").unwrap();
        fs::write(low.join("gone"), "gone").unwrap();
        fs::create_dir_all(up.join("keep")).unwrap();
        fs::create_dir_all(up.join("opq")).unwrap();
        fs::write(up.join("keep/a"), "up a").unwrap();
        fs::write(up.join("opq/new"), "new").unwrap();
        let xattr = crate::layer::overlay::opaque_xattr();
        rustix::fs::lsetxattr(up.join("opq"), xattr, b"y", rustix::fs::XattrFlags::empty())
            .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            up.join("gone"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        fs::create_dir(&out).unwrap();
        flatten(&[up, low], &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("keep/a")).unwrap(), "up a");
        assert_eq!(fs::read_to_string(out.join("keep/b")).unwrap(), "low b");
        assert_eq!(fs::read_to_string(out.join("opq/new")).unwrap(), "new");
        assert!(!out.join("opq/old").exists());
        assert!(!out.join("gone").exists());
        assert!(!is_opaque(&out.join("opq")), "overlay marks are not copied");
    }

    #[test]
    fn the_root_keeps_its_own_mode_not_a_layers() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let (low, out) = (tmp.path().join("low"), tmp.path().join("out"));
        fs::create_dir_all(low.join("bin")).unwrap();
        // A base image whose tar was made from a `mktemp -d` directory: `./` is 0700.
        fs::set_permissions(&low, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(&out).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
        flatten(&[low], &out).unwrap();
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "a USER other than root could not reach /");
        assert!(out.join("bin").is_dir());
    }
}
