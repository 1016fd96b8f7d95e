//! Paths inside a container's root filesystem, resolved on the host without escaping it
//! (through [`SafeRoot`]), so `..` and absolute symlinks stay inside the root, as they would for
//! a process chrooted there.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, OFlags};
use rustix::io::Errno;

use super::SandboxError;
use crate::oci::{NewDir, SafeRoot};

/// A rootfs directory opened once; paths below are relative to it, absolute or not.
pub struct Root {
    root: SafeRoot,
}

/// Lexically normalised components of `path` (`.` dropped, `..` pops, never above the root).
pub fn components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

impl Root {
    pub fn open(path: &Path) -> Result<Root, SandboxError> {
        let root =
            SafeRoot::open(path).map_err(|e| SandboxError::io("open rootfs", path, e.source))?;
        Ok(Root { root })
    }

    fn host_path(&self, comps: &[&str]) -> PathBuf {
        self.root.host_path(comps.join("/"))
    }

    fn open_at(&self, comps: &[&str], flags: OFlags) -> rustix::io::Result<rustix::fd::OwnedFd> {
        self.root.open_at(comps.join("/"), flags)
    }

    /// Reads a file inside the root (at most `limit` bytes); `None` if it does not exist.
    pub fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, SandboxError> {
        let comps = components(path);
        let fd = match self.open_at(&comps, OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(SandboxError::io("open", &self.host_path(&comps), e.into())),
        };
        let mut buf = Vec::new();
        File::from(fd)
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| SandboxError::io("read", &self.host_path(&comps), e))?;
        Ok(Some(buf))
    }

    /// The type of what `path` names, following symlinks inside the root; `None` if nothing.
    pub fn file_type(&self, path: &str) -> Result<Option<(FileType, u32)>, SandboxError> {
        let comps = components(path);
        match self.open_at(&comps, OFlags::PATH) {
            Ok(fd) => {
                let st = rfs::fstat(&fd)
                    .map_err(|e| SandboxError::io("stat", &self.host_path(&comps), e.into()))?;
                Ok(Some((FileType::from_raw_mode(st.st_mode), st.st_mode)))
            }
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => Ok(None),
            Err(e) => Err(SandboxError::io("stat", &self.host_path(&comps), e.into())),
        }
    }

    /// The paths (as `/a`, `/a/b`, …) that would have to be created for `path` to exist:
    /// everything from its first missing component down.
    pub fn missing(&self, path: &str) -> Result<Vec<String>, SandboxError> {
        let comps = components(path);
        for i in 0..comps.len() {
            match self.open_at(&comps[..=i], OFlags::PATH) {
                Ok(_) => {}
                Err(Errno::NOENT) => {
                    return Ok((i..comps.len())
                        .map(|j| format!("/{}", comps[..=j].join("/")))
                        .collect())
                }
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Ok(Vec::new()),
                Err(e) => {
                    return Err(SandboxError::io(
                        "stat",
                        &self.host_path(&comps[..=i]),
                        e.into(),
                    ))
                }
            }
        }
        Ok(Vec::new())
    }

    /// `mkdir -p` inside the root; directories it creates get mode 0755 and owner `uid:gid`
    /// (as BuildKit does for a missing working directory, and runc for a missing mount point).
    pub fn mkdir_all(&self, path: &str, uid: u32, gid: u32) -> Result<(), SandboxError> {
        let comps = components(path);
        self.root
            .mkdir_all(comps.join("/"), |d: &NewDir<'_>| {
                // 0755 whatever kiln's umask: the mode ends up in the layer.
                rfs::chmodat(
                    d.parent,
                    d.name,
                    rfs::Mode::from_raw_mode(0o755),
                    AtFlags::empty(),
                )
                .map_err(|e| SandboxError::from(self.root.error("chmod", d.rel, e)))?;
                rfs::chownat(
                    d.parent,
                    d.name,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| SandboxError::from(self.root.error("chown", d.rel, e)))
            })
            .map(drop)
    }

    /// Removes `path` if it is an empty directory or an empty regular file (a mount point the
    /// runtime created); anything else is left alone.
    pub fn remove_stub(&self, path: &str) {
        let rel = components(path).join("/");
        let Ok((dir, name)) = self.root.open_parent(&rel) else {
            return;
        };
        let Ok(st) = rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            return;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let _ = rfs::unlinkat(&dir, name, AtFlags::REMOVEDIR);
            }
            FileType::RegularFile if st.st_size == 0 => {
                let _ = rfs::unlinkat(&dir, name, AtFlags::empty());
            }
            _ => {}
        }
    }

    /// Whether `args0` names an executable inside the root, searched like execvp(3) in `path`
    /// (a `PATH` value) when it has no '/', relative to `cwd` when it is relative.
    pub fn find_executable(
        &self,
        arg0: &str,
        path: &str,
        cwd: &str,
    ) -> Result<Option<String>, SandboxError> {
        let candidates: Vec<String> = if arg0.contains('/') {
            if arg0.starts_with('/') {
                vec![arg0.to_string()]
            } else {
                vec![format!("{cwd}/{arg0}")]
            }
        } else {
            path.split(':')
                .map(|d| {
                    let d = if d.is_empty() { cwd } else { d };
                    let d = if d.starts_with('/') {
                        d.to_string()
                    } else {
                        format!("{cwd}/{d}")
                    };
                    format!("{d}/{arg0}")
                })
                .collect()
        };
        for c in candidates {
            if let Some((FileType::RegularFile, mode)) = self.file_type(&c)? {
                if mode & 0o111 != 0 {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(components("/a/./b/../c/"), vec!["a", "c"]);
        assert_eq!(components("../../x"), vec!["x"]);
        assert!(components("/").is_empty());
    }

    #[test]
    fn symlinks_stay_inside() {
        let t = std::env::temp_dir().join(format!("kiln-rootfs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::write(t.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/shadow", t.join("up")).unwrap();
        let r = Root::open(&t).unwrap();
        assert_eq!(
            r.read("/abs", 1 << 20).unwrap().unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        // Would be the host's /etc/shadow if resolved naively.
        assert!(r.read("/up", 1 << 20).unwrap().is_none());
        assert_eq!(r.missing("/etc/x/y").unwrap(), vec!["/etc/x", "/etc/x/y"]);
        assert!(r.missing("/etc/passwd").unwrap().is_empty());
        r.mkdir_all("/work/dir", 0, 0).unwrap();
        assert!(t.join("work/dir").is_dir());
        r.remove_stub("/work/dir");
        assert!(!t.join("work/dir").exists());
        r.remove_stub("/etc/passwd");
        assert!(t.join("etc/passwd").exists());
        std::fs::remove_dir_all(&t).unwrap();
    }
}
