//! `kiln bake`'s build definitions: docker-compose files and docker-bake.hcl/.json files read
//! into one plan of targets, as `docker buildx bake` reads them. Pure: parsing, interpolation,
//! merging, `--set` overrides and the resolved plan; the CLI builds the plan's units.
//!
//! Every file becomes "raw" targets (JSON objects keyed by buildx's attribute names), so files
//! of both kinds merge by target name, `inherits` and `--set` work on one shape, and only the
//! last step types them into [`Target`]s.

pub mod compose;
pub mod hcl;
pub mod interpolate;
mod overrides;
mod raw;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use overrides::Override;
use raw::RawTarget;

/// buildx's default files, in its lookup order; every one present is read and merged in this
/// order (compose files first, then the bake files and their overrides).
pub const DEFAULT_FILES: [&str; 8] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
    "docker-bake.json",
    "docker-bake.hcl",
    "docker-bake.override.json",
    "docker-bake.override.hcl",
];

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A parser's complaint, at its position.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A well-formed file that says something kiln cannot use.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{}: service {service:?}: build context {} is not a directory",
        file.display(),
        dir.display()
    )]
    MissingContext {
        file: PathBuf,
        service: String,
        dir: PathBuf,
    },
    #[error("no compose or bake file in {} (looked for {})", dir.display(), DEFAULT_FILES.join(", "))]
    NoFiles { dir: PathBuf },
    #[error("no target or group named {name:?} (known: {known})")]
    UnknownTarget { name: String, known: String },
    #[error("target {target:?} inherits from itself ({chain})")]
    InheritCycle { target: String, chain: String },
    #[error("invalid --set {spec:?}: {why}")]
    BadSet { spec: String, why: String },
}

/// One build, typed; the field names and shape are those of `docker buildx bake --print`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Target {
    pub context: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache_to: Vec<String>,
    /// buildx `--secret` specs (`id=x,src=path`, `id=x,env=VAR`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret: Vec<String>,
    /// buildx `-o` specs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_cache: Option<bool>,
    /// Named contexts (`contexts`, compose's `build.additional_contexts`): NAME → a directory
    /// or `docker-image://REF`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub contexts: BTreeMap<String, String>,
    /// `/dev/shm` size of RUN steps (`shm-size`, compose's `build.shm_size`), as `--shm-size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<String>,
    /// `NAME=SOFT[:HARD]` resource limits of RUN steps, as `--ulimit`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<String>,
    /// HOST → IP entries in RUN steps' `/etc/hosts` (`extra-hosts`, compose's
    /// `build.extra_hosts`), as `--add-host`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_hosts: BTreeMap<String, String>,
}

impl Target {
    /// The Dockerfile's path (relative to the working directory unless absolute), when the
    /// target does not give it inline.
    pub fn dockerfile_path(&self) -> Option<PathBuf> {
        if self.dockerfile_inline.is_some() {
            return None;
        }
        let name = self.dockerfile.as_deref().unwrap_or("Dockerfile");
        Some(Path::new(&self.context).join(name))
    }
}

/// Targets that build the same thing (everything but the tags equal), built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildUnit {
    /// The targets it stands for, in plan order; the first names it in progress output.
    pub names: Vec<String>,
    /// The shared target, with every target's tags.
    pub target: Target,
}

/// What `kiln bake` builds: the selected targets, in order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The groups to print: the requested group, or `default` with the requested targets.
    pub groups: BTreeMap<String, Vec<String>>,
    pub targets: Vec<(String, Target)>,
    /// Lines for the user (services skipped because they have no `build:`).
    pub notes: Vec<String>,
}

