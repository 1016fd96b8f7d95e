//! The cache key scheme, `cache-v1`, in one place.
//!
//! A step's key is the sha256 of a canonical text made of:
//! - the scheme name `kiln-cache-v1` and the step kind (`FROM`, `RUN`, `COPY`, `WORKDIR`);
//! - the parent's key: the previous filesystem step of the stage, or for the first step the
//!   stage's base (`FROM`: the base image's ID, i.e. its config digest, which names its layers by
//!   diffID, plus the platform; `FROM <stage>`: that stage's last key; `scratch`: the platform);
//! - the step's fields, sorted by name: for RUN the command after expansion (through SHELL),
//!   every variable it sees (`env:NAME`: image ENV, stage ENV, ARGs in scope), WORKDIR, USER,
//!   network mode, `--security=insecure`, and each `--mount` as written (a secret mount names
//!   its id, never its value);
//!   for COPY/ADD the sources, destination, WORKDIR, `--chown`/`--chmod`/`--parents`/`--exclude`,
//!   heredoc bodies, downloaded URL digests, the `--from` snapshot, and `content`: the digest of
//!   exactly the selected files (paths, types, modes, symlink targets, file contents, and owners
//!   where they land in the layer; never mtimes, never files .dockerignore'd or not selected);
//!   for WORKDIR the directory and user.
//!
//! Metadata-only instructions (LABEL, EXPOSE, CMD, ENTRYPOINT, …) are not steps: they change the
//! image config, which is rebuilt on every build, and never bust the steps after them. ENV and
//! ARG reach later steps only through the variables those steps see.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oci::{Digest, Platform};

pub const KEY_SCHEME: &str = "kiln-cache-v1";

/// What a step's key is made of, kept so that a later miss can say what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMaterial {
    pub kind: String,
    pub parent: Option<Digest>,
    pub fields: BTreeMap<String, String>,
    /// COPY: each selected path and what lands for it (folded into `fields["content"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<(String, String)>,
    /// Context for explanations only (e.g. the base image's name); not part of the key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub about: BTreeMap<String, String>,
}

impl StepMaterial {
    pub fn new(kind: &str, parent: Option<&Digest>) -> StepMaterial {
        StepMaterial {
            kind: kind.to_string(),
            parent: parent.cloned(),
            ..Default::default()
        }
    }

