//! `kiln pull` against a real registry (Debian's docker-registry, CNCF Distribution) started on
//! 127.0.0.1 with a free port; test images are made with umoci and pushed with skopeo, so kiln
//! reads images it did not write; the store is read back with skopeo and umoci.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::registry::{Setup, TestRegistry, PASSWORD, USER};
use crate::support::{require_tool, run};

/// A registry of the shared harness, with its address at hand.
struct Registry {
    addr: String,
    inner: TestRegistry,
}

impl Registry {
    fn start() -> Registry {
        Registry::with(Setup::Anonymous)
    }

    fn with(setup: Setup<'_>) -> Registry {
        let inner = TestRegistry::start(setup);
        Registry {
            addr: inner.host(),
            inner,
        }
    }
}

/// An OCI layout at `layout` with image `tag` holding `files` (path, contents) for `arch`.
fn make_image(layout: &Path, tag: &str, arch: &str, files: &[(&str, Vec<u8>)]) {
    require_tool("umoci", "umoci");
    if !layout.join("index.json").exists() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = layout.with_extension(format!("bundle-{tag}"));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&bundle));
    for (path, contents) in files {
        let p = bundle.join("rootfs").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--architecture",
        arch,
        "--os",
        "linux",
        "--config.cmd",
        "/bin/true",
    ]));
    std::fs::remove_dir_all(&bundle).unwrap();
}

fn push(layout: &Path, tag: &str, dest: &str, all: bool) {
    require_tool("skopeo", "skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--dest-tls-verify=false"]);
    if all {
        cmd.arg("--all");
    }
    run(cmd
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}")));
}

fn kiln(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .arg("--root")
        .arg(root)
        .env("DOCKER_CONFIG", root.join("no-docker-config"))
        .env_remove("KILN_CONFIG")
        .output()
        .expect("run kiln")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "kiln failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every blob in the store's layout hashes to its name.
fn assert_blobs_verify(root: &Path) {
    let dir = root.join("oci/blobs/sha256");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let out = run(Command::new("sha256sum").arg(&path));
        let sum = String::from_utf8_lossy(&out.stdout);
        assert!(sum.starts_with(&name), "blob {name} is corrupt");
    }
}

#[test]
fn pulls_by_tag_and_digest_and_skopeo_and_umoci_read_the_store() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    make_image(
        &layout,
        "v1",
        "amd64",
        &[("hello.txt", b"hello from the registry\n".to_vec())],
    );
    let dest = format!("{}/test/hello:v1", reg.addr);
    push(&layout, "v1", &dest, false);

    let root = work.path().join("root");
    let out = kiln(&root, &["pull", "--progress=plain", &dest]);
    assert_ok(&out);
    let id = stdout(&out);
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--config", "--raw"])
        .arg(format!("docker://{dest}")));
    let config_digest = format!("sha256:{}", sha256_hex(&raw.stdout));
    assert_eq!(
        id, config_digest,
        "kiln prints the image ID (config digest)"
    );

    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}/oci:{dest}", root.display())));
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("\"Architecture\": \"amd64\""));
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}/oci:{dest}", root.display()))
        .arg(&bundle));
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(),
        "hello from the registry\n"
    );
    assert_blobs_verify(&root);

    // A second pull moves nothing.
    let again = kiln(&root, &["pull", "--progress=plain", &dest]);
    assert_ok(&again);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(
        log.contains("already present") && !log.contains("downloading"),
        "{log}"
    );

    // By digest.
    let manifest = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{dest}")));
    let by_digest = format!(
        "{}/test/hello@sha256:{}",
        reg.addr,
        sha256_hex(&manifest.stdout)
    );
    assert_ok(&kiln(&root, &["pull", "--progress=plain", &by_digest]));
    let images = stdout(&kiln(&root, &["images"]));
    assert!(
        images.contains(&dest) && images.contains(&by_digest),
        "{images}"
    );

    // rmi + prune empties the store.
    assert_ok(&kiln(&root, &["rmi", &dest, &by_digest]));
    assert_ok(&kiln(&root, &["prune", "--grace-seconds", "0"]));
    assert_eq!(
        std::fs::read_dir(root.join("oci/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

/// `kiln pull -q`, as `docker pull -q`: stdout is the image ID and nothing else, stderr is
/// empty, on a first pull and on one that finds everything present.
#[test]
fn quiet_pull_prints_only_the_image_id() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    make_image(&layout, "v1", "amd64", &[("q.txt", b"quiet\n".to_vec())]);
    let dest = format!("{}/test/quiet:v1", reg.addr);
    push(&layout, "v1", &dest, false);
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--config", "--raw"])
        .arg(format!("docker://{dest}")));
    let id = format!("sha256:{}", sha256_hex(&raw.stdout));

    // Without -q the same pull reports progress on stderr, so an empty stderr below means -q.
    let loud = kiln(
        &work.path().join("loud"),
        &["pull", "--progress=plain", &dest],
    );
    assert_ok(&loud);
    assert!(!loud.stderr.is_empty(), "a plain pull reports progress");

    let root = work.path().join("root");
    for attempt in ["first pull", "second pull"] {
        let out = kiln(&root, &["pull", "-q", "--progress=plain", &dest]);
        assert_ok(&out);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{id}\n"),
            "{attempt}: stdout is exactly the image ID"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "{attempt}: -q writes nothing to stderr"
        );
    }
    let long = kiln(&root, &["pull", "--quiet", &dest]);
    assert_ok(&long);
    assert_eq!(String::from_utf8_lossy(&long.stdout), format!("{id}\n"));
}

