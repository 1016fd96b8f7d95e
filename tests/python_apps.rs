//! The Python fixtures (`fixtures/apps/django`, `fastapi`, `flask-debian`) built with `kiln build`
//! on `python:3.11-slim` / `debian:bookworm-slim` made from Debian packages by the harness
//! (tests/support/python_base.rs: debootstrap, cached per machine), pip reading a local wheel
//! index. The results are read back with skopeo and umoci, independently of kiln, and run with
//! `kiln run`. Needs root, debootstrap, the Debian mirror and (once) PyPI.

mod support;

use support::busybox::ok;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::python_base::PythonBases;
use support::run;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps")
}

/// The bases, with a wheel index holding every Python fixture's requirements.
fn bases() -> PythonBases {
    PythonBases::start(&[
        fixtures().join("django/requirements.txt"),
        fixtures().join("fastapi/app/requirements.txt"),
    ])
}

/// `kiln SUBCOMMAND --root ROOT [--registry-mirror M] ARGS...`; options go first because
/// `kiln run IMAGE CMD...` takes everything after IMAGE.
fn kiln(root: &Path, mirror: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg(args[0]).arg("--root").arg(root);
    if args[0] == "build" {
        cmd.args(["--registry-mirror", mirror, "--progress=plain"]);
    }
    cmd.args(&args[1..])
        .env("DOCKER_CONFIG", root.join("no-docker-config"))
        .env_remove("KILN_CONFIG")
        .output()
        .expect("run kiln")
}

/// The image config from the store, read by skopeo.
fn image_config(root: &Path, tag: &str) -> Value {
    let out = run(Command::new("skopeo")
        .args(["--insecure-policy", "inspect", "--config"])
        .arg(format!("oci:{}/oci:{tag}", root.display())));
    serde_json::from_slice(&out.stdout).expect("image config is JSON")
}

/// The image's files, unpacked by umoci.
fn unpack(root: &Path, tag: &str, into: &Path) -> PathBuf {
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}/oci:{tag}", root.display()))
        .arg(into));
    into.join("rootfs")
}

fn env_has(config: &Value, entry: &str) -> bool {
    config["config"]["Env"]
        .as_array()
        .is_some_and(|env| env.iter().any(|e| e == entry))
}

/// The image's layers start with exactly the base's layers.
fn assert_on_base(config: &Value, base: &[String]) {
    let ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        ids.len() > base.len() && ids[..base.len()] == *base,
        "the image's layers {ids:?} do not start with its base's {base:?}"
    );
}

#[test]
fn django_builds_installs_from_the_wheel_index_and_runs() {
    let bases = bases();
    let mirror = bases.mirror();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = fixtures().join("django");
    let build = ["build", "-t", "django:1", ctx.to_str().unwrap()];
    let id = ok(&kiln(&root, &mirror, &build));
    assert!(id.starts_with("sha256:"), "{id}");

    let cfg = image_config(&root, "docker.io/library/django:1");
    assert_on_base(&cfg, &bases.python_diff_ids);
    let c = &cfg["config"];
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["python", "manage.py", "runserver", "0.0.0.0:8000"])
    );
    assert!(c["ExposedPorts"]["8000/tcp"].is_object(), "{c}");
    for env in [
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "LANG=C.UTF-8",
        "PIP_NO_INDEX=1",
    ] {
        assert!(env_has(&cfg, env), "{env} missing from {c}");
    }

    let rootfs = unpack(&root, "docker.io/library/django:1", &work.path().join("b"));
    assert_eq!(
        std::fs::read(rootfs.join("app/manage.py")).unwrap(),
        std::fs::read(ctx.join("manage.py")).unwrap()
    );
    assert!(rootfs.join("app/mysite/settings.py").is_file());
    assert!(
        rootfs
            .join("usr/local/lib/python3.11/dist-packages/django/__init__.py")
            .is_file(),
        "pip did not install Django under /usr/local"
    );
    assert!(
        !rootfs.join("etc/resolv.conf").exists(),
        "the sandbox's resolv.conf leaked into the image"
    );

    let version = [
        "run",
        "django:1",
        "python",
        "-c",
        "import django; print(django.get_version())",
    ];
    assert_eq!(ok(&kiln(&root, &mirror, &version)), "4.2.16");
    let check = kiln(
        &root,
        &mirror,
        &["run", "django:1", "python", "manage.py", "check"],
    );
    ok(&check);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("System check identified no issues"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // A rebuild takes every step from the cache, pip install included.
    let again = kiln(&root, &mirror, &build);
    ok(&again);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(!log.contains("cache miss"), "{log}");
    let cfg2 = image_config(&root, "docker.io/library/django:1");
    // The same image, to the byte: history times are when each layer was first made.
    assert_eq!(cfg, cfg2);
}

