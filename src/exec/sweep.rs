//! What a kiln process killed with SIGKILL leaves behind, cleared by the next build: overlay
//! mounts under the state root, containers and bundles of RUN steps, scratch directories and
//! writable snapshots. Everything kiln creates for a build carries its process ID in its name
//! (`run-<pid>-<n>`, `kiln-<pid>-<n>-<nanos>`), so only what belongs to dead processes is touched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::sandbox::{Mounter, Runtime, SystemMounter};
use crate::snapshot::Snapshotter;

/// The owning process of a name like `copy-123-4` or `kiln-123-4-0badc0de`.
fn owner_pid(name: &str) -> Option<u32> {
    name.split('-').nth(1)?.parse().ok()
}

fn is_dead(pid: u32) -> bool {
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

fn dead_owner(name: &str) -> bool {
    owner_pid(name).is_some_and(is_dead)
}

/// Mount points from /proc/self/mountinfo (octal escapes decoded).
fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            let mut out = Vec::new();
            let b = p.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 3 < b.len() {
                    if let Ok(n) = u8::from_str_radix(&p[i + 1..i + 4], 8) {
                        out.push(n);
                        i += 4;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            PathBuf::from(String::from_utf8_lossy(&out).to_string())
        })
        .collect()
}

/// Whether `path` lies under `dir` inside a directory owned by a dead process.
fn under_dead_owner(path: &Path, dir: &Path) -> bool {
    path.strip_prefix(dir).is_ok_and(|rest| {
        rest.components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .is_some_and(dead_owner)
    })
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub unmounted: usize,
    pub containers: usize,
    pub removed: usize,
}

/// Clears what dead kiln processes left under `root`. Best effort: every failure is skipped
/// (the next sweep tries again); nothing a live build uses is touched.
pub fn sweep_stale(root: &Path, snapshots: &Snapshotter, runtime: Option<&Runtime>) -> SweepReport {
    let mut report = SweepReport::default();
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let scratch = root.join("tmp");
    let bundles = root.join("bundles");

    // Containers first (their processes hold the mounts), then mounts deepest first.
    if let Ok(entries) = fs::read_dir(&bundles) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !dead_owner(&name) {
                continue;
            }
            if let Some(pid) = fs::read_to_string(e.path().join("pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            if let Some(rt) = runtime {
                let _ = rt
                    .command()
                    .args(["delete", "--force", &name])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            report.containers += 1;
        }
    }
    let mut stale: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| under_dead_owner(m, &scratch) || under_dead_owner(m, &bundles))
        .collect();
    stale.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in stale {
        if SystemMounter.detach(&m).is_ok() {
            report.unmounted += 1;
        }
    }
    for dir in [&scratch, &bundles] {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if dead_owner(&e.file_name().to_string_lossy())
                    && fs::remove_dir_all(e.path()).is_ok()
                {
                    report.removed += 1;
                }
            }
        }
    }
    if let Ok(keys) = snapshots.active_keys() {
        for key in keys.iter().filter(|k| dead_owner(k)) {
            if snapshots.remove_active(key).is_ok() {
                report.removed += 1;
            }
        }
    }
    let _ = snapshots.cleanup_stale();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_dead_processes_are_stale() {
        let me = std::process::id();
        assert!(!dead_owner(&format!("run-{me}-3")));
        assert!(!dead_owner("not-a-pid"));
        assert!(!dead_owner("plain"));
        // PID 0x7ffffff0 does not exist on Linux (pid_max ≤ 2^22).
        assert!(dead_owner("copy-2147483632-1"));
        assert!(dead_owner("kiln-2147483632-1-0badc0de"));
        let root = Path::new("/r/tmp");
        assert!(under_dead_owner(
            Path::new("/r/tmp/run-2147483632-1/merged"),
            root
        ));
        assert!(!under_dead_owner(
            Path::new(&format!("/r/tmp/run-{me}-1/merged")),
            root
        ));
        assert!(!under_dead_owner(
            Path::new("/elsewhere/run-2147483632-1"),
            root
        ));
    }
}
