//! `python:3.11-slim` and `debian:bookworm-slim` made from Debian packages, in a test registry,
//! and a wheel index for pip inside them: what the Python fixtures build on, with no anchors.
//!
//! Once per machine (cached under `$KILN_TEST_BASES`, else `/var/tmp/kiln-test-bases`, behind a
//! file lock so parallel test binaries wait for one builder): `debootstrap --variant=minbase
//! bookworm` becomes the debian layer, `apt-get install python3 python3-pip python3-venv
//! ca-certificates` in a chroot on top of it the python layer (umoci writes both layers), and
//! `pip download` fills a wheel directory from the fixtures' requirements. Per test: a
//! `docker-registry` and `python3 -m http.server` on free ports; the images are pushed with a
//! config written here, whose `PIP_FIND_LINKS` names this test's wheel server.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::registry::{Setup, TestRegistry};
use super::{free_port, require_tool, run};

/// Bump when the way the bases are made changes: older caches are then rebuilt.
const BASES_DIR: &str = "bases-v1";
const COMPLETE: &str = "complete";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The anchors' python image installs these, as the official image ships them.
const PYTHON_PACKAGES: &str = "python3 python3-pip python3-venv ca-certificates";

/// The tags in the cached layout and where each is pushed.
pub const DEBIAN: (&str, &str) = ("debian", "library/debian:bookworm-slim");
pub const PYTHON: (&str, &str) = ("python", "library/python:3.11-slim");

/// A registry holding both bases and the wheel server their pip uses; both stop on drop.
pub struct PythonBases {
    pub registry: TestRegistry,
    pub wheel_port: u16,
    wheels: Child,
    /// Layer diff IDs of each pushed image, to check a build kept its base's layers.
    pub debian_diff_ids: Vec<String>,
    pub python_diff_ids: Vec<String>,
}

impl PythonBases {
    /// Builds or reuses the cached bases and wheels for `requirements` (pip requirement files),
    /// then serves them. Fails with what is missing when the machine cannot do it.
    pub fn start(requirements: &[PathBuf]) -> PythonBases {
        preflight();
        let cache = cache_dir();
        fs::create_dir_all(&cache)
            .unwrap_or_else(|e| panic!("cannot create the base cache {}: {e}", cache.display()));
        // One builder per machine; the others wait here, then find the cache complete.
        let lock = fs::File::create(cache.join("lock")).expect("create the cache lock file");
        lock.lock().expect("lock the base cache");
        let bases = ensure_bases(&cache);
        let wheel_dir = ensure_wheels(&cache, requirements);
        let (wheels, wheel_port) = serve_wheels(&wheel_dir);
        let registry = TestRegistry::start(Setup::Anonymous);
        let staging = tempfile::tempdir().unwrap();
        let python_env = vec![
            PATH_ENV.to_string(),
            "LANG=C.UTF-8".to_string(),
            "PIP_BREAK_SYSTEM_PACKAGES=1".to_string(),
            "PIP_NO_INDEX=1".to_string(),
            format!("PIP_FIND_LINKS=http://127.0.0.1:{wheel_port}/"),
            "PIP_DISABLE_PIP_VERSION_CHECK=1".to_string(),
        ];
        let debian_diff_ids = push(
            &bases,
            staging.path(),
            DEBIAN,
            vec![PATH_ENV.to_string()],
            "bash",
            &registry,
        );
        let python_diff_ids = push(
            &bases,
            staging.path(),
            PYTHON,
            python_env,
            "python3",
            &registry,
        );
        drop(lock);
        PythonBases {
            registry,
            wheel_port,
            wheels,
            debian_diff_ids,
            python_diff_ids,
        }
    }

    /// host:port of the registry, for `--registry-mirror`.
    pub fn mirror(&self) -> String {
        self.registry.host()
    }
}

impl Drop for PythonBases {
    fn drop(&mut self) {
        let _ = self.wheels.kill();
        let _ = self.wheels.wait();
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("KILN_TEST_BASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kiln-test-bases"))
}

fn mirror_url() -> String {
    std::env::var("KILN_TEST_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.to_string())
}

/// Everything the bases need, checked before any work so the failure names what is missing.
fn preflight() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the Python fixture tests need root (debootstrap and chroot build their base images, \
         kiln builds over overlayfs); run them as root, as CI does"
    );
    require_tool("debootstrap", "debootstrap");
    require_tool("chroot", "coreutils");
    require_tool("umoci", "umoci");
    require_tool("skopeo", "skopeo");
    require_tool("/usr/bin/docker-registry", "docker-registry");
    require_tool("python3", "python3");
    let pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output();
    assert!(
        pip.is_ok_and(|o| o.status.success()),
        "`python3 -m pip` does not work: install the Debian package `python3-pip` \
         (apt-get install -y python3-pip); the wheel index is filled with `pip download`"
    );
}

