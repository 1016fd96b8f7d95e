//! Unit tests of the whole pipeline on files in a temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
    fn mkdir(&self, name: &str) {
        std::fs::create_dir_all(self.path().join(name)).unwrap();
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn plan(
    dir: &Dir,
    files: &[&str],
    env: &BTreeMap<String, String>,
    set: &[&str],
    targets: &[&str],
) -> Result<Plan, BakeError> {
    let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
    let overrides: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    load(&LoadOptions {
        files: &files,
        dir: dir.path(),
        env,
        overrides: &overrides,
        targets: &targets,
    })
}

fn target<'p>(plan: &'p Plan, name: &str) -> &'p Target {
    &plan.targets.iter().find(|(n, _)| n == name).unwrap().1
}

const WEB_DB: &str = r#"
x-common: &common
  context: ./web
  args:
    GREETING: ${GREETING:-hello}
    RELEASE: "${RELEASE-dev}"
services:
  web:
    build:
      <<: *common
      dockerfile: Dockerfile.web
  worker:
    build: *common
  db:
    image: postgres:16
"#;

#[test]
fn compose_merge_keys_anchors_and_interpolation() {
    let d = Dir::new();
    d.mkdir("web");
    d.write("compose.yaml", WEB_DB);
    d.write(".env", "GREETING=from-dotenv\nRELEASE=1\n");
    let p = plan(
        &d,
        &[],
        &env(&[("RELEASE", "2"), ("COMPOSE_PROJECT_NAME", "Demo")]),
        &[],
        &[],
    )
    .unwrap();
    let names: Vec<&str> = p.targets.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["web", "worker"]);
    let web = target(&p, "web");
    assert_eq!(web.dockerfile.as_deref(), Some("Dockerfile.web"));
    assert_eq!(web.args["GREETING"], "from-dotenv");
    // The environment wins over .env.
    assert_eq!(web.args["RELEASE"], "2");
    assert_eq!(web.tags, ["demo-web"]);
    assert_eq!(
        target(&p, "worker").dockerfile.as_deref(),
        Some("Dockerfile")
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("\"db\"") && n.contains("postgres:16")));
}

#[test]
fn compose_args_forms_and_env_passthrough() {
    let d = Dir::new();
    d.write(
        "docker-compose.yml",
        "services:\n  a:\n    build:\n      context: .\n      args:\n        - ONE=1\n        - FROM_ENV\n        - UNSET_ARG\n      labels:\n        - com.x=y\n  b:\n    build:\n      args:\n        N: 3.5\n        E:\n",
    );
    let p = plan(&d, &[], &env(&[("FROM_ENV", "env!"), ("E", "e")]), &[], &[]).unwrap();
    let a = target(&p, "a");
    assert_eq!(
        a.args,
        BTreeMap::from([
            ("FROM_ENV".into(), "env!".into()),
            ("ONE".into(), "1".into())
        ])
    );
    assert_eq!(a.labels["com.x"], "y");
    let b = target(&p, "b");
    assert_eq!(b.args["N"], "3.5");
    assert_eq!(b.args["E"], "e");
}

#[test]
fn compose_required_variable_and_bad_yaml() {
    let d = Dir::new();
    d.write("compose.yaml", "services:\n  a:\n    build:\n      context: .\n      args:\n        X: ${NEED:?set NEED}\n");
    let err = plan(&d, &[], &env(&[]), &[], &[]).unwrap_err().to_string();
    assert!(
        err.contains("services.a.build.args.X") && err.contains("set NEED"),
        "{err}"
    );
    d.write("compose.yaml", "services:\n  a:\n    build: [\n");
    let err = plan(&d, &[], &env(&[]), &[], &[]).unwrap_err();
    assert!(matches!(err, BakeError::Syntax { line: 3.., .. }), "{err}");
    assert!(err.to_string().contains("compose.yaml:"), "{err}");
}

