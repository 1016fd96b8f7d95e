//! `RUN --mount` without mounts, for chroot isolation: a cache directory is moved into the root
//! for the command and back (one rename each way), a bind or secret is copied in, a tmpfs is an
//! empty directory. Whatever was at the target is moved aside and put back, parents made for it
//! are removed again and the times of the directories touched are restored, so the tree differ
//! (which leaves mount targets out, and ignores ctime alone on their parents) sees only what the
//! command did, as with real mounts.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::{rootfs, ExtraMount, ExtraMountKind, SandboxError};

enum Undo {
    /// Move the cache directory at `at` back to `home`.
    MoveBack {
        at: PathBuf,
        home: PathBuf,
    },
    Remove(PathBuf),
    /// Put what was at `at` back from `aside`.
    Restore {
        aside: PathBuf,
        at: PathBuf,
    },
    RemoveDir(PathBuf),
    /// Set `at`'s access and modification times back to `meta`'s.
    Times {
        at: PathBuf,
        meta: fs::Metadata,
    },
}

/// What was done to put the mounts in place; undone by [`Placed::undo`] or on drop.
pub struct Placed {
    /// The root the command ran in: it may have put symlinks there, and undoing runs as
    /// kiln on the host, where they would resolve.
    root: PathBuf,
    undo: Vec<Undo>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |e| SandboxError::io(op, path, e)
}

impl Placed {
    pub fn in_root(root: &Path) -> Placed {
        Placed {
            root: root.to_path_buf(),
            undo: Vec::new(),
        }
    }

    /// Records `dir`'s times, to restore them after entries were added to it or removed.
    pub fn keep_times(&mut self, dir: &Path) {
        if let Ok(meta) = fs::symlink_metadata(dir) {
            self.undo.push(Undo::Times {
                at: dir.to_path_buf(),
                meta,
            });
        }
    }

    /// Writes `bytes` to the new file `path` (removed afterwards). The parent's times are not
    /// put back: an OCI runtime's stub leaves its parent changed the same way.
    pub fn write_file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), SandboxError> {
        fs::write(path, bytes).map_err(io("write", path))?;
        self.undo.push(Undo::Remove(path.to_path_buf()));
        Ok(())
    }

    /// Records a node made at `path`, to remove it afterwards.
    pub fn made(&mut self, path: &Path) {
        self.undo.push(Undo::Remove(path.to_path_buf()));
    }

    /// Puts each of `mounts` in place under the root `dir`.
    pub fn mounts(&mut self, dir: &Path, mounts: &[ExtraMount]) -> Result<(), SandboxError> {
        for (i, m) in mounts.iter().enumerate() {
            let at = self.target(dir, &m.target)?;
            if fs::symlink_metadata(&at).is_ok() {
                let aside = dir.with_file_name(format!("mount-aside-{i}"));
                fs::rename(&at, &aside).map_err(io("move aside", &at))?;
                self.undo.push(Undo::Restore {
                    aside,
                    at: at.clone(),
                });
            }
            match &m.kind {
                ExtraMountKind::Cache { source, .. } => {
                    fs::rename(source, &at).map_err(|e| {
                        let e = if e.raw_os_error() == Some(libc::EXDEV) {
                            io::Error::other(format!(
                                "the cache directory must be on the state root's filesystem: {e}"
                            ))
                        } else {
                            e
                        };
                        SandboxError::io("move the cache into the root", source, e)
                    })?;
                    self.undo.push(Undo::MoveBack {
                        at,
                        home: source.clone(),
                    });
                }
                ExtraMountKind::Bind { source, .. } => {
                    self.undo.push(Undo::Remove(at.clone()));
                    copy_in(source, &at)?;
                }
                ExtraMountKind::Tmpfs { mode, .. } => {
                    fs::create_dir(&at).map_err(io("create", &at))?;
                    self.undo.push(Undo::Remove(at.clone()));
                    fs::set_permissions(&at, fs::Permissions::from_mode(mode.unwrap_or(0o1777)))
                        .map_err(io("chmod", &at))?;
                }
            }
        }
        Ok(())
    }

    /// The host path of `target` in `dir`, its missing parents made (root-owned, 0755, removed
    /// afterwards); a symlink on the way is refused, since here it would resolve on the host.
    fn target(&mut self, dir: &Path, target: &str) -> Result<PathBuf, SandboxError> {
        let comps = rootfs::components(target);
        let Some((last, parents)) = comps.split_last() else {
            return Err(SandboxError::ChrootMountTarget {
                target: target.to_string(),
                why: "it is the root",
            });
        };
        let mut at = dir.to_path_buf();
        for c in parents {
            let next = at.join(c);
            match fs::symlink_metadata(&next) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(SandboxError::ChrootMountTarget {
                        target: target.to_string(),
                        why: "a symlink is on its path",
                    })
                }
                Ok(_) => {
                    return Err(SandboxError::ChrootMountTarget {
                        target: target.to_string(),
                        why: "a file is on its path",
                    })
                }
                Err(_) => {
                    self.keep_times(&at);
                    fs::create_dir(&next).map_err(io("create", &next))?;
                    self.undo.push(Undo::RemoveDir(next.clone()));
                }
            }
            at = next;
        }
        self.keep_times(&at);
        Ok(at.join(last))
    }

    /// Undoes everything, in reverse; the first failure is returned after trying the rest.
    pub fn undo(mut self) -> Result<(), SandboxError> {
        let mut first = None;
        while let Some(step) = self.undo.pop() {
            if let Err(e) = undo_one(&self.root, step) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        while let Some(step) = self.undo.pop() {
            let _ = undo_one(&self.root, step);
        }
    }
}

