//! Rootless kiln: an ordinary user's kiln re-executes itself in a new user and mount namespace
//! where it is root (as `buildah unshare` and rootlesskit do), so overlay mounts and the OCI
//! runtime work without real root.
//!
//! The parent spawns `/proc/self/exe` with `unshare(CLONE_NEWUSER|CLONE_NEWNS)` done before the
//! exec and [`MARKER`]` = wait:FD`; it writes the ID maps (`newuidmap`/`newgidmap` with the
//! user's `/etc/subuid` and `/etc/subgid` ranges, else a single-ID map of its own) and then
//! releases the child through the pipe FD. The child, now mapped to root, execs itself once more
//! (an exec before the maps existed dropped its capabilities) with [`MARKER`]` = 1` and runs the
//! command. The parent forwards SIGINT/SIGTERM/SIGHUP and the child's exit status.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};

/// Environment marker between the stages: `wait:FD` in the child waiting for its maps, `1` in
/// the final process.
pub const MARKER: &str = "_KILN_IN_USERNS";

const SUBUID: &str = "/etc/subuid";
const SUBGID: &str = "/etc/subgid";

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error(
        "user namespaces are disabled ({knob} is 0), so kiln cannot run rootless: enable them \
         (as root: sysctl -w {fix}) or run kiln as root"
    )]
    Disabled { knob: String, fix: String },
    #[error(
        "AppArmor restricts unprivileged user namespaces \
         (kernel.apparmor_restrict_unprivileged_userns=1), so kiln has no capabilities in its \
         user namespace: run `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` as root, \
         add an AppArmor profile for kiln that allows `userns`, or run kiln as root"
    )]
    AppArmor,
    #[error("create a user namespace: {0} (are user namespaces allowed for this user?)")]
    Unshare(io::Error),
    #[error("kiln has no CAP_SYS_ADMIN in its user namespace (CapEff {0:#x}): it cannot mount")]
    NoCapabilities(u64),
    #[error(
        "overlayfs cannot be mounted in kiln's user namespace under {root}: {cause}. Rootless \
         kiln needs Linux >= 5.11 and a state root on a filesystem with user xattrs (ext4, xfs, \
         btrfs; tmpfs from Linux 6.6): pass --root (or set KILN_ROOT) elsewhere, or run kiln as \
         root"
    )]
    OverlayRefused { root: PathBuf, cause: io::Error },
    #[error("{tool} {args}: {detail}")]
    Map {
        tool: String,
        args: String,
        detail: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UsernsError {
    let path = path.to_path_buf();
    move |source| UsernsError::Io { op, path, source }
}

/// Whether this process is the root of kiln's own user namespace (the final stage).
pub fn inside() -> bool {
    std::env::var_os(MARKER).is_some_and(|v| v == "1")
}

/// Whether kiln must enter a user namespace first: not root, and not there yet.
pub fn needed() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid != 0 && std::env::var_os(MARKER).is_none()
}

/// Whether `id` is inside one of the ranges of `/proc/PID/uid_map`-format `text` (`INSIDE
/// OUTSIDE COUNT` lines).
pub fn in_id_map(text: &str, id: u32) -> bool {
    text.lines().any(|line| {
        let mut f = line.split_whitespace().map(|v| v.parse::<u64>().ok());
        match (f.next().flatten(), f.next().flatten(), f.next().flatten()) {
            (Some(inside), Some(_), Some(count)) => {
                (inside..inside.saturating_add(count)).contains(&u64::from(id))
            }
            _ => false,
        }
    })
}

/// Whether this process's user namespace maps group `gid`.
pub fn gid_mapped(gid: u32) -> bool {
    fs::read_to_string("/proc/self/gid_map").is_ok_and(|t| in_id_map(&t, gid))
}

/// A subordinate ID range from `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    pub start: u32,
    pub count: u32,
}

/// The first range of `/etc/subuid`-format `text` (`NAME_OR_ID:START:COUNT` lines) for the user
/// called `name` or with ID `id`; comments, malformed lines and empty ranges are skipped.
pub fn parse_subids(text: &str, name: &str, id: u32) -> Option<SubIdRange> {
    text.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let mut parts = line.split(':');
        let (owner, start, count) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || (owner != name && owner.parse::<u32>().ok() != Some(id)) {
            return None;
        }
        let range = SubIdRange {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (range.count > 0 && range.start.checked_add(range.count).is_some()).then_some(range)
    })
}

/// How the namespace's IDs map to the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// 0 is the user, 1.. the subordinate ranges, written by the setuid helpers.
    Ranges {
        newuidmap: PathBuf,
        newgidmap: PathBuf,
        uids: SubIdRange,
        gids: SubIdRange,
    },
    /// Only 0, the user itself; `why` says what was missing.
    Single { why: String },
}

