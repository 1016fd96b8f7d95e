//! Chroot isolation: the command runs in a child that `chroot(2)`s into a plain directory and
//! drops to the step's user, with no namespace, no mount and no seccomp filter of kiln's own
//! (like buildah's `--isolation chroot` without its bind mounts, or Kaniko). It is for places
//! that allow nothing more: root in an unprivileged container under the engine's default
//! seccomp profile, where `unshare` and `mount` are refused but `CAP_SYS_CHROOT` is there.
//!
//! What that gives up: the command sees the host's (the container's) processes, network,
//! hostname and IPC; `/proc` and `/sys` are empty directories; `/dev` has only the nodes kiln
//! could make (`CAP_MKNOD`, which podman drops by default); the command is confined only by
//! what confines kiln itself; `RUN --mount`s are directories moved or copied in
//! (`chroot_mounts`); `--network=none` cannot be had.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::{FileType, Mode};

use super::chroot_mounts::Placed;
use super::rootfs::Root;
use super::{effective_env, hosts_file, ExitStatus, RunSpec, SandboxError, Stream};
use super::{mount_point_dirs, stream_output, DEFAULT_HOSTNAME, DEFAULT_PATH};
use crate::snapshot::DIR_MOUNT;

/// The device nodes a container's `/dev` has (name, major, minor), made when `CAP_MKNOD` allows.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The directory a [`RunSpec`]'s root is: one directory snapshot.
fn root_dir(spec: &RunSpec) -> Result<&Path, SandboxError> {
    match spec.rootfs.as_slice() {
        [m] if m.kind == DIR_MOUNT => Ok(&m.source),
        [] => Err(SandboxError::NoRootfs),
        [m, ..] => Err(SandboxError::ChrootNeedsDirectory {
            kind: m.kind.clone(),
        }),
    }
}

/// Runs `spec` chrooted into its directory root, passing output to `output` as it arrives.
pub fn run(
    spec: &RunSpec,
    resolv_conf: &Path,
    output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<ExitStatus, SandboxError> {
    if spec.args.is_empty() {
        return Err(SandboxError::NoCommand);
    }
    if spec.network == super::NetworkMode::None {
        return Err(SandboxError::ChrootCannotIsolateNetwork);
    }
    let dir = root_dir(spec)?;
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    if !cwd.starts_with('/') {
        return Err(SandboxError::RelativeCwd(spec.cwd.clone()));
    }
    let root = Root::open(dir)?;
    let env = effective_env(&spec.env, &spec.user.home);
    let path_env = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    if !spec.readonly_rootfs {
        root.mkdir_all(cwd, spec.user.uid, spec.user.gid)?;
        // The runtime's own mount points, made as an OCI runtime would, so the layer is the
        // same (a RUN --mount's target is made and removed again by `Placed`).
        for d in mount_point_dirs(&RunSpec::default()) {
            if !root.missing(&d)?.is_empty() {
                root.mkdir_all(&d, 0, 0)?;
            }
        }
    }
    let mut placed = Placed::in_root(dir);
    if !spec.readonly_rootfs {
        prepare_etc_and_dev(&mut placed, dir, spec, resolv_conf)?;
    }
    placed.mounts(dir, &spec.mounts)?;
    let Some(exe) = root.find_executable(&spec.args[0], &path_env, cwd)? else {
        return Err(SandboxError::ExecutableNotFound {
            name: spec.args[0].clone(),
        });
    };
    drop(root);

    let mut cmd = Command::new(&exe);
    cmd.arg0(&spec.args[0])
        .args(&spec.args[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for e in &env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let root_path = dir.to_path_buf();
    let root_c = cstring(&root_path)?;
    let cwd_c = cstring(Path::new(cwd))?;
    let (uid, gid) = (spec.user.uid, spec.user.gid);
    let gids: Vec<libc::gid_t> = spec.user.additional_gids.clone();
    // `--ulimit`s, set in the child before it drops root (`--shm-size` has no `/dev/shm`
    // mount to size here: chroot isolation mounts nothing).
    let limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)> = spec
        .ulimits
        .iter()
        .map(|u| {
            let value = |v: u64| {
                if v == u64::MAX {
                    libc::RLIM_INFINITY
                } else {
                    v
                }
            };
            (
                u.resource(),
                libc::rlimit {
                    rlim_cur: value(u.soft),
                    rlim_max: value(u.hard),
                },
            )
        })
        .collect();
    // SAFETY: the closure runs in the forked child before exec and only makes syscalls; it
    // allocates nothing (a lock held by another thread at the fork could deadlock it).
    unsafe {
        cmd.pre_exec(move || enter(&root_c, &cwd_c, &gids, &limits, uid, gid));
    }
    // A failed chroot, setuid or exec comes back here: name the command inside the root.
    let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
        runtime: exe_path(&root_path, &exe),
        source,
    })?;
    let _tail = stream_output(&mut child, output);
    let status = child
        .wait()
        .map_err(|e| SandboxError::io("wait for", &exe_path(&root_path, &exe), e))?;
    placed.undo()?;
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(ExitStatus { code })
}

