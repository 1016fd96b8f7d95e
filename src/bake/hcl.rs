//! docker-bake.hcl and docker-bake.json → targets: `variable` blocks (defaults, overridden by
//! the environment), `group` and `target` blocks, `${}` interpolation and a few of buildx's
//! standard functions, evaluated with `hcl-rs` (`hcl::eval`). A JSON file has the same
//! structure (`{"variable": {..}, "group": {..}, "target": {..}}`) with `${}` in its strings.
//! Variables of every file are visible in all of them, as buildx merges the files first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use hcl::eval::{Context, Evaluate as _, FuncArgs, FuncDef, ParamType};
use hcl::{Body, Expression, Value as HclValue};
use serde_json::Value as Json;

use super::raw::RawTarget;
use super::{BakeError, Definition, FileKind};

enum Parsed {
    Hcl(Body),
    Json(serde_json::Map<String, Json>),
}

/// One variable's default, as written.
enum VarDefault {
    Expr(Expression),
    Json(Json),
}

/// Reads the HCL and JSON files (in order) into one definition each.
pub(super) fn load_files(
    files: &[(PathBuf, FileKind, String)],
    env: &BTreeMap<String, String>,
) -> Result<Vec<Definition>, BakeError> {
    let mut parsed = Vec::new();
    for (path, kind, text) in files {
        parsed.push(match kind {
            FileKind::Json => Parsed::Json(parse_json(path, text)?),
            _ => Parsed::Hcl(parse_hcl(path, text)?),
        });
    }
    let mut defaults: Vec<(String, Option<VarDefault>, PathBuf)> = Vec::new();
    for ((path, _, _), p) in files.iter().zip(&parsed) {
        match p {
            Parsed::Hcl(body) => {
                for block in body.blocks().filter(|b| b.identifier() == "variable") {
                    let name = one_label(path, block)?;
                    let default = block
                        .body()
                        .attributes()
                        .find(|a| a.key() == "default")
                        .map(|a| VarDefault::Expr(a.expr().clone()));
                    defaults.push((name, default, path.clone()));
                }
            }
            Parsed::Json(doc) => {
                if let Some(Json::Object(vars)) = doc.get("variable") {
                    for (name, v) in vars {
                        let default = v.get("default").cloned().map(VarDefault::Json);
                        defaults.push((name.clone(), default, path.clone()));
                    }
                }
            }
        }
    }
    let mut vars = eval_variables(&defaults, env)?;
    // buildx's built-in variables (a file may declare its own of these names).
    vars.entry("BAKE_CMD_CONTEXT".into())
        .or_insert_with(|| HclValue::from("."));
    vars.entry("BAKE_LOCAL_PLATFORM".into())
        .or_insert_with(|| HclValue::from(crate::oci::Platform::host().to_string()));
    let ctx = context(&vars);
    files
        .iter()
        .zip(parsed)
        .map(|((path, _, text), p)| match p {
            Parsed::Hcl(body) => hcl_definition(path, text, &body, &ctx),
            Parsed::Json(doc) => json_definition(path, &doc, &ctx),
        })
        .collect()
}