#[test]
fn compose_missing_context_names_service_and_file() {
    let d = Dir::new();
    d.write("compose.yaml", "services:\n  api:\n    build: ./nope\n");
    let err = plan(&d, &[], &env(&[]), &[], &[]).unwrap_err().to_string();
    assert!(
        err.contains("compose.yaml") && err.contains("\"api\"") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn compose_files_merge_in_order() {
    let d = Dir::new();
    d.mkdir("app");
    d.write("compose.yaml", "name: My_Proj\nservices:\n  app:\n    build:\n      context: app\n      args: [A=1, B=1]\n      tags: [one]\n");
    d.write("compose.prod.yaml", "services:\n  app:\n    image: reg/app:prod\n    build:\n      target: prod\n      args:\n        B: 2\n      tags: [two]\n      x-bake:\n        platforms: [linux/amd64]\n        no-cache: true\n");
    let p = plan(
        &d,
        &["compose.yaml", "compose.prod.yaml"],
        &env(&[]),
        &[],
        &[],
    )
    .unwrap();
    let app = target(&p, "app");
    assert_eq!(app.args["A"], "1");
    assert_eq!(app.args["B"], "2");
    assert_eq!(app.target.as_deref(), Some("prod"));
    assert_eq!(app.tags, ["reg/app:prod", "one", "two"]);
    assert_eq!(app.platforms, ["linux/amd64"]);
    assert_eq!(app.no_cache, Some(true));
    d.write(
        "compose.prod.yaml",
        "services:\n  app:\n    build:\n      isolation: hyperv\n",
    );
    let p = plan(
        &d,
        &["compose.yaml", "compose.prod.yaml"],
        &env(&[]),
        &[],
        &[],
    )
    .unwrap();
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("build.isolation") && n.contains("ignored")),
        "{:?}",
        p.notes
    );
}

#[test]
fn project_names() {
    assert_eq!(compose::normalize_project_name("My App.v2"), "myappv2");
    assert_eq!(compose::normalize_project_name("__-x_y-1"), "x_y-1");
    let d = Dir::new();
    d.mkdir("Web Site");
    d.write("Web Site/compose.yaml", "services:\n  s:\n    build: .\n");
    let p = plan(&d, &["Web Site/compose.yaml"], &env(&[]), &[], &[]).unwrap();
    assert_eq!(target(&p, "s").tags, ["website-s"]);
    d.write(
        "Web Site/compose.yaml",
        "name: named\nservices:\n  s:\n    build: .\n",
    );
    let p = plan(&d, &["Web Site/compose.yaml"], &env(&[]), &[], &[]).unwrap();
    assert_eq!(target(&p, "s").tags, ["named-s"]);
}

#[test]
fn compose_secrets_and_additional_contexts() {
    let d = Dir::new();
    d.write("compose.yaml", "services:\n  a:\n    build:\n      context: .\n      secrets:\n        - npm\n        - source: tok\n          target: token\nsecrets:\n  npm:\n    file: ./npmrc\n  tok:\n    environment: GH_TOKEN\n");
    let p = plan(&d, &[], &env(&[]), &[], &[]).unwrap();
    let npmrc = format!("id=npm,src={}", d.path().join("npmrc").display());
    assert_eq!(
        target(&p, "a").secret,
        [npmrc.as_str(), "id=token,env=GH_TOKEN"]
    );
    d.write("compose.yaml", "services:\n  a:\n    build:\n      context: .\n      additional_contexts:\n        base: ../base\n        img: docker-image://busybox:1\n");
    let p = plan(&d, &[], &env(&[]), &[], &[]).unwrap();
    let contexts = &target(&p, "a").contexts;
    // A directory is relative to the project directory; an image stays as written.
    assert_eq!(
        contexts["base"],
        d.path().join("../base").display().to_string()
    );
    assert_eq!(contexts["img"], "docker-image://busybox:1");
}

#[test]
fn identical_builds_are_one_unit() {
    let d = Dir::new();
    d.mkdir("web");
    d.write("compose.yaml", WEB_DB);
    let p = plan(&d, &[], &env(&[]), &[], &[]).unwrap();
    assert_eq!(p.units().len(), 2);
    let mut other = WEB_DB.replace("dockerfile: Dockerfile.web", "dockerfile: Dockerfile");
    other.push_str("  again:\n    image: reg/again\n    build: *common\n");
    d.write("compose.yaml", &other);
    let p = plan(&d, &[], &env(&[]), &[], &[]).unwrap();
    let units = p.units();
    assert_eq!(units.len(), 1);
    let dir = d
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase();
    let dir = compose::normalize_project_name(&dir);
    assert_eq!(units[0].names, ["again", "web", "worker"]);
    assert_eq!(
        units[0].target.tags,
        [
            "reg/again".to_string(),
            format!("{dir}-web"),
            format!("{dir}-worker")
        ]
    );
}

const BAKE: &str = r#"
variable "TAG" { default = "latest" }
variable "REPO" { default = "reg/${lower(NAME)}" }
variable "NAME" { default = "App" }
variable "DEBUG" { default = false }
group "default" { targets = ["app", "tools"] }
group "all" { targets = ["default", "base"] }
target "base" {
  context = "."
  args = { BASE = "1", KEEP = "yes" }
  labels = { "org.x" = "y" }
}
target "app" {
  inherits = ["base"]
  dockerfile = "app.Dockerfile"
  args = { BASE = "2", MODE = DEBUG ? "debug" : "release", GONE = null }
  tags = ["${REPO}:${TAG}", "${REPO}:${upper(TAG)}"]
}
target "tools" {
  inherits = ["app"]
  target = "tools"
  tags = [join("-", [REPO, "tools"])]
  platforms = ["linux/amd64"]
}
"#;

