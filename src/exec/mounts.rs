//! Mounting a snapshot's mount description somewhere, for file operations (COPY, WORKDIR) done
//! by kiln itself rather than in the sandbox. The mount is undone when the guard drops. Mounts
//! are made through the sandbox's [`Mounter`], the one seam around mount(2).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sandbox::{Mounter, SystemMounter};
use crate::snapshot::Mount;

use super::error::BuildError;

pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
    mounter: Arc<dyn Mounter>,
}

impl MountGuard {
    /// Mounts `mounts` (one overlay or bind, as snapshots describe them) at `target`.
    pub fn mount(mounts: &[Mount], target: &Path) -> Result<MountGuard, BuildError> {
        MountGuard::mount_with(Arc::new(SystemMounter), mounts, target)
    }

    /// [`MountGuard::mount`] through `mounter`.
    pub fn mount_with(
        mounter: Arc<dyn Mounter>,
        mounts: &[Mount],
        target: &Path,
    ) -> Result<MountGuard, BuildError> {
        let [m] = mounts else {
            return Err(BuildError::SnapshotMounts(mounts.len()));
        };
        // A directory snapshot is used where it is: no mount (chroot isolation has none).
        if m.kind == crate::snapshot::DIR_MOUNT {
            return Ok(MountGuard {
                target: m.source.clone(),
                mounted: false,
                mounter,
            });
        }
        std::fs::create_dir_all(target).map_err(BuildError::io("create", target))?;
        mounter
            .mount(m, target)
            .map_err(|e| BuildError::Mount(Box::new(e)))?;
        Ok(MountGuard {
            target: target.to_path_buf(),
            mounted: true,
            mounter,
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts, lazily (`MNT_DETACH`) if something still holds the mount, so the build can go on.
    pub fn unmount(mut self) -> Result<(), BuildError> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        self.mounter.unmount(&self.target).map_err(BuildError::from)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.mounter.unmount(&self.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxError;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn push(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Mounter for Recorder {
        fn mount(&self, m: &Mount, target: &Path) -> Result<(), SandboxError> {
            self.push(format!("mount {} {}", m.kind, target.display()));
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), SandboxError> {
            self.push(format!("unmount {}", target.display()));
            Ok(())
        }
        fn detach(&self, target: &Path) -> Result<(), SandboxError> {
            self.push(format!("detach {}", target.display()));
            Ok(())
        }
    }

    fn overlay() -> Mount {
        Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=/l".into()],
        }
    }

    #[test]
    fn mounts_through_the_mounter_and_unmounts_once() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("a/merged");
        let rec = Arc::new(Recorder::default());
        let guard = MountGuard::mount_with(rec.clone(), &[overlay()], &target).unwrap();
        assert!(target.is_dir());
        assert_eq!(guard.path(), target);
        guard.unmount().unwrap();
        let dropped = MountGuard::mount_with(rec.clone(), &[overlay()], &target).unwrap();
        drop(dropped);
        let t = target.display();
        assert_eq!(
            rec.calls(),
            [
                format!("mount overlay {t}"),
                format!("unmount {t}"),
                format!("mount overlay {t}"),
                format!("unmount {t}"),
            ]
        );
    }

    #[test]
    fn one_mount_per_snapshot() {
        let rec = Arc::new(Recorder::default());
        let e = MountGuard::mount_with(rec.clone(), &[], Path::new("/nonexistent")).err();
        assert!(matches!(e, Some(BuildError::SnapshotMounts(0))));
        assert!(rec.calls().is_empty());
    }
}
