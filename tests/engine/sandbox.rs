//! Real containers through crun and runc (each test runs under every runtime installed).
//! Needs root, overlayfs and `/bin/busybox` (Debian: `apt-get install busybox-static`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln::sandbox::{
    ExitStatus, ExtraMount, ExtraMountKind, NetworkMode, RunSpec, Runtime, Sandbox, SandboxError,
    Stream, UserSpec,
};
use kiln::snapshot::Mount;

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "ls", "hostname", "mkdir", "touch", "pwd", "env", "sleep", "grep",
    "true", "false", "wc", "stat", "readlink",
];

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "tests/sandbox.rs runs containers and must run as root (overlayfs, namespaces, crun/runc)"
    );
}

fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    if !p.exists() {
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "busybox-static"])
            .status();
    }
    assert!(
        p.exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    p
}

fn runtimes() -> Vec<Runtime> {
    let rts: Vec<Runtime> = ["crun", "runc"]
        .iter()
        .filter_map(|n| Runtime::detect(Some(Path::new(n))).ok())
        .collect();
    assert!(
        !rts.is_empty(),
        "neither crun nor runc is installed: apt-get install crun runc"
    );
    rts
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("kiln-sandbox-")
            .tempdir()
            .unwrap();
        let lower = dir.path().join("lower");
        fs::create_dir_all(lower.join("bin")).unwrap();
        fs::copy(busybox(), lower.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", lower.join("bin").join(a)).unwrap();
        }
        for d in ["upper", "work", "state"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn rootfs(&self) -> Vec<Mount> {
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", self.path("lower").display()),
                format!("upperdir={}", self.path("upper").display()),
                format!("workdir={}", self.path("work").display()),
            ],
        }]
    }

    fn spec(&self, script: &str) -> RunSpec {
        RunSpec {
            rootfs: self.rootfs(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            ..RunSpec::default()
        }
    }

    fn try_run(
        &self,
        rt: &Runtime,
        spec: &RunSpec,
    ) -> (Result<ExitStatus, SandboxError>, String, String) {
        let sb = Sandbox::new(rt.clone(), self.path("state"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = sb.run(spec, &mut |s, b| match s {
            Stream::Stdout => out.extend_from_slice(b),
            Stream::Stderr => err.extend_from_slice(b),
        });
        self.assert_clean();
        (
            r,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    fn run(&self, rt: &Runtime, spec: &RunSpec) -> (i32, String, String) {
        let (r, out, err) = self.try_run(rt, spec);
        match r {
            Ok(s) => (s.code(), out, err),
            Err(e) => panic!("{}: {e}\nstdout: {out}\nstderr: {err}", rt.path().display()),
        }
    }

    /// No mount under the fixture is left, and no bundle directory.
    fn assert_clean(&self) {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let me = self.dir.path().to_str().unwrap();
        assert!(
            !mountinfo.contains(me),
            "mounts left behind under {me}:\n{mountinfo}"
        );
        let left: Vec<_> = fs::read_dir(self.path("state")).unwrap().collect();
        assert!(left.is_empty(), "bundle left behind: {left:?}");
    }
}

#[test]
fn output_is_streamed_and_exit_code_returned() {
    let f = Fixture::new();
    for rt in runtimes() {
        let (code, out, err) = f.run(&rt, &f.spec("echo hello; echo err >&2; exit 3"));
        assert_eq!((code, out.as_str(), err.as_str()), (3, "hello\n", "err\n"));
    }
}

#[test]
fn streams_chunks_as_they_arrive() {
    let f = Fixture::new();
    for rt in runtimes() {
        let sb = Sandbox::new(rt.clone(), f.path("state"));
        let start = std::time::Instant::now();
        let mut first = None;
        let status = sb
            .run(&f.spec("echo one; sleep 2; echo two"), &mut |_, _| {
                first.get_or_insert(start.elapsed());
            })
            .unwrap();
        assert!(status.success());
        let first = first.expect("no output");
        assert!(
            first < std::time::Duration::from_millis(1900),
            "first chunk only after {first:?}"
        );
        f.assert_clean();
    }
}

#[test]
fn writes_land_in_the_upper_dir() {
    let f = Fixture::new();
    for rt in runtimes() {
        let (code, _, err) = f.run(&rt, &f.spec("echo data > /newfile; mkdir -p /a/b"));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            fs::read_to_string(f.path("upper/newfile")).unwrap(),
            "data\n"
        );
        assert!(f.path("upper/a/b").is_dir());
        // Mount points the runtime needed (/etc/hosts, /etc/resolv.conf) are not left behind.
        assert!(!f.path("upper/etc").exists());
        fs::remove_file(f.path("upper/newfile")).unwrap();
        fs::remove_dir_all(f.path("upper/a")).unwrap();
    }
}

#[test]
fn env_and_cwd_are_honoured_and_cwd_created() {
    let f = Fixture::new();
    for rt in runtimes() {
        let mut spec = f.spec("echo $FOO; pwd; echo $PATH");
        spec.env = vec!["FOO=bar baz".into()];
        spec.cwd = "/made/here".into();
        let (code, out, _) = f.run(&rt, &spec);
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "bar baz\n/made/here\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        );
        assert!(f.path("upper/made/here").is_dir());
    }
}

#[test]
fn runs_as_the_given_user_with_cwd_owned_by_it() {
    let f = Fixture::new();
    for rt in runtimes() {
        let mut spec = f.spec("id -u; id -g; id -G; touch /home/u/f");
        spec.user = UserSpec {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![2000],
            ..UserSpec::default()
        };
        spec.cwd = "/home/u".into();
        let (code, out, err) = f.run(&rt, &spec);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "1000\n1000\n1000 2000\n");
        let md = fs::metadata(f.path("upper/home/u")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1000));
        fs::remove_dir_all(f.path("upper/home")).unwrap();
    }
}

#[test]
fn hostname_and_own_pid_namespace() {
    let f = Fixture::new();
    for rt in runtimes() {
        let (code, out, _) = f.run(&rt, &f.spec("hostname; echo $$; cat /etc/hosts"));
        assert_eq!(code, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "buildkitsandbox");
        assert_eq!(lines[1], "1", "the command is pid 1");
        assert!(
            out.contains("127.0.0.1\tlocalhost buildkitsandbox\n"),
            "{out}"
        );
        assert!(out.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"));
    }
}

fn interfaces(net_dev: &str) -> Vec<String> {
    net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn network_none_has_only_loopback_and_host_sees_host_interfaces() {
    let f = Fixture::new();
    let host = interfaces(&fs::read_to_string("/proc/net/dev").unwrap());
    for rt in runtimes() {
        let mut spec = f.spec("cat /proc/net/dev");
        spec.network = NetworkMode::None;
        let (code, out, _) = f.run(&rt, &spec);
        assert_eq!(code, 0);
        assert_eq!(interfaces(&out), vec!["lo"]);
        spec.network = NetworkMode::Host;
        let (code, out, _) = f.run(&rt, &spec);
        assert_eq!(code, 0);
        let mut seen = interfaces(&out);
        let mut want = host.clone();
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
    }
}

#[test]
fn bind_and_tmpfs_mounts() {
    let f = Fixture::new();
    let ro = f.path("ro-src");
    let rw = f.path("rw-src");
    fs::create_dir(&ro).unwrap();
    fs::create_dir(&rw).unwrap();
    fs::write(ro.join("in"), "from host\n").unwrap();
    for rt in runtimes() {
        let mut spec = f.spec(
            "cat /ro/in; touch /ro/x && echo ro-writable; echo hi > /rw/out; \
             grep ' /scratch ' /proc/mounts | grep -c tmpfs; touch /scratch/t && echo tmpfs-ok",
        );
        spec.mounts = vec![
            ExtraMount {
                target: "/ro".into(),
                kind: ExtraMountKind::Bind {
                    source: ro.clone(),
                    readonly: true,
                },
            },
            ExtraMount {
                target: "/rw".into(),
                kind: ExtraMountKind::Bind {
                    source: rw.clone(),
                    readonly: false,
                },
            },
            ExtraMount {
                target: "/scratch".into(),
                kind: ExtraMountKind::Tmpfs {
                    size: Some(1 << 20),
                    mode: None,
                },
            },
        ];
        let (code, out, err) = f.run(&rt, &spec);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "from host\n1\ntmpfs-ok\n");
        assert!(err.contains("Read-only file system"), "{err}");
        assert!(!ro.join("x").exists());
        assert_eq!(fs::read_to_string(rw.join("out")).unwrap(), "hi\n");
        // The mount points were created for the run only.
        for stub in ["ro", "rw", "scratch"] {
            assert!(!f.path("upper").join(stub).exists(), "{stub} left in upper");
        }
    }
}

#[test]
fn resolv_conf_is_the_hosts() {
    let f = Fixture::new();
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for rt in runtimes() {
        let (code, out, _) = f.run(&rt, &f.spec("cat /etc/resolv.conf"));
        assert_eq!(code, 0);
        assert_eq!(out, host);
        let (code, _, err) = f.run(&rt, &f.spec("echo x > /etc/resolv.conf"));
        assert_ne!(code, 0, "resolv.conf must be read-only");
        assert!(err.contains("Read-only file system"), "{err}");
    }
}

#[test]
fn missing_command_is_a_clear_error_or_127() {
    let f = Fixture::new();
    for rt in runtimes() {
        let mut spec = f.spec("");
        spec.args = vec!["nope".into()];
        let (r, _, _) = f.try_run(&rt, &spec);
        let e = r.unwrap_err();
        assert_eq!(
            e.to_string(),
            "exec: \"nope\": executable file not found in $PATH"
        );
        let (code, _, err) = f.run(&rt, &f.spec("nope"));
        assert_eq!(code, 127);
        assert!(err.contains("nope: not found"), "{err}");
    }
}

#[test]
fn readonly_rootfs() {
    let f = Fixture::new();
    for rt in runtimes() {
        let mut spec = f.spec("touch /x");
        spec.readonly_rootfs = true;
        let (code, _, err) = f.run(&rt, &spec);
        assert_ne!(code, 0);
        assert!(err.contains("Read-only file system"), "{err}");
    }
}

#[test]
fn proc_is_masked_like_docker() {
    let f = Fixture::new();
    for rt in runtimes() {
        let (code, out, err) = f.run(
            &rt,
            &f.spec(
                "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; \
                 echo 1 > /proc/sys/kernel/domainname || echo ro-sys",
            ),
        );
        assert_eq!(code, 0, "{err}");
        // /proc/timer_list is bound to /dev/null, /sys/firmware to an empty tmpfs.
        assert_eq!(out, "0\n0\nro-sys\n");
    }
}

#[test]
fn bad_mount_fails_cleanly() {
    let f = Fixture::new();
    for rt in runtimes() {
        let mut spec = f.spec("true");
        spec.rootfs[0].options[0] = format!("lowerdir={}", f.path("missing").display());
        let (r, _, _) = f.try_run(&rt, &spec);
        assert!(matches!(r, Err(SandboxError::Mount { .. })), "{r:?}");
    }
}

#[test]
fn runtime_failure_before_start_is_an_error() {
    let f = Fixture::new();
    for rt in runtimes() {
        let mut spec = f.spec("true");
        spec.mounts = vec![ExtraMount {
            target: "/b".into(),
            kind: ExtraMountKind::Bind {
                source: f.path("does-not-exist"),
                readonly: true,
            },
        }];
        let (r, _, _) = f.try_run(&rt, &spec);
        assert!(matches!(r, Err(SandboxError::Runtime { .. })), "{r:?}");
    }
}

#[test]
fn panicking_callback_still_cleans_up() {
    let f = Fixture::new();
    for rt in runtimes() {
        let sb = Sandbox::new(rt.clone(), f.path("state"));
        let spec = f.spec("echo start; sleep 30");
        let t = std::time::Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sb.run(&spec, &mut |_, _| panic!("caller gave up"))
        }));
        assert!(r.is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(20));
        f.assert_clean();
    }
}

