//! Running one command in a container: an OCI runtime bundle (`config.json` from oci-spec's
//! runtime [`Spec`](oci_spec::runtime::Spec)) executed by crun or runc as a subprocess.
//!
//! [`Sandbox::run`] makes a bundle directory under the state directory, mounts the root
//! filesystem described by [`crate::snapshot::Mount`]s at `bundle/rootfs` (through the
//! [`Mounter`] seam), creates the working directory inside the root, writes `config.json`, runs
//! `<runtime> run --bundle <dir> <id>` with stdout and stderr piped and streamed to a callback,
//! and always cleans up (runtime `delete -f`, mount points it had to create, unmount, bundle
//! removal), also on errors and panics, through a drop guard.

pub mod chroot;
mod chroot_mounts;
pub mod emulation;
mod limits;
mod mounter;
mod rootfs;
pub mod seccomp;
mod spec;
mod user;
pub mod userns;

use std::fs;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};

pub use limits::{parse_ram_size, LimitError, Ulimit};
pub use mounter::{plan as mount_plan, MountPlan, Mounter, SystemMounter};
pub use rootfs::Root;
pub use spec::{
    build_spec, effective_env, ALL_CAPABILITIES, DEFAULT_CAPABILITIES, DEFAULT_PATH, NOFILE,
};
pub use user::{resolve_user, resolve_user_from};

use crate::snapshot::Mount;

/// The hostname BuildKit gives build containers.
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no OCI runtime found: install crun (apt-get install crun) or runc, or pass --runtime PATH"
    )]
    NoRuntime,
    #[error("OCI runtime {0} not found or not executable")]
    RuntimeNotFound(PathBuf),
    #[error(transparent)]
    Io(#[from] crate::oci::IoError),
    #[error("mount {kind} {source_path} on {target} (options {options:?}): {source}")]
    Mount {
        kind: String,
        source_path: PathBuf,
        target: PathBuf,
        options: String,
        source: io::Error,
    },
    #[error("unmount {target}: {source}")]
    Unmount { target: PathBuf, source: io::Error },
    #[error("OCI runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("unable to find user {user}: no matching entries in passwd file")]
    UnknownUser { user: String },
    #[error("unable to find group {group}: no matching entries in group file")]
    UnknownGroup { group: String },
    #[error("no command to run")]
    NoCommand,
    #[error("no root filesystem mounts given")]
    NoRootfs,
    #[error("working directory {0:?} is not an absolute path")]
    RelativeCwd(String),
    #[error("exec: {name:?}: executable file not found in $PATH")]
    ExecutableNotFound { name: String },
    #[error("start {runtime}: {source}")]
    Spawn { runtime: PathBuf, source: io::Error },
    #[error("{runtime} failed before the command started (exit code {code}): {stderr}")]
    Runtime {
        runtime: PathBuf,
        code: i32,
        stderr: String,
    },
    #[error(
        "RUN --mount at {target}: chroot isolation cannot put a mount there ({why}); use \
         --isolation=oci (root) or rootless where mounts are allowed, or another target"
    )]
    ChrootMountTarget { target: String, why: &'static str },
    #[error(
        "RUN --mount under chroot isolation: after the command, {path} is reached through a \
         symlink the command made, which would resolve on the host; kiln left it as it is. \
         Do not replace a mount target's parent directories in the RUN, or use --isolation=oci"
    )]
    ChrootMountSymlinked { path: PathBuf },
    #[error(
        "--network=none needs a network namespace, which chroot isolation cannot make: use \
         --isolation=oci or rootless where namespaces are allowed, or the host's network"
    )]
    ChrootCannotIsolateNetwork,
    #[error("chroot isolation runs in a directory snapshot, not a {kind} mount")]
    ChrootNeedsDirectory { kind: String },
    #[error("{runtime} was killed by signal {signal}")]
    RuntimeKilled { runtime: PathBuf, signal: i32 },
}