#[test]
fn fastapi_with_the_dockerfile_in_a_subfolder() {
    let bases = bases();
    let mirror = bases.mirror();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = fixtures().join("fastapi");
    let dockerfile = ctx.join("docker/Dockerfile");
    ok(&kiln(
        &root,
        &mirror,
        &[
            "build",
            "-f",
            dockerfile.to_str().unwrap(),
            "-t",
            "fastapi:1",
            ctx.to_str().unwrap(),
        ],
    ));

    let cfg = image_config(&root, "docker.io/library/fastapi:1");
    assert_on_base(&cfg, &bases.python_diff_ids);
    let c = &cfg["config"];
    assert_eq!(c["User"], "nobody");
    assert_eq!(c["WorkingDir"], "/srv");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object(), "{c}");
    assert_eq!(
        c["Cmd"],
        serde_json::json!([
            "uvicorn",
            "app.main:app",
            "--host",
            "0.0.0.0",
            "--port",
            "8080"
        ])
    );

    let rootfs = unpack(&root, "docker.io/library/fastapi:1", &work.path().join("b"));
    assert_eq!(
        std::fs::read(rootfs.join("srv/app/main.py")).unwrap(),
        std::fs::read(ctx.join("app/main.py")).unwrap()
    );
    assert!(rootfs.join("srv/requirements.txt").is_file());
    assert!(
        !rootfs.join("srv/docker").exists(),
        "only app/ was copied, not the Dockerfile's folder"
    );
    assert!(
        rootfs.join("usr/local/bin/uvicorn").is_file(),
        "uvicorn's script"
    );

    assert_eq!(
        ok(&kiln(&root, &mirror, &["run", "fastapi:1", "id", "-u"])),
        "65534"
    );
    let call = [
        "run",
        "fastapi:1",
        "python",
        "-c",
        "import uvicorn; from app.main import app, root; print(type(app).__name__, root())",
    ];
    assert_eq!(
        ok(&kiln(&root, &mirror, &call)),
        "FastAPI {'hello': 'fastapi'}"
    );
}

