//! `RUN --mount=...`: CSV `key=value` fields with BuildKit's keys, defaults and checks.
//!
//! Values may hold variables, which are only known when the stage runs: [`parse_mount`] without an
//! expander checks every key and every value that has no `$`, and [`parse_mount`] with an expander
//! (at build time) checks the rest.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    fn parse(s: &str) -> Option<MountType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "bind" => MountType::Bind,
            "cache" => MountType::Cache,
            "tmpfs" => MountType::Tmpfs,
            "secret" => MountType::Secret,
            "ssh" => MountType::Ssh,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// One `--mount` of a RUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// The flag value as written, to expand again when the environment is known.
    pub raw: String,
    #[serde(rename = "type")]
    pub typ: MountType,
    pub from: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub read_only: bool,
    /// `id=`: the cache ID or the secret ID.
    pub id: Option<String>,
    pub sharing: Option<Sharing>,
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs `size=`, in bytes.
    pub size: Option<u64>,
    /// secret `env=`: expose the secret as this environment variable.
    pub env: Option<String>,
}

const ALL_KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "size",
    "env",
];

/// Splits one CSV record with Go's `encoding/csv` rules.
pub fn split_csv(value: &str) -> Result<Vec<String>, String> {
    if value.is_empty() {
        return Err("failed to parse csv mounts: EOF".to_string());
    }
    let mut fields = Vec::new();
    let mut chars = value.chars().peekable();
    let mut column = 0usize;
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            column += 1;
            loop {
                match chars.next() {
                    None => {
                        return Err(format!(
                            "failed to parse csv mounts: parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                            column + 1
                        ))
                    }
                    Some('"') => {
                        column += 1;
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            column += 1;
                            field.push('"');
                        } else {
                            break;
                        }
                    }
                    Some(c) => {
                        column += 1;
                        field.push(c);
                    }
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {
                    column += 1;
                    fields.push(field);
                }
                Some(_) => {
                    return Err(format!(
                        "failed to parse csv mounts: parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                        column + 1
                    ))
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        column += 1;
                        fields.push(field);
                        break;
                    }
                    Some('"') => {
                        return Err(format!(
                            "failed to parse csv mounts: parse error on line 1, column {}: bare \" in non-quoted-field",
                            column + 1
                        ))
                    }
                    Some(c) => {
                        column += 1;
                        field.push(c);
                    }
                }
            }
        }
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    // Go's strconv.ParseBool.
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid value for {key}: {value}")),
    }
}

/// Go's `strconv.ParseUint(value, base, 32)`.
fn parse_u32(value: &str, base: u32) -> Option<u32> {
    if value.is_empty() || value.starts_with('+') || value.starts_with('-') {
        return None;
    }
    let digits = value.replace('_', "");
    u32::from_str_radix(&digits, base).ok()
}

/// docker/go-units `RAMInBytes`: `64m`, `1g`, `512kb`, plain bytes; binary multiples.
pub fn ram_in_bytes(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        _ => return None,
    };
    let bytes = num * mult as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// A value that cannot be checked yet because it holds a variable.
fn deferred(value: &str, expanding: bool) -> bool {
    !expanding && value.contains('$')
}