#[test]
fn picks_the_platform_from_a_multi_arch_index() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    make_image(&layout, "amd", "amd64", &[("arch", b"amd64".to_vec())]);
    make_image(&layout, "arm", "arm64", &[("arch", b"arm64".to_vec())]);
    // Put both manifests under one index, tagged `multi`.
    let index_path = layout.join("index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut children = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap();
        let arch = if tag == "amd" { "amd64" } else { "arm64" };
        let mut child = m.clone();
        child.as_object_mut().unwrap().remove("annotations");
        child["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        children.push(child);
    }
    let image_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children,
    }))
    .unwrap();
    let hex = sha256_hex(&image_index);
    std::fs::write(layout.join("blobs/sha256").join(&hex), &image_index).unwrap();
    let mut top = index.clone();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": image_index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&top).unwrap()).unwrap();
    let dest = format!("{}/test/multi:1", reg.addr);
    push(&layout, "multi", &dest, true);

    let root = work.path().join("root");
    assert_ok(&kiln(
        &root,
        &[
            "pull",
            "--progress=plain",
            "--platform",
            "linux/arm64",
            &dest,
        ],
    ));
    let inspect = stdout(&kiln(&root, &["inspect", &dest]));
    assert!(inspect.contains("\"architecture\": \"arm64\""), "{inspect}");

    let root2 = work.path().join("root2");
    assert_ok(&kiln(
        &root2,
        &[
            "pull",
            "--progress=plain",
            "--platform",
            "linux/amd64",
            &dest,
        ],
    ));
    assert!(stdout(&kiln(&root2, &["inspect", &dest])).contains("\"architecture\": \"amd64\""));

    let missing = kiln(
        &root2,
        &[
            "pull",
            "--progress=plain",
            "--platform",
            "linux/s390x",
            &dest,
        ],
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn docker_hub_names_are_pulled_through_a_configured_mirror() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    make_image(&layout, "1", "amd64", &[("m", b"mirror".to_vec())]);
    push(
        &layout,
        "1",
        &format!("{}/library/mirrored:1", reg.addr),
        false,
    );

    // With the flag.
    let root = work.path().join("root");
    let out = kiln(
        &root,
        &[
            "pull",
            "--progress=plain",
            "--registry-mirror",
            &reg.addr,
            "mirrored:1",
        ],
    );
    assert_ok(&out);
    assert!(stdout(&kiln(&root, &["images"])).contains("docker.io/library/mirrored:1"));

    // With the config file.
    let config = work.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[registry.\"docker.io\"]\nmirrors = [\"{}\"]\n", reg.addr),
    )
    .unwrap();
    let root2 = work.path().join("root2");
    let out = kiln(
        &root2,
        &[
            "pull",
            "--progress=plain",
            "--config",
            config.to_str().unwrap(),
            "mirrored:1",
        ],
    );
    assert_ok(&out);
    let skopeo = run(Command::new("skopeo").arg("inspect").arg(format!(
        "oci:{}/oci:docker.io/library/mirrored:1",
        root2.display()
    )));
    assert!(!skopeo.stdout.is_empty());
}