    pub fn field(mut self, name: &str, value: impl Into<String>) -> StepMaterial {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    /// `env:NAME` fields from `NAME=value` pairs.
    pub fn env(mut self, vars: &[String]) -> StepMaterial {
        for var in vars {
            let (k, v) = var.split_once('=').unwrap_or((var, ""));
            self.fields.insert(format!("env:{k}"), v.to_string());
        }
        self
    }

    /// `FROM scratch`: only the platform.
    pub fn scratch(platform: &Platform) -> StepMaterial {
        StepMaterial::new("FROM", None)
            .field("scratch", "")
            .field("platform", platform.to_string())
    }

    /// `FROM <image>`: the image's ID (its config digest, which names its layers by diffID)
    /// and the platform; `name` only explains a later miss.
    pub fn image(id: &str, platform: &Platform, name: &str) -> StepMaterial {
        let mut material = StepMaterial::new("FROM", None)
            .field("id", id)
            .field("platform", platform.to_string());
        material.about.insert("image".into(), name.to_string());
        material
    }

    /// RUN: the command after SHELL, every variable it sees, where and as whom it runs, its
    /// network and security mode, and each `--mount` as written (a secret mount names its id,
    /// never its value).
    pub fn run(parent: &Digest, run: &RunInputs<'_>) -> StepMaterial {
        let mut material = StepMaterial::new("RUN", Some(parent))
            .field("cmd", serde_json::to_string(run.args).unwrap_or_default())
            .env(run.env)
            .field("workdir", run.workdir)
            .field("user", run.user)
            .field("network", run.network);
        if run.insecure {
            material = material.field("security", "insecure");
        }
        if !run.container.is_empty() {
            material = material.field("container", run.container);
        }
        for (i, m) in run.mounts.iter().enumerate() {
            material = material.field(&format!("mount:{i}"), m.clone());
        }
        material
    }

    /// WORKDIR that creates its directory: the directory and the user who owns it.
    pub fn workdir(parent: &Digest, dir: &str, user: &str) -> StepMaterial {
        StepMaterial::new("WORKDIR", Some(parent))
            .field("dir", dir)
            .field("user", user)
    }

    /// COPY/ADD: the fields the file step resolved (sources, destination, flags, `content`)
    /// and, for explanations, each selected path with what lands for it.
    pub fn copy(
        parent: &Digest,
        fields: BTreeMap<String, String>,
        files: Vec<(String, String)>,
    ) -> StepMaterial {
        StepMaterial {
            fields,
            files,
            ..StepMaterial::new("COPY", Some(parent))
        }
    }

    pub fn key(&self) -> Digest {
        let mut text = format!("{KEY_SCHEME}\n{}\n", self.kind);
        match &self.parent {
            Some(p) => text.push_str(&format!("parent {p}\n")),
            None => text.push_str("parent -\n"),
        }
        for (k, v) in &self.fields {
            // Lengths make the encoding unambiguous whatever the values contain.
            text.push_str(&format!("{}:{k}={}:{v}\n", k.len(), v.len()));
        }
        Digest::of(text.as_bytes())
    }
}

/// What a RUN step's key is made of.
pub struct RunInputs<'a> {
    /// The command as the runtime gets it (after SHELL).
    pub args: &'a [String],
    /// `NAME=value`, every variable the command sees (secrets never among them).
    pub env: &'a [String],
    pub workdir: &'a str,
    pub user: &'a str,
    pub network: &'a str,
    /// Each `--mount` as written.
    pub mounts: &'a [String],
    /// `--security=insecure` (a sandboxed RUN adds nothing, so its keys stay as they were).
    pub insecure: bool,
    /// The container settings the command line gives (`--add-host`, `--shm-size`,
    /// `--ulimit`), as one line; empty adds nothing.
    pub container: &'a str,
}

/// Why `now` missed where `before` (the same step in an earlier build) had a key: a few
/// sentences, most specific first. Variable values are not shown (they may be sensitive).
pub fn explain_miss(
    before: Option<&StepMaterial>,
    now: &StepMaterial,
    detail: usize,
) -> Vec<String> {
    let Some(before) = before else {
        return vec!["no earlier build of this step in this state root".into()];
    };
    let mut reasons = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        before.fields.keys().chain(now.fields.keys()).collect();
    let mut vars = Vec::new();
    for name in names {
        let (old, new) = (before.fields.get(name), now.fields.get(name));
        if old == new {
            continue;
        }
        if let Some(var) = name.strip_prefix("env:") {
            vars.push(match (old, new) {
                (None, Some(_)) => format!("{var} (new)"),
                (Some(_), None) => format!("{var} (gone)"),
                _ => var.to_string(),
            });
        } else if name == "content" {
            reasons.push(files_changed(&before.files, &now.files, detail));
        } else if name == "id" {
            {
                reasons.push(format!(
                    "the base image {} moved: {} → {}",
                    now.about.get("image").map_or("", |s| s.as_str()),
                    short(old),
                    short(new)
                ));
            }
        } else {
            reasons.push(format!(
                "{name} changed: {} → {}",
                old.map_or("(none)", |s| s.as_str()),
                new.map_or("(none)", |s| s.as_str())
            ));
        }
    }
    if !vars.is_empty() {
        reasons.insert(0, format!("build variables changed: {}", vars.join(", ")));
    }
    if reasons.is_empty() && before.parent != now.parent {
        reasons.push("the step before it was rebuilt (or its base changed)".into());
    }
    if reasons.is_empty() {
        reasons.push("same inputs as before, but the cached result is gone (pruned, --no-cache, or another state root)".into());
    }
    reasons
}

