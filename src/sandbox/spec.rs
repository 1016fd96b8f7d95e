//! [`RunSpec`] → the OCI runtime `Spec` written as the bundle's `config.json`, with Docker's and
//! BuildKit's defaults (capabilities, seccomp profile, masked paths, `/dev` mounts, NOFILE
//! rlimit), or BuildKit's `security.insecure` for an insecure RUN.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount as OciMount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::seccomp::{default_profile, Arch};
use super::{ExtraMountKind, NetworkMode, RunSpec, SandboxError, Security};

/// `PATH` for processes whose environment has none (BuildKit's `system.DefaultPathEnvUnix`).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability, in the kernel's numbering (CAP_CHOWN is 0).
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The capabilities kiln's own bounding set holds (`CapBnd` in `/proc/self/status`), as
/// BuildKit's insecure mode gives all current ones: the runtime cannot grant any other (capset
/// fails), and inside a container that is less than the kernel knows.
fn current_capabilities() -> Vec<Capability> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding.is_none_or(|b| b & (1 << bit) != 0))
        .map(|(_, cap)| *cap)
        .collect()
}

/// Docker's default `linux.maskedPaths`.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's default `linux.readonlyPaths`.
pub const READONLY_PATHS: [&str; 6] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys/fs/cgroup",
];

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<OciMount, SandboxError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The environment with `PATH` added when it has none, and `HOME` (the user's `home`) when it
/// has none, as runc adds it: a RUN as a uid that `/etc/passwd` lacks gets `HOME=/`.
pub fn effective_env(env: &[String], home: &str) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

/// BuildKit's `RLIMIT_NOFILE` for build containers.
pub const NOFILE: u64 = 1_048_576;

/// Builds the runtime spec; `hosts` and `resolv` are the host files bind-mounted read-only at
/// `/etc/hosts` and `/etc/resolv.conf`; `nofile` is the `RLIMIT_NOFILE` (normally [`NOFILE`]).
/// The root is always `rootfs` inside the bundle.
/// devpts with the `tty` group (5) owning the ptys, unless rootless kiln's namespace does not
/// map gid 5 (the single-ID fallback), where the kernel refuses the option.
fn devpts_options() -> &'static [&'static str] {
    const ALL: [&str; 6] = [
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
        "gid=5",
    ];
    if super::userns::inside() && !super::userns::gid_mapped(5) {
        &ALL[..5]
    } else {
        &ALL
    }
}

/// The process's rlimits: the `--ulimit`s, and BuildKit's `RLIMIT_NOFILE` (`nofile`) unless
/// one of them sets it.
fn rlimits(spec: &RunSpec, nofile: u64) -> Result<Vec<PosixRlimit>, SandboxError> {
    let mut out = Vec::new();
    if !spec
        .ulimits
        .iter()
        .any(|u| u.kind == PosixRlimitType::RlimitNofile)
    {
        out.push(
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(nofile)
                .soft(nofile)
                .build()?,
        );
    }
    for u in &spec.ulimits {
        out.push(
            PosixRlimitBuilder::default()
                .typ(u.kind)
                .hard(u.hard)
                .soft(u.soft)
                .build()?,
        );
    }
    Ok(out)
}

/// `/dev/shm`'s size: `--shm-size` in whole KiB (at least one), else BuildKit's 64 MiB.
fn shm_size_option(size: Option<u64>) -> String {
    match size {
        Some(bytes) => format!("size={}k", bytes.div_ceil(1024).max(1)),
        None => "size=65536k".to_string(),
    }
}