#[test]
fn errors_name_the_registry_and_say_what_to_do() {
    let reg = Registry::start();
    let root = tempfile::tempdir().unwrap();
    let out = kiln(
        root.path(),
        &[
            "pull",
            "--progress=plain",
            &format!("{}/nope/missing:1", reg.addr),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&reg.addr) && err.contains("not found"),
        "{err}"
    );

    // Nothing listens on this port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = kiln(
        root.path(),
        &["pull", "--progress=plain", &format!("127.0.0.1:{port}/x:1")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("hint:"),
        "{err}"
    );
    assert!(!err.contains("panicked"));

    let out = kiln(root.path(), &["pull", "Not/A:Valid:Ref"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid reference format"));
}

#[test]
fn a_pull_killed_at_any_moment_leaves_a_store_the_next_pull_completes() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    // Incompressible data so the transfer takes long enough to be interrupted.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut big = vec![0u8; 24 << 20];
    for chunk in big.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    make_image(
        &layout,
        "big",
        "amd64",
        &[
            ("a.bin", big[..12 << 20].to_vec()),
            ("b.bin", big[12 << 20..].to_vec()),
        ],
    );
    let dest = format!("{}/test/big:1", reg.addr);
    push(&layout, "big", &dest, false);

    let root = work.path().join("root");
    let mut killed_mid_pull = 0;
    for round in 0..12u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["pull", "--progress=plain", "--root"])
            .arg(&root)
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + round * 23 % 200));
        if child.try_wait().unwrap().is_none() {
            killed_mid_pull += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The store stays readable after every kill.
        assert_ok(&kiln(&root, &["images"]));
        assert_blobs_verify(&root);
        if round % 4 == 3 {
            // Clean out the image so later rounds are interrupted again.
            let _ = kiln(&root, &["rmi", &dest]);
            assert_ok(&kiln(&root, &["prune", "--grace-seconds", "0"]));
        }
    }
    assert!(killed_mid_pull > 0, "no kill landed during a pull");
    assert_ok(&kiln(&root, &["pull", "--progress=plain", &dest]));
    assert_blobs_verify(&root);
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}/oci:{dest}", root.display()))
        .arg(&bundle));
    assert_eq!(
        std::fs::read(bundle.join("rootfs/b.bin")).unwrap(),
        &big[12 << 20..]
    );
    // Every stray ingest file was cleaned up or belongs to a resumable partial download.
    for entry in std::fs::read_dir(root.join("ingest")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(name.ends_with(".partial"), "stray ingest file {name}");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    kiln::oci::Digest::of(bytes).hex().to_string()
}