impl Plan {
    /// The build units: identical targets merged, their tags joined (first-seen order).
    pub fn units(&self) -> Vec<BuildUnit> {
        let mut units: Vec<BuildUnit> = Vec::new();
        for (name, target) in &self.targets {
            let same = units.iter_mut().find(|u| {
                Target {
                    tags: Vec::new(),
                    ..u.target.clone()
                } == Target {
                    tags: Vec::new(),
                    ..target.clone()
                }
            });
            match same {
                Some(unit) => {
                    unit.names.push(name.clone());
                    for t in &target.tags {
                        if !unit.target.tags.contains(t) {
                            unit.target.tags.push(t.clone());
                        }
                    }
                }
                None => units.push(BuildUnit {
                    names: vec![name.clone()],
                    target: target.clone(),
                }),
            }
        }
        units
    }

    /// `docker buildx bake --print`'s document (serialize it; fields keep buildx's order).
    pub fn print(&self) -> PrintDoc<'_> {
        PrintDoc {
            group: self
                .groups
                .iter()
                .map(|(name, targets)| (name.as_str(), PrintGroup { targets }))
                .collect(),
            target: self.targets.iter().map(|(n, t)| (n.as_str(), t)).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PrintDoc<'a> {
    pub group: BTreeMap<&'a str, PrintGroup<'a>>,
    pub target: BTreeMap<&'a str, &'a Target>,
}

#[derive(Debug, Serialize)]
pub struct PrintGroup<'a> {
    pub targets: &'a [String],
}

/// What to read and how.
pub struct LoadOptions<'a> {
    /// `-f` files in order; empty: the default files present in `dir`.
    pub files: &'a [PathBuf],
    /// The working directory (default files are looked up here).
    pub dir: &'a Path,
    /// The process environment (wins over `.env` and over variable defaults).
    pub env: &'a BTreeMap<String, String>,
    /// `--set` specs, in order.
    pub overrides: &'a [String],
    /// Targets or groups to build; empty: the `default` group.
    pub targets: &'a [String],
}

/// The files `kiln bake` reads without `-f`: every default name present, in lookup order.
pub fn default_files(dir: &Path) -> Vec<PathBuf> {
    DEFAULT_FILES
        .iter()
        .map(|n| {
            if dir == Path::new(".") {
                PathBuf::from(n)
            } else {
                dir.join(n)
            }
        })
        .filter(|p| p.is_file())
        .collect()
}

/// The kinds of definition file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Compose,
    Hcl,
    Json,
}

fn file_kind(path: &Path, text: &str) -> FileKind {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => FileKind::Json,
        Some("hcl") => FileKind::Hcl,
        Some("yml" | "yaml") => FileKind::Compose,
        // Other names: JSON if it starts like JSON, compose if it has a services key.
        _ if text.trim_start().starts_with('{') => FileKind::Json,
        _ if text.lines().any(|l| l.starts_with("services:")) => FileKind::Compose,
        _ => FileKind::Hcl,
    }
}