/// Whether every directory between `root` and `at` (not `at` itself) is still no symlink.
fn reached_without_symlinks(root: &Path, at: &Path) -> bool {
    let Ok(rel) = at.strip_prefix(root) else {
        return true;
    };
    let mut path = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        path.push(c);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return false;
        }
    }
    true
}

fn undo_one(root: &Path, step: Undo) -> Result<(), SandboxError> {
    let at = match &step {
        Undo::MoveBack { at, .. }
        | Undo::Remove(at)
        | Undo::Restore { at, .. }
        | Undo::RemoveDir(at)
        | Undo::Times { at, .. } => at,
    };
    // The command may have replaced a directory on the way with a symlink to a host path.
    if !reached_without_symlinks(root, at) {
        return Err(SandboxError::ChrootMountSymlinked { path: at.clone() });
    }
    match step {
        Undo::MoveBack { at, home } => fs::rename(&at, &home).map_err(io("move back", &at)),
        Undo::Remove(at) => crate::snapshot::remove_any(&at).map_err(io("remove", &at)),
        Undo::Restore { aside, at } => fs::rename(&aside, &at).map_err(io("put back", &at)),
        Undo::RemoveDir(at) => fs::remove_dir(&at).map_err(io("remove", &at)),
        Undo::Times { at, meta } => {
            let times = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: meta.atime(),
                    tv_nsec: meta.atime_nsec() as _,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: meta.mtime(),
                    tv_nsec: meta.mtime_nsec() as _,
                },
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &at,
                &times,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| SandboxError::io("restore the times of", &at, e.into()))
        }
    }
}

/// A bind's source copied to `at`: a file with its mode and owner, a directory tree with every
/// attribute (the layer-directory copy, which has no whiteouts to meet here).
fn copy_in(source: &Path, at: &Path) -> Result<(), SandboxError> {
    let meta = fs::metadata(source).map_err(io("stat", source))?;
    if meta.is_dir() {
        fs::create_dir(at).map_err(io("create", at))?;
        crate::snapshot::flatten(&[source.to_path_buf()], at).map_err(io("copy", source))
    } else {
        fs::copy(source, at).map_err(io("copy", source))?;
        std::os::unix::fs::chown(at, Some(meta.uid()), Some(meta.gid()))
            .map_err(io("chown", at))?;
        fs::set_permissions(at, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io("chmod", at))
    }
}