#[test]
fn concurrent_pulls_of_overlapping_images_share_one_store() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let shared: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    make_image(&layout, "a", "amd64", &[("shared.bin", shared.clone())]);
    make_image(
        &layout,
        "b",
        "amd64",
        &[("shared.bin", shared), ("extra", b"b".to_vec())],
    );
    let a = format!("{}/test/a:1", reg.addr);
    let b = format!("{}/test/b:1", reg.addr);
    push(&layout, "a", &a, false);
    push(&layout, "b", &b, false);

    let root = work.path().join("root");
    let children: Vec<_> = [&a, &b, &a, &b]
        .iter()
        .map(|r| {
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(["pull", "--progress=plain", "--root"])
                .arg(&root)
                .arg(r.as_str())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let images = stdout(&kiln(&root, &["images"]));
    assert!(images.contains(&a) && images.contains(&b), "{images}");
    assert_blobs_verify(&root);
    // One copy per blob: a's layer set is reused by b, so nothing but blobs lives in blobs/.
    let count = std::fs::read_dir(root.join("oci/blobs/sha256"))
        .unwrap()
        .count();
    assert!(count <= 8, "{count} blobs for two small images");
}

#[test]
fn basic_auth_login_pull_and_logout() {
    require_tool("htpasswd", "apache2-utils");
    let reg = Registry::with(Setup::Htpasswd);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    make_image(&layout, "1", "amd64", &[("private", b"p".to_vec())]);
    run(Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
        ])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{}/team/private:1", reg.addr)));
    let dest = format!("{}/team/private:1", reg.addr);
    let root = work.path().join("root");
    let docker_config = work.path().join("docker");
    let kiln_with = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .env("DOCKER_CONFIG", &docker_config)
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    };
    let root_arg = root.to_str().unwrap();

    // Anonymous: refused, with a hint to log in.
    let out = kiln_with(
        &["pull", "--progress=plain", "--root", root_arg, &dest],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&reg.addr) && err.contains("kiln login"),
        "{err}"
    );

    // A wrong password is refused and never echoed.
    let out = kiln_with(
        &["login", &reg.addr, "-u", USER, "--password-stdin"],
        Some("wrong-pw-123\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("wrong-pw-123") && err.contains("401"),
        "{err}"
    );
    assert!(!docker_config.join("config.json").exists());

    // The right one is stored where Docker keeps it, and pulls use it.
    let out = kiln_with(
        &["login", &reg.addr, "-u", USER, "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(docker_config.join("config.json")).unwrap();
    assert!(
        config.contains(&reg.addr) && config.contains("\"auth\""),
        "{config}"
    );
    let out = kiln_with(
        &["pull", "--progress=plain", "--root", root_arg, &dest],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains(PASSWORD));

    // After logout, anonymous again.
    assert!(kiln_with(&["logout", &reg.addr], None).status.success());
    assert!(!std::fs::read_to_string(docker_config.join("config.json"))
        .unwrap()
        .contains(&reg.addr));
}

/// What the fault proxy does to the traffic it relays.
#[derive(Clone, Copy)]
enum Fault {
    /// Answer the first `n` requests with 500.
    ServerErrors(usize),
    /// Answer the first request with 429 and `Retry-After: 1`.
    TooManyRequests,
    /// Cut the first response to a layer blob GET after `n` body bytes.
    CutBlob(usize),
    /// Flip one byte of every blob body.
    CorruptBlobs,
}

/// An HTTP/1.1 relay on 127.0.0.1 in front of a registry, one request per connection,
/// injecting `fault`; records each request's first line and `Range` header.
struct FaultProxy {
    addr: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FaultProxy {
    fn start(upstream: String, fault: Fault, cut_digest: Option<String>) -> FaultProxy {
        use std::io::{Read as _, Write as _};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut count = 0usize;
            let mut cut_done = false;
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                    // A TLS ClientHello (kiln probing HTTPS first): this relay speaks HTTP only.
                    if head == [0x16] {
                        break;
                    }
                }
                if head == [0x16] {
                    continue;
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let first = text.lines().next().unwrap_or_default().to_string();
                let range = text
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                    .map(|l| l.to_string());
                log.lock().unwrap().push(match &range {
                    Some(r) => format!("{first} | {r}"),
                    None => first.clone(),
                });
                count += 1;
                let is_blob = first.starts_with("GET ") && first.contains("/blobs/");
                match fault {
                    Fault::ServerErrors(n) if count <= n => {
                        let _ = client.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!");
                        continue;
                    }
                    Fault::TooManyRequests if count == 1 => {
                        let _ = client.write_all(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        continue;
                    }
                    _ => {}
                }
                // Relay with Connection: close so one response ends the connection.
                let mut request = String::new();
                for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                    if !line.to_ascii_lowercase().starts_with("connection:") {
                        request.push_str(line);
                        request.push_str("\r\n");
                    }
                }
                request.push_str("Connection: close\r\n\r\n");
                let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = up.write_all(request.as_bytes());
                let mut response = Vec::new();
                let _ = up.read_to_end(&mut response);
                let body_at = response
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(response.len(), |p| p + 4);
                let wanted_blob = cut_digest
                    .as_ref()
                    .is_none_or(|d| first.contains(d.as_str()));
                match fault {
                    Fault::CutBlob(n)
                        if is_blob && wanted_blob && !cut_done && response.len() > body_at + n =>
                    {
                        cut_done = true;
                        let _ = client.write_all(&response[..body_at + n]);
                    }
                    Fault::CorruptBlobs if is_blob && response.len() > body_at => {
                        let last = response.len() - 1;
                        response[last] ^= 0xff;
                        let _ = client.write_all(&response);
                    }
                    _ => {
                        let _ = client.write_all(&response);
                    }
                }
            }
        });
        FaultProxy { addr, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn pushed_image(reg: &Registry, work: &Path, name: &str, payload: usize) -> (String, String) {
    let layout = work.join(format!("layout-{name}"));
    // Incompressible, so the layer blob is as large as the payload.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ payload as u64;
    let data: Vec<u8> = (0..payload)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect();
    make_image(&layout, "1", "amd64", &[("data.bin", data)]);
    let dest = format!("{}/test/{name}:1", reg.addr);
    push(&layout, "1", &dest, false);
    let manifest = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{dest}")));
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    (format!("test/{name}:1"), layer)
}

#[test]
fn retries_server_errors_and_honours_retry_after() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (name, _) = pushed_image(&reg, work.path(), "flaky", 1 << 16);

    let proxy = FaultProxy::start(reg.addr.clone(), Fault::ServerErrors(3), None);
    let root = work.path().join("root");
    let out = kiln(
        &root,
        &[
            "pull",
            "--progress=plain",
            &format!("{}/{name}", proxy.addr),
        ],
    );
    assert_ok(&out);
    assert!(proxy.requests().len() > 3);

    let proxy = FaultProxy::start(reg.addr.clone(), Fault::TooManyRequests, None);
    let root = work.path().join("root2");
    let started = Instant::now();
    let out = kiln(
        &root,
        &[
            "pull",
            "--progress=plain",
            &format!("{}/{name}", proxy.addr),
        ],
    );
    assert_ok(&out);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
}

#[test]
fn a_download_cut_midway_resumes_with_a_range_request() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (name, layer) = pushed_image(&reg, work.path(), "cut", 3 << 20);
    let proxy = FaultProxy::start(
        reg.addr.clone(),
        Fault::CutBlob(100_000),
        Some(layer.clone()),
    );
    let root = work.path().join("root");
    let out = kiln(
        &root,
        &[
            "pull",
            "--progress=plain",
            &format!("{}/{name}", proxy.addr),
        ],
    );
    assert_ok(&out);
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains(&layer) && r.contains("bytes=100000-")),
        "no Range resume in {requests:#?}"
    );
    assert_blobs_verify(&root);
}