fn exe_path(root: &Path, exe: &str) -> PathBuf {
    root.join(exe.trim_start_matches('/'))
}

fn hostname(spec: &RunSpec) -> &str {
    if spec.hostname.is_empty() {
        DEFAULT_HOSTNAME
    } else {
        &spec.hostname
    }
}

fn cstring(p: &Path) -> Result<std::ffi::CString, SandboxError> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        SandboxError::io(
            "use",
            p,
            io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
        )
    })
}

/// In the child: into the root, to the working directory, then the user (groups first: after
/// setuid there is no right to change them).
fn enter(
    root: &std::ffi::CStr,
    cwd: &std::ffi::CStr,
    gids: &[libc::gid_t],
    limits: &[(libc::__rlimit_resource_t, libc::rlimit)],
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls on valid NUL-terminated strings and a live slice.
    unsafe {
        // Killed with kiln (the thread that waits for it): no namespace ends it otherwise.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        check(libc::chroot(root.as_ptr()))?;
        check(libc::chdir(cwd.as_ptr()))?;
        libc::umask(0o022);
        for (resource, limit) in limits {
            check(libc::setrlimit(*resource, limit))?;
        }
        check(libc::setgroups(gids.len(), gids.as_ptr()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
    }
    Ok(())
}

/// `/etc/hosts` and `/etc/resolv.conf` when the image has none (a runtime would mount them;
/// here they are written and left out of the layer), and `/dev`'s nodes where `CAP_MKNOD` is.
fn prepare_etc_and_dev(
    placed: &mut Placed,
    dir: &Path,
    spec: &RunSpec,
    resolv_conf: &Path,
) -> Result<(), SandboxError> {
    let etc = dir.join("etc");
    if etc.is_dir() && !etc.is_symlink() {
        let hosts = etc.join("hosts");
        if std::fs::symlink_metadata(&hosts).is_err() {
            let text = hosts_file(hostname(spec), &spec.extra_hosts);
            placed.write_file(&hosts, text.as_bytes())?;
        }
        let resolv = etc.join("resolv.conf");
        if std::fs::symlink_metadata(&resolv).is_err() {
            let text = std::fs::read(resolv_conf).unwrap_or_default();
            placed.write_file(&resolv, &text)?;
        }
    }
    let dev = dir.join("dev");
    if dev.is_dir() && !dev.is_symlink() {
        placed.keep_times(&dev);
        for (name, major, minor) in DEVICES {
            let node = dev.join(name);
            if std::fs::symlink_metadata(&node).is_ok() {
                continue;
            }
            // Without CAP_MKNOD (podman's default) the node stays missing.
            if rustix::fs::mknodat(
                rustix::fs::CWD,
                &node,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(major, minor),
            )
            .is_ok()
            {
                placed.made(&node);
                // mknod applied the umask; a USER other than root must write /dev/null.
                rustix::fs::chmod(&node, Mode::from_raw_mode(0o666))
                    .map_err(|e| SandboxError::io("chmod", &node, e.into()))?;
            }
        }
    }
    Ok(())
}

/// Whether `/dev/null` can be made here (`CAP_MKNOD`), for the isolation notice.
pub fn can_make_devices(scratch: &Path) -> bool {
    let probe = scratch.join(format!(".mknod-probe-{}", std::process::id()));
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        &probe,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    )
    .is_ok();
    let _ = std::fs::remove_file(&probe);
    made
}
