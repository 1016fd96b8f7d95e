//! Targets before typing: JSON objects keyed by buildx's attribute names. Merging (of files,
//! and of `inherits`) and typing into [`Target`].

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{BakeError, Target};

pub type RawTarget = serde_json::Map<String, Value>;

/// Attributes whose maps merge key by key.
const MAP_KEYS: [&str; 3] = ["args", "labels", "contexts"];
/// Attributes whose lists add up (deduplicated); every other attribute is replaced by the
/// later definition, as buildx's `Target.Merge` does.
const APPEND_KEYS: [&str; 3] = ["cache-from", "secret", "ssh"];

/// Lays `over` on `base`.
pub fn merge(base: &mut RawTarget, over: &RawTarget) {
    for (key, value) in over {
        if key == "inherits" {
            continue;
        }
        match (base.get_mut(key), value) {
            (Some(Value::Object(b)), Value::Object(o)) if MAP_KEYS.contains(&key.as_str()) => {
                for (k, v) in o {
                    b.insert(k.clone(), v.clone());
                }
            }
            (Some(Value::Array(b)), Value::Array(o)) if APPEND_KEYS.contains(&key.as_str()) => {
                for v in o {
                    if !b.contains(v) {
                        b.push(v.clone());
                    }
                }
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Replaces every target by its `inherits` parents (in order) with itself laid on top.
pub fn resolve_inherits(targets: &mut BTreeMap<String, RawTarget>) -> Result<(), BakeError> {
    let names: Vec<String> = targets.keys().cloned().collect();
    let mut done: BTreeMap<String, RawTarget> = BTreeMap::new();
    for name in &names {
        let mut chain = Vec::new();
        resolve_one(name, targets, &mut done, &mut chain)?;
    }
    *targets = done;
    Ok(())
}

fn resolve_one(
    name: &str,
    targets: &BTreeMap<String, RawTarget>,
    done: &mut BTreeMap<String, RawTarget>,
    chain: &mut Vec<String>,
) -> Result<RawTarget, BakeError> {
    if let Some(t) = done.get(name) {
        return Ok(t.clone());
    }
    if chain.iter().any(|c| c == name) {
        chain.push(name.to_string());
        return Err(BakeError::InheritCycle {
            target: chain[0].clone(),
            chain: chain.join(" -> "),
        });
    }
    let Some(own) = targets.get(name) else {
        let known: Vec<&str> = targets.keys().map(String::as_str).collect();
        return Err(BakeError::UnknownTarget {
            name: name.to_string(),
            known: known.join(", "),
        });
    };
    chain.push(name.to_string());
    let parents: Vec<String> = match own.get("inherits") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let mut out = RawTarget::new();
    for parent in parents {
        let p = resolve_one(&parent, targets, done, chain)?;
        merge(&mut out, &p);
    }
    merge(&mut out, own);
    chain.pop();
    done.insert(name.to_string(), out.clone());
    Ok(out)
}

/// Types a merged target; errors name the file, the target and the attribute.
pub fn to_target(raw: &RawTarget, name: &str, path: &Path) -> Result<Target, BakeError> {
    let bad = |key: &str, want: &str| BakeError::Invalid {
        path: path.to_path_buf(),
        message: format!("target {name:?}: {key} must be {want}"),
    };
    let string = |key: &str| -> Result<Option<String>, BakeError> {
        match raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar(v).map(Some).ok_or_else(|| bad(key, "a string")),
        }
    };
    let list = |key: &str| -> Result<Vec<String>, BakeError> {
        match raw.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| scalar(v).ok_or_else(|| bad(key, "a list of strings")))
                .collect(),
            Some(v) => scalar(v)
                .map(|s| vec![s])
                .ok_or_else(|| bad(key, "a list of strings")),
        }
    };
    let map = |key: &str| -> Result<BTreeMap<String, String>, BakeError> {
        match raw.get(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            // A null value drops the entry (an arg with no value), as buildx does.
            Some(Value::Object(m)) => m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    scalar(v)
                        .map(|s| (k.clone(), s))
                        .ok_or_else(|| bad(key, "a map of strings"))
                })
                .collect(),
            Some(_) => Err(bad(key, "a map of strings")),
        }
    };
    let boolean = |key: &str| -> Result<Option<bool>, BakeError> {
        match raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" => Ok(Some(true)),
            Some(Value::String(s)) if s == "false" => Ok(Some(false)),
            Some(_) => Err(bad(key, "true or false")),
        }
    };
    let known = [
        "context",
        "dockerfile",
        "dockerfile-inline",
        "args",
        "labels",
        "tags",
        "target",
        "platforms",
        "cache-from",
        "cache-to",
        "secret",
        "output",
        "network",
        "pull",
        "no-cache",
        "contexts",
        "shm-size",
        "ulimits",
        "extra-hosts",
        "inherits",
        "description",
    ];
    if let Some(key) = raw.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(BakeError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "target {name:?}: attribute {key:?} is not supported by kiln bake (supported: {})",
                known.join(", ")
            ),
        });
    }
    Ok(Target {
        context: string("context")?.unwrap_or_else(|| ".".into()),
        dockerfile: match string("dockerfile-inline")? {
            Some(_) => string("dockerfile")?,
            None => Some(string("dockerfile")?.unwrap_or_else(|| "Dockerfile".into())),
        },
        dockerfile_inline: string("dockerfile-inline")?,
        args: map("args")?,
        labels: map("labels")?,
        tags: list("tags")?,
        target: string("target")?,
        platforms: list("platforms")?,
        cache_from: list("cache-from")?,
        cache_to: list("cache-to")?,
        secret: list("secret")?,
        output: list("output")?,
        network: string("network")?,
        pull: boolean("pull")?,
        no_cache: boolean("no-cache")?,
        contexts: map("contexts")?,
        shm_size: string("shm-size")?,
        ulimits: list("ulimits")?,
        extra_hosts: map("extra-hosts")?,
    })
}

/// A string, number or bool as text (HCL and YAML let args be numbers).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