fn short(d: Option<&String>) -> String {
    d.map_or_else(
        || "(none)".into(),
        |s| {
            let hex = s.strip_prefix("sha256:").unwrap_or(s);
            hex.chars().take(12).collect()
        },
    )
}

fn files_changed(before: &[(String, String)], now: &[(String, String)], detail: usize) -> String {
    let old: BTreeMap<&str, &str> = before
        .iter()
        .map(|(p, l)| (p.as_str(), l.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = now.iter().map(|(p, l)| (p.as_str(), l.as_str())).collect();
    let mut changed = Vec::new();
    for (p, l) in &new {
        match old.get(p) {
            None => changed.push(format!("{p} (added)")),
            Some(o) if o != l => changed.push(p.to_string()),
            _ => {}
        }
    }
    for p in old.keys() {
        if !new.contains_key(p) {
            changed.push(format!("{p} (removed)"));
        }
    }
    if changed.is_empty() {
        return "the copied files changed".into();
    }
    let n = changed.len();
    let mut text = format!(
        "{n} copied file{} changed: {}",
        if n == 1 { "" } else { "s" },
        changed
            .iter()
            .take(detail)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if n > detail {
        text.push_str(&format!(" and {} more", n - detail));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_covers_kind_parent_and_fields_unambiguously() {
        let a = StepMaterial::new("RUN", None).field("cmd", "a=b");
        let b = StepMaterial::new("RUN", None).field("cmd=a", "b");
        assert_ne!(a.key(), b.key());
        let p = Digest::of(b"p");
        assert_ne!(
            a.key(),
            StepMaterial::new("RUN", Some(&p)).field("cmd", "a=b").key()
        );
        assert_ne!(
            a.key(),
            StepMaterial::new("COPY", None).field("cmd", "a=b").key()
        );
        // Files are explained through `content`, not keyed twice.
        let mut c = a.clone();
        c.files.push(("x".into(), "y".into()));
        assert_eq!(a.key(), c.key());
    }

    #[test]
    fn misses_are_explained() {
        let before = StepMaterial::new("RUN", None)
            .field("cmd", "make")
            .env(&["A=1".into(), "SECRET=x".into()]);
        let now = StepMaterial::new("RUN", None)
            .field("cmd", "make")
            .env(&["A=2".into(), "SECRET=x".into()]);
        let r = explain_miss(Some(&before), &now, 3);
        assert_eq!(r, ["build variables changed: A"]);
        assert!(!r[0].contains('2'));

        let mut b = StepMaterial::new("COPY", None).field("content", "1");
        b.files = vec![("a".into(), "1".into()), ("b".into(), "1".into())];
        let mut n = StepMaterial::new("COPY", None).field("content", "2");
        n.files = vec![("a".into(), "2".into()), ("c".into(), "1".into())];
        assert_eq!(
            explain_miss(Some(&b), &n, 2),
            ["3 copied files changed: a, c (added) and 1 more"]
        );
        let p1 = Digest::of(b"1");
        let same_but_parent = StepMaterial::new("RUN", Some(&p1)).field("cmd", "make");
        assert!(explain_miss(
            Some(&StepMaterial::new("RUN", None).field("cmd", "make")),
            &same_but_parent,
            3
        )[0]
        .contains("step before"));
        let img = |id: &str| {
            let mut m = StepMaterial::new("FROM", None).field("id", id);
            m.about.insert("image".into(), "python:3.11-slim".into());
            m
        };
        assert_eq!(
            explain_miss(
                Some(&img("sha256:aaaaaaaaaaaaaaaa")),
                &img("sha256:bbbbbbbbbbbbbbbb"),
                3
            ),
            ["the base image python:3.11-slim moved: aaaaaaaaaaaa → bbbbbbbbbbbb"]
        );
    }
}

#[cfg(test)]
mod constructor_tests {
    use super::*;

    fn run_key(args: &[&str], env: &[&str], network: &str, mounts: &[&str]) -> Digest {
        run_key_in_mode(args, env, network, mounts, false)
    }

    fn run_key_in_mode(
        args: &[&str],
        env: &[&str],
        network: &str,
        mounts: &[&str],
        insecure: bool,
    ) -> Digest {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
        let mounts: Vec<String> = mounts.iter().map(|s| s.to_string()).collect();
        StepMaterial::run(
            &Digest::of(b"parent"),
            &RunInputs {
                args: &args,
                env: &env,
                workdir: "/app",
                user: "",
                network,
                mounts: &mounts,
                insecure,
                container: "",
            },
        )
        .key()
    }

    #[test]
    fn an_insecure_run_has_its_own_key() {
        let sandboxed = run_key(&["sh", "-c", "make"], &[], "Host", &[]);
        let insecure = run_key_in_mode(&["sh", "-c", "make"], &[], "Host", &[], true);
        assert_ne!(sandboxed, insecure);
        assert_eq!(
            insecure,
            run_key_in_mode(&["sh", "-c", "make"], &[], "Host", &[], true)
        );
    }

    /// `--add-host`, `--shm-size` and `--ulimit` change what a RUN sees, so they are in its
    /// key (as in BuildKit's exec op); without them the key is the one it always was.
    #[test]
    fn container_options_are_in_the_key() {
        let key = |container: &str| {
            let args = vec!["sh".to_string(), "-c".into(), "make".into()];
            StepMaterial::run(
                &Digest::of(b"parent"),
                &RunInputs {
                    args: &args,
                    env: &[],
                    workdir: "/app",
                    user: "",
                    network: "Host",
                    mounts: &[],
                    insecure: false,
                    container,
                },
            )
            .key()
        };
        assert_eq!(key(""), run_key(&["sh", "-c", "make"], &[], "Host", &[]));
        assert_ne!(key("add-host=db:10.0.0.2"), key(""));
        assert_ne!(
            key("ulimit=nofile=1024:1024"),
            key("ulimit=nofile=2048:2048")
        );
    }

    #[test]
    fn every_run_input_is_in_the_key() {
        let base = run_key(&["sh", "-c", "make"], &["A=1"], "Host", &[]);
        assert_eq!(
            base,
            run_key(&["sh", "-c", "make"], &["A=1"], "Host", &[]),
            "deterministic"
        );
        assert_ne!(
            base,
            run_key(&["sh", "-c", "make all"], &["A=1"], "Host", &[])
        );
        assert_ne!(base, run_key(&["sh", "-c", "make"], &["A=2"], "Host", &[]));
        assert_ne!(base, run_key(&["sh", "-c", "make"], &["A=1"], "None", &[]));
        assert_ne!(
            base,
            run_key(
                &["sh", "-c", "make"],
                &["A=1"],
                "Host",
                &["type=cache,target=/c"]
            )
        );
    }

    #[test]
    fn from_keys_name_the_image_id_and_platform_not_the_name() {
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let a = StepMaterial::image("sha256:1", &amd64, "busybox");
        assert_eq!(
            a.key(),
            StepMaterial::image("sha256:1", &amd64, "mirror/busybox").key()
        );
        assert_ne!(
            a.key(),
            StepMaterial::image("sha256:2", &amd64, "busybox").key()
        );
        assert_ne!(
            a.key(),
            StepMaterial::image("sha256:1", &arm64, "busybox").key()
        );
        assert_ne!(
            StepMaterial::scratch(&amd64).key(),
            StepMaterial::scratch(&arm64).key()
        );
        let p = Digest::of(b"p");
        assert_ne!(
            StepMaterial::workdir(&p, "/app", "").key(),
            StepMaterial::workdir(&p, "/app", "1000").key()
        );
    }
}