impl SandboxError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> SandboxError {
        SandboxError::Io(crate::oci::IoError {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Which OCI runtime a [`Runtime`] is, as far as its command-line quirks matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Crun,
    Runc,
    Other,
}

/// An OCI runtime binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    path: PathBuf,
    kind: RuntimeKind,
    /// The runtime's `--root` (its container state), when its default is not writable.
    state_root: Option<PathBuf>,
}

const FALLBACK_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

impl Runtime {
    /// The runtime named by `explicit` (a path, or a name looked up on `PATH`), else `crun` on
    /// `PATH`, else `runc`.
    pub fn detect(explicit: Option<&Path>) -> Result<Runtime, SandboxError> {
        if let Some(p) = explicit {
            let found = if p.components().count() > 1 || p.is_absolute() {
                is_executable(p).then(|| p.to_path_buf())
            } else {
                p.to_str().and_then(search_path)
            };
            return found
                .map(Runtime::from_path)
                .ok_or_else(|| SandboxError::RuntimeNotFound(p.to_path_buf()));
        }
        ["crun", "runc"]
            .into_iter()
            .find_map(search_path)
            .map(Runtime::from_path)
            .ok_or(SandboxError::NoRuntime)
    }

    /// A runtime at `path`, its kind guessed from the file name.
    pub fn from_path(path: impl Into<PathBuf>) -> Runtime {
        let path = path.into();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let kind = if name.starts_with("crun") {
            RuntimeKind::Crun
        } else if name.starts_with("runc") {
            RuntimeKind::Runc
        } else {
            RuntimeKind::Other
        };
        Runtime {
            path,
            kind,
            state_root: None,
        }
    }

    /// Keeps the runtime's container state in `dir` (`--root`) instead of its default
    /// (`/run/crun`, `/run/runc`), which an unprivileged user namespace cannot write.
    pub fn with_state_root(mut self, dir: impl Into<PathBuf>) -> Runtime {
        self.state_root = Some(dir.into());
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// A command line for the runtime binary (with the hybrid-cgroup workaround where needed).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        if let Some(dir) = &self.state_root {
            cmd.arg("--root").arg(dir);
        }
        if self.kind == RuntimeKind::Crun && crun_hybrid_workaround() {
            // crun (≤1.8) refuses cgroup "hybrid" hosts whose v2 hierarchy has controllers
            // ("cgroups in hybrid mode not supported"). Hide the v2 mount from it in a private
            // mount namespace, so it sees plain cgroup v1.
            // SAFETY: only raw syscalls between fork and exec; the paths are short literals
            // converted on the stack by rustix, so nothing allocates or takes locks.
            unsafe {
                cmd.pre_exec(|| {
                    rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
                    rustix::mount::mount_change(
                        "/",
                        rustix::mount::MountPropagationFlags::REC
                            | rustix::mount::MountPropagationFlags::PRIVATE,
                    )?;
                    let unified = "/sys/fs/cgroup/unified";
                    match rustix::mount::unmount(unified, rustix::mount::UnmountFlags::DETACH) {
                        Ok(()) => {}
                        // In a user namespace the mount is locked to its parent: cover it with
                        // an empty tmpfs instead, which crun takes for plain cgroup v1 too.
                        Err(rustix::io::Errno::INVAL | rustix::io::Errno::PERM) => {
                            rustix::mount::mount(
                                "tmpfs",
                                unified,
                                "tmpfs",
                                rustix::mount::MountFlags::RDONLY,
                                c"",
                            )?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    Ok(())
                });
            }
        }
        cmd
    }
}

/// Whether this host has cgroup v1 with a v2 hierarchy at `/sys/fs/cgroup/unified` that has
/// controllers (which crun refuses).
fn crun_hybrid_workaround() -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // f_type's width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let magic = |p: &str| rustix::fs::statfs(p).map(|s| s.f_type as i64).ok();
    magic("/sys/fs/cgroup") == Some(TMPFS_MAGIC)
        && magic("/sys/fs/cgroup/unified") == Some(CGROUP2_SUPER_MAGIC)
        && fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
}

/// [`NOFILE`], or this process's hard limit when it is lower and cannot be raised (no
/// `CAP_SYS_RESOURCE`, as in some CI sandboxes): the runtime would fail to set it.
fn nofile_limit() -> u64 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let can_raise = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
        // A user namespace's capability cannot raise a hard limit set outside it.
        && !userns::inside();
    if can_raise {
        return NOFILE;
    }
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum {
        Some(hard) => hard.min(NOFILE),
        None => NOFILE,
    }
}

