//! The layer cache end to end, as root: which steps each kind of change busts (step by step),
//! why a miss happened (`cache miss:` lines), `--no-cache-filter`, two builds sharing a state
//! root, and the cache carried to an empty state root through `--cache-to`/`--cache-from`.

use std::fs;
use std::path::Path;

use crate::support::busybox::{
    kiln, move_busybox_tag, ok, registry_with_busybox, step_outcomes, Registry,
};
use crate::support::proxy::FaultProxy;

const DOCKERFILE: &str = "FROM busybox
WORKDIR /app
COPY a.txt .
RUN cat a.txt > /one
ARG V=1
COPY dir/ /dir/
RUN echo $V > /two
ENV E=1
RUN echo $E > /three
LABEL l=x
";

/// The steps that can be cached, in order.
const STEPS: [&str; 6] = [
    "WORKDIR /app",
    "COPY a.txt .",
    "RUN cat a.txt > /one",
    "COPY dir/ /dir/",
    "RUN echo $V > /two",
    "RUN echo $E > /three",
];

struct Project {
    reg: Registry,
    root: tempfile::TempDir,
    ctx: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let reg = registry_with_busybox();
        let ctx = tempfile::tempdir().unwrap();
        let p = ctx.path();
        fs::write(p.join("Dockerfile"), DOCKERFILE).unwrap();
        fs::write(p.join("a.txt"), "a").unwrap();
        fs::write(p.join("b.txt"), "not copied").unwrap();
        fs::create_dir_all(p.join("dir/sub")).unwrap();
        fs::write(p.join("dir/x"), "x").unwrap();
        fs::write(p.join("dir/sub/y"), "y").unwrap();
        fs::write(p.join("dir/ignored.log"), "1").unwrap();
        fs::write(p.join(".dockerignore"), "dir/*.log\n").unwrap();
        Project {
            reg,
            root: tempfile::tempdir().unwrap(),
            ctx,
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.ctx.path().join(rel)
    }

    /// Builds and returns (the steps that ran, the whole stderr).
    fn build(&self, extra: &[&str]) -> (Vec<String>, String) {
        self.build_tagged("app", extra)
    }

    fn build_tagged(&self, tag: &str, extra: &[&str]) -> (Vec<String>, String) {
        let ctx = self.ctx.path().to_string_lossy().to_string();
        let mut args = vec!["build", "--progress", "plain", "-t", tag];
        args.extend_from_slice(extra);
        args.push(&ctx);
        let out = kiln(self.root.path(), &self.reg, &args);
        ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        // Compared without spaces: one test edits a RUN line's spacing only.
        let outcomes: Vec<(String, bool)> = step_outcomes(&stderr)
            .into_iter()
            .filter_map(|(n, c)| {
                STEPS
                    .iter()
                    .find(|s| s.replace(' ', "") == n.replace(' ', ""))
                    .map(|s| (s.to_string(), c))
            })
            .collect();
        for step in STEPS {
            assert!(
                outcomes.iter().any(|(n, _)| n == step),
                "step {step:?} not reported:\n{stderr}"
            );
        }
        let ran = outcomes
            .into_iter()
            .filter(|(n, cached)| !cached && STEPS.contains(&n.as_str()))
            .map(|(n, _)| n)
            .collect();
        (ran, stderr)
    }

    /// Asserts that exactly the steps from index `first` on ran (none if `first` is None).
    fn expect_from(&self, what: &str, extra: &[&str], first: Option<usize>) -> String {
        self.expect_tagged("app", what, extra, first)
    }