#[test]
fn a_blob_with_wrong_content_is_refused_and_nothing_of_it_stays() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (name, layer) = pushed_image(&reg, work.path(), "bad", 1 << 16);
    let proxy = FaultProxy::start(reg.addr.clone(), Fault::CorruptBlobs, None);
    let root = work.path().join("root");
    let out = kiln(
        &root,
        &[
            "pull",
            "--progress=plain",
            &format!("{}/{name}", proxy.addr),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digest") && err.contains(&proxy.addr), "{err}");
    let hex = layer.trim_start_matches("sha256:");
    assert!(!root.join("oci/blobs/sha256").join(hex).exists());
    for entry in std::fs::read_dir(root.join("ingest")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.ends_with(".tmp"), "stray ingest file {name}");
    }
    assert_ok(&kiln(&root, &["images"]));
}

#[test]
fn a_registry_stopped_mid_pull_gives_a_clear_error() {
    let mut reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (name, _) = pushed_image(&reg, work.path(), "gone", 1 << 16);
    let addr = reg.addr.clone();
    reg.inner.stop();
    let root = work.path().join("root");
    let out = kiln(
        &root,
        &["pull", "--progress=plain", &format!("{addr}/{name}")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("hint:") && !err.contains("panicked"),
        "{err}"
    );
}
