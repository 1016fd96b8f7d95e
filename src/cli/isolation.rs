//! `--isolation auto|oci|rootless|chroot` (`KILN_ISOLATION`): how RUN steps are confined and
//! snapshots are made, probed once per command; a one-line notice says what was chosen when
//! something is given up.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context as _};

use crate::sandbox::{chroot, userns, Runtime, Sandbox};
use crate::snapshot::Snapshotter;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Requested {
    /// The strongest this environment allows: oci as root with mounts, else rootless, else chroot.
    #[default]
    Auto,
    /// An OCI runtime (crun/runc) over kernel overlay snapshots, as real root.
    Oci,
    /// An OCI runtime in kiln's own user namespace (an ordinary user, or root without mounts).
    Rootless,
    /// No namespace, no mount: chroot(2) into directory snapshots (unprivileged containers).
    Chroot,
}

/// The flag, else `$KILN_ISOLATION`, else auto.
pub fn requested(flag: Option<Requested>) -> anyhow::Result<Requested> {
    if let Some(r) = flag {
        return Ok(r);
    }
    match std::env::var("KILN_ISOLATION") {
        Ok(v) if !v.is_empty() => {
            <Requested as clap::ValueEnum>::from_str(&v, true).map_err(|_| {
                anyhow::anyhow!("KILN_ISOLATION={v:?}: use auto, oci, rootless or chroot")
            })
        }
        _ => Ok(Requested::Auto),
    }
}

/// What this process does, decided before the engine starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    Oci,
    /// In kiln's user namespace (after the re-exec).
    Rootless,
    /// Why: "as asked", or what the probes found.
    Chroot {
        why: String,
    },
}

static CHOSEN: OnceLock<Chosen> = OnceLock::new();

/// What [`decide`] chose (oci when nothing was decided, as for commands without an engine).
pub fn chosen() -> Chosen {
    CHOSEN.get().cloned().unwrap_or(Chosen::Oci)
}

/// Whether to re-execute in a user namespace (`Ok(true)`), or run here with the choice made.
/// Call before any thread exists (the probe forks).
pub fn decide(requested: Requested) -> anyhow::Result<bool> {
    if userns::inside() {
        let _ = CHOSEN.set(Chosen::Rootless);
        return Ok(false);
    }
    let root = is_root();
    let chosen = match requested {
        Requested::Rootless => return Ok(true),
        Requested::Auto if !root => return Ok(true),
        Requested::Oci if !root || !has_cap_sys_admin() => bail!(
            "--isolation=oci needs root with CAP_SYS_ADMIN (overlay mounts and an OCI runtime): \
             run kiln as root, or use --isolation=rootless (an ordinary user) or \
             --isolation=chroot (root in a container that allows no mounts)"
        ),
        Requested::Oci => Chosen::Oci,
        Requested::Chroot if !root => bail!(
            "--isolation=chroot needs root (CAP_SYS_CHROOT, and CAP_CHOWN for the files of \
             images): run kiln as root (in its container), or use --isolation=rootless"
        ),
        Requested::Chroot => Chosen::Chroot {
            why: "as asked".to_string(),
        },
        Requested::Auto if has_cap_sys_admin() => Chosen::Oci,
        Requested::Auto => match (userns::probe_unshare(), userns::probe_sandbox()) {
            (Err(e), _) => Chosen::Chroot {
                why: format!("no mounts and no user namespace allowed here: {e}"),
            },
            (Ok(()), Err(e)) => Chosen::Chroot {
                why: format!(
                    "no mounts here, and a user namespace cannot make a container's sandbox \
                     (masked /proc paths or seccomp refuse mounting /proc or sethostname): {e}"
                ),
            },
            // Root without mounts, but a user namespace gives them (relaxed seccomp).
            (Ok(()), Ok(())) if Runtime::detect(None).is_ok() => return Ok(true),
            (Ok(()), Ok(())) => Chosen::Chroot {
                why: "no mounts here, and no OCI runtime for a user namespace".to_string(),
            },
        },
    };
    let _ = CHOSEN.set(chosen);
    Ok(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

const CHROOT_GIVES_UP: &str = "no namespaces (RUN sees the host's processes, network, hostname \
     and IPC, no --network=none), no seccomp filter of kiln's own, /proc and /sys empty, RUN \
     --mount targets are plain directories (a cache one RUN at a time, read-only unenforced)";

/// The sandbox and snapshotter for the chosen isolation, and the notice to print (if any).
pub fn engine(
    root: &Path,
    snapshots: Snapshotter,
    runtime_path: Option<&Path>,
) -> anyhow::Result<(Snapshotter, Sandbox, Option<String>)> {
    match chosen() {
        Chosen::Chroot { why } => {
            if !has_cap_sys_admin() {
                // trusted.* xattrs need CAP_SYS_ADMIN: opaque marks go to user.overlay.*.
                crate::layer::overlay::use_user_xattrs();
            }
            std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
            let devices = if chroot::can_make_devices(root) {
                ""
            } else {
                ", /dev without device nodes (no CAP_MKNOD)"
            };
            let notice = format!(
                "isolation: chroot ({why}); gives up: {CHROOT_GIVES_UP}{devices}; snapshots are \
                 full directory copies"
            );
            Ok((
                snapshots.with_directory_copies(),
                Sandbox::chroot(root.join("bundles")),
                Some(notice),
            ))
        }
        chosen => {
            let mut rt = Runtime::detect(runtime_path)?;
            let rootless = chosen == Chosen::Rootless;
            if rootless {
                rt = rt.with_state_root(root.join("runtime"));
            }
            let mut notice = rootless.then(|| {
                "isolation: rootless (an OCI runtime in kiln's user namespace)".to_string()
            });
            let snapshots = match userns::probe_overlay(root) {
                Ok(()) => snapshots,
                Err(e) => {
                    let line = format!(
                        "warning: {e}; falling back to directory snapshots (a full copy of the \
                         parent for every step: slower, more disk)"
                    );
                    notice = Some(match notice {
                        Some(n) => format!("{n}\n{line}"),
                        None => line,
                    });
                    snapshots.with_directory_copies()
                }
            };
            Ok((snapshots, Sandbox::new(rt, root.join("bundles")), notice))
        }
    }
}
