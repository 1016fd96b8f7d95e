//! `kiln push` and `kiln build --push` against real registries (Debian's docker-registry):
//! anonymous, htpasswd and token set-ups; what arrives is read back with skopeo and compared
//! byte for byte with the store; cross-repository mounts and skipped blobs are counted through
//! the loopback proxy; uploads cut in the middle and answered 500/429 still complete. Building
//! needs root (overlayfs, an OCI runtime), as the build tests do.

use crate::support::busybox::ok;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::busybox::{registry_with_busybox, Registry as BusyboxRegistry};
use crate::support::proxy::{Action, FaultProxy};
use crate::support::registry::{Setup, TestRegistry, PASSWORD, USER};
use crate::support::token::TokenIssuer;

const DOCKERFILE: &str = "FROM busybox
COPY big.bin /big.bin
RUN echo pushed > /hello
";

/// Bigger than kiln's 8 MiB chunk, and incompressible, so its layer goes up in PATCH chunks.
const BIG: usize = 9 << 20;

/// A state root, a build context, a kiln config and a Docker config directory.
struct Env {
    work: tempfile::TempDir,
}

impl Env {
    /// `http_hosts` are registries kiln speaks plain HTTP to without probing HTTPS (the fault
    /// proxy cannot answer a TLS handshake).
    fn new(http_hosts: &[&str]) -> Env {
        let work = tempfile::tempdir().unwrap();
        let ctx = work.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
        std::fs::write(ctx.join("big.bin"), pseudo_random(BIG)).unwrap();
        let mut config = String::new();
        for h in http_hosts {
            config.push_str(&format!("[registry.\"{h}\"]\nhttp = true\n"));
        }
        std::fs::write(work.path().join("config.toml"), config).unwrap();
        Env { work }
    }

    fn root(&self) -> PathBuf {
        self.work.path().join("root")
    }

