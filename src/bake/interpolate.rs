//! Compose variable interpolation (`${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`, `${VAR?e}`,
//! `$VAR`, `$$`) and `.env` files, as compose-go's `template` and `dotenv` packages read them.

use std::collections::BTreeMap;

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("required variable {name} is missing a value: {message}")]
    Required { name: String, message: String },
    #[error("invalid interpolation format for {text:?}: {why}")]
    Invalid { text: String, why: &'static str },
}

/// Expands the variables of `text`; `lookup` gives a variable's value, `None` when unset.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = closing_brace(inner).ok_or_else(|| InterpolateError::Invalid {
                text: text.to_string(),
                why: "a `${` is not closed",
            })?;
            out.push_str(&braced(&inner[..end], text, lookup)?);
            rest = &inner[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                // A lone `$` stays as it is, as compose leaves it.
                out.push('$');
                rest = after;
            } else {
                out.push_str(&lookup(&after[..len]).unwrap_or_default());
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The length of the variable name at the start of `s` (`[A-Za-z_][A-Za-z0-9_]*`).
fn name_len(s: &str) -> usize {
    let mut len = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        len = i + c.len_utf8();
    }
    len
}

/// The index of the `}` that closes a `${` whose body starts `s` (defaults may nest `${..}`).
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The value of one `${...}` body: a name, then maybe an operator and a word (itself
/// interpolated, so defaults may name other variables).
fn braced(
    body: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let len = name_len(body);
    if len == 0 {
        return Err(InterpolateError::Invalid {
            text: whole.to_string(),
            why: "`${` must be followed by a variable name",
        });
    }
    let (name, op) = body.split_at(len);
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let word = |w: &str| interpolate(w, lookup);
    Ok(match op {
        "" => value.unwrap_or_default(),
        _ if op.starts_with(":-") => match value {
            Some(v) if set_nonempty => v,
            _ => word(&op[2..])?,
        },
        _ if op.starts_with(":?") => match value {
            Some(v) if set_nonempty => v,
            _ => return Err(required(name, word(&op[2..])?)),
        },
        _ if op.starts_with(":+") => {
            if set_nonempty {
                word(&op[2..])?
            } else {
                String::new()
            }
        }
        _ if op.starts_with('-') => match value {
            Some(v) => v,
            None => word(&op[1..])?,
        },
        _ if op.starts_with('?') => match value {
            Some(v) => v,
            None => return Err(required(name, word(&op[1..])?)),
        },
        _ if op.starts_with('+') => {
            if value.is_some() {
                word(&op[1..])?
            } else {
                String::new()
            }
        }
        _ => {
            return Err(InterpolateError::Invalid {
                text: whole.to_string(),
                why: "unknown operator after the variable name (use :- - :? ? :+ +)",
            })
        }
    })
}

fn required(name: &str, message: String) -> InterpolateError {
    InterpolateError::Required {
        name: name.to_string(),
        message,
    }
}

/// A `.env` line that is not `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct EnvFileError {
    pub line: usize,
    pub why: String,
}

/// Reads a `.env` file: `KEY=VALUE` lines, `#` comments, an optional `export `, single quotes
/// (literal), double quotes (with `\n`-style escapes) or bare values (a ` #` starts a comment).
/// A value may use variables set earlier in the file or in `env`.
pub fn parse_env_file(
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, EnvFileError> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err(EnvFileError {
                line: n + 1,
                why: format!("expected KEY=VALUE, found {line:?}"),
            });
        };
        let key = key.trim();
        if key.is_empty() || name_len(key) != key.len() {
            return Err(EnvFileError {
                line: n + 1,
                why: format!("invalid variable name {key:?}"),
            });
        }
        let value = value.trim();
        let value = if let Some(q) = value.strip_prefix('\'') {
            q.rsplit_once('\'').map(|(v, _)| v).unwrap_or(q).to_string()
        } else if let Some(q) = value.strip_prefix('"') {
            let v = q.rsplit_once('"').map(|(v, _)| v).unwrap_or(q);
            let v = v
                .replace("\\n", "\n")
                .replace("\\t", "\t")
                .replace("\\\"", "\"");
            expand_env_value(&v, &out, env)
        } else {
            let v = match value.find(" #") {
                Some(at) => value[..at].trim_end(),
                None => value,
            };
            expand_env_value(v, &out, env)
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// `$VAR` in a `.env` value: the environment first, then the lines above; a malformed `${`
/// leaves the value as written.
fn expand_env_value(
    value: &str,
    file: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
) -> String {
    interpolate(value, &|k| env.get(k).or_else(|| file.get(k)).cloned())
        .unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(text: &str) -> Result<String, InterpolateError> {
        let vars: BTreeMap<&str, &str> = [("NAME", "web"), ("EMPTY", ""), ("V", "1.2")].into();
        interpolate(text, &|k| vars.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(expand("app-${NAME}:$V").unwrap(), "app-web:1.2");
        assert_eq!(expand("${UNSET}x").unwrap(), "x");
        assert_eq!(expand("$NAME.txt").unwrap(), "web.txt");
        assert_eq!(expand("no vars").unwrap(), "no vars");
    }

    #[test]
    fn defaults_distinguish_empty_from_unset() {
        assert_eq!(expand("${UNSET:-d}").unwrap(), "d");
        assert_eq!(expand("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(expand("${UNSET-d}").unwrap(), "d");
        assert_eq!(expand("${EMPTY-d}").unwrap(), "");
        assert_eq!(expand("${NAME:-d}").unwrap(), "web");
        assert_eq!(expand("${UNSET:-${NAME}-x}").unwrap(), "web-x");
        assert_eq!(expand("${NAME:+set}${UNSET:+no}").unwrap(), "set");
    }

    #[test]
    fn required_variables() {
        assert_eq!(
            expand("${UNSET:?give it}").unwrap_err(),
            InterpolateError::Required {
                name: "UNSET".into(),
                message: "give it".into()
            }
        );
        assert!(expand("${EMPTY:?e}").is_err());
        assert_eq!(expand("${EMPTY?e}").unwrap(), "");
        assert!(expand("${UNSET?e}").is_err());
    }

    #[test]
    fn dollar_escapes_and_errors() {
        assert_eq!(expand("$$NAME and $${NAME}").unwrap(), "$NAME and ${NAME}");
        assert_eq!(expand("cost: 5$").unwrap(), "cost: 5$");
        assert!(matches!(
            expand("${NAME").unwrap_err(),
            InterpolateError::Invalid { .. }
        ));
        assert!(expand("${}").is_err());
        assert!(expand("${NAME:x}").is_err());
    }

    #[test]
    fn env_files() {
        let env = BTreeMap::from([("HOME".to_string(), "/root".to_string())]);
        let text = "# comment\nA=1\nexport B = two words # trailing\nC='lit $A'\nD=\"x\\ny $A\"\nE=${HOME}/e\n\n";
        let vars = parse_env_file(text, &env).unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "lit $A");
        assert_eq!(vars["D"], "x\ny 1");
        assert_eq!(vars["E"], "/root/e");
        let err = parse_env_file("A=1\nnot a line\n", &env).unwrap_err();
        assert_eq!(err.line, 2);
    }
}