/// The cached layout with the `debian` and `python` tags, rebuilt when missing or corrupt.
fn ensure_bases(cache: &Path) -> PathBuf {
    let dir = cache.join(BASES_DIR);
    match verify_layout(&dir) {
        Ok(()) => return dir,
        Err(why) if dir.exists() => {
            eprintln!("python_base: rebuilding {} ({why})", dir.display());
            remove_tree(&dir);
        }
        Err(_) => {}
    }
    let started = Instant::now();
    eprintln!(
        "python_base: building debian:bookworm-slim and python:3.11-slim from Debian packages \
         into {} (once per machine)",
        dir.display()
    );
    let partial = cache.join(format!("{BASES_DIR}.partial"));
    remove_tree(&partial);
    fs::create_dir_all(&partial).unwrap();
    build_bases(&partial);
    fs::write(partial.join(COMPLETE), "ok\n").unwrap();
    fs::rename(&partial, &dir).unwrap();
    verify_layout(&dir).unwrap_or_else(|why| panic!("the bases just built are bad: {why}"));
    eprintln!("python_base: bases built in {:.0?}", started.elapsed());
    dir
}

fn build_bases(work: &Path) {
    let layout = work.join("layout");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image("empty")]));

    // Layer 1: the plain minbase, as debian:bookworm-slim.
    let bundle = work.join("bundle-debian");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image("empty")])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let mirror = mirror_url();
    let log = work.join("debootstrap.log");
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(work.join("debootstrap.err")).unwrap())
        .status()
        .expect("run debootstrap");
    if !status.success() {
        unmount_under(&rootfs);
        panic!(
            "debootstrap of Debian bookworm from {mirror} failed ({status}); the Python fixture \
             tests need the Debian mirror (set KILN_TEST_DEBIAN_MIRROR for another one). \
             Its output ends with:\n{}\n{}",
            tail(&log, 15),
            tail(&work.join("debootstrap.err"), 15)
        );
    }
    trim_rootfs(&rootfs);
    for sandbox_file in ["etc/resolv.conf", "etc/hostname"] {
        let _ = fs::remove_file(rootfs.join(sandbox_file));
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image(DEBIAN.0)])
        .args([
            "--history.created_by",
            "debootstrap --variant=minbase bookworm",
        ])
        .arg(&bundle));
    remove_tree(&bundle);

    // Layer 2: python3 and pip from Debian, as the anchors' python:3.11-slim.
    let bundle = work.join("bundle-python");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image(DEBIAN.0)])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    // apt needs /dev/null and a resolver in the chroot; neither stays in the layer.
    run(Command::new("mknod")
        .args(["-m", "666"])
        .arg(rootfs.join("dev/null"))
        .args(["c", "1", "3"]));
    fs::copy("/etc/resolv.conf", rootfs.join("etc/resolv.conf"))
        .expect("copy the host's /etc/resolv.conf into the chroot");
    let script = format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends {PYTHON_PACKAGES} \
         && ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip"
    );
    let out = Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .expect("run chroot");
    assert!(
        out.status.success(),
        "installing {PYTHON_PACKAGES} with apt-get in a bookworm chroot failed ({}); it needs \
         the Debian mirror in the chroot's sources.list ({mirror}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(rootfs.join("dev/null")).unwrap();
    fs::remove_file(rootfs.join("etc/resolv.conf")).unwrap();
    trim_rootfs(&rootfs);
    run(Command::new("umoci")
        .args(["repack", "--image", &image(PYTHON.0)])
        .args([
            "--history.created_by",
            &format!("apt-get install -y --no-install-recommends {PYTHON_PACKAGES}"),
        ])
        .arg(&bundle));
    remove_tree(&bundle);
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout));
}

/// What the slim images leave out: downloaded packages, package lists and apt's caches (files
/// only: apt's `partial/` directories stay), and device nodes.
fn trim_rootfs(rootfs: &Path) {
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists", "dev"] {
        let Ok(entries) = fs::read_dir(rootfs.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir {
                fs::remove_file(entry.path()).unwrap();
            } else if dir == "dev" {
                fs::remove_dir_all(entry.path()).unwrap();
            }
        }
    }
    for bin in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = fs::remove_file(rootfs.join(bin));
    }
}