pub(crate) fn read(path: &Path) -> Result<String, BakeError> {
    std::fs::read_to_string(path).map_err(|source| BakeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Every target of every file merged, plus the groups and notes.
#[derive(Debug, Default)]
pub(crate) struct Definition {
    pub groups: BTreeMap<String, Vec<String>>,
    pub targets: BTreeMap<String, RawTarget>,
    /// The file each target was (last) defined in, for errors.
    pub origin: BTreeMap<String, PathBuf>,
    pub notes: Vec<String>,
}

impl Definition {
    /// Adds another file's definitions: a target defined again is merged into the first (see
    /// `raw::merge`), a group defined again is replaced.
    fn absorb(&mut self, other: Definition) {
        for (name, t) in other.targets {
            match self.targets.get_mut(&name) {
                Some(existing) => raw::merge(existing, &t),
                None => {
                    self.targets.insert(name.clone(), t);
                }
            }
        }
        self.origin.extend(other.origin);
        for (name, g) in other.groups {
            self.groups.insert(name, g);
        }
        self.notes.extend(other.notes);
    }
}

/// Reads, merges and resolves the definition files into the plan of what to build.
pub fn load(opts: &LoadOptions) -> Result<Plan, BakeError> {
    let files: Vec<PathBuf> = if opts.files.is_empty() {
        let found = default_files(opts.dir);
        if found.is_empty() {
            return Err(BakeError::NoFiles {
                dir: opts.dir.to_path_buf(),
            });
        }
        found
    } else {
        opts.files
            .iter()
            .map(|f| {
                if f.is_absolute() || opts.dir == Path::new(".") {
                    f.clone()
                } else {
                    opts.dir.join(f)
                }
            })
            .collect()
    };
    let mut texts = Vec::new();
    for path in &files {
        let text = read(path)?;
        texts.push((path.clone(), file_kind(path, &text), text));
    }
    // All compose files are one project, merged first, in the place of the first of them.
    let compose_files: Vec<(PathBuf, String)> = texts
        .iter()
        .filter(|(_, k, _)| *k == FileKind::Compose)
        .map(|(p, _, t)| (p.clone(), t.clone()))
        .collect();
    let bake_files: Vec<(PathBuf, FileKind, String)> = texts
        .iter()
        .filter(|(_, k, _)| *k != FileKind::Compose)
        .cloned()
        .collect();
    let mut def = Definition::default();
    let mut compose_done = compose_files.is_empty();
    let bake_defs = hcl::load_files(&bake_files, opts.env)?;
    let mut bake_defs = bake_defs.into_iter();
    for (_, kind, _) in &texts {
        if *kind == FileKind::Compose {
            if !compose_done {
                def.absorb(compose::load_project(&compose_files, opts.env)?);
                compose_done = true;
            }
        } else if let Some(d) = bake_defs.next() {
            def.absorb(d);
        }
    }
    resolve(def, opts)
}

/// Inherits, `--set`, target selection and typing.
fn resolve(mut def: Definition, opts: &LoadOptions) -> Result<Plan, BakeError> {
    raw::resolve_inherits(&mut def.targets)?;
    let overrides = opts
        .overrides
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    overrides::apply(&overrides, &mut def.targets)?;
    let requested: Vec<String> = if opts.targets.is_empty() {
        vec!["default".to_string()]
    } else {
        opts.targets.to_vec()
    };
    let mut names = Vec::new();
    for name in &requested {
        expand_name(&def, name, &mut names, 0)?;
    }
    let mut groups = BTreeMap::new();
    match requested.as_slice() {
        [one] if def.groups.contains_key(one) => {
            groups.insert(one.clone(), def.groups[one].clone());
        }
        _ => {
            groups.insert("default".to_string(), requested.clone());
        }
    }
    let mut targets = Vec::new();
    for name in names {
        let path = def.origin.get(&name).cloned().unwrap_or_default();
        let target = raw::to_target(&def.targets[&name], &name, &path)?;
        targets.push((name, target));
    }
    Ok(Plan {
        groups,
        targets,
        notes: def.notes,
    })
}

/// A target name, or a group's targets (groups may name groups), added once each.
fn expand_name(
    def: &Definition,
    name: &str,
    out: &mut Vec<String>,
    depth: usize,
) -> Result<(), BakeError> {
    if depth > 32 {
        return Err(BakeError::InheritCycle {
            target: name.to_string(),
            chain: "groups nest more than 32 deep".into(),
        });
    }
    if let Some(members) = def.groups.get(name) {
        // A group and a target of one name: the target (buildx builds the target).
        if !def.targets.contains_key(name) || members.iter().any(|m| m != name) {
            for m in members {
                if m == name && def.targets.contains_key(name) {
                    push_once(out, name);
                } else {
                    expand_name(def, m, out, depth + 1)?;
                }
            }
            return Ok(());
        }
    }
    if def.targets.contains_key(name) {
        push_once(out, name);
        return Ok(());
    }
    let known: Vec<&str> = def
        .groups
        .keys()
        .chain(def.targets.keys())
        .map(String::as_str)
        .collect();
    Err(BakeError::UnknownTarget {
        name: name.to_string(),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

fn push_once(out: &mut Vec<String>, name: &str) {
    if !out.iter().any(|n| n == name) {
        out.push(name.to_string());
    }
}

#[cfg(test)]
mod tests;