/// apt-get inside a RUN step reaches the Debian mirror over the host's network.
#[test]
fn flask_from_debian_packages_on_bookworm_slim() {
    let bases = bases();
    let mirror = bases.mirror();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = fixtures().join("flask-debian");
    let build = kiln(
        &root,
        &mirror,
        &["build", "-t", "flask:1", ctx.to_str().unwrap()],
    );
    assert!(
        build.status.success(),
        "building flask-debian failed; its RUN apt-get needs the Debian mirror in the image's \
         sources.list over the host's network:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let cfg = image_config(&root, "docker.io/library/flask:1");
    assert_on_base(&cfg, &bases.debian_diff_ids);
    let c = &cfg["config"];
    assert!(env_has(&cfg, "FLASK_APP=app.py"), "{c}");
    assert_eq!(c["WorkingDir"], "/opt/app");
    assert!(c["ExposedPorts"]["5000/tcp"].is_object(), "{c}");

    let rootfs = unpack(&root, "docker.io/library/flask:1", &work.path().join("b"));
    assert!(rootfs.join("opt/app/app.py").is_file());
    assert!(rootfs
        .join("usr/lib/python3/dist-packages/flask/__init__.py")
        .is_file());
    let lists: Vec<_> = std::fs::read_dir(rootfs.join("var/lib/apt/lists"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .collect();
    assert!(lists.is_empty(), "apt lists left in the image: {lists:?}");

    let call = [
        "run",
        "flask:1",
        "python3",
        "-c",
        "from app import app; print(app.test_client().get('/').data.decode(), end='')",
    ];
    assert_eq!(ok(&kiln(&root, &mirror, &call)), "hello from flask");
}

/// A root filesystem for podman's `--rootfs`: busybox-static, the kiln binary and the shared
/// libraries `ldd` names for it, a state dir and the fixtures' contexts. No crun, runc,
/// newuidmap in it: kiln there has only what a minimal build container has.
fn container_rootfs(dir: &Path, contexts: &[&str]) {
    let busybox = support::require_tool("busybox", "busybox-static");
    let kiln = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    for d in [
        "bin", "tmp", "state", "ctx", "proc", "dev", "sys", "etc", "mnt",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(&busybox, dir.join("bin/busybox")).unwrap();
    std::fs::copy(&kiln, dir.join("kiln")).unwrap();
    let ldd = run(Command::new("ldd").arg(&kiln));
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = dir.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    for name in contexts {
        run(Command::new("cp")
            .arg("-r")
            .arg(fixtures().join(name))
            .arg(dir.join("ctx")));
    }
}

/// Docker's default seccomp rule for a container without CAP_SYS_ADMIN, on podman's own
/// profile: no unshare, mount, umount2, setns or pivot_root, clone without namespace flags,
/// clone3 ENOSYS. (podman's profile, containers-common 0.50, lets unshare(CLONE_NEWUSER)
/// through, where rootless kiln would work: this test is for the place that allows nothing.)
fn docker_like_seccomp(into: &Path) -> PathBuf {
    let podman_profile = "/usr/share/containers/seccomp.json";
    let text = std::fs::read_to_string(podman_profile)
        .unwrap_or_else(|e| panic!("{podman_profile}: {e} (apt-get install -y podman)"));
    let mut profile: Value = serde_json::from_str(&text).expect("podman's seccomp profile");
    let refused = [
        "unshare",
        "mount",
        "umount",
        "umount2",
        "setns",
        "pivot_root",
        "clone",
        "clone3",
        "fsopen",
        "fsmount",
        "move_mount",
        "open_tree",
    ];
    let rules = profile["syscalls"].as_array_mut().expect("syscalls");
    for rule in rules.iter_mut() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !refused.contains(&n.as_str().unwrap_or_default()));
        }
    }
    rules.retain(|r| r["names"].as_array().is_some_and(|n| !n.is_empty()));
    rules.push(serde_json::json!({
        "names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    }));
    rules.push(serde_json::json!({
        "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38
    }));
    let path = into.join("seccomp.json");
    std::fs::write(&path, serde_json::to_vec(&profile).unwrap()).unwrap();
    path
}

/// `podman run --rm --network=host` of `args` on `rootfs`: default capabilities, no
/// --privileged, the given seccomp profile. runc: crun ≤1.8 refuses cgroup-hybrid hosts.
/// The rlimits are the ones this process has (podman's defaults need CAP_SYS_RESOURCE).
fn podman(rootfs: &Path, seccomp: &Path, args: &[&str]) -> Output {
    let profile = format!("--security-opt=seccomp={}", seccomp.display());
    podman_with(rootfs, &[&profile], args)
}

fn podman_with(rootfs: &Path, security: &[&str], args: &[&str]) -> Output {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1 << 20);
    Command::new("podman")
        .args(["--runtime", "runc", "run", "--rm", "--network=host"])
        .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
        .arg("--ulimit=nproc=4096:4096")
        .args(security)
        .arg("--rootfs")
        .arg(rootfs)
        .args(args)
        .output()
        .expect("run podman")
}

#[test]
fn python_and_busybox_fixtures_build_in_an_unprivileged_podman_container() {
    support::busybox::require_root();
    support::require_tool("podman", "podman");
    support::require_tool("runc", "runc");
    let bases = bases();
    let busybox = support::busybox::registry_with_busybox();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let rootfs = work.path().join("rootfs");
    container_rootfs(&rootfs, &["django", "busybox"]);
    let seccomp = docker_like_seccomp(work.path());

    // The container really allows no namespace and no mount.
    let probe = podman(
        &rootfs,
        &seccomp,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox unshare -U /bin/busybox true; echo unshare=$?; \
             /bin/busybox mount -t tmpfs t /mnt; echo mount=$?",
        ],
    );
    let said = String::from_utf8_lossy(&probe.stdout);
    assert!(
        said.contains("unshare=1") && said.contains("mount=") && !said.contains("mount=0"),
        "unshare and mount must be refused in the container:\n{said}\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let mirror = bases.mirror();
    let build = |mirror: &str, tag: &str, ctx: &str| {
        podman(
            &rootfs,
            &seccomp,
            &[
                "/kiln",
                "build",
                "--root",
                "/state",
                "--registry-mirror",
                mirror,
                "--progress=plain",
                "-t",
                tag,
                ctx,
            ],
        )
    };
    let out = build(&mirror, "django:1", "/ctx/django");
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("isolation: chroot (no mounts and no user namespace allowed here")
            && log.contains("gives up: no namespaces"),
        "kiln must say it chose chroot isolation and what that gives up:\n{log}"
    );
    let ran = ok(&podman(
        &rootfs,
        &seccomp,
        &[
            "/kiln",
            "run",
            "--root",
            "/state",
            "django:1",
            "python",
            "-c",
            "import django; print('django', django.get_version())",
        ],
    ));
    assert!(ran.starts_with("django 4."), "{ran}");

    ok(&build(&busybox.addr, "bb:1", "/ctx/busybox"));
    let ran = ok(&podman(
        &rootfs,
        &seccomp,
        &["/kiln", "run", "--root", "/state", "bb:1"],
    ));
    assert_eq!(ran, "hello world");
}

/// Copies `tool` (a path) and the libraries `ldd` names for it into `rootfs`, at their paths.
fn copy_with_libs(rootfs: &Path, tool: &Path) {
    let to = rootfs.join(tool.strip_prefix("/").unwrap());
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(tool, &to).unwrap();
    let ldd = run(Command::new("ldd").arg(tool));
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
}

/// With crun in the container, `auto` takes rootless where the container lets a user namespace
/// make a sandbox (seccomp unconfined, /proc unmasked: "relaxed"), and chroot under podman's
/// own default profile, which allows unshare(CLONE_NEWUSER) but not what crun then needs.
#[test]
fn auto_isolation_in_podman_is_rootless_when_relaxed_and_chroot_by_default() {
    support::busybox::require_root();
    support::require_tool("podman", "podman");
    support::require_tool("runc", "runc");
    let crun = support::require_tool("crun", "crun");
    let busybox = support::busybox::registry_with_busybox();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let rootfs = work.path().join("rootfs");
    container_rootfs(&rootfs, &["busybox"]);
    copy_with_libs(&rootfs, &std::fs::canonicalize(crun).unwrap());
    let build = |state: &str| {
        [
            "/kiln",
            "build",
            "--root",
            state,
            "--registry-mirror",
            busybox.addr.as_str(),
            "--progress=plain",
            "-t",
            "bb:1",
            "/ctx/busybox",
        ]
        .map(str::to_string)
    };
    let relaxed = [
        "--security-opt=seccomp=unconfined",
        "--security-opt=unmask=/proc/*",
    ];
    let args = build("/state-relaxed");
    let out = podman_with(&rootfs, &relaxed, &args.each_ref().map(String::as_str));
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("isolation: rootless"), "{log}");
    // Only root is mapped there (no newuidmap in the container): the image's USER 1000 is not.
    let run = [
        "/kiln",
        "run",
        "--root",
        "/state-relaxed",
        "-u",
        "0",
        "bb:1",
        "cat",
        "/work/built.txt",
    ];
    assert_eq!(ok(&podman_with(&rootfs, &relaxed, &run)), "built by kiln");

    let args = build("/state-default");
    let out = podman_with(&rootfs, &[], &args.each_ref().map(String::as_str));
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("isolation: chroot (no mounts here, and a user namespace cannot make"),
        "{log}"
    );
}
