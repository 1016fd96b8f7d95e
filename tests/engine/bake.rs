//! `kiln bake` end to end, as root: a compose project and a docker-bake.hcl built in one run
//! against the busybox registry, then the images run with `kiln run`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::busybox::{kiln, ok, registry_with_busybox, Registry};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// `kiln bake` in `dir` (bake files resolve contexts from the working directory), with the
/// registry as Docker Hub mirror.
fn bake(root: &Path, reg: &Registry, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("bake")
        .arg("--root")
        .arg(root)
        .args(["--registry-mirror", reg.addr.as_str(), "--progress=plain"])
        .args(args)
        .current_dir(dir)
        .env_remove("GREETING")
        .env_remove("TAG")
        .env_remove("COMPOSE_PROJECT_NAME")
        .envs(env.iter().copied())
        .env("DOCKER_CONFIG", root.join("no-docker-config"))
        .env_remove("KILN_CONFIG")
        .output()
        .expect("run kiln bake")
}

#[test]
fn bake_compose_builds_shared_section_once_and_skips_image_only_services() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let compose = fixture("compose/web-db/compose.yaml");
    let out = bake(
        &root,
        &reg,
        work.path(),
        &["-f", compose.to_str().unwrap()],
        &[],
    );
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipping service \"db\""),
        "db has no build section: {stderr}"
    );
    // web and worker: one build (one RUN), both names.
    let ids: Vec<(&str, &str)> = stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(ids.len(), 2, "{stdout}");
    assert_eq!(ids[0].0, "web");
    assert_eq!(ids[1].0, "worker");
    assert_eq!(ids[0].1, ids[1].1, "one image for both: {stdout}");
    let runs = stderr
        .lines()
        .filter(|l| l.starts_with("[web,worker] #") && l.contains("RUN echo"))
        .count();
    assert_eq!(
        runs, 1,
        "the shared build runs once, tagged by target:\n{stderr}"
    );
    assert!(
        stderr.contains("naming to docker.io/library/web-db-worker:latest done"),
        "{stderr}"
    );
    // The arg came from the .env beside the compose file.
    let greeting = ok(&kiln(&root, &reg, &["run", "web-db-web"]));
    assert_eq!(greeting, "hello from .env");
    let greeting = ok(&kiln(&root, &reg, &["run", "web-db-worker"]));
    assert_eq!(greeting, "hello from .env");
}

#[test]
fn bake_hcl_group_inherits_and_variable_from_the_environment() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let dir = fixture("bake/group-inherits");
    let out = bake(&root, &reg, &dir, &["--parallel", "2"], &[("TAG", "v2")]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[app] #"), "{stderr}");
    assert!(stderr.contains("[tool] #"), "{stderr}");
    assert_eq!(ok(&kiln(&root, &reg, &["run", "bake-app:v2"])), "from bake");
    assert_eq!(ok(&kiln(&root, &reg, &["run", "bake-tool:v2"])), "tool V2");
    // --set on one target; the other comes from the cache.
    let out = bake(
        &root,
        &reg,
        &dir,
        &[
            "--set",
            "app.args.MESSAGE=set",
            "--set",
            "*.tags=bake-any:x",
            "app",
        ],
        &[],
    );
    ok(&out);
    assert_eq!(ok(&kiln(&root, &reg, &["run", "bake-any:x"])), "set");
}

#[test]
fn bake_print_builds_nothing() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bake", "--print", "--root"])
        .arg(work.path().join("root"))
        .current_dir(fixture("bake/group-inherits"))
        .env_remove("TAG")
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(
        doc["group"]["default"]["targets"],
        serde_json::json!(["app", "tool"])
    );
    assert_eq!(
        doc["target"]["app"]["tags"],
        serde_json::json!(["bake-app:dev"])
    );
    assert_eq!(doc["target"]["tool"]["args"]["MESSAGE"], "tool DEV");
    assert!(
        !work.path().join("root").exists(),
        "--print opened no store"
    );
}

