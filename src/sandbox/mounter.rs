//! The seam around mount(2): [`Mounter`] turns [`Mount`] descriptions into mounts, so the bundle
//! logic can be tested with a fake that records calls instead of needing root. Every mount kiln
//! makes goes through it (RUN rootfs, COPY's scratch mounts, the sweep of stale ones).
//!
//! mount(2) takes at most one page (4096 bytes) of options, which an overlay of more than about
//! 40 snapshots (`lowerdir=` of ~100-byte paths, up to 500 of them) exceeds. Such an overlay is
//! made with the new mount API instead, each lower dir given on its own (`lowerdir+`, Linux
//! 6.8); on older kernels its lower dirs are given relative to their common parent, from a
//! thread whose working directory is that parent (as containerd does).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{
    self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags,
    UnmountFlags,
};

use super::SandboxError;
use crate::snapshot::Mount;

/// Mounts and unmounts filesystems.
pub trait Mounter: Send + Sync {
    /// Mounts `m` at `target` (an existing directory).
    fn mount(&self, m: &Mount, target: &Path) -> Result<(), SandboxError>;
    /// Unmounts whatever is mounted at `target` (lazily if it is busy).
    fn unmount(&self, target: &Path) -> Result<(), SandboxError>;
    /// Detaches whatever is mounted at `target` at once (`MNT_DETACH`), busy or not.
    fn detach(&self, target: &Path) -> Result<(), SandboxError>;
}

/// The most option bytes mount(2) reads: one page, its NUL included.
const MOUNT_DATA_MAX: usize = 4095;

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
        // A directory snapshot is bound where a mount is wanted.
        bind: m.kind == "bind" || m.kind == crate::snapshot::DIR_MOUNT,
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
        if p.fstype != "overlay" || p.data.len() <= MOUNT_DATA_MAX {
            return rmount::mount(&m.source, target, p.fstype.as_str(), flags, data.as_c_str())
                .map_err(fail);
        }
        match mount_overlay_fsconfig(&p, target) {
            // No new mount API, or an overlayfs without `lowerdir+` (before Linux 6.8).
            Err(Errno::NOSYS) | Err(Errno::INVAL) => {}
            other => return other.map_err(fail),
        }
        mount_overlay_relative(&m.source, target, flags, &p.data).map_err(fail)
    }

    fn detach(&self, target: &Path) -> Result<(), SandboxError> {
        rmount::unmount(target, UnmountFlags::DETACH).map_err(|e| SandboxError::Unmount {
            target: target.to_path_buf(),
            source: e.into(),
        })
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

/// One `fsconfig` call: a key with a value, or a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsParam {
    String(String, String),
    Flag(String),
}

/// The `fsconfig` calls for an overlay's mount data: each `lowerdir=` entry becomes its own
/// `lowerdir+` (so no value is longer than one path), `ro` and the other options as they are.
pub fn fsconfig_params(p: &MountPlan) -> Vec<FsParam> {
    let mut out = Vec::new();
    for opt in p.data.split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("lowerdir", dirs)) => out.extend(
                dirs.split(':')
                    .map(|d| FsParam::String("lowerdir+".into(), d.into())),
            ),
            Some((k, v)) => out.push(FsParam::String(k.into(), v.into())),
            None => out.push(FsParam::Flag(opt.into())),
        }
    }
    if p.readonly {
        out.push(FsParam::Flag("ro".into()));
    }
    for (flag, name) in [
        (MountFlags::SYNCHRONOUS, "sync"),
        (MountFlags::DIRSYNC, "dirsync"),
    ] {
        if p.flags.contains(flag) {
            out.push(FsParam::Flag(name.into()));
        }
    }
    out
}