/// The `newuidmap`/`newgidmap` arguments after the PID: `0 ID 1 1 START COUNT`.
pub fn map_args(id: u32, range: SubIdRange) -> Vec<String> {
    [0, id, 1, 1, range.start, range.count]
        .iter()
        .map(u32::to_string)
        .collect()
}

/// The warning printed once when only one ID is mapped.
pub fn single_id_warning(why: &str) -> String {
    format!(
        "warning: rootless kiln maps only one ID ({why}): files owned by other users in base \
         images, `USER` other than root, and chown in RUN or `COPY --chown` to other IDs fail or \
         are squashed to root. For full mappings: apt-get install uidmap and \
         usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER"
    )
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn user_name(uid: u32) -> Option<String> {
    // SAFETY: passwd is plain C data (integers and pointers), valid when zeroed.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; on success `pw_name` points into `buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The mapping available to user `uid` (named `name`): ranges when both files have one and the
/// helpers are installed, else a single ID and why.
pub fn choose_mapping(name: Option<&str>, uid: u32) -> Mapping {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let name = name.unwrap_or_default();
    let uids = parse_subids(&read(SUBUID), name, uid);
    // subgid is keyed by user name too; a numeric entry there is the uid as well.
    let gids = parse_subids(&read(SUBGID), name, uid);
    let (Some(uids), Some(gids)) = (uids, gids) else {
        return Mapping::Single {
            why: format!("no range for {name} in {SUBUID} and {SUBGID}"),
        };
    };
    match (find_tool("newuidmap"), find_tool("newgidmap")) {
        (Some(newuidmap), Some(newgidmap)) => Mapping::Ranges {
            newuidmap,
            newgidmap,
            uids,
            gids,
        },
        _ => Mapping::Single {
            why: "newuidmap/newgidmap are not installed".to_string(),
        },
    }
}

fn sysctl_is_zero(path: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|v| v.trim() == "0")
}

/// Fails early, naming the switch, when user namespaces are off.
fn check_enabled() -> Result<(), UsernsError> {
    for (knob, fix) in [
        (
            "/proc/sys/kernel/unprivileged_userns_clone",
            "kernel.unprivileged_userns_clone=1",
        ),
        (
            "/proc/sys/user/max_user_namespaces",
            "user.max_user_namespaces=15000",
        ),
    ] {
        if sysctl_is_zero(knob) {
            return Err(UsernsError::Disabled {
                knob: knob.to_string(),
                fix: fix.to_string(),
            });
        }
    }
    Ok(())
}

fn apparmor_restricts() -> bool {
    fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        .is_ok_and(|v| v.trim() == "1")
}

fn write_maps(pid: u32, mapping: &Mapping, uid: u32, gid: u32) -> Result<(), UsernsError> {
    match mapping {
        Mapping::Ranges {
            newuidmap,
            newgidmap,
            uids,
            gids,
        } => {
            for (tool, id, range) in [(newuidmap, uid, *uids), (newgidmap, gid, *gids)] {
                let args = map_args(id, range);
                let out = Command::new(tool)
                    .arg(pid.to_string())
                    .args(&args)
                    .output()
                    .map_err(io_err("run", tool))?;
                if !out.status.success() {
                    return Err(UsernsError::Map {
                        tool: tool.display().to_string(),
                        args: format!("{pid} {}", args.join(" ")),
                        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
            }
        }
        Mapping::Single { .. } => {
            // An unprivileged writer must give up setgroups before it may write gid_map.
            for (file, text) in [
                ("uid_map", format!("0 {uid} 1\n")),
                ("setgroups", "deny\n".to_string()),
                ("gid_map", format!("0 {gid} 1\n")),
            ] {
                let path = PathBuf::from(format!("/proc/{pid}/{file}"));
                fs::write(&path, text).map_err(io_err("write", &path))?;
            }
        }
    }
    Ok(())
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Runs this kiln command again inside a new user namespace and returns its exit code. Call it
/// before the tokio runtime starts: it installs process-wide handlers that forward SIGINT,
/// SIGTERM and SIGHUP to the child instead of dying of them.
pub fn reexec() -> Result<ExitCode, UsernsError> {
    check_enabled()?;
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mapping = choose_mapping(user_name(uid).as_deref(), uid);
    if let Mapping::Single { why } = &mapping {
        eprintln!("{}", single_id_warning(why));
    }
    let (reader, mut writer) = io::pipe().map_err(io_err("create pipe", Path::new("pipe")))?;
    let fd = reader.as_raw_fd();
    let exe = Path::new("/proc/self/exe");
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(MARKER, format!("wait:{fd}"));
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    // SAFETY: only raw syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::unshare_unsafe(
                rustix::thread::UnshareFlags::NEWUSER | rustix::thread::UnshareFlags::NEWNS,
            )?;
            // The child keeps the read end across exec.
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) && apparmor_restricts() {
            UsernsError::AppArmor
        } else {
            UsernsError::Unshare(e)
        }
    })?;
    drop(reader);
    // Dropping the writer unwritten makes the child exit 1 quietly; the error is ours to print.
    if let Err(e) = write_maps(child.id(), &mapping, uid, gid) {
        drop(writer);
        let _ = child.wait();
        return Err(e);
    }
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    for sig in FORWARDED {
        // SAFETY: `forward` only calls kill, which is async-signal-safe.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let released = writer.write_all(b"1");
    drop(writer);
    let status = child.wait().map_err(io_err("wait for", exe))?;
    released.map_err(io_err("write", Path::new("pipe")))?;
    if let Some(code) = status.code() {
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    let sig = status.signal().unwrap_or(libc::SIGKILL);
    // Die of the same signal, so callers see what the child saw.
    // SAFETY: resetting a handler and raising a signal have no memory-safety preconditions.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    Ok(ExitCode::from((128 + sig).clamp(0, 255) as u8))
}

/// The middle stage: when [`MARKER`] is `wait:FD`, waits for the parent to write the maps, then
/// execs kiln again as the namespace's root (returns only on failure). Otherwise returns `None`.
pub fn finish_entry() -> Option<UsernsError> {
    let fd: i32 = std::env::var(MARKER)
        .ok()?
        .strip_prefix("wait:")?
        .parse()
        .ok()?;
    // SAFETY: the parent passed this inherited pipe FD, which nothing else here owns.
    let mut pipe = unsafe { fs::File::from_raw_fd(fd) };
    let mut byte = [0u8; 1];
    if !matches!(pipe.read(&mut byte), Ok(1)) {
        // The parent failed to map us and reports why.
        std::process::exit(1);
    }
    drop(pipe);
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(args.iter().skip(1)).env(MARKER, "1");
    if let Some(arg0) = args.first() {
        cmd.arg0(arg0);
    }
    let err = cmd.exec();
    Some(UsernsError::Io {
        op: "exec",
        path: PathBuf::from("/proc/self/exe"),
        source: err,
    })
}

/// Whether this process may create a user namespace: a forked child tries `unshare`. Call it
/// before threads exist.
pub fn probe_unshare() -> io::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions.
    fork_probe(|| unsafe { errno_of(libc::unshare(libc::CLONE_NEWUSER)) })
}

/// Whether an OCI runtime's sandbox can be made in a new user namespace here: a forked child
/// unshares user, mount, pid and UTS namespaces and its child mounts a fresh `/proc` and sets
/// the hostname, as the runtime will. A container that masks `/proc` paths (podman, docker)
/// lets the namespace be made but refuses that mount; its seccomp profile may refuse
/// sethostname. Call it before threads exist.
pub fn probe_sandbox() -> io::Result<()> {
    fork_probe(|| {
        let flags =
            libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS;
        // SAFETY: raw syscalls on NUL-terminated literals; the grandchild only calls mount and
        // _exit, its parent waitpid.
        unsafe {
            if libc::unshare(flags) != 0 {
                return errno_of(-1);
            }
            let pid = libc::fork();
            if pid < 0 {
                return errno_of(-1);
            }
            if pid == 0 {
                let private = libc::MS_REC | libc::MS_PRIVATE;
                let none = std::ptr::null();
                if libc::mount(c"none".as_ptr(), c"/".as_ptr(), none, private, none.cast()) != 0 {
                    libc::_exit(errno_of(-1));
                }
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                let r = libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    flags,
                    none.cast(),
                );
                if r != 0 {
                    libc::_exit(errno_of(r));
                }
                let name = c"kiln-probe";
                libc::_exit(errno_of(libc::sethostname(name.as_ptr(), 10)));
            }
            let mut status = 0;
            if libc::waitpid(pid, &mut status, 0) < 0 {
                return errno_of(-1);
            }
            if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                libc::EINTR
            }
        }
    })
}

