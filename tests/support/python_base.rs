//! `python:3.11-slim` and `debian:bookworm-slim` made from Debian packages, in a test registry,
//! and a wheel index for pip inside them: what the Python fixtures build on, with no anchors.
//!
//! The images and wheels are made by `scripts/offline-setup.sh` (`bases DIR`, `wheels DIR REQ…`),
//! the same code as the README's offline set-up: debootstrap and apt in a chroot, layers and
//! config written by umoci, `pip download` of the fixtures' requirements. Once per machine
//! (cached under `$KILN_TEST_BASES`, else `/var/tmp/kiln-test-bases`, behind a file lock so
//! parallel test binaries wait for one builder). Per test: a `docker-registry` and `python3 -m
//! http.server` on free ports; the images are pushed with their config's `PIP_FIND_LINKS`
//! naming this test's wheel server.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::registry::{Setup, TestRegistry};
use super::{free_port, require_tool, run};

/// Bump when the way the bases are made changes: older caches are then rebuilt.
/// v2: made by scripts/offline-setup.sh, config (env, cmd) in the layout, a busybox tag.
const BASES_DIR: &str = "bases-v2";
const COMPLETE: &str = "complete";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

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
        let debian_diff_ids = push(&bases, staging.path(), DEBIAN, None, &registry);
        let wheels_url = format!("http://127.0.0.1:{wheel_port}/");
        let python_diff_ids = push(&bases, staging.path(), PYTHON, Some(&wheels_url), &registry);
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

fn setup_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/offline-setup.sh")
}

/// Runs `scripts/offline-setup.sh ARGS…`; its errors say what failed and what to install.
fn run_setup_script(args: &[&std::ffi::OsStr], what: &str) {
    let out = Command::new("bash")
        .arg(setup_script())
        .args(args)
        .env("KILN_DEBIAN_MIRROR", mirror_url())
        .stdin(Stdio::null())
        .output()
        .expect("run bash scripts/offline-setup.sh");
    assert!(
        out.status.success(),
        "scripts/offline-setup.sh failed to make {what} ({}); the Python fixture tests need \
         the Debian mirror (set KILN_TEST_DEBIAN_MIRROR for another one) and, once, PyPI:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
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
    require_tool("/bin/busybox", "busybox-static");
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
    run_setup_script(
        &["bases".as_ref(), dir.as_os_str()],
        "debian:bookworm-slim and python:3.11-slim",
    );
    verify_layout(&dir).unwrap_or_else(|why| panic!("the bases just built are bad: {why}"));
    eprintln!("python_base: bases built in {:.0?}", started.elapsed());
    dir
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

/// Writes `tag` of the cached layout into a staging layout, its layers symlinked, with its
/// config's `PIP_FIND_LINKS` set to `wheels_url` when given, pushes it, and returns its diff IDs.
fn push(
    bases: &Path,
    staging: &Path,
    (tag, repo): (&str, &str),
    wheels_url: Option<&str>,
    registry: &TestRegistry,
) -> Vec<String> {
    let cached = bases.join("layout");
    let index = read_json(&cached.join("index.json")).unwrap();
    let manifest = read_blob_json(&cached, &find_manifest(&index, tag).unwrap()).unwrap();
    let mut config =
        read_blob_json(&cached, manifest["config"]["digest"].as_str().unwrap()).unwrap();
    if let Some(url) = wheels_url {
        let env = config["config"]["Env"]
            .as_array_mut()
            .expect("the python base has an Env");
        let links = env
            .iter_mut()
            .find(|e| e.as_str().is_some_and(|e| e.starts_with("PIP_FIND_LINKS=")))
            .expect("the python base sets PIP_FIND_LINKS");
        *links = json!(format!("PIP_FIND_LINKS={url}"));
    }
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

/// `pip download` of every wheel the requirement files need (the script downloads again when
/// they change).
fn ensure_wheels(cache: &Path, requirements: &[PathBuf]) -> PathBuf {
    let dir = cache.join("wheels");
    let mut args = vec!["wheels".as_ref(), dir.as_os_str()];
    args.extend(requirements.iter().map(|r| r.as_os_str()));
    run_setup_script(&args, "the wheel index");
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