    fn expect_tagged(&self, tag: &str, what: &str, extra: &[&str], first: Option<usize>) -> String {
        let (ran, stderr) = self.build_tagged(tag, extra);
        let want: Vec<String> = match first {
            Some(i) => STEPS[i..].iter().map(|s| s.to_string()).collect(),
            None => Vec::new(),
        };
        assert_eq!(ran, want, "after {what}:\n{stderr}");
        stderr
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn every_kind_of_change_busts_exactly_the_steps_it_must() {
    let p = Project::new();
    p.expect_from("the first build", &[], Some(0));
    let first = ok(&kiln(p.root.path(), &p.reg, &["inspect", "app"]));
    p.expect_from("nothing", &[], None);
    // A fully cached rebuild is the same image (BuildKit's history times: when each layer
    // was first made), so the same image ID.
    assert_eq!(first, ok(&kiln(p.root.path(), &p.reg, &["inspect", "app"])));

    fs::write(p.path("b.txt"), "changed, but no COPY selects it").unwrap();
    p.expect_from("a file no COPY selects", &[], None);
    fs::write(p.path("dir/ignored.log"), "2").unwrap();
    p.expect_from("a .dockerignore'd file under a copied dir", &[], None);
    let f = fs::File::options()
        .write(true)
        .open(p.path("a.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    p.expect_from("only an mtime", &[], None);

    fs::write(p.path("dir/x"), "x2").unwrap();
    let err = p.expect_from("a file's content", &[], Some(3));
    assert!(
        err.contains("cache miss: 1 copied file changed: dir/x"),
        "{err}"
    );
    assert!(
        err.contains("cache miss: the step before it was rebuilt"),
        "{err}"
    );
    fs::write(p.path("dir/sub/new"), "n").unwrap();
    let err = p.expect_from("a new file under a copied dir", &[], Some(3));
    assert!(err.contains("dir/sub/new (added)"), "{err}");
    set_mode(&p.path("dir/x"), 0o755);
    p.expect_from("a file's mode", &[], Some(3));
    fs::write(p.path("a.txt"), "a2").unwrap();
    let err = p.expect_from("the first COPY's file", &[], Some(1));
    assert!(err.contains("1 copied file changed: a.txt"), "{err}");

    // V is visible from its ARG on; E from its ENV on. Values never reach the log.
    let err = p.expect_from("an ARG", &["--build-arg", "V=secret-ish-value"], Some(4));
    assert!(err.contains("build variables changed: V"), "{err}");
    assert!(!err.contains("secret-ish-value"), "{err}");
    p.expect_from(
        "the same ARG again",
        &["--build-arg", "V=secret-ish-value"],
        None,
    );
    // Both values stay cached side by side.
    p.expect_from("the ARG back to its default", &[], None);

    let edit = |from: &str, to: &str| {
        let text = fs::read_to_string(p.path("Dockerfile")).unwrap();
        fs::write(p.path("Dockerfile"), text.replace(from, to)).unwrap();
    };
    edit("ENV E=1", "ENV E=2");
    let err = p.expect_from("an ENV", &[], Some(5));
    assert!(err.contains("build variables changed: E"), "{err}");
    edit("LABEL l=x", "LABEL l=y\nEXPOSE 80\nCMD [\"sh\"]");
    p.expect_from("config-only instructions", &[], None);
    edit("RUN cat a.txt > /one", "RUN cat a.txt >/one");
    let err = p.expect_from("the Dockerfile line of a RUN", &[], Some(2));
    assert!(err.contains("cmd changed"), "{err}");

    p.expect_from(
        "--no-cache-filter of the stage",
        &["--no-cache-filter", "0"],
        Some(0),
    );
    p.expect_from("--no-cache", &["--no-cache"], Some(0));

    // The base tag moving upstream: --pull re-resolves it and every step runs again.
    move_busybox_tag(&p.reg, "MOVED=1");
    p.expect_from("the base tag moving, without --pull", &[], None);
    let err = p.expect_from("the base tag moving", &["--pull"], Some(0));
    assert!(err.contains("cache miss: the base image"), "{err}");
    assert!(err.contains("moved:"), "{err}");
}

#[test]
fn two_builds_sharing_a_state_root_both_succeed() {
    let p = Project::new();
    let other = tempfile::tempdir().unwrap();
    fs::write(
        other.path().join("Dockerfile"),
        "FROM busybox\nCOPY . /src\nRUN ls /src > /list\n",
    )
    .unwrap();
    for i in 0..50 {
        fs::write(other.path().join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_kiln");
    let spawn = |ctx: &Path, tag: &str| {
        std::process::Command::new(bin)
            .args(["build", "--root"])
            .arg(p.root.path())
            .args([
                "--registry-mirror",
                &p.reg.addr,
                "--progress",
                "plain",
                "-t",
                tag,
            ])
            .arg(ctx)
            .env("DOCKER_CONFIG", p.root.path().join("no-docker-config"))
            .env_remove("KILN_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(p.ctx.path(), "one");
    let b = spawn(other.path(), "two");
    ok(&a.wait_with_output().unwrap());
    ok(&b.wait_with_output().unwrap());
    // Both images are there and the shared cache serves both.
    p.expect_from("the concurrent build", &[], None);
    let images = ok(&kiln(p.root.path(), &p.reg, &["images"]));
    assert!(images.contains("one") && images.contains("two"), "{images}");
}

/// Copies a directory tree (new inodes, new mtimes: like a fresh clone on another machine).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_fresh_state_root_builds_from_an_exported_local_cache() {
    let a = Project::new();
    let cache_dir = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={},mode=max", cache_dir.path().display());
    a.expect_from("machine A's build", &["--cache-to", &dest], Some(0));
    let id_a = ok(&kiln(a.root.path(), &a.reg, &["inspect", "app"]));
    assert!(cache_dir.path().join("index.json").is_file());

    // Machine B: an empty state root and a fresh checkout of the same commit.
    let b = Project {
        reg: a.reg,
        root: tempfile::tempdir().unwrap(),
        ctx: tempfile::tempdir().unwrap(),
    };
    copy_tree(a.ctx.path(), b.ctx.path());
    let src = format!("type=local,src={}", cache_dir.path().display());
    let err = b.expect_from("machine B with the cache", &["--cache-from", &src], None);
    assert!(err.contains("importing cache from"), "{err}");
    let id_b = ok(&kiln(b.root.path(), &b.reg, &["inspect", "app"]));
    let config = |inspect: &str| {
        let v: serde_json::Value = serde_json::from_str(inspect).unwrap();
        v["config"]["rootfs"].clone()
    };
    assert_eq!(config(&id_a), config(&id_b), "same layers on both machines");
    // History times travel with the cache: B's image is A's, to the byte (the same image ID).
    let whole = |inspect: &str| {
        let v: serde_json::Value = serde_json::from_str(inspect).unwrap();
        v["config"].clone()
    };
    assert_eq!(
        whole(&id_a),
        whole(&id_b),
        "the same image config on both machines"
    );
    // The image works from B's store.
    let out = ok(&kiln(
        b.root.path(),
        &b.reg,
        &["run", "app", "cat", "/one", "/two", "/three"],
    ));
    assert_eq!(out, "a1\n1");

    // A one-file change on B: only the steps after the changed COPY run.
    fs::write(b.path("dir/x"), "changed on B").unwrap();
    let b2 = Project {
        reg: b.reg,
        root: tempfile::tempdir().unwrap(),
        ctx: b.ctx,
    };
    b2.expect_from(
        "a one-file change on a fresh machine",
        &["--cache-from", &src],
        Some(3),
    );

    // A cache that cannot be read is a warning, not a failure.
    let missing = "type=local,src=/nonexistent/kiln-cache";
    let err = b2.expect_from("an unreadable cache", &["--cache-from", missing], None);
    assert!(
        err.contains("warning: cannot import cache from /nonexistent/kiln-cache"),
        "{err}"
    );
    let err = b2.expect_from(
        "an unreachable registry cache",
        &["--cache-from", "type=registry,ref=127.0.0.1:9/none/cache:x"],
        None,
    );
    assert!(
        err.contains("warning: cannot import cache from 127.0.0.1:9/none/cache:x"),
        "{err}"
    );
}

#[test]
fn prune_drops_cache_but_never_what_a_tagged_image_needs() {
    let p = Project::new();
    p.expect_from("the first build", &[], Some(0));
    p.expect_from("a variant", &["--build-arg", "V=2"], Some(4));
    let records = || {
        fs::read_dir(p.root.path().join("cache-v1"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count()
    };
    assert!(records() >= 6, "{}", records());

    // Fresh cache survives an age filter.
    let out = kiln(p.root.path(), &p.reg, &["prune", "--filter", "until=1h"]);
    ok(&out);
    p.expect_from("prune --filter until=1h", &[], None);

    // A size budget of one byte drops all cache; the tagged image still works.
    let out = kiln(p.root.path(), &p.reg, &["prune", "--keep-storage", "1"]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Total reclaimed space"), "{err}");
    assert_eq!(records(), 0, "{err}");
    let run = ok(&kiln(
        p.root.path(),
        &p.reg,
        &["run", "app", "cat", "/one", "/three"],
    ));
    assert_eq!(run, "a1");
    crate::support::busybox::unpack(
        p.root.path(),
        "docker.io/library/app:latest",
        &p.root.path().join("check"),
    );

    p.expect_from("a build after pruning", &[], Some(0));
    // A COPY's seeding record whose snapshot is gone is dropped; live ones stay.
    let donors = p.root.path().join("copy-donors-v2");
    let live = fs::read_dir(&donors).unwrap().count();
    assert!(live >= 2, "{live}");
    let gone = format!(
        "{{\"chain\":\"sha256:{}\",\"parent\":null,\"files\":{{}}}}",
        "0".repeat(64)
    );
    fs::write(donors.join("1".repeat(64)), gone).unwrap();
    ok(&kiln(p.root.path(), &p.reg, &["prune", "--all"]));
    assert_eq!(records(), 0);
    assert!(!donors.join("1".repeat(64)).exists());
    assert_eq!(fs::read_dir(&donors).unwrap().count(), live);
    assert!(
        kiln(p.root.path(), &p.reg, &["prune", "--filter", "since=1h"])
            .status
            .code()
            == Some(1)
    );

    // A budget in the config file prunes after each build.
    let config = p.root.path().join("config.toml");
    fs::write(&config, "[gc]\nkeep-storage = \"1\"\n").unwrap();
    let cfg = config.to_string_lossy().to_string();
    let (_, err) = p.build(&["--config", &cfg]);
    assert!(err.contains("auto-prune: freed"), "{err}");
    assert_eq!(records(), 0);
}

fn skopeo(args: &[&str]) -> String {
    let out = std::process::Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_ci_scenario_through_a_registry_cache() {
    let a = Project::new();
    // Cache and pushes go through a counting proxy in front of the registry; the base image
    // is pulled from the registry directly (as a Docker Hub mirror).
    let proxy = FaultProxy::start(a.reg.addr.rsplit(':').next().unwrap().parse().unwrap());
    let host = proxy.host();
    let cache_ref = format!("{host}/app/cache:main");
    let to = format!("type=registry,ref={cache_ref},mode=max");
    let err = a.expect_from("machine A's build", &["--cache-to", &to], Some(0));
    assert!(err.contains("exported cache to"), "{err}");
    let manifest: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{cache_ref}"),
    ]))
    .unwrap();
    assert_eq!(
        manifest["config"]["mediaType"], "application/vnd.kiln.cache.config.v1+json",
        "{manifest}"
    );
    let cache_layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert!(cache_layers.len() >= 4, "{manifest}");
    // A second export finds every blob in place and uploads nothing.
    proxy.clear_seen();
    let err = a.expect_from("an unchanged rebuild", &["--cache-to", &to], None);
    assert!(err.contains("0 B uploaded"), "{err}");

    // Machine B: an empty state root, the same commit, and a push. No step runs, and the
    // layers it gets from the cache are never downloaded: the push mounts them.
    let b = Project {
        reg: a.reg,
        root: tempfile::tempdir().unwrap(),
        ctx: tempfile::tempdir().unwrap(),
    };
    copy_tree(a.ctx.path(), b.ctx.path());
    let from = format!("type=registry,ref={cache_ref}");
    let image = format!("{host}/app/image:1");
    proxy.clear_seen();
    let err = b.expect_tagged(
        &image,
        "machine B with the registry cache",
        &["--cache-from", &from, "--push"],
        None,
    );
    assert!(err.contains("importing cache from"), "{err}");
    let seen = proxy.seen();
    for layer in &cache_layers {
        assert!(
            !seen
                .iter()
                .any(|s| s.method == "GET" && s.path.ends_with(&format!("/blobs/{layer}"))),
            "machine B downloaded the cached layer {layer}: {seen:#?}"
        );
        let hex = layer.trim_start_matches("sha256:");
        assert!(!b.root.path().join("oci/blobs/sha256").join(hex).exists());
    }
    assert!(
        seen.iter()
            .any(|s| s.method == "POST" && s.path.contains("from=app%2Fcache")),
        "no layer was mounted from the cache repository: {seen:#?}"
    );
    // The pushed image is complete: skopeo copies it, every blob, into a fresh layout.
    let copy = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{image}"),
        &format!("oci:{}:img", copy.path().display()),
    ]);

    // A one-file change on another fresh machine: only the steps after the changed COPY run.
    fs::write(b.path("dir/x"), "changed on B").unwrap();
    let b2 = Project {
        reg: b.reg,
        root: tempfile::tempdir().unwrap(),
        ctx: b.ctx,
    };
    b2.expect_from("a one-file change", &["--cache-from", &from], Some(3));
    ok(&kiln(
        b2.root.path(),
        &b2.reg,
        &["run", "app", "cat", "/one", "/dir/x"],
    ));

    // A fully cached push that also writes the cache to a directory needs every layer's
    // bytes: they are fetched then, and the directory holds each layer its manifest lists.
    let b3 = Project {
        reg: b2.reg,
        root: tempfile::tempdir().unwrap(),
        ctx: tempfile::tempdir().unwrap(),
    };
    copy_tree(a.ctx.path(), b3.ctx.path());
    let dir = tempfile::tempdir().unwrap();
    let to_dir = format!("type=local,dest={}", dir.path().display());
    let image3 = format!("{host}/app/image:3");
    b3.expect_tagged(
        &image3,
        "a push with a directory cache",
        &["--cache-from", &from, "--push", "--cache-to", &to_dir],
        None,
    );
    let blob = |d: &str| {
        dir.path()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(manifest_digest)).unwrap()).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert!(blob(d).is_file(), "the directory cache lacks layer {d}");
    }
}

#[test]
fn a_seeded_copy_makes_the_same_layer_as_a_fresh_one() {
    // A rebuilt COPY starts from hard links to what it wrote last time; after a change, a
    // deletion, a mode change and a removed directory its layer must be exactly the layer a
    // state root that never built it makes.
    let p = Project::new();
    fs::write(p.path("dir/keep"), "kept").unwrap();
    fs::write(p.path("dir/same-size"), "aaaa").unwrap();
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    p.expect_from("the first build", &epoch, Some(0));
    // New bytes, but the size and mtime of the old ones: only the content digest tells.
    let mtime = fs::metadata(p.path("dir/same-size"))
        .unwrap()
        .modified()
        .unwrap();
    fs::write(p.path("dir/same-size"), "bbbb").unwrap();
    fs::File::options()
        .write(true)
        .open(p.path("dir/same-size"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::write(p.path("dir/x"), "x changed").unwrap();
    fs::remove_dir_all(p.path("dir/sub")).unwrap();
    fs::create_dir_all(p.path("dir/new")).unwrap();
    fs::write(p.path("dir/new/z"), "z").unwrap();
    set_mode(&p.path("dir/x"), 0o600);
    p.expect_from("changes under dir/", &epoch, Some(3));
    let fresh = Project {
        reg: p.reg,
        root: tempfile::tempdir().unwrap(),
        ctx: p.ctx,
    };
    fresh.expect_from("a fresh state root", &epoch, Some(0));
    let diff_ids = |root: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&kiln(root, &fresh.reg, &["inspect", "app"]))).unwrap();
        v["config"]["rootfs"]["diff_ids"].clone()
    };
    assert_eq!(diff_ids(p.root.path()), diff_ids(fresh.root.path()));
    // COPY steps remember their snapshots and what each file in them holds, so the next build
    // can keep an unchanged file by its digest without reading it.
    let records: Vec<serde_json::Value> = p
        .root
        .path()
        .join("copy-donors-v2")
        .read_dir()
        .unwrap()
        .map(|e| serde_json::from_slice(&fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert!(records.len() >= 2, "{records:?}");
    let dir_copy = records
        .iter()
        .find(|r| r["files"].get("dir/keep").is_some())
        .unwrap_or_else(|| panic!("no record lists dir/keep: {records:?}"));
    assert_eq!(
        dir_copy["files"]["dir/keep"].as_str(),
        Some(kiln::oci::Digest::of(b"kept").to_string().as_str())
    );
    assert_eq!(
        dir_copy["files"]["dir/same-size"].as_str(),
        Some(kiln::oci::Digest::of(b"bbbb").to_string().as_str())
    );
    // The earlier snapshot the rebuild was seeded from is untouched: its dir/x is the old one.
    let old_x = fs::read_dir(p.root.path().join("snapshots/snapshots"))
        .unwrap()
        .filter_map(|e| fs::read_to_string(e.unwrap().path().join("fs/dir/x")).ok())
        .collect::<Vec<_>>();
    assert!(old_x.contains(&"x".to_string()), "{old_x:?}");
    assert!(old_x.contains(&"x changed".to_string()), "{old_x:?}");
    // The unchanged file is one inode shared by both snapshots: it was seeded, not copied.
    use std::os::unix::fs::MetadataExt;
    let kept: Vec<u64> = fs::read_dir(p.root.path().join("snapshots/snapshots"))
        .unwrap()
        .filter_map(|e| fs::metadata(e.unwrap().path().join("fs/dir/keep")).ok())
        .map(|m| m.ino())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(
        kept[0], kept[1],
        "dir/keep was copied again instead of seeded"
    );
}