#[test]
fn detect_prefers_crun() {
    let rt = Runtime::detect(None).unwrap();
    if Path::new("/usr/bin/crun").exists() {
        assert_eq!(rt.kind(), kiln::sandbox::RuntimeKind::Crun);
    }
    let kinds: Vec<_> = runtimes().iter().map(|r| r.kind()).collect();
    for (bin, kind) in [
        ("crun", kiln::sandbox::RuntimeKind::Crun),
        ("runc", kiln::sandbox::RuntimeKind::Runc),
    ] {
        if ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
            .iter()
            .any(|d| Path::new(d).join(bin).exists())
        {
            assert!(kinds.contains(&kind), "{bin} installed but not tested");
        }
    }
}

/// `count` lower dirs named like snapshots (`<64 hex>/fs`, about 100 bytes of options each) on
/// top of the fixture's busybox layer, top first; layer `i` holds `/layer-i` and `/top` says
/// which layer is on top. With 150 of them the overlay options are ~15 kB, far past the 4096
/// bytes mount(2) takes.
fn many_lowers(f: &Fixture, count: usize) -> String {
    let mut lowers = Vec::new();
    for i in (0..count).rev() {
        let dir = f.path(&format!("snapshots/{i:064x}/fs"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("layer-{i}")), format!("{i}\n")).unwrap();
        fs::write(dir.join("top"), format!("{i}\n")).unwrap();
        lowers.push(dir.display().to_string());
    }
    lowers.push(f.path("lower").display().to_string());
    format!("lowerdir={}", lowers.join(":"))
}