/// The uid, gid and supplementary gids the command runs as, and its home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// `HOME` for a command whose environment has none, as runc sets it for BuildKit: the
    /// user's home in `/etc/passwd`, else `/`.
    pub home: String,
}

impl Default for UserSpec {
    fn default() -> Self {
        UserSpec {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/".to_string(),
        }
    }
}

/// Host networking, or a network namespace with only loopback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    #[default]
    Host,
    None,
}

/// What an [`ExtraMount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraMountKind {
    /// A host directory or file (secret and bind mounts become these).
    Bind { source: PathBuf, readonly: bool },
    /// A `RUN --mount=type=cache` directory: bound like [`ExtraMountKind::Bind`]; under
    /// chroot isolation moved into the root for the command and back, where a bind is copied.
    Cache { source: PathBuf, readonly: bool },
    /// A fresh tmpfs; `mode` defaults to 1777.
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
}

/// A mount on top of the root filesystem, at `target` inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraMount {
    pub target: String,
    pub kind: ExtraMountKind,
}

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// How to mount the root filesystem: mounted in order at the bundle's `rootfs`.
    pub rootfs: Vec<Mount>,
    pub args: Vec<String>,
    /// `KEY=value` entries; `PATH` is added when missing.
    pub env: Vec<String>,
    /// Absolute; created (owned by the user) when missing. Empty means `/`.
    pub cwd: String,
    pub user: UserSpec,
    pub hostname: String,
    pub network: NetworkMode,
    pub mounts: Vec<ExtraMount>,
    pub readonly_rootfs: bool,
    /// Extra `/etc/hosts` lines (`--add-host`): host name and address.
    pub extra_hosts: Vec<(String, String)>,
    /// `--shm-size`: the size of `/dev/shm` in bytes (none: 64 MiB, as in BuildKit).
    pub shm_size: Option<u64>,
    /// `--ulimit`: resource limits; a `nofile` one replaces the default [`NOFILE`].
    pub ulimits: Vec<Ulimit>,
    pub security: Security,
}

/// How far the command is confined (`RUN --security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    /// Docker's default capabilities and seccomp profile, masked and read-only `/proc` paths.
    #[default]
    Sandbox,
    /// BuildKit's `security.insecure`: every capability, no seccomp filter, nothing masked or
    /// read-only, `/sys` writable (with the host's network).
    Insecure,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            rootfs: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: "/".to_string(),
            user: UserSpec::default(),
            hostname: DEFAULT_HOSTNAME.to_string(),
            network: NetworkMode::Host,
            mounts: Vec::new(),
            readonly_rootfs: false,
            extra_hosts: Vec::new(),
            shm_size: None,
            ulimits: Vec::new(),
            security: Security::Sandbox,
        }
    }
}

/// Which pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How the command ended: its exit code, or 128 + the signal that killed it (as the runtimes
/// report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    code: i32,
}

impl ExitStatus {
    pub fn code(&self) -> i32 {
        self.code
    }

    pub fn success(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code: {}", self.code)
    }
}

/// The contents of the container's `/etc/hosts`.
pub fn hosts_file(hostname: &str, extra: &[(String, String)]) -> String {
    let mut s =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, addr) in extra {
        s.push_str(&format!("{addr}\t{name}\n"));
    }
    s
}

/// Runs commands with one OCI runtime, keeping bundles under one state directory.
pub struct Sandbox {
    /// `None`: chroot isolation, no OCI runtime.
    runtime: Option<Runtime>,
    state_dir: PathBuf,
    mounter: Arc<dyn Mounter>,
    resolv_conf: PathBuf,
}

