//! docker-compose files → targets, as `docker compose build` and `docker buildx bake` read
//! them: YAML with anchors and merge keys, `${VAR}` interpolation (the environment over
//! `.env`), several files merged in order, one target per service with a `build:` section.
//!
//! YAML comes from serde_yaml 0.9: it reports parse errors with line and column, resolves
//! anchors and aliases while parsing, and `Value::apply_merge` implements `<<` merge keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_yaml::{Mapping, Value as Yaml};

use super::interpolate::{interpolate, parse_env_file};
use super::raw::RawTarget;
use super::{read, BakeError, Definition};

/// Reads compose files (in `-f` order) as one project: paths are relative to the first file's
/// directory, where `.env` is read too.
pub(super) fn load_project(
    files: &[(PathBuf, String)],
    env: &BTreeMap<String, String>,
) -> Result<Definition, BakeError> {
    let Some((first, _)) = files.first() else {
        return Ok(Definition::default());
    };
    let project_dir = match first.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let vars = project_vars(&project_dir, env)?;
    let lookup = |k: &str| vars.get(k).cloned();
    let mut merged = Mapping::new();
    for (path, text) in files {
        let mut doc: Yaml = serde_yaml::from_str(text).map_err(|e| yaml_error(path, &e))?;
        doc.apply_merge().map_err(|e| BakeError::Invalid {
            path: path.clone(),
            message: format!("YAML merge key (<<): {e}"),
        })?;
        interpolate_tree(&mut doc, &lookup, "", path)?;
        let Yaml::Mapping(mut map) = doc else {
            if doc.is_null() {
                continue;
            }
            return Err(invalid(path, "the top level must be a mapping"));
        };
        normalize_services(&mut map, path)?;
        merge_yaml(&mut merged, map);
    }
    let project = project_name(&merged, env, &vars, &project_dir);
    let top_secrets = merged
        .get("secrets")
        .and_then(Yaml::as_mapping)
        .cloned()
        .unwrap_or_default();
    let mut def = Definition::default();
    let services = match merged.get("services") {
        Some(Yaml::Mapping(m)) => m.clone(),
        None | Some(Yaml::Null) => Mapping::new(),
        Some(_) => return Err(invalid(first, "services must be a mapping")),
    };
    let mut names: Vec<(String, Mapping)> = Vec::new();
    for (name, service) in services {
        let name =
            scalar(&name).ok_or_else(|| invalid(first, "a service name must be a string"))?;
        let service = match service {
            Yaml::Mapping(m) => m,
            Yaml::Null => Mapping::new(),
            _ => {
                return Err(invalid(
                    first,
                    &format!("service {name:?} must be a mapping"),
                ))
            }
        };
        names.push((name, service));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let ctx = ServiceCtx {
        file: first,
        project_dir: &project_dir,
        project: &project,
        vars: &vars,
        secrets: &top_secrets,
    };
    let mut built = Vec::new();
    for (name, service) in &names {
        match service.get("build") {
            None | Some(Yaml::Null) => def.notes.push(format!(
                "skipping service {name:?}: it has no build section{}",
                service
                    .get("image")
                    .and_then(scalar)
                    .map(|i| format!(" (image {i})"))
                    .unwrap_or_default()
            )),
            Some(_) => {
                let target = ctx.service_target(name, service, &mut def.notes)?;
                def.targets.insert(name.clone(), target);
                def.origin.insert(name.clone(), first.clone());
                built.push(name.clone());
            }
        }
    }
    def.groups.insert("default".into(), built);
    Ok(def)
}

/// The variables interpolation sees: `.env` beside the first file, under the environment.
fn project_vars(
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, BakeError> {
    let dotenv = dir.join(".env");
    let mut vars = if dotenv.is_file() {
        let text = read(&dotenv)?;
        parse_env_file(&text, env).map_err(|e| BakeError::Syntax {
            path: dotenv.clone(),
            line: e.line,
            column: 1,
            message: e.why,
        })?
    } else {
        BTreeMap::new()
    };
    for (k, v) in env {
        vars.insert(k.clone(), v.clone());
    }
    Ok(vars)
}

fn yaml_error(path: &Path, e: &serde_yaml::Error) -> BakeError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    BakeError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message: e.to_string(),
    }
}