#[test]
fn a_rootfs_of_many_layers_mounts_past_the_page_limit() {
    let f = Fixture::new();
    let lowerdir = many_lowers(&f, 150);
    assert!(lowerdir.len() > 4096 * 3);
    for rt in runtimes() {
        let mut spec = f.spec("cat /top /layer-0 /layer-149; echo w > /written");
        spec.rootfs[0].options[0] = lowerdir.clone();
        let (code, out, err) = f.run(&rt, &spec);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "149\n0\n149\n");
        assert_eq!(fs::read_to_string(f.path("upper/written")).unwrap(), "w\n");
        fs::remove_file(f.path("upper/written")).unwrap();
    }
}

#[test]
fn a_mount_guard_mounts_many_layers_and_unmounts() {
    use kiln::exec::mounts::MountGuard;
    let f = Fixture::new();
    let mut rootfs = f.rootfs();
    rootfs[0].options[0] = many_lowers(&f, 150);
    let target = f.path("merged");
    let guard = MountGuard::mount(&rootfs, &target).unwrap();
    assert_eq!(fs::read_to_string(target.join("top")).unwrap(), "149\n");
    assert_eq!(fs::read_to_string(target.join("layer-0")).unwrap(), "0\n");
    assert!(target.join("bin/busybox").exists());
    fs::write(target.join("copied"), "c").unwrap();
    guard.unmount().unwrap();
    assert_eq!(fs::read_to_string(f.path("upper/copied")).unwrap(), "c");
    assert!(!target.join("top").exists());
    f.assert_clean();
}