/// The directories the runtime needs in the rootfs to mount `spec`'s mounts: the mount
/// points themselves, or for a file mount (`/etc/hosts`, a secret) its parent directory.
fn mount_point_dirs(spec: &RunSpec) -> Vec<String> {
    let fixed = [
        ("/proc", true),
        ("/dev", true),
        ("/sys", true),
        ("/etc/hosts", false),
        ("/etc/resolv.conf", false),
    ];
    let extra = spec.mounts.iter().map(|m| {
        let is_dir = match &m.kind {
            ExtraMountKind::Tmpfs { .. } => true,
            ExtraMountKind::Bind { source, .. } => source.is_dir(),
            ExtraMountKind::Cache { .. } => true,
        };
        (m.target.as_str(), is_dir)
    });
    let mut out: Vec<String> = Vec::new();
    for (target, is_dir) in fixed.into_iter().chain(extra) {
        let mut comps = rootfs::components(target);
        if !is_dir {
            comps.pop();
        }
        if comps.is_empty() {
            continue;
        }
        let dir = format!("/{}", comps.join("/"));
        if !out.contains(&dir) {
            out.push(dir);
        }
    }
    out
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

const STDERR_TAIL: usize = 8192;

impl Sandbox {
    /// A sandbox using `runtime`, with bundles in `state_dir` (created when needed).
    pub fn new(runtime: Runtime, state_dir: impl Into<PathBuf>) -> Sandbox {
        Sandbox {
            runtime: Some(runtime),
            state_dir: state_dir.into(),
            mounter: Arc::new(SystemMounter),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }

    /// A sandbox with chroot isolation: no runtime, no mounts, no namespaces (see [`chroot`]);
    /// roots must be directory snapshots.
    pub fn chroot(state_dir: impl Into<PathBuf>) -> Sandbox {
        Sandbox {
            runtime: None,
            state_dir: state_dir.into(),
            mounter: Arc::new(SystemMounter),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }

    /// Replaces the mount(2) seam (tests).
    pub fn with_mounter(mut self, mounter: Arc<dyn Mounter>) -> Sandbox {
        self.mounter = mounter;
        self
    }

    /// Where the container's `/etc/resolv.conf` is copied from (default: the host's).
    pub fn with_resolv_conf(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.resolv_conf = path.into();
        self
    }

    /// The OCI runtime; `None` with chroot isolation.
    pub fn runtime(&self) -> Option<&Runtime> {
        self.runtime.as_ref()
    }

    /// Runs `spec` to completion, passing output to `output` as it arrives.
    pub fn run(
        &self,
        spec: &RunSpec,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<ExitStatus, SandboxError> {
        let Some(runtime) = &self.runtime else {
            return chroot::run(spec, &self.resolv_conf, output);
        };
        if spec.args.is_empty() {
            return Err(SandboxError::NoCommand);
        }
        if spec.rootfs.is_empty() {
            return Err(SandboxError::NoRootfs);
        }
        let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
        if !cwd.starts_with('/') {
            return Err(SandboxError::RelativeCwd(spec.cwd.clone()));
        }
        fs::create_dir_all(&self.state_dir)
            .map_err(|e| SandboxError::io("create directory", &self.state_dir, e))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!(
            "kiln-{}-{}-{:08x}",
            std::process::id(),
            RUN_COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let bundle = self.state_dir.join(&id);
        fs::create_dir(&bundle).map_err(|e| SandboxError::io("create directory", &bundle, e))?;
        let mut guard = Guard {
            runtime,
            mounter: self.mounter.as_ref(),
            id,
            bundle,
            mounted: 0,
            stubs: Vec::new(),
            child: None,
            started: false,
        };
        let rootfs = guard.bundle.join("rootfs");
        fs::create_dir(&rootfs).map_err(|e| SandboxError::io("create directory", &rootfs, e))?;
        for m in &spec.rootfs {
            self.mounter.mount(m, &rootfs)?;
            guard.mounted += 1;
        }

        let root = Root::open(&rootfs)?;
        let env = effective_env(&spec.env, &spec.user.home);
        let path_env = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        if !spec.readonly_rootfs {
            root.mkdir_all(cwd, spec.user.uid, spec.user.gid)?;
        }
        if root
            .find_executable(&spec.args[0], path_env, cwd)?
            .is_none()
        {
            return Err(SandboxError::ExecutableNotFound {
                name: spec.args[0].clone(),
            });
        }
        if !spec.readonly_rootfs {
            let targets = ["/etc/hosts", "/etc/resolv.conf"]
                .into_iter()
                .chain(spec.mounts.iter().map(|m| m.target.as_str()));
            for t in targets {
                for p in root.missing(t)? {
                    if !guard.stubs.contains(&p) {
                        guard.stubs.push(p);
                    }
                }
            }
            // crun makes a missing mount point 01755, runc (BuildKit's) 0755, and the ones
            // that are not stubs (/dev, /proc, /sys, a parent a RUN wrote into) stay in the
            // layer: make them here as runc would, so the runtime finds them.
            for dir in mount_point_dirs(spec) {
                if !root.missing(&dir)?.is_empty() {
                    root.mkdir_all(&dir, 0, 0)?;
                }
            }
        }

        let hosts = guard.bundle.join("hosts");
        let hostname = if spec.hostname.is_empty() {
            DEFAULT_HOSTNAME
        } else {
            &spec.hostname
        };
        fs::write(&hosts, hosts_file(hostname, &spec.extra_hosts))
            .map_err(|e| SandboxError::io("write", &hosts, e))?;
        let resolv = guard.bundle.join("resolv.conf");
        let resolv_text = match fs::read(&self.resolv_conf) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(SandboxError::io("read", &self.resolv_conf, e)),
        };
        fs::write(&resolv, resolv_text).map_err(|e| SandboxError::io("write", &resolv, e))?;
        let mut run_spec = spec.clone();
        run_spec.cwd = cwd.to_string();
        run_spec.hostname = hostname.to_string();
        let oci = build_spec(&run_spec, &hosts, &resolv, nofile_limit())?;
        let config = guard.bundle.join("config.json");
        let json = serde_json::to_vec_pretty(&oci)
            .map_err(|e| SandboxError::io("write", &config, io::Error::other(e)))?;
        fs::write(&config, json).map_err(|e| SandboxError::io("write", &config, e))?;

        let pid_file = guard.bundle.join("pid");
        let mut cmd = runtime.command();
        cmd.arg("run")
            .arg("--bundle")
            .arg(&guard.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&guard.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        guard.started = true;
        let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            runtime: runtime.path.clone(),
            source,
        })?;
        guard.child = Some(child);
        let tail = match guard.child.as_mut() {
            Some(child) => stream_output(child, output),
            None => Vec::new(),
        };
        let status = match guard.child.as_mut().map(Child::wait) {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(SandboxError::io("wait for", &runtime.path, e)),
            None => return Err(SandboxError::NoCommand),
        };
        guard.child = None;
        let code = match status.code() {
            Some(c) => c,
            None => {
                use std::os::unix::process::ExitStatusExt;
                return Err(SandboxError::RuntimeKilled {
                    runtime: runtime.path.clone(),
                    signal: status.signal().unwrap_or(0),
                });
            }
        };
        if code != 0 && !pid_file.exists() {
            return Err(SandboxError::Runtime {
                runtime: runtime.path.clone(),
                code,
                stderr: String::from_utf8_lossy(&tail).trim().to_string(),
            });
        }
        Ok(ExitStatus { code })
    }
}

/// Passes the child's stdout and stderr to `output` as they arrive, until both close; returns
/// the last [`STDERR_TAIL`] bytes of stderr.
fn stream_output(child: &mut Child, output: &mut dyn FnMut(Stream, &[u8])) -> Vec<u8> {
    let (tx, rx) = mpsc::channel::<(Stream, Vec<u8>)>();
    let mut readers = Vec::new();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send((stream, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }));
    }
    drop(tx);
    let mut tail: Vec<u8> = Vec::new();
    for (stream, chunk) in rx {
        if stream == Stream::Stderr {
            tail.extend_from_slice(&chunk);
            if tail.len() > STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        output(stream, &chunk);
    }
    for r in readers {
        let _ = r.join();
    }
    tail
}

/// Undoes whatever [`Sandbox::run`] did so far, in reverse, whatever way it is left.
struct Guard<'a> {
    runtime: &'a Runtime,
    mounter: &'a dyn Mounter,
    id: String,
    bundle: PathBuf,
    mounted: usize,
    stubs: Vec<String>,
    child: Option<Child>,
    started: bool,
}

impl Guard<'_> {
    fn runtime_quiet(&self, args: &[&str]) {
        let _ = self
            .runtime
            .command()
            .args(args)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                self.runtime_quiet(&["kill", "--all", "KILL"]);
                self.runtime_quiet(&["kill", "KILL"]);
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if self.started {
            self.runtime_quiet(&["delete", "--force"]);
        }
        let rootfs = self.bundle.join("rootfs");
        if self.mounted > 0 && !self.stubs.is_empty() {
            if let Ok(root) = Root::open(&rootfs) {
                let mut stubs = std::mem::take(&mut self.stubs);
                stubs.sort_by_key(|s| std::cmp::Reverse(s.len()));
                for s in &stubs {
                    root.remove_stub(s);
                }
            }
        }
        for _ in 0..self.mounted {
            let _ = self.mounter.unmount(&rootfs);
        }
        let _ = fs::remove_dir_all(&self.bundle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeMounter {
        calls: Mutex<Vec<String>>,
    }

    impl Mounter for FakeMounter {
        fn mount(&self, m: &Mount, target: &Path) -> Result<(), SandboxError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("mount {} {}", m.kind, target.display()));
            // Stand in for the overlay: a directory with nothing executable.
            fs::create_dir_all(target.join("etc")).unwrap();
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), SandboxError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unmount {}", target.display()));
            Ok(())
        }
        fn detach(&self, target: &Path) -> Result<(), SandboxError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("detach {}", target.display()));
            Ok(())
        }
    }

    #[test]
    fn mount_points_are_directories_or_the_parents_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        fs::write(&file, "x").unwrap();
        let bind = |target: &str, source: &Path| ExtraMount {
            target: target.into(),
            kind: ExtraMountKind::Bind {
                source: source.to_path_buf(),
                readonly: true,
            },
        };
        let spec = RunSpec {
            mounts: vec![
                bind("/run/secrets/token", &file),
                bind("/src/", dir.path()),
                ExtraMount {
                    target: "/cache/a/../b".into(),
                    kind: ExtraMountKind::Tmpfs {
                        size: None,
                        mode: None,
                    },
                },
                bind("/top", &file),
            ],
            ..RunSpec::default()
        };
        assert_eq!(
            mount_point_dirs(&spec),
            [
                "/proc",
                "/dev",
                "/sys",
                "/etc",
                "/run/secrets",
                "/src",
                "/cache/b"
            ]
        );
    }

    #[test]
    fn error_after_mount_still_unmounts_and_removes_bundle() {
        let state = std::env::temp_dir().join(format!("kiln-sandbox-unit-{}", std::process::id()));
        let fake = Arc::new(FakeMounter::default());
        let sb = Sandbox::new(Runtime::from_path("/bin/false"), &state).with_mounter(fake.clone());
        let spec = RunSpec {
            rootfs: vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![],
            }],
            args: vec!["nonexistent-cmd".into()],
            cwd: "/w".into(),
            ..RunSpec::default()
        };
        let err = sb.run(&spec, &mut |_, _| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"nonexistent-cmd\": executable file not found in $PATH"
        );
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(calls[0].starts_with("mount overlay "));
        assert!(calls[1].starts_with("unmount "));
        assert_eq!(fs::read_dir(&state).unwrap().count(), 0);
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn validates_spec() {
        let sb = Sandbox::new(Runtime::from_path("/bin/false"), "/nonexistent");
        let e = sb.run(&RunSpec::default(), &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, SandboxError::NoCommand));
        let spec = RunSpec {
            args: vec!["x".into()],
            ..RunSpec::default()
        };
        assert!(matches!(
            sb.run(&spec, &mut |_, _| {}).unwrap_err(),
            SandboxError::NoRootfs
        ));
    }

    #[test]
    fn runtime_kinds_and_detect() {
        assert_eq!(
            Runtime::from_path("/usr/bin/crun").kind(),
            RuntimeKind::Crun
        );
        assert_eq!(Runtime::from_path("runc").kind(), RuntimeKind::Runc);
        assert_eq!(Runtime::from_path("/opt/youki").kind(), RuntimeKind::Other);
        let e = Runtime::detect(Some(Path::new("/nonexistent/crun"))).unwrap_err();
        assert!(matches!(e, SandboxError::RuntimeNotFound(_)));
        assert_eq!(
            SandboxError::NoRuntime.to_string(),
            "no OCI runtime found: install crun (apt-get install crun) or runc, or pass --runtime PATH"
        );
    }

    #[test]
    fn hosts_contents() {
        assert_eq!(
            hosts_file("buildkitsandbox", &[("db".into(), "10.0.0.2".into())]),
            "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.2\tdb\n"
        );
    }
}