    fn kiln(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg(args[0]);
        if args[0] != "login" {
            cmd.arg("--root").arg(self.root());
        }
        if !matches!(args[0], "inspect" | "tag") {
            cmd.arg("--config")
                .arg(self.work.path().join("config.toml"));
        }
        cmd.args(&args[1..])
            .env("DOCKER_CONFIG", self.work.path().join("docker"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("KILN_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kiln");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            use std::io::Write as _;
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Builds the test image with busybox from `mirror`, with extra build flags.
    fn build(&self, mirror: &str, extra: &[&str]) -> Output {
        let ctx = self.work.path().join("ctx");
        let mut args = vec!["build", "--progress=plain", "--registry-mirror", mirror];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        self.kiln(&args, None)
    }
}

fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn skopeo(args: &[&str]) -> Output {
    let out = Command::new(crate::support::require_tool("skopeo", "skopeo"))
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The manifest digest skopeo reads from the registry.
fn registry_digest(image: &str, creds: Option<&str>) -> String {
    let mut args = vec!["inspect", "--tls-verify=false"];
    if let Some(c) = creds {
        args.extend_from_slice(&["--creds", c]);
    }
    let target = format!("docker://{image}");
    args.push(&target);
    let v: serde_json::Value = serde_json::from_slice(&skopeo(&args).stdout).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// Copies `image` with skopeo into a fresh OCI layout and checks that every blob there (the
/// manifest, config and layers) is byte for byte the store's blob of the same name.
fn assert_copy_matches_store(image: &str, creds: Option<&str>, root: &Path) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("copy");
    let dest = format!("oci:{}:x", layout.display());
    let src = format!("docker://{image}");
    let mut args = vec!["copy", "--src-tls-verify=false"];
    if let Some(c) = creds {
        args.extend_from_slice(&["--src-creds", c]);
    }
    args.extend_from_slice(&[&src, &dest]);
    skopeo(&args);
    let mut n = 0;
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let ours = root.join("oci/blobs/sha256").join(entry.file_name());
        let theirs = std::fs::read(entry.path()).unwrap();
        let stored = std::fs::read(&ours)
            .unwrap_or_else(|_| panic!("{} came back but is not in the store", ours.display()));
        assert!(
            theirs == stored,
            "{:?} differs from the store's",
            entry.file_name()
        );
        n += 1;
    }
    n
}

/// The layer digests of the image tagged `tag` in the store, bottom first.
fn stored_layers(env: &Env, tag: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&env.kiln(&["inspect", tag], None))).unwrap();
    let manifest = if v["manifest"].is_object() {
        &v["manifest"]
    } else {
        &v
    };
    manifest["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no layers in {v}"))
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// `sha256:<hex>` as it appears URL-encoded in a query.
fn encoded(digest: &str) -> String {
    digest.replace(':', "%3A")
}

#[test]
fn build_push_mounts_the_base_and_a_second_push_uploads_nothing() {
    let bb: BusyboxRegistry = registry_with_busybox();
    // The base is pulled through the proxy, so kiln records it under the proxy's name, and
    // the push goes through the same proxy: every request is counted.
    let proxy = FaultProxy::start(port_of(&bb.addr));
    let host = proxy.host();
    let env = Env::new(&[&host]);
    let image = format!("{host}/team/app:1");
    let metadata = env.work.path().join("metadata.json");
    let out = env.build(
        &host,
        &[
            "-t",
            &image,
            "--push",
            "--metadata-file",
            metadata.to_str().unwrap(),
        ],
    );
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains("Mounted from library/busybox"), "{err}");
    assert!(err.contains(": Pushed"), "{err}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    let digest = meta["containerimage.digest"].as_str().unwrap().to_string();
    assert_eq!(registry_digest(&image, None), digest);

    // The base layer was mounted, never uploaded.
    let layers = stored_layers(&env, &image);
    assert_eq!(layers.len(), 3, "{layers:?}");
    let base = &layers[0];
    let seen = proxy.seen();
    assert!(
        seen.iter().any(|s| s.method == "POST"
            && s.path.contains(&format!("mount={}", encoded(base)))
            && s.path.contains("from=library%2Fbusybox")),
        "no mount request for the base layer: {seen:#?}"
    );
    let uploads_of_base = seen
        .iter()
        .filter(|s| {
            (s.method == "PUT" || s.method == "PATCH")
                && s.path.contains("/blobs/uploads/")
                && s.path.contains(&encoded(base))
        })
        .count();
    assert_eq!(uploads_of_base, 0, "{seen:#?}");
    // The big layer went up in chunks.
    assert!(
        seen.iter().filter(|s| s.method == "PATCH").count() >= 2,
        "{seen:#?}"
    );
    assert_eq!(assert_copy_matches_store(&image, None, &env.root()), 5);

    // Pushing again moves nothing: one HEAD per blob and the manifest.
    proxy.clear_seen();
    let out = env.kiln(&["push", "--progress=plain", &image], None);
    assert_eq!(ok(&out), digest);
    let err = stderr(&out);
    assert_eq!(err.matches("Layer already exists").count(), 4, "{err}");
    let seen = proxy.seen();
    let heads = seen.iter().filter(|s| s.method == "HEAD").count();
    let puts: Vec<_> = seen.iter().filter(|s| s.method == "PUT").collect();
    assert_eq!(heads, 4, "{seen:#?}");
    assert_eq!(puts.len(), 1, "{seen:#?}");
    assert!(
        puts[0].path.ends_with("/v2/team/app/manifests/1"),
        "{seen:#?}"
    );
    assert_eq!(seen.len(), 5, "{seen:#?}");

    // Under another name in the same registry, everything is mounted from team/app (the
    // store remembers where it pushed), nothing uploaded.
    proxy.clear_seen();
    let other = format!("{host}/other/app:2");
    let out = env.kiln(&["push", "--progress=plain", &image, &other], None);
    assert_eq!(ok(&out), digest);
    let err = stderr(&out);
    assert_eq!(err.matches("Mounted from team/app").count(), 4, "{err}");
    let seen = proxy.seen();
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "PATCH" || (s.method == "PUT" && s.path.contains("/blobs/"))),
        "{seen:#?}"
    );
    assert_eq!(registry_digest(&other, None), digest);
}

#[test]
fn pushes_with_basic_and_token_auth_and_refuses_clearly_without_credentials() {
    let bb = registry_with_busybox();
    let env = Env::new(&[]);
    ok(&env.build(&bb.addr, &["-t", "app:1"]));
    let creds = format!("{USER}:{PASSWORD}");

    let issuer = TokenIssuer::start();
    let basic = TestRegistry::start(Setup::Htpasswd);
    let token = TestRegistry::start(Setup::Token(&issuer));
    for reg in [&basic, &token] {
        let host = reg.host();
        let dest = format!("{host}/team/app:1");

        // Without credentials: a non-zero exit and an error that names the registry, the
        // repository, what the registry answered, and `kiln login`.
        let out = env.kiln(&["push", "--progress=plain", "app:1", &dest], None);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&host)
                && err.contains("team/app")
                && err.contains("401")
                && err.contains(&format!("kiln login {host}")),
            "{err}"
        );

        ok(&env.kiln(
            &["login", &host, "-u", USER, "--password-stdin"],
            Some(&format!("{PASSWORD}\n")),
        ));
        let out = env.kiln(&["push", "--progress=plain", "app:1", &dest], None);
        let digest = ok(&out);
        assert!(!stderr(&out).contains(PASSWORD));
        assert_eq!(registry_digest(&dest, Some(&creds)), digest);
        assert_eq!(
            assert_copy_matches_store(&dest, Some(&creds), &env.root()),
            5
        );
    }
    let scopes: Vec<String> = issuer
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.status == 200 && r.account.as_deref() == Some(USER))
        .flat_map(|r| r.scopes.clone())
        .collect();
    assert!(
        scopes.iter().any(|s| s == "repository:team/app:pull,push"),
        "{scopes:?}"
    );
}

