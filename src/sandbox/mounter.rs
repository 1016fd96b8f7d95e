//! The seam around mount(2): [`Mounter`] turns [`Mount`] descriptions into mounts, so the bundle
//! logic can be tested with a fake that records calls instead of needing root.

use std::ffi::CString;
use std::path::Path;

use rustix::mount::{self as rmount, MountFlags, UnmountFlags};

use super::SandboxError;
use crate::snapshot::Mount;

/// Mounts and unmounts filesystems.
pub trait Mounter: Send + Sync {
    /// Mounts `m` at `target` (an existing directory).
    fn mount(&self, m: &Mount, target: &Path) -> Result<(), SandboxError>;
    /// Unmounts whatever is mounted at `target` (lazily if it is busy).
    fn unmount(&self, target: &Path) -> Result<(), SandboxError>;
}

/// The real thing: mount(2) through rustix.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemMounter;

/// How a [`Mount`] is made with mount(2): flags, and the options the kernel should see as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub fstype: String,
    pub bind: bool,
    pub recursive: bool,
    pub readonly: bool,
    pub flags: MountFlags,
    /// Filesystem-specific options (overlay's `lowerdir=…`), joined by ','.
    pub data: String,
}

/// Splits a [`Mount`]'s options into mount flags and filesystem data, like containerd's
/// `parseMountOptions`.
pub fn plan(m: &Mount) -> MountPlan {
    let mut p = MountPlan {
        fstype: m.kind.clone(),
        bind: m.kind == "bind",
        recursive: false,
        readonly: false,
        flags: MountFlags::empty(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "bind" => p.bind = true,
            "rbind" => {
                p.bind = true;
                p.recursive = true;
            }
            "ro" => p.readonly = true,
            "rw" => p.readonly = false,
            "nosuid" => p.flags |= MountFlags::NOSUID,
            "nodev" => p.flags |= MountFlags::NODEV,
            "noexec" => p.flags |= MountFlags::NOEXEC,
            "noatime" => p.flags |= MountFlags::NOATIME,
            "nodiratime" => p.flags |= MountFlags::NODIRATIME,
            "relatime" => p.flags |= MountFlags::RELATIME,
            "strictatime" => p.flags |= MountFlags::STRICTATIME,
            "sync" => p.flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => p.flags |= MountFlags::DIRSYNC,
            "suid" | "dev" | "exec" | "atime" | "diratime" | "async" | "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    p.data = data.join(",");
    p
}

impl Mounter for SystemMounter {
    fn mount(&self, m: &Mount, target: &Path) -> Result<(), SandboxError> {
        let p = plan(m);
        let fail = |source: rustix::io::Errno| SandboxError::Mount {
            kind: m.kind.clone(),
            source_path: m.source.clone(),
            target: target.to_path_buf(),
            options: m.options_string(),
            source: source.into(),
        };
        if p.bind {
            if p.recursive {
                rmount::mount_bind_recursive(&m.source, target).map_err(fail)?;
            } else {
                rmount::mount_bind(&m.source, target).map_err(fail)?;
            }
            let mut flags = p.flags;
            if p.readonly {
                flags |= MountFlags::RDONLY;
            }
            if !flags.is_empty() {
                if let Err(e) = rmount::mount_remount(target, flags | MountFlags::BIND, "") {
                    let _ = rmount::unmount(target, UnmountFlags::DETACH);
                    return Err(fail(e));
                }
            }
            return Ok(());
        }
        let data = CString::new(p.data.clone()).map_err(|_| SandboxError::Mount {
            kind: m.kind.clone(),
            source_path: m.source.clone(),
            target: target.to_path_buf(),
            options: m.options_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in options"),
        })?;
        let mut flags = p.flags;
        if p.readonly {
            flags |= MountFlags::RDONLY;
        }
        rmount::mount(&m.source, target, p.fstype.as_str(), flags, data.as_c_str()).map_err(fail)
    }

    fn unmount(&self, target: &Path) -> Result<(), SandboxError> {
        match rmount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                rmount::unmount(target, UnmountFlags::DETACH).map_err(|e| SandboxError::Unmount {
                    target: target.to_path_buf(),
                    source: e.into(),
                })
            }
            Err(e) => Err(SandboxError::Unmount {
                target: target.to_path_buf(),
                source: e.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn overlay_options_are_data() {
        let m = Mount {
            kind: "overlay".into(),
            source: PathBuf::from("overlay"),
            options: vec![
                "lowerdir=/a:/b".into(),
                "upperdir=/u".into(),
                "workdir=/w".into(),
                "nosuid".into(),
            ],
        };
        let p = plan(&m);
        assert!(!p.bind);
        assert_eq!(p.data, "lowerdir=/a:/b,upperdir=/u,workdir=/w");
        assert_eq!(p.flags, MountFlags::NOSUID);
    }

    #[test]
    fn rbind_ro() {
        let m = Mount {
            kind: "bind".into(),
            source: PathBuf::from("/x"),
            options: vec!["rbind".into(), "ro".into()],
        };
        let p = plan(&m);
        assert!(p.bind && p.recursive && p.readonly);
        assert_eq!(p.data, "");
    }
}