fn parse_hcl(path: &Path, text: &str) -> Result<Body, BakeError> {
    hcl::parse(text).map_err(|e| match &e {
        hcl::Error::Parse(p) => BakeError::Syntax {
            path: path.to_path_buf(),
            line: p.location().line(),
            column: p.location().column(),
            message: p.message().to_string(),
        },
        other => BakeError::Invalid {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

fn parse_json(path: &Path, text: &str) -> Result<serde_json::Map<String, Json>, BakeError> {
    match serde_json::from_str(text) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err(BakeError::Invalid {
            path: path.to_path_buf(),
            message: "the top level must be an object".into(),
        }),
        Err(e) => Err(BakeError::Syntax {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        }),
    }
}

fn one_label(path: &Path, block: &hcl::Block) -> Result<String, BakeError> {
    match block.labels() {
        [label] => Ok(label.as_str().to_string()),
        _ => Err(BakeError::Invalid {
            path: path.to_path_buf(),
            message: format!("a {} block needs exactly one name", block.identifier()),
        }),
    }
}

/// Variable values: the environment's when set (typed like the default), else the default
/// evaluated. Defaults may use other variables, so they are evaluated until none is left
/// that the others can settle.
fn eval_variables(
    defaults: &[(String, Option<VarDefault>, PathBuf)],
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, HclValue>, BakeError> {
    let mut vars: BTreeMap<String, HclValue> = BTreeMap::new();
    let mut pending: Vec<&(String, Option<VarDefault>, PathBuf)> = Vec::new();
    for entry in defaults {
        let (name, default, _) = entry;
        if let Some(value) = env.get(name) {
            let typed = match default {
                Some(VarDefault::Expr(Expression::Bool(_)))
                | Some(VarDefault::Json(Json::Bool(_))) => {
                    value.parse::<bool>().map(HclValue::Bool).ok()
                }
                Some(VarDefault::Expr(Expression::Number(_)))
                | Some(VarDefault::Json(Json::Number(_))) => {
                    value.parse::<i64>().map(HclValue::from).ok()
                }
                _ => None,
            };
            vars.insert(
                name.clone(),
                typed.unwrap_or_else(|| HclValue::from(value.clone())),
            );
        } else {
            pending.push(entry);
        }
    }
    loop {
        let ctx = context(&vars);
        let mut progressed = false;
        let mut failed = Vec::new();
        for entry in pending {
            let (name, default, path) = entry;
            let result = match default {
                None => Ok(HclValue::from("")),
                Some(VarDefault::Expr(e)) => e.evaluate(&ctx).map_err(|e| e.to_string()),
                Some(VarDefault::Json(j)) => eval_json(j, &ctx)
                    .and_then(|j| serde_json::from_value::<HclValue>(j).map_err(|e| e.to_string())),
            };
            match result {
                Ok(v) => {
                    vars.insert(name.clone(), v);
                    progressed = true;
                }
                Err(why) => failed.push((entry, why, path)),
            }
        }
        if failed.is_empty() {
            return Ok(vars);
        }
        if !progressed {
            let ((name, _, _), why, path) = &failed[0];
            return Err(BakeError::Invalid {
                path: path.to_path_buf(),
                message: format!("variable {name:?}: {why}"),
            });
        }
        pending = failed.into_iter().map(|(e, _, _)| e).collect();
    }
}

/// The evaluation context: the variables and the functions.
fn context(vars: &BTreeMap<String, HclValue>) -> Context<'static> {
    let mut ctx = Context::new();
    for (k, v) in vars {
        ctx.declare_var(k.as_str(), v.clone());
    }
    ctx.declare_func(
        "upper",
        FuncDef::builder().param(ParamType::String).build(upper),
    );
    ctx.declare_func(
        "lower",
        FuncDef::builder().param(ParamType::String).build(lower),
    );
    ctx.declare_func(
        "join",
        FuncDef::builder()
            .param(ParamType::String)
            .param(ParamType::array_of(ParamType::Any))
            .build(join),
    );
    ctx.declare_func(
        "equal",
        FuncDef::builder()
            .param(ParamType::Any)
            .param(ParamType::Any)
            .build(equal),
    );
    ctx.declare_func(
        "notequal",
        FuncDef::builder()
            .param(ParamType::Any)
            .param(ParamType::Any)
            .build(notequal),
    );
    ctx
}

fn arg_str(args: &FuncArgs, i: usize) -> Result<String, String> {
    args.get(i)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("argument {} must be a string", i + 1))
}

fn upper(args: FuncArgs) -> Result<HclValue, String> {
    Ok(HclValue::from(arg_str(&args, 0)?.to_uppercase()))
}

fn lower(args: FuncArgs) -> Result<HclValue, String> {
    Ok(HclValue::from(arg_str(&args, 0)?.to_lowercase()))
}

fn join(args: FuncArgs) -> Result<HclValue, String> {
    let sep = arg_str(&args, 0)?;
    let items = args
        .get(1)
        .and_then(|v| v.as_array())
        .ok_or("argument 2 must be a list")?;
    let parts: Vec<String> = items
        .iter()
        .map(|v| match v {
            HclValue::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    Ok(HclValue::from(parts.join(&sep)))
}

fn equal(args: FuncArgs) -> Result<HclValue, String> {
    Ok(HclValue::Bool(args.first() == args.get(1)))
}

fn notequal(args: FuncArgs) -> Result<HclValue, String> {
    Ok(HclValue::Bool(args.first() != args.get(1)))
}

/// The 1-based line where `needle` first appears, for errors after parsing.
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map(|at| text[..at].matches('\n').count() + 1)
        .unwrap_or(1)
}

fn hcl_definition(
    path: &Path,
    text: &str,
    body: &Body,
    ctx: &Context,
) -> Result<Definition, BakeError> {
    let mut def = Definition::default();
    for block in body.blocks() {
        let kind = block.identifier();
        if !matches!(kind, "target" | "group" | "variable") {
            return Err(BakeError::Syntax {
                path: path.to_path_buf(),
                line: line_of(text, kind),
                column: 1,
                message: format!(
                    "unsupported block {kind:?} (kiln reads target, group and variable)"
                ),
            });
        }
        if kind == "variable" {
            continue;
        }
        let name = one_label(path, block)?;
        let line = line_of(text, &format!("{kind} \"{name}\""));
        let mut raw = RawTarget::new();
        for attr in block.body().attributes() {
            let value = attr.expr().evaluate(ctx).map_err(|e| BakeError::Syntax {
                path: path.to_path_buf(),
                line,
                column: 1,
                message: format!("{kind} {name:?}: {}: {e}", attr.key()),
            })?;
            let json = serde_json::to_value(&value).map_err(|e| BakeError::Invalid {
                path: path.to_path_buf(),
                message: format!("{kind} {name:?}: {}: {e}", attr.key()),
            })?;
            raw.insert(attr.key().to_string(), json);
        }
        if kind == "group" {
            def.groups
                .insert(name.clone(), group_targets(path, &name, &raw)?);
        } else {
            def.origin.insert(name.clone(), path.to_path_buf());
            match def.targets.get_mut(&name) {
                Some(existing) => super::raw::merge(existing, &raw),
                None => {
                    def.targets.insert(name, raw);
                }
            }
        }
    }
    Ok(def)
}

fn group_targets(path: &Path, name: &str, raw: &RawTarget) -> Result<Vec<String>, BakeError> {
    let bad = || BakeError::Invalid {
        path: path.to_path_buf(),
        message: format!("group {name:?}: targets must be a list of names"),
    };
    match raw.get("targets") {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn json_definition(
    path: &Path,
    doc: &serde_json::Map<String, Json>,
    ctx: &Context,
) -> Result<Definition, BakeError> {
    let mut def = Definition::default();
    for (key, value) in doc {
        let kind = key.as_str();
        if kind == "variable" {
            continue;
        }
        if !matches!(kind, "target" | "group") {
            return Err(BakeError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "unsupported key {kind:?} (kiln reads target, group and variable)"
                ),
            });
        }
        let Json::Object(entries) = value else {
            return Err(BakeError::Invalid {
                path: path.to_path_buf(),
                message: format!("{kind} must be an object of names"),
            });
        };
        for (name, body) in entries {
            let evaluated = eval_json(body, ctx).map_err(|e| BakeError::Invalid {
                path: path.to_path_buf(),
                message: format!("{kind} {name:?}: {e}"),
            })?;
            let Json::Object(raw) = evaluated else {
                return Err(BakeError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("{kind} {name:?} must be an object"),
                });
            };
            if kind == "group" {
                def.groups
                    .insert(name.clone(), group_targets(path, name, &raw)?);
            } else {
                def.origin.insert(name.clone(), path.to_path_buf());
                def.targets.insert(name.clone(), raw);
            }
        }
    }
    Ok(def)
}

/// Every string of a JSON value evaluated as an HCL template (`${VAR}`, `${upper(X)}`).
fn eval_json(value: &Json, ctx: &Context) -> Result<Json, String> {
    Ok(match value {
        Json::String(s) if s.contains("${") || s.contains("%{") => {
            let template = hcl::Template::from_str(s).map_err(|e| format!("{s:?}: {e}"))?;
            Json::String(template.evaluate(ctx).map_err(|e| format!("{s:?}: {e}"))?)
        }
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|i| eval_json(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), eval_json(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}