/// The layout is complete and every blob's content matches its name.
fn verify_layout(dir: &Path) -> Result<(), String> {
    if !dir.join(COMPLETE).is_file() {
        return Err("no completion marker".into());
    }
    let layout = dir.join("layout");
    let index: Value = read_json(&layout.join("index.json"))?;
    for (tag, _) in [DEBIAN, PYTHON] {
        find_manifest(&index, tag)?;
    }
    let blobs = layout.join("blobs/sha256");
    for entry in fs::read_dir(&blobs).map_err(|e| format!("{}: {e}", blobs.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let actual = sha256_file(&entry.path())?;
        if actual != name {
            return Err(format!("blob {name} has digest {actual}"));
        }
    }
    for (tag, _) in [DEBIAN, PYTHON] {
        let manifest = read_blob_json(&layout, &find_manifest(&index, tag)?)?;
        for d in std::iter::once(&manifest["config"]).chain(
            manifest["layers"]
                .as_array()
                .ok_or("manifest without layers")?,
        ) {
            let digest = d["digest"].as_str().ok_or("descriptor without digest")?;
            if !blob_path(&layout, digest).is_file() {
                return Err(format!("{tag}: blob {digest} is missing"));
            }
        }
    }
    Ok(())
}

fn find_manifest(index: &Value, tag: &str) -> Result<String, String> {
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("tag {tag} is missing"))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    layout.join("blobs/sha256").join(hex)
}

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_blob_json(layout: &Path, digest: &str) -> Result<Value, String> {
    read_json(&blob_path(layout, digest))
}

fn sha256_file(path: &Path) -> Result<String, String> {
    use sha2::Digest as _;
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Writes `tag` of the cached layout into a staging layout with this test's config (env, cmd),
/// its layers symlinked, pushes it, and returns its diff IDs.
fn push(
    bases: &Path,
    staging: &Path,
    (tag, repo): (&str, &str),
    env: Vec<String>,
    cmd: &str,
    registry: &TestRegistry,
) -> Vec<String> {
    let cached = bases.join("layout");
    let index = read_json(&cached.join("index.json")).unwrap();
    let manifest = read_blob_json(&cached, &find_manifest(&index, tag).unwrap()).unwrap();
    let mut config =
        read_blob_json(&cached, manifest["config"]["digest"].as_str().unwrap()).unwrap();
    config["config"]["Env"] = json!(env);
    config["config"]["Cmd"] = json!([cmd]);
    let layout = staging.join(tag);
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        std::os::unix::fs::symlink(blob_path(&cached, digest), blob_path(&layout, digest)).unwrap();
    }
    let write_blob = |bytes: &[u8]| -> (String, usize) {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (config_digest, config_size) = write_blob(config.to_string().as_bytes());
    let mut manifest = manifest;
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config_size);
    let (manifest_digest, manifest_size) = write_blob(manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": super::layout::OCI_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{repo}", registry.host())));
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// `pip download` of every wheel the requirement files need, cached by their contents.
fn ensure_wheels(cache: &Path, requirements: &[PathBuf]) -> PathBuf {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for r in requirements {
        hasher.update(fs::read(r).unwrap_or_else(|e| panic!("read {}: {e}", r.display())));
        hasher.update(b"\0");
    }
    let key: String = hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache.join(format!("wheels-{key}"));
    if dir.join(".complete").is_file() {
        return dir;
    }
    remove_tree(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "-d",
    ])
    .arg(&dir)
    // Only PyPI: a find-links directory configured on this machine is not what the images get.
    .env_remove("PIP_FIND_LINKS")
    .env_remove("PIP_NO_INDEX");
    for r in requirements {
        cmd.arg("-r").arg(r);
    }
    let out = cmd.output().expect("run python3 -m pip download");
    assert!(
        out.status.success(),
        "pip download of the fixtures' wheels from PyPI failed ({}); the Python fixture tests \
         need PyPI to fill {} once:\n{}",
        out.status,
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(dir.join(".complete"), "ok\n").unwrap();
    dir
}

/// `python3 -m http.server` on 127.0.0.1:<free port>, serving `dir`.
fn serve_wheels(dir: &Path) -> (Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break; // port taken: try another
            }
            if http_ok(port) {
                return (child, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!(
        "python3 -m http.server did not come up for {}",
        dir.display()
    );
}

fn http_ok(port: u16) -> bool {
    use std::io::Write as _;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 12];
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
        && s.read_exact(&mut buf).is_ok()
        && buf.starts_with(b"HTTP/1.0 200")
}

/// Removes a directory tree, first detaching anything a killed debootstrap left mounted in it
/// (its /proc and /sys), so the removal never walks into the host's.
fn remove_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    unmount_under(dir);
    fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
}

fn unmount_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