pub fn build_spec(
    spec: &RunSpec,
    hosts: &Path,
    resolv: &Path,
    nofile: u64,
) -> Result<Spec, SandboxError> {
    let insecure = spec.security == Security::Insecure;
    let cap_list = if insecure {
        current_capabilities()
    } else {
        DEFAULT_CAPABILITIES.to_vec()
    };
    let caps: HashSet<Capability> = cap_list.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    let user = UserBuilder::default()
        .uid(spec.user.uid)
        .gid(spec.user.gid)
        .additional_gids(spec.user.additional_gids.clone())
        .umask(0o022u32)
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(spec.args.clone())
        .env(effective_env(&spec.env, &spec.user.home))
        .cwd(if spec.cwd.is_empty() {
            "/".to_string()
        } else {
            spec.cwd.clone()
        })
        .capabilities(capabilities)
        .rlimits(rlimits(spec, nofile)?)
        .no_new_privileges(true)
        .build()?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount("/dev/pts", "devpts", "devpts", devpts_options())?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                &shm_size_option(spec.shm_size),
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
    ];
    // A new network namespace may not mount sysfs of the host's namespace read-write, and no
    // sandboxed build needs it writable; an insecure RUN gets it writable as under BuildKit.
    let sys_rw = insecure && spec.network == NetworkMode::Host;
    mounts.push(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &[
            "nosuid",
            "noexec",
            "nodev",
            if sys_rw { "rw" } else { "ro" },
        ],
    )?);
    for (dest, src) in [("/etc/hosts", hosts), ("/etc/resolv.conf", resolv)] {
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(src)
                .options(vec![
                    "rbind".to_string(),
                    "ro".to_string(),
                    "nosuid".to_string(),
                    "nodev".to_string(),
                ])
                .build()?,
        );
    }
    for m in &spec.mounts {
        let built = match &m.kind {
            ExtraMountKind::Bind { source, readonly }
            | ExtraMountKind::Cache { source, readonly } => MountBuilder::default()
                .destination(&m.target)
                .typ("bind")
                .source(source)
                .options(vec![
                    "rbind".to_string(),
                    if *readonly { "ro" } else { "rw" }.to_string(),
                ])
                .build()?,
            ExtraMountKind::Tmpfs { size, mode } => {
                let mut opts = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    format!("mode={:o}", mode.unwrap_or(0o1777)),
                ];
                if let Some(size) = size {
                    opts.push(format!("size={size}"));
                }
                MountBuilder::default()
                    .destination(&m.target)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(opts)
                    .build()?
            }
        };
        mounts.push(built);
    }

    let mut namespaces = vec![
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ];
    if spec.network == NetworkMode::None {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()?;
    // Empty lists, not unset ones: oci-spec's defaults would mask its own list of paths.
    let (masked, readonly): (&[&str], &[&str]) = if insecure {
        (&[], &[])
    } else {
        (&MASKED_PATHS, &READONLY_PATHS)
    };
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(masked.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(readonly.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let linux = if insecure {
        linux
    } else {
        linux.seccomp(default_profile(Arch::host(), &cap_list)?)
    }
    .build()?;

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(spec.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .hostname(spec.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{ExtraMount, UserSpec};
    use std::path::PathBuf;

    fn sample() -> RunSpec {
        RunSpec {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            cwd: "/work".into(),
            user: UserSpec {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![27],
                ..UserSpec::default()
            },
            mounts: vec![
                ExtraMount {
                    target: "/src".into(),
                    kind: ExtraMountKind::Bind {
                        source: PathBuf::from("/host/src"),
                        readonly: true,
                    },
                },
                ExtraMount {
                    target: "/tmp".into(),
                    kind: ExtraMountKind::Tmpfs {
                        size: Some(1 << 20),
                        mode: None,
                    },
                },
            ],
            ..RunSpec::default()
        }
    }

    #[test]
    fn config_json_shape() {
        let s = build_spec(
            &sample(),
            Path::new("/b/hosts"),
            Path::new("/b/resolv.conf"),
            NOFILE,
        )
        .unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let p = &v["process"];
        assert_eq!(p["args"][0], "sh");
        assert_eq!(p["cwd"], "/work");
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["user"]["additionalGids"][0], 27);
        assert_eq!(
            p["env"][0],
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        );
        // The user's HOME is there when the environment has none, not when it has one.
        assert_eq!(p["env"][2], "HOME=/");
        assert_eq!(
            effective_env(&["HOME=/srv".into(), "PATH=/x".into()], "/root"),
            ["HOME=/srv", "PATH=/x"]
        );
        assert_eq!(p["capabilities"]["bounding"].as_array().unwrap().len(), 14);
        assert!(p["capabilities"]["effective"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("CAP_NET_BIND_SERVICE")));
        assert_eq!(p["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(p["rlimits"][0]["hard"], 1048576);
        assert_eq!(v["hostname"], "buildkitsandbox");
        assert_eq!(v["root"]["path"], "rootfs");
        let ns: Vec<_> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ns, ["mount", "pid", "ipc", "uts"]);
        assert!(v["linux"].get("cgroupsPath").is_none());
        let dests: Vec<_> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/src",
                "/tmp"
            ]
        );
        let src = &v["mounts"][8];
        assert_eq!(src["options"], serde_json::json!(["rbind", "ro"]));
        assert_eq!(
            v["mounts"][9]["options"],
            serde_json::json!(["nosuid", "nodev", "mode=1777", "size=1048576"])
        );
    }

    #[test]
    fn network_none_has_a_netns() {
        let mut r = sample();
        r.network = NetworkMode::None;
        let s = build_spec(&r, Path::new("/h"), Path::new("/r"), NOFILE).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert!(v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"type": "network"})));
    }

    #[test]
    fn a_sandboxed_run_gets_dockers_seccomp_profile_and_masks() {
        let s = build_spec(&sample(), Path::new("/h"), Path::new("/r"), NOFILE).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let seccomp = &v["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(seccomp["defaultErrnoRet"], 1);
        assert!(seccomp["syscalls"].as_array().unwrap().len() > 10);
        assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), 11);
        assert_eq!(v["linux"]["readonlyPaths"].as_array().unwrap().len(), 6);
        assert_eq!(v["mounts"][5]["options"][3], "ro");
    }

    #[test]
    fn an_insecure_run_gets_every_capability_and_no_seccomp_or_masks() {
        let mut r = sample();
        r.security = Security::Insecure;
        let s = build_spec(&r, Path::new("/h"), Path::new("/r"), NOFILE).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert!(v["linux"].get("seccomp").is_none(), "{}", v["linux"]);
        assert_eq!(v["linux"]["maskedPaths"], serde_json::json!([]));
        assert_eq!(v["linux"]["readonlyPaths"], serde_json::json!([]));
        let bounding = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(bounding.len(), current_capabilities().len());
        assert!(bounding.contains(&serde_json::json!("CAP_SYS_ADMIN")));
        assert_eq!(v["mounts"][5]["destination"], "/sys");
        assert_eq!(v["mounts"][5]["options"][3], "rw");
        // Without the host's network, sysfs stays read-only (the kernel refuses it writable).
        r.network = NetworkMode::None;
        let s = build_spec(&r, Path::new("/h"), Path::new("/r"), NOFILE).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["mounts"][5]["options"][3], "ro");
    }

    /// Regression: `--ulimit` and `--shm-size` were not accepted, and a RUN always got
    /// BuildKit 20.10's fixed NOFILE and 64 MiB `/dev/shm`; current BuildKit applies both.
    #[test]
    fn ulimits_and_shm_size_reach_the_spec() {
        let mut r = sample();
        r.ulimits = vec![
            crate::sandbox::Ulimit::parse("nofile=1024:2048").unwrap(),
            crate::sandbox::Ulimit::parse("nproc=99").unwrap(),
        ];
        r.shm_size = Some(128 << 20);
        let s = build_spec(&r, Path::new("/h"), Path::new("/r"), NOFILE).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        let limits = v["process"]["rlimits"].as_array().unwrap();
        assert_eq!(limits.len(), 2, "{limits:?}");
        assert_eq!(limits[0]["type"], "RLIMIT_NOFILE");
        assert_eq!(
            (limits[0]["soft"].clone(), limits[0]["hard"].clone()),
            (1024.into(), 2048.into())
        );
        assert_eq!(limits[1]["type"], "RLIMIT_NPROC");
        let shm = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap();
        assert!(
            shm["options"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("size=131072k")),
            "{shm}"
        );
        // Without them, BuildKit's defaults.
        let s = build_spec(&sample(), Path::new("/h"), Path::new("/r"), NOFILE).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["process"]["rlimits"].as_array().unwrap().len(), 1);
        assert_eq!(v["mounts"][3]["options"][4], "size=65536k");
    }
}