/// The per-mount attributes of `p` for `fsmount`.
fn mount_attrs(p: &MountPlan) -> MountAttrFlags {
    let mut attrs = MountAttrFlags::empty();
    for (flag, attr) in [
        (MountFlags::NOSUID, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (MountFlags::NODEV, MountAttrFlags::MOUNT_ATTR_NODEV),
        (MountFlags::NOEXEC, MountAttrFlags::MOUNT_ATTR_NOEXEC),
        (MountFlags::NOATIME, MountAttrFlags::MOUNT_ATTR_NOATIME),
        (
            MountFlags::STRICTATIME,
            MountAttrFlags::MOUNT_ATTR_STRICTATIME,
        ),
        (
            MountFlags::NODIRATIME,
            MountAttrFlags::MOUNT_ATTR_NODIRATIME,
        ),
    ] {
        if p.flags.contains(flag) {
            attrs |= attr;
        }
    }
    if p.readonly {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    attrs
}

/// An overlay through fsopen/fsconfig/fsmount/move_mount, which has no limit on the options
/// as a whole (each value is at most 255 bytes).
fn mount_overlay_fsconfig(p: &MountPlan, target: &Path) -> rustix::io::Result<()> {
    let fs = rmount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for param in fsconfig_params(p) {
        match &param {
            FsParam::String(k, v) => rmount::fsconfig_set_string(&fs, k.as_str(), v.as_str())?,
            FsParam::Flag(k) => rmount::fsconfig_set_flag(&fs, k.as_str())?,
        }
    }
    rmount::fsconfig_create(&fs)?;
    let mnt = rmount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, mount_attrs(p))?;
    rmount::move_mount(
        &mnt,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// `data` with its `lowerdir=` entries relative to their deepest common directory, and that
/// directory; `None` if a path in `data` is relative or the lower dirs have no common directory
/// but `/`.
pub fn relative_lowerdirs(data: &str) -> Option<(PathBuf, String)> {
    let opts: Vec<&str> = data.split(',').collect();
    let relative_dir = |o: &&str| {
        o.strip_prefix("upperdir=")
            .or_else(|| o.strip_prefix("workdir="))
            .is_some_and(|d| !d.starts_with('/'))
    };
    if opts.iter().any(relative_dir) {
        return None;
    }
    let lower = opts.iter().find_map(|o| o.strip_prefix("lowerdir="))?;
    let dirs: Vec<&Path> = lower.split(':').map(Path::new).collect();
    if !dirs.iter().all(|d| d.is_absolute()) {
        return None;
    }
    // The common ancestor of the parents: a lower dir itself is never made `.`.
    let mut common = dirs[0].parent()?.to_path_buf();
    for d in &dirs[1..] {
        while !d.starts_with(&common) || d == &common {
            common = common.parent()?.to_path_buf();
        }
    }
    // `/` has no parent: lower dirs in different top-level directories have nothing to share.
    common.parent()?;
    let rel: Vec<String> = dirs
        .iter()
        .map(|d| d.strip_prefix(&common).map(|r| r.display().to_string()))
        .collect::<Result<_, _>>()
        .ok()?;
    let rewritten: Vec<String> = opts
        .iter()
        .map(|o| match o.strip_prefix("lowerdir=") {
            Some(_) => format!("lowerdir={}", rel.join(":")),
            None => o.to_string(),
        })
        .collect();
    Some((common, rewritten.join(",")))
}

/// An overlay whose lower dirs are given relative to their common parent, by mount(2) from a
/// thread of its own whose working directory is that parent: the paths resolve in the mounting
/// thread's working directory, and no other thread's changes.
fn mount_overlay_relative(
    source: &Path,
    target: &Path,
    flags: MountFlags,
    data: &str,
) -> rustix::io::Result<()> {
    let Some((dir, data)) = relative_lowerdirs(data) else {
        return Err(Errno::TOOBIG);
    };
    if data.len() > MOUNT_DATA_MAX {
        return Err(Errno::TOOBIG);
    }
    let data = CString::new(data).map_err(|_| Errno::INVAL)?;
    // The target must not move with the working directory.
    let target = std::path::absolute(target).map_err(|_| Errno::INVAL)?;
    let dir = rustix::fs::open(
        &dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: CLONE_FS only gives this thread its own working directory, root and
            // umask; nothing else in this process reads this thread's, and it ends right after.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS)? };
            rustix::process::fchdir(&dir)?;
            rmount::mount(source, &target, "overlay", flags, data.as_c_str())
        })
        .join()
        .unwrap_or(Err(Errno::IO))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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

    fn long_overlay(lowers: usize) -> (tempfile::TempDir, Mount) {
        let t = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        for i in (0..lowers).rev() {
            let d = t.path().join(format!("snapshots/{i:064x}/fs"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(format!("layer-{i}")), "").unwrap();
            fs::write(d.join("top"), i.to_string()).unwrap();
            dirs.push(d.display().to_string());
        }
        for d in ["upper", "work", "merged"] {
            fs::create_dir(t.path().join(d)).unwrap();
        }
        let m = Mount {
            kind: "overlay".into(),
            source: PathBuf::from("overlay"),
            options: vec![
                format!("lowerdir={}", dirs.join(":")),
                format!("upperdir={}", t.path().join("upper").display()),
                format!("workdir={}", t.path().join("work").display()),
                "nodev".into(),
            ],
        };
        (t, m)
    }

    #[test]
    fn long_overlay_options_become_one_fsconfig_call_per_lower_dir() {
        let m = Mount {
            kind: "overlay".into(),
            source: PathBuf::from("overlay"),
            options: vec![
                "lowerdir=/s/a/fs:/s/b/fs".into(),
                "upperdir=/u".into(),
                "index=off".into(),
                "userxattr".into(),
                "ro".into(),
                "nodev".into(),
                "sync".into(),
            ],
        };
        let p = plan(&m);
        let s = |k: &str, v: &str| FsParam::String(k.into(), v.into());
        assert_eq!(
            fsconfig_params(&p),
            [
                s("lowerdir+", "/s/a/fs"),
                s("lowerdir+", "/s/b/fs"),
                s("upperdir", "/u"),
                s("index", "off"),
                FsParam::Flag("userxattr".into()),
                FsParam::Flag("ro".into()),
                FsParam::Flag("sync".into()),
            ]
        );
        assert_eq!(
            mount_attrs(&p),
            MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_RDONLY
        );
    }

    #[test]
    fn lower_dirs_relative_to_their_common_parent() {
        assert_eq!(
            relative_lowerdirs(
                "lowerdir=/r/snap/a/fs:/r/snap/b/fs,upperdir=/r/act/u/fs,workdir=/w"
            ),
            Some((
                PathBuf::from("/r/snap"),
                "lowerdir=a/fs:b/fs,upperdir=/r/act/u/fs,workdir=/w".to_string()
            ))
        );
        // One lower dir inside another: the common directory is above both.
        assert_eq!(
            relative_lowerdirs("lowerdir=/r/a:/r/a/b"),
            Some((PathBuf::from("/r"), "lowerdir=a:a/b".to_string()))
        );
        assert_eq!(relative_lowerdirs("lowerdir=/a/fs:/b/fs"), None);
        assert_eq!(relative_lowerdirs("lowerdir=a/fs:/b/fs"), None);
        assert_eq!(relative_lowerdirs("lowerdir=/r/a:/r/b,upperdir=u"), None);
        assert_eq!(relative_lowerdirs("upperdir=/u"), None);
    }

    /// Both ways past the page limit, on this kernel (needs root; skipped without).
    #[test]
    fn long_overlays_mount_by_fsconfig_and_by_relative_lower_dirs() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: mounting an overlay needs root");
            return;
        }
        for relative in [false, true] {
            // 45 lower dirs: ~4.6 kB of options, ~3 kB relative.
            let (t, m) = long_overlay(45);
            let p = plan(&m);
            assert!(p.data.len() > MOUNT_DATA_MAX);
            let target = t.path().join("merged");
            if relative {
                mount_overlay_relative(&m.source, &target, p.flags, &p.data).unwrap();
            } else {
                match mount_overlay_fsconfig(&p, &target) {
                    Err(Errno::NOSYS) | Err(Errno::INVAL) => {
                        eprintln!("SKIPPED: this kernel has no overlay lowerdir+");
                        continue;
                    }
                    other => other.unwrap(),
                }
            }
            assert_eq!(fs::read_to_string(target.join("top")).unwrap(), "44");
            assert!(target.join("layer-0").exists());
            fs::write(target.join("new"), "x").unwrap();
            SystemMounter.unmount(&target).unwrap();
            assert!(t.path().join("upper/new").exists());
            assert!(!target.join("top").exists());
        }
        // Too many for relative paths to fit: a clear E2BIG, not a truncated mount.
        let (t, m) = long_overlay(120);
        let p = plan(&m);
        let e = mount_overlay_relative(&m.source, &t.path().join("merged"), p.flags, &p.data);
        assert_eq!(e, Err(Errno::TOOBIG));
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