/// Parses one `--mount` value. `expand` is `None` when parsing the Dockerfile (values with
/// variables are checked later) and the stage's expander when building.
pub fn parse_mount(raw: &str, mut expand: Option<&mut super::Expander>) -> Result<Mount, String> {
    let fields = split_csv(raw)?;
    let mut m = Mount {
        raw: raw.to_string(),
        typ: MountType::Bind,
        from: None,
        source: None,
        target: None,
        read_only: false,
        id: None,
        sharing: None,
        required: false,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        env: None,
    };
    let expanding = expand.is_some();
    let mut ro_auto = true;
    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(value) = value else {
            match key.as_str() {
                "readonly" | "ro" => {
                    m.read_only = true;
                    ro_auto = false;
                    continue;
                }
                "readwrite" | "rw" => {
                    m.read_only = false;
                    ro_auto = false;
                    continue;
                }
                "required" => {
                    if matches!(m.typ, MountType::Secret | MountType::Ssh) {
                        m.required = true;
                        continue;
                    }
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.typ.as_str()
                    ));
                }
                _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
            }
        };
        if !ALL_KEYS.contains(&key.as_str()) {
            let mut msg = format!("unexpected key '{key}' in '{field}'");
            if let Some(s) = super::flags::suggest(&key, ALL_KEYS) {
                msg.push_str(&format!(" (did you mean {s}?)"));
            }
            return Err(msg);
        }
        if key == "from" && has_variable(value) {
            return Err(
                "'from' doesn't support variable expansion, define alias stage instead".into(),
            );
        }
        let value = match expand.as_mut() {
            Some(f) => f(value)?,
            None => value.to_string(),
        };
        let later = deferred(&value, expanding);
        match key.as_str() {
            "type" => {
                if !later {
                    m.typ = MountType::parse(&value).ok_or_else(|| {
                        format!(
                            "unsupported mount type \"{value}\" (one of bind, cache, tmpfs, secret, ssh)"
                        )
                    })?;
                }
            }
            "from" => m.from = Some(value),
            "source" | "src" => m.source = Some(value),
            "target" | "dst" | "destination" => m.target = Some(value),
            "readonly" | "ro" => {
                if !later {
                    m.read_only = parse_bool(&key, &value)?;
                }
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                if !later {
                    m.read_only = !parse_bool(&key, &value)?;
                }
                ro_auto = false;
            }
            "required" => {
                if !matches!(m.typ, MountType::Secret | MountType::Ssh) {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.typ.as_str()
                    ));
                }
                if !later {
                    m.required = parse_bool(&key, &value)?;
                }
            }
            "id" => m.id = Some(value),
            "sharing" => {
                if !later {
                    m.sharing = Some(match value.to_ascii_lowercase().as_str() {
                        "shared" => Sharing::Shared,
                        "private" => Sharing::Private,
                        "locked" => Sharing::Locked,
                        _ => return Err(format!("unsupported sharing value \"{value}\"")),
                    });
                }
            }
            "mode" => {
                if !later {
                    m.mode = Some(
                        parse_u32(&value, 8)
                            .ok_or_else(|| format!("invalid value {value} for mode"))?,
                    );
                }
            }
            "uid" => {
                if !later {
                    m.uid = Some(
                        parse_u32(&value, 10)
                            .ok_or_else(|| format!("invalid value {value} for uid"))?,
                    );
                }
            }
            "gid" => {
                if !later {
                    m.gid = Some(
                        parse_u32(&value, 10)
                            .ok_or_else(|| format!("invalid value {value} for gid"))?,
                    );
                }
            }
            "size" => {
                if m.typ != MountType::Tmpfs {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.typ.as_str()
                    ));
                }
                if !later {
                    m.size = Some(
                        ram_in_bytes(&value)
                            .ok_or_else(|| format!("invalid value for {key}: {value}"))?,
                    );
                }
            }
            "env" => {
                if m.typ != MountType::Secret {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.typ.as_str()
                    ));
                }
                m.env = Some(value);
            }
            _ => unreachable!("keys are checked against ALL_KEYS above"),
        }
    }

    let file_info_allowed = matches!(m.typ, MountType::Secret | MountType::Ssh | MountType::Cache);
    for (set, name) in [
        (m.mode.is_some(), "mode"),
        (m.uid.is_some(), "uid"),
        (m.gid.is_some(), "gid"),
    ] {
        if set && !file_info_allowed {
            return Err(format!(
                "{name} not allowed for \"{}\" type mounts",
                m.typ.as_str()
            ));
        }
    }
    if ro_auto {
        m.read_only = !matches!(m.typ, MountType::Cache | MountType::Tmpfs);
    }
    if m.sharing.is_some() && m.typ != MountType::Cache {
        return Err(format!(
            "invalid cache sharing set for {} mount",
            m.typ.as_str()
        ));
    }
    if m.typ == MountType::Secret {
        if m.from.is_some() {
            return Err("secret mount should not have a from".into());
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() {
            return Err("invalid secret mount. one of source, target required".into());
        }
        if m.source.is_some() && m.id.is_some() {
            return Err("both source and id can't be set".into());
        }
    }
    Ok(m)
}

