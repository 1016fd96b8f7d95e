//! Mounting a snapshot's mount description somewhere, for file operations (COPY, WORKDIR) done
//! by kiln itself rather than in the sandbox. The mount is undone when the guard drops.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::snapshot::Mount;

use super::error::BuildError;

pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
}

impl MountGuard {
    /// Mounts `mounts` (one overlay or bind, as snapshots describe them) at `target`.
    pub fn mount(mounts: &[Mount], target: &Path) -> Result<MountGuard, BuildError> {
        let [m] = mounts else {
            return Err(BuildError::Invalid(format!(
                "expected one mount for a snapshot, got {}",
                mounts.len()
            )));
        };
        std::fs::create_dir_all(target).map_err(BuildError::io("create", target))?;
        let mut cmd = Command::new("mount");
        if m.kind == "bind" {
            cmd.arg("--bind");
            let ro = m.options.iter().any(|o| o == "ro");
            cmd.arg(&m.source).arg(target);
            run_mount(&mut cmd, target)?;
            if ro {
                let mut remount = Command::new("mount");
                remount.args(["-o", "remount,bind,ro"]).arg(target);
                run_mount(&mut remount, target)?;
            }
        } else {
            cmd.args(["-t", &m.kind, "-o", &m.options_string()])
                .arg(&m.source)
                .arg(target);
            run_mount(&mut cmd, target)?;
        }
        Ok(MountGuard {
            target: target.to_path_buf(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    pub fn unmount(mut self) -> Result<(), BuildError> {
        self.mounted = false;
        unmount(&self.target)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = unmount(&self.target);
        }
    }
}

fn run_mount(cmd: &mut Command, target: &Path) -> Result<(), BuildError> {
    let out = cmd
        .output()
        .map_err(BuildError::io("run mount for", target))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BuildError::Invalid(format!(
            "cannot mount {}: {} (kiln needs root and overlayfs to build)",
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn unmount(target: &Path) -> Result<(), BuildError> {
    let out = Command::new("umount")
        .arg(target)
        .output()
        .map_err(BuildError::io("run umount for", target))?;
    if out.status.success() {
        return Ok(());
    }
    // Something still holds it: detach lazily so the build can go on.
    let lazy = Command::new("umount")
        .arg("-l")
        .arg(target)
        .output()
        .map_err(BuildError::io("run umount -l for", target))?;
    if lazy.status.success() {
        Ok(())
    } else {
        Err(BuildError::Invalid(format!(
            "cannot unmount {}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
