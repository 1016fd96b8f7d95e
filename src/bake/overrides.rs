//! `--set PATTERN.KEY=VALUE`: buildx's command-line overrides, applied to the merged targets
//! after `inherits`. PATTERN is a target name or a glob (`*`, `app-*`); a list attribute set
//! several times for one pattern gets all the values (`--set *.tags=a --set *.tags=b`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::raw::RawTarget;
use super::BakeError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub spec: String,
    pub pattern: String,
    /// The attribute in buildx's file spelling (`platforms`, `secret`, `args.FOO`).
    pub key: String,
    pub value: String,
}

/// `--set` spellings → the attribute they set.
fn attribute(key: &str) -> Option<&'static str> {
    Some(match key {
        "context" => "context",
        "dockerfile" => "dockerfile",
        "dockerfile-inline" => "dockerfile-inline",
        "target" => "target",
        "network" => "network",
        "pull" => "pull",
        "no-cache" => "no-cache",
        "tags" => "tags",
        "platform" | "platforms" => "platforms",
        "cache-from" => "cache-from",
        "cache-to" => "cache-to",
        "secrets" | "secret" => "secret",
        "output" | "outputs" => "output",
        _ => return None,
    })
}

const LIST_KEYS: [&str; 6] = [
    "tags",
    "platforms",
    "cache-from",
    "cache-to",
    "secret",
    "output",
];

impl Override {
    pub fn parse(spec: &str) -> Result<Override, BakeError> {
        let bad = |why: &str| BakeError::BadSet {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let (lhs, value) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected TARGET.KEY=VALUE"))?;
        let (pattern, key) = lhs
            .split_once('.')
            .ok_or_else(|| bad("expected TARGET.KEY=VALUE (the key needs a target or *)"))?;
        if pattern.is_empty() {
            return Err(bad("the target pattern is empty"));
        }
        let key = match key.split_once('.') {
            Some((map @ ("args" | "labels" | "contexts"), name)) if !name.is_empty() => {
                format!("{map}.{name}")
            }
            _ => attribute(key)
                .ok_or_else(|| {
                    bad(&format!(
                        "unknown key {key:?} (use args.NAME, labels.NAME, context, dockerfile, \
                         dockerfile-inline, target, tags, platform, cache-from, cache-to, \
                         secrets, output, network, pull, no-cache)"
                    ))
                })?
                .to_string(),
        };
        if matches!(key.as_str(), "pull" | "no-cache") && !matches!(value, "true" | "false") {
            return Err(bad("pull and no-cache take true or false"));
        }
        Ok(Override {
            spec: spec.to_string(),
            pattern: pattern.to_string(),
            key,
            value: value.to_string(),
        })
    }
}

/// `*` in a pattern matches any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

pub fn apply(
    overrides: &[Override],
    targets: &mut BTreeMap<String, RawTarget>,
) -> Result<(), BakeError> {
    // List values gathered per (target, key) first, so repeated --set add up.
    let mut lists: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for o in overrides {
        let matched: Vec<String> = targets
            .keys()
            .filter(|n| glob_match(&o.pattern, n))
            .cloned()
            .collect();
        if matched.is_empty() {
            return Err(BakeError::BadSet {
                spec: o.spec.clone(),
                why: format!("no target matches {:?}", o.pattern),
            });
        }
        for name in matched {
            let Some(target) = targets.get_mut(&name) else {
                continue;
            };
            if let Some((map, entry)) = o.key.split_once('.') {
                let slot = target
                    .entry(map.to_string())
                    .or_insert_with(|| Value::Object(Default::default()));
                if !slot.is_object() {
                    *slot = Value::Object(Default::default());
                }
                if let Value::Object(m) = slot {
                    m.insert(entry.to_string(), Value::String(o.value.clone()));
                }
            } else if LIST_KEYS.contains(&o.key.as_str()) {
                let values = lists.entry((name.clone(), o.key.clone())).or_default();
                if o.key == "platforms" {
                    values.extend(
                        o.value
                            .split(',')
                            .filter(|p| !p.is_empty())
                            .map(|p| Value::String(p.to_string())),
                    );
                } else {
                    values.push(Value::String(o.value.clone()));
                }
            } else if matches!(o.key.as_str(), "pull" | "no-cache") {
                target.insert(o.key.clone(), Value::Bool(o.value == "true"));
            } else {
                target.insert(o.key.clone(), Value::String(o.value.clone()));
            }
        }
    }
    for ((name, key), values) in lists {
        if let Some(target) = targets.get_mut(&name) {
            target.insert(key, Value::Array(values));
        }
    }
    Ok(())
}