/// BuildKit's `\$.` check: a `$` followed by anything.
fn has_variable(value: &str) -> bool {
    value
        .find('$')
        .is_some_and(|i| value[i + 1..].chars().next().is_some_and(|c| c != '\n'))
}

/// `RUN --network=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

impl NetworkMode {
    pub fn parse(s: &str) -> Result<NetworkMode, String> {
        match s {
            "default" => Ok(NetworkMode::Default),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            _ => Err(format!(
                "unsupported network mode \"{s}\" (one of default, none, host)"
            )),
        }
    }
}

/// `RUN --security=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

impl SecurityMode {
    pub fn parse(s: &str) -> Result<SecurityMode, String> {
        match s {
            "sandbox" => Ok(SecurityMode::Sandbox),
            "insecure" => Ok(SecurityMode::Insecure),
            _ => Err(format!(
                "unsupported security mode \"{s}\" (one of sandbox, insecure)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_like_go() {
        assert_eq!(split_csv("a=1,b=2").unwrap(), vec!["a=1", "b=2"]);
        assert_eq!(split_csv("\"a=1,2\",b").unwrap(), vec!["a=1,2", "b"]);
        assert_eq!(split_csv("\"a\"\"b\"").unwrap(), vec!["a\"b"]);
        assert!(split_csv("a=\"1\"").unwrap_err().contains("bare \""));
        assert!(split_csv("\"a").unwrap_err().contains("extraneous"));
        assert!(split_csv("").is_err());
    }

    #[test]
    fn mount_defaults_and_checks() {
        let m = parse_mount("type=cache,target=/root/.cache", None).unwrap();
        assert_eq!(m.typ, MountType::Cache);
        assert!(!m.read_only);
        let m = parse_mount("target=/src", None).unwrap();
        assert_eq!(m.typ, MountType::Bind);
        assert!(m.read_only);
        let m = parse_mount("type=secret,id=aws,required,env=AWS", None).unwrap();
        assert!(m.required && m.read_only);
        assert_eq!(m.env.as_deref(), Some("AWS"));
        let m = parse_mount("type=tmpfs,target=/t,size=64m", None).unwrap();
        assert_eq!(m.size, Some(64 << 20));
        let m = parse_mount(
            "type=cache,target=/c,sharing=locked,mode=0755,uid=1000",
            None,
        )
        .unwrap();
        assert_eq!(
            (m.sharing, m.mode, m.uid),
            (Some(Sharing::Locked), Some(0o755), Some(1000))
        );

        let err = |s: &str| parse_mount(s, None).unwrap_err();
        assert!(err("type=volume").contains("unsupported mount type"));
        assert!(err("type=bind,tagret=/x").contains("unexpected key 'tagret'"));
        assert!(err("type=bind,target=/x,mode=0700").contains("mode not allowed"));
        assert!(err("type=bind,sharing=locked").contains("invalid cache sharing"));
        assert!(err("type=secret,from=x,id=a").contains("should not have a from"));
        assert!(err("type=secret").contains("one of source, target required"));
        assert!(err("type=cache,mode=9").contains("invalid value 9 for mode"));
        assert!(err("from=$STAGE").contains("doesn't support variable expansion"));
        assert!(err("type=cache,required").contains("unexpected key 'required'"));
        assert!(err("target").contains("must be a key=value pair"));
    }

    #[test]
    fn variables_are_checked_when_expanded() {
        let m = parse_mount("type=cache,target=/c,uid=$UID", None).unwrap();
        assert_eq!(m.uid, None);
        let mut expand = |v: &str| Ok::<_, String>(v.replace("$UID", "12"));
        let m = parse_mount(&m.raw, Some(&mut expand)).unwrap();
        assert_eq!(m.uid, Some(12));
        let mut bad = |v: &str| Ok::<_, String>(v.replace("$UID", "x"));
        assert!(parse_mount("type=cache,target=/c,uid=$UID", Some(&mut bad)).is_err());
    }
}
