//! A registry with a busybox base image (from Debian's busybox-static, made with umoci), and
//! helpers to run the kiln binary against it: the harness of the build and cache tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (overlayfs mounts and an OCI runtime); run the tests as root, as CI does"
    );
}

pub fn require_tool_on_path(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: install it with `apt-get install -y {package}` (.ci/run does)"
    );
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Registry {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry with `library/busybox:latest` built from Debian's busybox-static.
pub fn registry_with_busybox() -> Registry {
    require_root();
    require_tool_on_path("docker-registry", "docker-registry");
    require_tool_on_path("umoci", "umoci");
    require_tool_on_path("skopeo", "skopeo");
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: apt-get install -y busybox-static"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start docker-registry");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let layout = dir.path().join("layout");
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    fill_busybox_root(&bundle.join("rootfs"), Path::new("/bin/busybox"));
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    configure_busybox(&image, &[]);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{image}"))
        .arg(format!("docker://{addr}/library/busybox:latest")));
    Registry { child, addr, dir }
}

/// A busybox root filesystem: the static `busybox` binary, its applets and passwd/group.
fn fill_busybox_root(rootfs: &Path, busybox: &Path) {
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for tool in [
        "sh", "cat", "echo", "ls", "mkdir", "wc", "date", "test", "cp", "id", "true", "false",
        "chmod", "rm", "touch", "grep", "env", "stat", "uname",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n").unwrap();
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n",
    )
    .unwrap();
}

/// `CMD sh`, a PATH, and `extra` umoci config flags (`--architecture arm64`).
fn configure_busybox(image: &str, extra: &[&str]) {
    run(Command::new("umoci")
        .args([
            "config",
            "--image",
            image,
            "--config.cmd",
            "sh",
            "--config.env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .args(extra));
}

/// Debian's arm64 busybox-static binary, downloaded once (`apt-get download`) and kept under
/// `$KILN_TEST_BASES` (else /var/tmp/kiln-test-bases).
pub fn arm64_busybox() -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_BASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kiln-test-bases"))
        .join("busybox-arm64");
    let binary = dir.join("busybox");
    if binary.is_file() {
        return binary;
    }
    require_tool_on_path("apt-get", "apt");
    require_tool_on_path("dpkg-deb", "dpkg");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("apt-get")
        .args(["download", "busybox-static:arm64"])
        .current_dir(work.path())
        .output()
        .expect("run apt-get download");
    assert!(
        out.status.success(),
        "cannot download busybox-static:arm64 (the arm64 test base is made from it): enable \
         the architecture with `dpkg --add-architecture arm64 && apt-get update` (.ci/run \
         does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("apt-get download wrote no .deb");
    let unpacked = work.path().join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    std::fs::create_dir_all(&dir).unwrap();
    // Renamed into place, so a concurrent test never sees half a binary.
    let partial = dir.join(format!("busybox.{}", std::process::id()));
    std::fs::copy(unpacked.join("bin/busybox"), &partial).unwrap();
    std::fs::rename(&partial, &binary).unwrap();
    binary
}

/// [`registry_with_busybox`], where `library/busybox:latest` is a multi-platform index of
/// the amd64 image and an arm64 one (Debian's arm64 busybox-static), as on Docker Hub.
/// Also `library/busybox:amd64` and `library/busybox:arm64`, each platform alone.
pub fn registry_with_multiarch_busybox() -> Registry {
    let reg = registry_with_busybox();
    let layout = reg.dir.path().join("layout");
    let arm64 = format!("{}:arm64", layout.display());
    run(Command::new("umoci").args(["new", "--image", &arm64]));
    let bundle = reg.dir.path().join("bundle-arm64");
    run(Command::new("umoci")
        .args(["unpack", "--image", &arm64])
        .arg(&bundle));
    fill_busybox_root(&bundle.join("rootfs"), &arm64_busybox());
    run(Command::new("umoci")
        .args(["repack", "--image", &arm64])
        .arg(&bundle));
    configure_busybox(&arm64, &["--architecture", "arm64", "--os", "linux"]);
    // The index over both, written into the layout by hand (umoci makes no indexes).
    let index_path = layout.join("index.json");
    let mut layout_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = |tag: &str, arch: &str| {
        let d = layout_index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no {tag} in the layout"));
        serde_json::json!({
            "mediaType": d["mediaType"],
            "digest": d["digest"],
            "size": d["size"],
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("latest", "amd64"), entry("arm64", "arm64")],
    }))
    .unwrap();
    let digest = super::sha256sum(&index);
    let hex = digest.trim_start_matches("sha256:");
    std::fs::write(layout.join("blobs/sha256").join(hex), &index).unwrap();
    layout_index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&layout_index).unwrap()).unwrap();
    for (tag, dest) in [("latest", "amd64"), ("arm64", "arm64")] {
        run(Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/library/busybox:{dest}", reg.addr)));
    }
    run(Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(format!("docker://{}/library/busybox:latest", reg.addr)));
    reg
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/apps")
}

pub fn kiln(root: &Path, reg: &Registry, args: &[&str]) -> Output {
    kiln_command(root, &reg.addr, args)
        .output()
        .expect("run kiln")
}

/// `kiln ARGS` on the state root `root`, a `build` with `mirror` as its Docker Hub mirror, and
/// no Docker or kiln config from the machine; callers add environment and run it.
pub fn kiln_command(root: &Path, mirror: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    // Options go before the arguments: `kiln run IMAGE CMD...` takes everything after IMAGE.
    cmd.arg(args[0]).arg("--root").arg(root);
    if args[0] == "build" {
        cmd.args(["--registry-mirror", mirror]);
    }
    cmd.args(&args[1..])
        .env("DOCKER_CONFIG", root.join("no-docker-config"))
        .env_remove("KILN_CONFIG");
    cmd
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Unpacks the built image with umoci, independently of kiln.
pub fn unpack(root: &Path, tag: &str, into: &Path) -> PathBuf {
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}/oci:{tag}", root.display()))
        .arg(into));
    into.join("rootfs")
}

pub fn config(root: &Path, reg: &Registry, tag: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&kiln(root, reg, &["inspect", tag]))).unwrap()
}

/// Moves the registry's `library/busybox:latest` to a new image (same files, one more ENV):
/// what a base tag moving upstream looks like.
pub fn move_busybox_tag(reg: &Registry, env: &str) {
    let image = format!("{}:latest", reg.dir.path().join("layout").display());
    run(Command::new("umoci").args(["config", "--image", &image, "--config.env", env]));
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{image}"))
        .arg(format!("docker://{}/library/busybox:latest", reg.addr)));
}

/// Plain progress output → (step text, cached?) for every step that reported CACHED or DONE.
pub fn step_outcomes(stderr: &str) -> Vec<(String, bool)> {
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((id, text)) = rest.split_once(' ') else {
            continue;
        };
        if let Some(name) = text.strip_prefix('[') {
            // `[stage-0 3/7] COPY a.txt .` → `COPY a.txt .`
            if let Some((_, instr)) = name.split_once("] ") {
                names.insert(id.to_string(), instr.to_string());
            }
        } else if text == "CACHED" || text.starts_with("DONE") {
            if let Some(name) = names.get(id) {
                out.push((name.clone(), text == "CACHED"));
            }
        }
    }
    out
}