fn invalid(path: &Path, message: &str) -> BakeError {
    BakeError::Invalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Interpolates every string value (keys stay as written), naming the value's key path in
/// errors.
fn interpolate_tree(
    node: &mut Yaml,
    lookup: &dyn Fn(&str) -> Option<String>,
    at: &str,
    path: &Path,
) -> Result<(), BakeError> {
    match node {
        Yaml::String(s) => {
            *s = interpolate(s, lookup).map_err(|e| invalid(path, &format!("{at}: {e}")))?;
        }
        Yaml::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, lookup, &format!("{at}[{i}]"), path)?;
            }
        }
        Yaml::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = scalar(k).unwrap_or_default();
                let child = if at.is_empty() {
                    key
                } else {
                    format!("{at}.{key}")
                };
                interpolate_tree(v, lookup, &child, path)?;
            }
        }
        Yaml::Tagged(t) => interpolate_tree(&mut t.value, lookup, at, path)?,
        _ => {}
    }
    Ok(())
}

/// Puts each service's `build:` in one shape before files merge: a string is the context, and
/// `args`/`labels` lists become maps (an `args` entry with no value stays null: it is looked
/// up later).
fn normalize_services(doc: &mut Mapping, path: &Path) -> Result<(), BakeError> {
    let Some(Yaml::Mapping(services)) = doc.get_mut("services") else {
        return Ok(());
    };
    for (name, service) in services.iter_mut() {
        let Yaml::Mapping(service) = service else {
            continue;
        };
        let Some(build) = service.get_mut("build") else {
            continue;
        };
        if let Yaml::String(context) = build {
            let mut m = Mapping::new();
            m.insert("context".into(), Yaml::String(context.clone()));
            *build = Yaml::Mapping(m);
        }
        let Yaml::Mapping(build) = build else {
            if build.is_null() {
                continue;
            }
            return Err(invalid(
                path,
                &format!(
                    "services.{}.build must be a string (the context) or a mapping",
                    scalar(name).unwrap_or_default()
                ),
            ));
        };
        for key in ["args", "labels"] {
            if let Some(Yaml::Sequence(items)) = build.get(key) {
                let mut m = Mapping::new();
                for item in items {
                    let text = scalar(item).unwrap_or_default();
                    match text.split_once('=') {
                        Some((k, v)) => m.insert(k.into(), Yaml::String(v.into())),
                        // `- FOO`: an arg from the environment; a label with an empty value.
                        None if key == "args" => m.insert(text.into(), Yaml::Null),
                        None => m.insert(text.into(), Yaml::String(String::new())),
                    };
                }
                build.insert(key.into(), Yaml::Mapping(m));
            }
        }
    }
    Ok(())
}