#[test]
fn uploads_cut_midway_or_answered_500_and_429_still_complete() {
    let bb = registry_with_busybox();
    let target = TestRegistry::start(Setup::Anonymous);
    let proxy = FaultProxy::start(target.port);
    let host = proxy.host();
    let env = Env::new(&[&host]);
    ok(&env.build(&bb.addr, &["-t", "app:1"]));

    // The first chunk of the big layer is cut after 1 MiB, the first upload session is
    // answered 429 (Retry-After: 1), the first blob PUT 500.
    proxy.add_method_rule(
        "PATCH",
        "/blobs/uploads/",
        1,
        Action::CutRequestAfter(1 << 20),
    );
    proxy.add_method_rule(
        "POST",
        "/blobs/uploads/",
        1,
        Action::Respond {
            status: 429,
            headers: vec![("Retry-After".into(), "1".into())],
        },
    );
    proxy.add_method_rule(
        "PUT",
        "digest=",
        1,
        Action::Respond {
            status: 500,
            headers: vec![],
        },
    );
    let dest = format!("{host}/team/app:1");
    let out = env.kiln(&["push", "--progress=plain", "app:1", &dest], None);
    let digest = ok(&out);
    let err = stderr(&out);
    assert!(err.contains("upload interrupted"), "{err}");
    let seen = proxy.seen();
    assert_eq!(seen.iter().filter(|s| s.faulted).count(), 3, "{seen:#?}");
    assert_eq!(registry_digest(&dest, None), digest);
    assert_eq!(assert_copy_matches_store(&dest, None, &env.root()), 5);

    // The library API a registry cache export uses: a manifest whose blobs are not in this
    // (empty) store but live in team/app is pushed by mounting them; a blob that lives
    // nowhere is an error that says so.
    use kiln::registry::config::RegistryConfig;
    use kiln::registry::push::{BlobOutcome, ManifestPush, PushError, PushOptions, Pusher};
    let manifest = std::fs::read(
        env.root()
            .join("oci/blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let mut push = ManifestPush::from_image_manifest(manifest, "").unwrap();
    for b in &mut push.blobs {
        b.mount_from = vec!["team/app".into()];
    }
    let empty = tempfile::tempdir().unwrap();
    let config = format!("[registry.\"{host}\"]\nhttp = true\n");
    let pusher = Pusher {
        config: RegistryConfig::parse(&config, Path::new("inline")).unwrap(),
        credentials: kiln::registry::CredentialSources::from_env(),
        store: kiln::store::Store::open(empty.path()).unwrap(),
        reporter: std::sync::Arc::new(kiln::progress::NullReporter),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache_ref = kiln::oci::Reference::parse(&format!("{host}/team/cache:main")).unwrap();
    let report = rt
        .block_on(pusher.push(
            &push,
            std::slice::from_ref(&cache_ref),
            &PushOptions::default(),
        ))
        .unwrap();
    assert_eq!(report.digest.to_string(), digest);
    assert!(report.repositories[0].blobs.iter().all(|(_, o)| *o
        == BlobOutcome::Mounted {
            from: "team/app".into()
        }));
    assert_eq!(
        registry_digest(&format!("{host}/team/cache:main"), None),
        digest
    );

    let mut missing = push.clone();
    missing.blobs.push(kiln::registry::push::PushBlob {
        blob: kiln::oci::BlobRef::new(
            "application/octet-stream",
            kiln::oci::Digest::of(b"in no repository"),
            16,
        ),
        mount_from: vec!["team/app".into()],
    });
    let err = rt
        .block_on(pusher.push(&missing, &[cache_ref], &PushOptions::default()))
        .unwrap_err();
    assert!(matches!(err, PushError::BlobUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("not in the local store"), "{err}");
}

/// The layers a build makes stay uncompressed in the store (an OCI layout umoci unpacks), and
/// leave it as gzip: the pushed manifest names gzip copies, which decompress to the stored
/// tars, under the same config (image ID); pushing twice gives the same manifest digest.
#[test]
fn built_layers_are_stored_uncompressed_and_pushed_as_gzip() {
    let bb: BusyboxRegistry = registry_with_busybox();
    let env = Env::new(&[&bb.addr]);
    let image = format!("{}/team/lazy:1", bb.addr);
    let id = ok(&env.build(&bb.addr, &["-t", &image]));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&env.kiln(&["inspect", &image], None))).unwrap();
    let stored = inspect["manifest"]["layers"].as_array().unwrap().clone();
    let types: Vec<&str> = stored
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.v1.tar",
        ],
        "the base as pulled, the built layers uncompressed"
    );
    let umoci = crate::support::require_tool("umoci", "umoci");
    let bundle = env.work.path().join("bundle");
    let unpacked = Command::new(umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:{image}", env.root().join("oci").display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(unpacked.status.success(), "{unpacked:?}");
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/hello")).unwrap(),
        "pushed\n"
    );

    let digest = ok(&env.kiln(&["push", "--progress=plain", &image], None));
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]);
    let pushed: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&raw.stdout)),
        digest,
        "kiln push prints the pushed manifest's digest"
    );
    assert_eq!(
        pushed["config"]["digest"].as_str().unwrap(),
        id,
        "same image ID"
    );
    let layers = pushed["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (sent, kept) in layers.iter().zip(&stored) {
        assert_eq!(
            sent["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "{pushed}"
        );
        if kept["mediaType"] == "application/vnd.oci.image.layer.v1.tar" {
            // The gzip blob decompresses to the stored tar.
            let gz =
                std::fs::read(blob_path(&env.root(), sent["digest"].as_str().unwrap())).unwrap();
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar)
                .unwrap();
            assert_eq!(
                format!("sha256:{}", sha256_hex(&tar)),
                kept["digest"].as_str().unwrap()
            );
        } else {
            assert_eq!(sent["digest"], kept["digest"]);
        }
    }
    assert_eq!(assert_copy_matches_store(&image, None, &env.root()), 5);
    // Compressing again gives the same bytes, so the same manifest.
    let again = format!("{}/team/lazy:2", bb.addr);
    assert_eq!(ok(&env.kiln(&["push", "-q", &image, &again], None)), digest);
}