/// 0 for a syscall's success (`r` 0), else errno (clamped to an exit code).
fn errno_of(r: libc::c_int) -> libc::c_int {
    if r == 0 {
        0
    } else {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM)
            .clamp(1, 255)
    }
}

/// Runs `probe` in a forked child and returns its result (an errno, or 0).
fn fork_probe(probe: fn() -> libc::c_int) -> io::Result<()> {
    // SAFETY: the child runs only `probe` (raw syscalls) and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the forked child; _exit never returns.
        unsafe { libc::_exit(probe()) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Err(io::Error::other("the namespace probe was killed")),
    }
}

/// In the final stage: checks that the namespace gave kiln CAP_SYS_ADMIN (AppArmor's restriction
/// lets the namespace be made but strips its capabilities).
pub fn check_capabilities() -> Result<(), UsernsError> {
    const CAP_SYS_ADMIN: u32 = 21;
    let status = Path::new("/proc/self/status");
    let text = fs::read_to_string(status).map_err(io_err("read", status))?;
    let caps = text
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if caps & (1 << CAP_SYS_ADMIN) != 0 {
        Ok(())
    } else if apparmor_restricts() {
        Err(UsernsError::AppArmor)
    } else {
        Err(UsernsError::NoCapabilities(caps))
    }
}