#[test]
fn hcl_variables_inherits_functions() {
    let d = Dir::new();
    d.write("docker-bake.hcl", BAKE);
    let p = plan(&d, &[], &env(&[("TAG", "v1")]), &[], &[]).unwrap();
    let names: Vec<&str> = p.targets.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["app", "tools"]);
    let app = target(&p, "app");
    assert_eq!(app.tags, ["reg/app:v1", "reg/app:V1"]);
    assert_eq!(
        app.args,
        BTreeMap::from([
            ("BASE".into(), "2".into()),
            ("KEEP".into(), "yes".into()),
            ("MODE".into(), "release".into()),
        ])
    );
    assert_eq!(app.labels["org.x"], "y");
    assert_eq!(app.dockerfile.as_deref(), Some("app.Dockerfile"));
    let tools = target(&p, "tools");
    assert_eq!(tools.tags, ["reg/app-tools"]);
    assert_eq!(tools.dockerfile.as_deref(), Some("app.Dockerfile"));
    assert_eq!(tools.target.as_deref(), Some("tools"));
    // A typed variable from the environment.
    d.write(
        "docker-bake.override.hcl",
        "target \"tools\" {\n  platforms = [BAKE_LOCAL_PLATFORM]\n}\n",
    );
    let p = plan(&d, &[], &env(&[]), &[], &["tools"]).unwrap();
    assert_eq!(
        target(&p, "tools").platforms,
        [crate::oci::Platform::host().to_string()]
    );
    std::fs::remove_file(d.path().join("docker-bake.override.hcl")).unwrap();
    let p = plan(&d, &[], &env(&[("DEBUG", "true")]), &[], &["app"]).unwrap();
    assert_eq!(target(&p, "app").args["MODE"], "debug");
    // Groups of groups.
    let p = plan(&d, &[], &env(&[]), &[], &["all"]).unwrap();
    assert_eq!(p.targets.len(), 3);
}

#[test]
fn hcl_errors_have_lines() {
    let d = Dir::new();
    d.write(
        "docker-bake.hcl",
        "target \"a\" {\n  context = \".\"\n  tags = [\n",
    );
    let err = plan(&d, &[], &env(&[]), &[], &[]).unwrap_err();
    assert!(matches!(err, BakeError::Syntax { .. }), "{err}");
    d.write(
        "docker-bake.hcl",
        "group \"default\" { targets = [\"a\"] }\n\ntarget \"a\" {\n  tags = [NOPE]\n}\n",
    );
    let err = plan(&d, &[], &env(&[]), &[], &[]).unwrap_err().to_string();
    assert!(
        err.contains("docker-bake.hcl:3:") && err.contains("NOPE"),
        "{err}"
    );
    d.write(
        "docker-bake.hcl",
        "target \"a\" { inherits = [\"b\"] }\ntarget \"b\" { inherits = [\"a\"] }\n",
    );
    let err = plan(&d, &[], &env(&[]), &[], &["a"]).unwrap_err();
    assert!(matches!(err, BakeError::InheritCycle { .. }), "{err}");
    d.write("docker-bake.hcl", "target \"a\" {}\n");
    let err = plan(&d, &[], &env(&[]), &[], &["zzz"]).unwrap_err();
    assert!(matches!(err, BakeError::UnknownTarget { .. }), "{err}");
}

#[test]
fn json_bake_file() {
    let d = Dir::new();
    d.write(
        "docker-bake.json",
        r#"{"variable": {"TAG": {"default": "dev"}},
            "group": {"default": {"targets": ["app"]}},
            "target": {"base": {"args": {"A": "1"}},
                       "app": {"inherits": ["base"], "tags": ["app:${TAG}"], "no-cache": true}}}"#,
    );
    let p = plan(&d, &[], &env(&[]), &[], &[]).unwrap();
    let app = target(&p, "app");
    assert_eq!(app.tags, ["app:dev"]);
    assert_eq!(app.args["A"], "1");
    assert_eq!(app.no_cache, Some(true));
}