#[test]
fn bake_a_failing_target_fails_the_run_and_the_others_still_build() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let dir = work.path().join("proj");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("docker-bake.hcl"),
        "group \"default\" {\n  targets = [\"good\", \"bad\"]\n}\n\
         target \"good\" {\n  dockerfile-inline = \"FROM busybox\\nRUN echo ok > /ok\\n\"\n  tags = [\"good:1\"]\n}\n\
         target \"bad\" {\n  dockerfile-inline = \"FROM busybox\\nRUN exit 3\\n\"\n  tags = [\"bad:1\"]\n}\n",
    )
    .unwrap();
    let out = bake(&root, &reg, &dir, &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: [bad]"), "{stderr}");
    assert!(stderr.contains("1 of 2 builds failed: bad"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("good sha256:"));
    assert_eq!(
        ok(&kiln(&root, &reg, &["run", "good:1", "cat", "/ok"])),
        "ok"
    );
}

#[test]
fn bake_push_sends_each_target_to_its_registry() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let dir = fixture("bake/group-inherits");
    let dest = format!("{}/team/bake-app:1", reg.addr);
    let tags = format!("app.tags={dest}");
    let out = bake(&root, &reg, &dir, &["--set", &tags, "--push", "app"], &[]);
    ok(&out);
    // Read back by another client.
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{dest}"))
        .output()
        .expect("run skopeo");
    assert!(
        inspect.status.success(),
        "{dest} is not in the registry: {}\n{}",
        String::from_utf8_lossy(&inspect.stderr),
        String::from_utf8_lossy(&out.stderr)
    );
    // And a fresh store pulls and runs it.
    let fresh = work.path().join("fresh");
    ok(&kiln(&fresh, &reg, &["pull", &dest]));
    assert_eq!(ok(&kiln(&fresh, &reg, &["run", &dest])), "from bake");
}

#[test]
fn bake_to_oci_archives_gives_gzip_layers() {
    // As `kiln build -o type=oci` (and BuildKit's OCI exporter): the layers the builds left
    // uncompressed in the store go into each target's archive as gzip.
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let dir = work.path().join("proj");
    std::fs::create_dir_all(&dir).unwrap();
    let archive = |t: &str| work.path().join(format!("{t}.tar"));
    std::fs::write(
        dir.join("docker-bake.hcl"),
        format!(
            "group \"default\" {{\n  targets = [\"one\", \"two\"]\n}}\n\
             target \"one\" {{\n  dockerfile-inline = \"FROM busybox\\nRUN echo one > /one\\n\"\n  \
             output = [\"type=oci,dest={}\"]\n}}\n\
             target \"two\" {{\n  dockerfile-inline = \"FROM busybox\\nRUN echo two > /two\\nCOPY docker-bake.hcl /\\n\"\n  \
             output = [\"type=oci,dest={}\"]\n}}\n",
            archive("one").display(),
            archive("two").display(),
        ),
    )
    .unwrap();
    ok(&bake(&root, &reg, &dir, &[], &[]));
    for (target, layers) in [("one", 2), ("two", 3)] {
        let raw = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", archive(target).display()))
            .output()
            .expect("run skopeo");
        assert!(
            raw.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&raw.stderr)
        );
        let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
        let types: Vec<&str> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            vec!["application/vnd.oci.image.layer.v1.tar+gzip"; layers],
            "{target}: {manifest}"
        );
    }
}

/// Regression: compose's `build.shm_size` and `build.extra_hosts`, and a bake target's
/// `shm-size`, `ulimits` and `extra-hosts`, did not reach RUN (noted as ignored, or refused),
/// where buildx passes them on as `--shm-size`, `--ulimit` and `--add-host`.
#[test]
fn bake_shm_size_ulimits_and_extra_hosts_reach_run() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let app = work.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        "FROM busybox\nRUN grep -w db /etc/hosts > /hosts; df -k /dev/shm | tail -n 1 > /shm; ulimit -n > /nofile\n",
    )
    .unwrap();
    std::fs::write(
        work.path().join("compose.yaml"),
        "services:\n  app:\n    image: limits:compose\n    build:\n      context: app\n      \
         shm_size: 128m\n      extra_hosts:\n        - \"db:10.9.8.7\"\n",
    )
    .unwrap();
    ok(&bake(
        &root,
        &reg,
        work.path(),
        &["-f", "compose.yaml"],
        &[],
    ));
    let cat = |image: &str, path: &str| ok(&kiln(&root, &reg, &["run", image, "cat", path]));
    assert_eq!(cat("limits:compose", "/hosts"), "10.9.8.7\tdb");
    let shm = cat("limits:compose", "/shm");
    assert!(shm.contains("131072"), "{shm}");

    std::fs::write(
        work.path().join("docker-bake.hcl"),
        "target \"app\" {\n  context = \"app\"\n  tags = [\"limits:hcl\"]\n  shm-size = \"96m\"\n  \
         ulimits = [\"nofile=1024:1024\"]\n  extra-hosts = { db = \"10.1.2.3\" }\n}\n",
    )
    .unwrap();
    ok(&bake(
        &root,
        &reg,
        work.path(),
        &["-f", "docker-bake.hcl", "app"],
        &[],
    ));
    assert_eq!(cat("limits:hcl", "/hosts"), "10.1.2.3\tdb");
    let shm = cat("limits:hcl", "/shm");
    assert!(shm.contains("98304"), "{shm}");
    assert_eq!(cat("limits:hcl", "/nofile"), "1024");
}
