//! [`RunSpec`] → the OCI runtime `Spec` written as the bundle's `config.json`, with Docker's and
//! BuildKit's defaults (capabilities, masked paths, `/dev` mounts, NOFILE rlimit).

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount as OciMount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::{ExtraMountKind, NetworkMode, RunSpec, SandboxError};

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

/// The environment with `PATH` added when it has none.
pub fn effective_env(env: &[String]) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
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

pub fn build_spec(
    spec: &RunSpec,
    hosts: &Path,
    resolv: &Path,
    nofile: u64,
) -> Result<Spec, SandboxError> {
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
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
        .env(effective_env(&spec.env))
        .cwd(if spec.cwd.is_empty() {
            "/".to_string()
        } else {
            spec.cwd.clone()
        })
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(nofile)
            .soft(nofile)
            .build()?])
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
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
    ];
    // A new network namespace may not mount sysfs of the host's namespace read-write, and no
    // build needs it writable.
    mounts.push(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", "ro"],
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
            ExtraMountKind::Bind { source, readonly } => MountBuilder::default()
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
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
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
}