/// `kiln build --compression uncompressed` keeps its layers uncompressed, and so does a later
/// `kiln push` of the image (it gzipped them: the store could not tell such a build from one
/// that left compression to the push); `--compression gzip` on the push overrides it, and a
/// default build that tags the name again leaves compression to the push once more.
#[test]
fn a_push_keeps_the_layers_a_build_was_asked_to_leave_uncompressed() {
    let bb: BusyboxRegistry = registry_with_busybox();
    let env = Env::new(&[&bb.addr]);
    let image = format!("{}/team/plain:1", bb.addr);
    ok(&env.build(&bb.addr, &["--compression", "uncompressed", "-t", &image]));
    let pushed_types = |name: &str| -> Vec<String> {
        let raw = skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ]);
        let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap().to_string())
            .collect()
    };
    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    ok(&env.kiln(&["push", "-q", &image], None));
    assert_eq!(pushed_types(&image), [GZ, TAR, TAR], "the base as pulled");
    // Through `kiln tag` too: the record goes with the tag's descriptor.
    let retagged = format!("{}/team/plain:retagged", bb.addr);
    ok(&env.kiln(&["tag", &image, &retagged], None));
    ok(&env.kiln(&["push", "-q", &retagged], None));
    assert_eq!(pushed_types(&retagged), [GZ, TAR, TAR]);

    let forced = format!("{}/team/plain:gz", bb.addr);
    ok(&env.kiln(
        &["push", "-q", "--compression", "gzip", &image, &forced],
        None,
    ));
    assert_eq!(pushed_types(&forced), [GZ, GZ, GZ]);

    // The same image built with the defaults: the push compresses again.
    ok(&env.build(&bb.addr, &["-t", &image]));
    let default = format!("{}/team/plain:default", bb.addr);
    ok(&env.kiln(&["push", "-q", &image, &default], None));
    assert_eq!(pushed_types(&default), [GZ, GZ, GZ]);
    let kept = format!("{}/team/plain:kept", bb.addr);
    ok(&env.kiln(
        &["push", "-q", "--compression", "uncompressed", &image, &kept],
        None,
    ));
    assert_eq!(pushed_types(&kept), [GZ, TAR, TAR]);
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("oci/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