/// Compose's merge of a later file: mappings merge key by key, sequences add the items not
/// there yet, anything else is replaced.
fn merge_yaml(base: &mut Mapping, over: Mapping) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Yaml::Mapping(b)), Yaml::Mapping(o)) => merge_yaml(b, o),
            (Some(Yaml::Sequence(b)), Yaml::Sequence(o)) => {
                for item in o {
                    if !b.contains(&item) {
                        b.push(item);
                    }
                }
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A YAML scalar as text (`3.11` and `true` are strings to compose's build args).
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Compose's project name: COMPOSE_PROJECT_NAME (environment, then `.env`), else the
/// top-level `name:`, else the first file's directory name; lowercased, only `[a-z0-9_-]`
/// kept, starting with a letter or digit.
pub fn project_name(
    doc: &Mapping,
    env: &BTreeMap<String, String>,
    vars: &BTreeMap<String, String>,
    project_dir: &Path,
) -> String {
    let from_env = env
        .get("COMPOSE_PROJECT_NAME")
        .or_else(|| vars.get("COMPOSE_PROJECT_NAME"))
        .filter(|v| !v.is_empty())
        .cloned();
    let raw = from_env
        .or_else(|| doc.get("name").and_then(scalar).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| {
            let dir = std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.into());
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    normalize_project_name(&raw)
}

pub fn normalize_project_name(raw: &str) -> String {
    let kept: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    kept.trim_start_matches(['_', '-']).to_string()
}

/// The `build:` keys kiln reads; others (ssh, ulimits, isolation, ...) get a note.
const BUILD_KEYS: [&str; 18] = [
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "labels",
    "target",
    "tags",
    "cache_from",
    "cache_to",
    "platforms",
    "secrets",
    "network",
    "pull",
    "no_cache",
    "additional_contexts",
    "shm_size",
    "extra_hosts",
    "x-bake",
];

struct ServiceCtx<'a> {
    file: &'a Path,
    project_dir: &'a Path,
    project: &'a str,
    vars: &'a BTreeMap<String, String>,
    secrets: &'a Mapping,
}

impl ServiceCtx<'_> {
    fn bad(&self, service: &str, message: &str) -> BakeError {
        invalid(self.file, &format!("service {service:?}: {message}"))
    }

    /// `rel` against the project directory (as written when that is `.`).
    fn join(&self, rel: &str) -> PathBuf {
        if Path::new(rel).is_absolute() || self.project_dir == Path::new(".") {
            return PathBuf::from(rel);
        }
        match rel.trim_start_matches("./") {
            "" | "." => self.project_dir.to_path_buf(),
            rest => self.project_dir.join(rest),
        }
    }

    fn string_list(
        &self,
        service: &str,
        v: Option<&Yaml>,
        key: &str,
    ) -> Result<Vec<Json>, BakeError> {
        match v {
            None | Some(Yaml::Null) => Ok(Vec::new()),
            Some(Yaml::Sequence(items)) => items
                .iter()
                .map(|i| {
                    scalar(i).map(Json::String).ok_or_else(|| {
                        self.bad(service, &format!("{key} must be a list of strings"))
                    })
                })
                .collect(),
            Some(v) => scalar(v)
                .map(|s| vec![Json::String(s)])
                .ok_or_else(|| self.bad(service, &format!("{key} must be a list of strings"))),
        }
    }

    fn string_map(
        &self,
        service: &str,
        v: Option<&Yaml>,
        key: &str,
        from_env: bool,
    ) -> Result<serde_json::Map<String, Json>, BakeError> {
        let mut out = serde_json::Map::new();
        match v {
            None | Some(Yaml::Null) => {}
            Some(Yaml::Mapping(m)) => {
                for (k, v) in m {
                    let k = scalar(k)
                        .ok_or_else(|| self.bad(service, &format!("{key} keys must be strings")))?;
                    let value = match v {
                        // No value: the environment's, or dropped when unset (compose).
                        Yaml::Null if from_env => match self.vars.get(&k) {
                            Some(v) => v.clone(),
                            None => continue,
                        },
                        Yaml::Null => String::new(),
                        v => scalar(v).ok_or_else(|| {
                            self.bad(service, &format!("{key}.{k} must be a string"))
                        })?,
                    };
                    out.insert(k, Json::String(value));
                }
            }
            Some(_) => {
                return Err(self.bad(
                    service,
                    &format!("{key} must be a mapping or a list of KEY=VALUE"),
                ))
            }
        }
        Ok(out)
    }

    /// `build.extra_hosts`: a list of `HOST:IP` or `HOST=IP`, or a mapping HOST → IP.
    fn extra_hosts(
        &self,
        service: &str,
        v: Option<&Yaml>,
    ) -> Result<serde_json::Map<String, Json>, BakeError> {
        if let Some(Yaml::Mapping(_)) = v {
            return self.string_map(service, v, "build.extra_hosts", false);
        }
        let mut out = serde_json::Map::new();
        for entry in self.string_list(service, v, "build.extra_hosts")? {
            let s = entry.as_str().unwrap_or_default();
            // The name ends at the first `=` or, without one, the first `:` (IPv6 has colons).
            let (host, ip) = s
                .split_once('=')
                .or_else(|| s.split_once(':'))
                .filter(|(h, ip)| !h.is_empty() && !ip.is_empty())
                .ok_or_else(|| {
                    self.bad(
                        service,
                        &format!("build.extra_hosts entry {s:?} is not HOST:IP"),
                    )
                })?;
            out.insert(host.to_string(), Json::String(ip.to_string()));
        }
        Ok(out)
    }

    fn service_target(
        &self,
        name: &str,
        service: &Mapping,
        notes: &mut Vec<String>,
    ) -> Result<RawTarget, BakeError> {
        let build = match service.get("build") {
            Some(Yaml::Mapping(b)) => b,
            _ => return Err(self.bad(name, "build must be a string or a mapping")),
        };
        for key in build.keys().filter_map(scalar) {
            if !BUILD_KEYS.contains(&key.as_str()) && !key.starts_with("x-") {
                notes.push(format!(
                    "service {name:?}: build.{key} is not supported by kiln bake and is ignored"
                ));
            }
        }
        let mut t = RawTarget::new();
        let context = build
            .get("context")
            .and_then(scalar)
            .unwrap_or_else(|| ".".into());
        if context.contains("://") || context.starts_with("git@") {
            return Err(self.bad(
                name,
                &format!("build.context {context:?} is remote: kiln builds from a local directory"),
            ));
        }
        let dir = self.join(&context);
        if !dir.is_dir() {
            return Err(BakeError::MissingContext {
                file: self.file.to_path_buf(),
                service: name.to_string(),
                dir,
            });
        }
        t.insert("context".into(), Json::String(dir.display().to_string()));
        for (yaml_key, key) in [
            ("dockerfile", "dockerfile"),
            ("dockerfile_inline", "dockerfile-inline"),
            ("target", "target"),
            ("network", "network"),
            ("shm_size", "shm-size"),
        ] {
            if let Some(v) = build.get(yaml_key).filter(|v| !v.is_null()) {
                let s = scalar(v)
                    .ok_or_else(|| self.bad(name, &format!("build.{yaml_key} must be a string")))?;
                t.insert(key.into(), Json::String(s));
            }
        }
        for (yaml_key, key) in [("pull", "pull"), ("no_cache", "no-cache")] {
            match build.get(yaml_key) {
                None | Some(Yaml::Null) => {}
                Some(Yaml::Bool(b)) => {
                    t.insert(key.into(), Json::Bool(*b));
                }
                Some(_) => {
                    return Err(self.bad(name, &format!("build.{yaml_key} must be true or false")))
                }
            }
        }
        t.insert(
            "args".into(),
            Json::Object(self.string_map(name, build.get("args"), "build.args", true)?),
        );
        t.insert(
            "labels".into(),
            Json::Object(self.string_map(name, build.get("labels"), "build.labels", false)?),
        );
        let contexts = self.string_map(
            name,
            build.get("additional_contexts"),
            "build.additional_contexts",
            false,
        )?;
        if !contexts.is_empty() {
            // Local directories are relative to the project directory, as `context` is.
            let resolved = contexts
                .into_iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) if !s.contains("://") => {
                        (k, Json::String(self.join(s).display().to_string()))
                    }
                    _ => (k, v),
                })
                .collect();
            t.insert("contexts".into(), Json::Object(resolved));
        }
        let image = service
            .get("image")
            .and_then(scalar)
            .unwrap_or_else(|| format!("{}-{name}", self.project));
        let mut tags = vec![Json::String(image)];
        for tag in self.string_list(name, build.get("tags"), "build.tags")? {
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        t.insert("tags".into(), Json::Array(tags));
        for (yaml_key, key) in [
            ("cache_from", "cache-from"),
            ("cache_to", "cache-to"),
            ("platforms", "platforms"),
        ] {
            let list = self.string_list(name, build.get(yaml_key), &format!("build.{yaml_key}"))?;
            if !list.is_empty() {
                t.insert(key.into(), Json::Array(list));
            }
        }
        let hosts = self.extra_hosts(name, build.get("extra_hosts"))?;
        if !hosts.is_empty() {
            t.insert("extra-hosts".into(), Json::Object(hosts));
        }
        let secrets = self.secrets(name, build.get("secrets"))?;
        if !secrets.is_empty() {
            t.insert("secret".into(), Json::Array(secrets));
        }
        if let Some(xbake) = build.get("x-bake") {
            self.apply_x_bake(name, xbake, &mut t)?;
        }
        Ok(t)
    }

    /// `build.secrets` (a name, or `{source, target}`) → buildx secret specs, from the
    /// top-level `secrets:` (`file:` relative to the project, or `environment:`).
    fn secrets(&self, service: &str, v: Option<&Yaml>) -> Result<Vec<Json>, BakeError> {
        let Some(Yaml::Sequence(items)) = v else {
            return match v {
                None | Some(Yaml::Null) => Ok(Vec::new()),
                Some(_) => Err(self.bad(service, "build.secrets must be a list")),
            };
        };
        let mut out = Vec::new();
        for item in items {
            let (source, id) = match item {
                Yaml::Mapping(m) => {
                    let source = m
                        .get("source")
                        .and_then(scalar)
                        .ok_or_else(|| self.bad(service, "a build.secrets entry needs a source"))?;
                    let id = m
                        .get("target")
                        .and_then(scalar)
                        .unwrap_or_else(|| source.clone());
                    (source, id)
                }
                other => {
                    let s = scalar(other).ok_or_else(|| {
                        self.bad(service, "build.secrets entries are names or mappings")
                    })?;
                    (s.clone(), s)
                }
            };
            let def = self
                .secrets
                .get(source.as_str())
                .and_then(Yaml::as_mapping)
                .ok_or_else(|| {
                    self.bad(
                        service,
                        &format!(
                            "build secret {source:?} is not defined in the top-level secrets:"
                        ),
                    )
                })?;
            let spec = if let Some(file) = def.get("file").and_then(scalar) {
                format!("id={id},src={}", self.join(&file).display())
            } else if let Some(var) = def.get("environment").and_then(scalar) {
                format!("id={id},env={var}")
            } else {
                return Err(self.bad(
                    service,
                    &format!(
                        "secret {source:?} needs file: or environment: (kiln reads no others)"
                    ),
                ));
            };
            out.push(Json::String(spec));
        }
        Ok(out)
    }

    /// `x-bake:` keys override the service's (lists add up without duplicates, as buildx's
    /// compose reader does; pull and no-cache replace).
    fn apply_x_bake(&self, service: &str, v: &Yaml, t: &mut RawTarget) -> Result<(), BakeError> {
        let Yaml::Mapping(m) = v else {
            return Err(self.bad(service, "build.x-bake must be a mapping"));
        };
        for (k, v) in m {
            let key = scalar(k).unwrap_or_default();
            let attr = match key.as_str() {
                "tags" => "tags",
                "platforms" => "platforms",
                "cache-from" => "cache-from",
                "cache-to" => "cache-to",
                "secret" => "secret",
                "output" => "output",
                "pull" | "no-cache" => {
                    let b = match v {
                        Yaml::Bool(b) => *b,
                        _ => {
                            return Err(
                                self.bad(service, &format!("x-bake.{key} must be true or false"))
                            )
                        }
                    };
                    t.insert(key.clone(), Json::Bool(b));
                    continue;
                }
                other => {
                    return Err(self.bad(
                        service,
                        &format!(
                            "x-bake.{other} is not supported (kiln reads tags, platforms, \
                             cache-from, cache-to, secret, output, pull, no-cache)"
                        ),
                    ))
                }
            };
            let values = self.string_list(service, Some(v), &format!("x-bake.{key}"))?;
            let slot = t
                .entry(attr.to_string())
                .or_insert_with(|| Json::Array(Vec::new()));
            if let Json::Array(list) = slot {
                for value in values {
                    if !list.contains(&value) {
                        list.push(value);
                    }
                }
            }
        }
        Ok(())
    }
}