#[test]
fn set_overrides() {
    let d = Dir::new();
    d.write("docker-bake.hcl", BAKE);
    let p = plan(
        &d,
        &[],
        &env(&[]),
        &[
            "*.platform=linux/arm64",
            "app.args.FOO=bar",
            "app.tags=x",
            "app.tags=y",
            "tools.no-cache=true",
            "t*.dockerfile=other",
        ],
        &[],
    )
    .unwrap();
    let app = target(&p, "app");
    assert_eq!(app.platforms, ["linux/arm64"]);
    assert_eq!(app.args["FOO"], "bar");
    assert_eq!(app.tags, ["x", "y"]);
    let tools = target(&p, "tools");
    assert_eq!(tools.platforms, ["linux/arm64"]);
    assert_eq!(tools.no_cache, Some(true));
    assert_eq!(tools.dockerfile.as_deref(), Some("other"));
    assert!(plan(&d, &[], &env(&[]), &["app.bogus=1"], &[]).is_err());
    assert!(plan(&d, &[], &env(&[]), &["nomatch.tags=1"], &[]).is_err());
    assert!(plan(&d, &[], &env(&[]), &["notarget=1"], &[]).is_err());
    assert!(overrides::glob_match("a*c", "abbc"));
    assert!(!overrides::glob_match("a*c", "abcd"));
}

#[test]
fn print_shape() {
    let d = Dir::new();
    d.write("docker-bake.hcl", BAKE);
    let p = plan(&d, &[], &env(&[]), &[], &[]).unwrap();
    let doc = serde_json::to_value(p.print()).unwrap();
    assert_eq!(
        doc["group"]["default"]["targets"],
        serde_json::json!(["app", "tools"])
    );
    assert_eq!(doc["target"]["app"]["context"], ".");
    assert_eq!(doc["target"]["app"]["dockerfile"], "app.Dockerfile");
    assert_eq!(doc["target"]["app"]["args"]["BASE"], "2");
    assert_eq!(
        doc["target"]["tools"]["platforms"],
        serde_json::json!(["linux/amd64"])
    );
    assert_eq!(doc["target"]["tools"]["target"], "tools");
    assert!(doc["target"]["app"].get("cache-from").is_none());
    assert!(doc["target"].get("base").is_none());
}

#[test]
fn compose_and_bake_files_merge() {
    let d = Dir::new();
    d.write(
        "compose.yaml",
        "services:\n  app:\n    build:\n      context: .\n      args: {A: compose}\n",
    );
    d.write(
        "docker-bake.hcl",
        "target \"app\" {\n  tags = [\"from-hcl\"]\n  args = { B = \"hcl\" }\n}\n",
    );
    let p = plan(&d, &[], &env(&[]), &[], &[]).unwrap();
    let app = target(&p, "app");
    assert_eq!(app.tags, ["from-hcl"]);
    assert_eq!(app.args["A"], "compose");
    assert_eq!(app.args["B"], "hcl");
}

/// Regression: compose's `build.shm_size` and `build.extra_hosts` were noted as ignored.
#[test]
fn compose_shm_size_and_extra_hosts() {
    let d = Dir::new();
    d.mkdir("app");
    d.write(
        "compose.yaml",
        "services:\n  app:\n    build:\n      context: app\n      shm_size: 2g\n      \
         extra_hosts:\n        - \"db:10.0.0.1\"\n        - \"cache=10.0.0.2\"\n        \
         - \"v6:::1\"\n  map:\n    build:\n      context: app\n      shm_size: 1048576\n      \
         extra_hosts:\n        db: 10.0.0.3\n",
    );
    let p = plan(&d, &["compose.yaml"], &env(&[]), &[], &[]).unwrap();
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    let app = target(&p, "app");
    assert_eq!(app.shm_size.as_deref(), Some("2g"));
    assert_eq!(
        app.extra_hosts,
        BTreeMap::from([
            ("cache".into(), "10.0.0.2".into()),
            ("db".into(), "10.0.0.1".into()),
            ("v6".into(), "::1".into()),
        ])
    );
    let map = target(&p, "map");
    assert_eq!(map.shm_size.as_deref(), Some("1048576"));
    assert_eq!(map.extra_hosts["db"], "10.0.0.3");
    d.write(
        "compose.yaml",
        "services:\n  app:\n    build:\n      context: app\n      extra_hosts: [\"nohost\"]\n",
    );
    let err = plan(&d, &["compose.yaml"], &env(&[]), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("nohost"), "{err}");
}

/// Regression: a bake target's `shm-size`, `ulimits` and `extra-hosts` were refused as
/// unsupported attributes.
#[test]
fn hcl_shm_size_ulimits_extra_hosts() {
    let d = Dir::new();
    d.write(
        "docker-bake.hcl",
        "target \"app\" {\n  shm-size = \"128m\"\n  ulimits = [\"nofile=1024:2048\"]\n  \
         extra-hosts = {\n    db = \"10.0.0.1\"\n  }\n}\n",
    );
    let p = plan(&d, &[], &env(&[]), &[], &["app"]).unwrap();
    let app = target(&p, "app");
    assert_eq!(app.shm_size.as_deref(), Some("128m"));
    assert_eq!(app.ulimits, ["nofile=1024:2048"]);
    assert_eq!(app.extra_hosts["db"], "10.0.0.1");
}