/// In the final stage: mounts a throwaway overlay (as snapshots are mounted) under the state
/// root `root`, so a kernel or filesystem that refuses it fails the command up front with the
/// fix rather than at the first step.
pub fn probe_overlay(root: &Path) -> Result<(), UsernsError> {
    fs::create_dir_all(root).map_err(io_err("create directory", root))?;
    let dir = tempfile::Builder::new()
        .prefix(".overlay-probe-")
        .tempdir_in(root)
        .map_err(io_err("create a directory in", root))?;
    let sub = |name: &str| -> Result<PathBuf, UsernsError> {
        let p = dir.path().join(name);
        fs::create_dir(&p).map_err(io_err("create directory", &p))?;
        Ok(p)
    };
    let (lower, upper, work, merged) = (sub("l")?, sub("u")?, sub("w")?, sub("m")?);
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).map_err(|_| UsernsError::OverlayRefused {
        root: root.to_path_buf(),
        cause: io::Error::new(io::ErrorKind::InvalidInput, "NUL in the state root's path"),
    })?;
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    mount(
        "overlay",
        &merged,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| UsernsError::OverlayRefused {
        root: root.to_path_buf(),
        cause: e.into(),
    })?;
    unmount(&merged, UnmountFlags::DETACH).map_err(|e| io_err("unmount", &merged)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subids_by_name_or_id() {
        let text =
            "# comment\nalice:100000:65536\n1001:200000:1000\nbob:bad:1\nbob:5:0\nbob:300000:10\n";
        assert_eq!(
            parse_subids(text, "alice", 1000),
            Some(SubIdRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            parse_subids(text, "carol", 1001),
            Some(SubIdRange {
                start: 200000,
                count: 1000
            })
        );
        // Malformed and empty ranges are skipped, the next one is used.
        assert_eq!(
            parse_subids(text, "bob", 1002),
            Some(SubIdRange {
                start: 300000,
                count: 10
            })
        );
        assert_eq!(parse_subids(text, "dave", 1003), None);
        assert_eq!(parse_subids("eve:4294967295:2\n", "eve", 1), None);
        assert_eq!(parse_subids("eve:1:2:3\n", "eve", 1), None);
    }

    #[test]
    fn id_maps() {
        let single = "         0       1000          1\n";
        assert!(in_id_map(single, 0));
        assert!(!in_id_map(single, 5));
        let ranged = "0 1000 1\n1 100000 65536\n";
        assert!(in_id_map(ranged, 5));
        assert!(in_id_map(ranged, 65536));
        assert!(!in_id_map(ranged, 65537));
        assert!(!in_id_map("garbage\n", 0));
    }

    #[test]
    fn map_arguments() {
        let r = SubIdRange {
            start: 100000,
            count: 65536,
        };
        assert_eq!(
            map_args(1000, r),
            ["0", "1000", "1", "1", "100000", "65536"]
        );
    }

    #[test]
    fn warning_says_what_it_limits() {
        let w = single_id_warning("no range for x in /etc/subuid and /etc/subgid");
        for part in [
            "only one ID",
            "USER",
            "COPY --chown",
            "usermod --add-subuids",
        ] {
            assert!(w.contains(part), "{w}");
        }
    }

    #[test]
    fn disabled_error_names_the_fix() {
        let e = UsernsError::Disabled {
            knob: "/proc/sys/user/max_user_namespaces".into(),
            fix: "user.max_user_namespaces=15000".into(),
        };
        assert!(e
            .to_string()
            .contains("sysctl -w user.max_user_namespaces=15000"));
    }
}
