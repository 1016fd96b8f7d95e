//! The instructions that only change the image config, applied as BuildKit's dispatcher does
//! (`dockerfile2llb/convert.go`): ENV replaces in place, ENTRYPOINT drops a CMD the stage did not
//! set itself, CMD and ENTRYPOINT mark `ArgsEscaped`, HEALTHCHECK omits zero durations, …

use std::collections::BTreeMap;

use crate::dockerfile::instructions::{CommandLine, Healthcheck, KeyValue};
use crate::dockerfile::Command;
use crate::oci::manifest::{ContainerConfig, Healthcheck as ConfigHealthcheck, ImageConfig};

/// The default `PATH` BuildKit gives stages whose base image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The default shell for shell-form commands.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid signal: {0}")]
    InvalidSignal(String),
    #[error("invalid containerPort: {0}")]
    InvalidPort(String),
    #[error("invalid proto: {0}")]
    InvalidProto(String),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
}

/// Per-stage dispatch state that is not in the config itself.
#[derive(Debug, Default, Clone)]
pub struct StageMeta {
    /// This stage ran CMD (so ENTRYPOINT keeps it).
    pub cmd_set: bool,
}

fn container(config: &mut ImageConfig) -> &mut ContainerConfig {
    config.config.get_or_insert_with(ContainerConfig::default)
}

/// Sets `key=value` in an env list: an existing name is replaced in place, a new one appended.
pub fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// Gives the stage's config the default PATH when the base has none (not on Windows).
pub fn ensure_default_path(config: &mut ImageConfig) {
    let env = container(config).env.get_or_insert_with(Vec::new);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
}

/// Drops what BuildKit's config JSON leaves out (`omitempty`): empty strings, lists and maps,
/// so `CMD []` or `ENTRYPOINT []` is no `Cmd`/`Entrypoint` at all, as `docker inspect` shows it
/// (`null`), and so is a base's `"Labels": {}`.
pub fn omit_empty(config: &mut ImageConfig) {
    let Some(c) = config.config.as_mut() else {
        return;
    };
    fn none_if<T>(field: &mut Option<T>, empty: impl Fn(&T) -> bool) {
        if field.as_ref().is_some_and(empty) {
            *field = None;
        }
    }
    none_if(&mut c.user, String::is_empty);
    none_if(&mut c.working_dir, String::is_empty);
    none_if(&mut c.stop_signal, String::is_empty);
    none_if(&mut c.env, Vec::is_empty);
    none_if(&mut c.entrypoint, Vec::is_empty);
    none_if(&mut c.cmd, Vec::is_empty);
    none_if(&mut c.shell, Vec::is_empty);
    none_if(&mut c.exposed_ports, BTreeMap::is_empty);
    none_if(&mut c.volumes, BTreeMap::is_empty);
    none_if(&mut c.labels, BTreeMap::is_empty);
}

/// The command a shell- or exec-form CMD/ENTRYPOINT/RUN stands for.
pub fn command_args(line: &CommandLine, shell: &[String]) -> Vec<String> {
    if line.shell_form {
        let mut args = shell.to_vec();
        args.push(line.args.join(" "));
        args
    } else {
        line.args.clone()
    }
}

/// The stage's current SHELL, or `/bin/sh -c`.
pub fn current_shell(config: &ImageConfig) -> Vec<String> {
    config
        .config
        .as_ref()
        .and_then(|c| c.shell.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(default_shell)
}

/// Applies a config-only instruction (already expanded). Returns `false` for instructions that
/// are not config-only (RUN, COPY, ADD, FROM, ARG, WORKDIR's directory creation).
pub fn apply(
    config: &mut ImageConfig,
    meta: &mut StageMeta,
    command: &Command,
) -> Result<bool, MetadataError> {
    match command {
        Command::Env { env } => {
            let list = container(config).env.get_or_insert_with(Vec::new);
            for KeyValue { key, value, .. } in env {
                set_env(list, key, value);
            }
        }
        Command::Label { labels } => {
            let map = container(config).labels.get_or_insert_with(BTreeMap::new);
            for KeyValue { key, value, .. } in labels {
                map.insert(key.clone(), value.clone());
            }
        }
        Command::Maintainer { maintainer } => config.author = Some(maintainer.clone()),
        Command::Expose { ports } => {
            let mut keys = Vec::new();
            for word in ports {
                keys.extend(parse_expose(word)?);
            }
            let map = container(config)
                .exposed_ports
                .get_or_insert_with(BTreeMap::new);
            for k in keys {
                map.insert(k, serde_json::json!({}));
            }
        }
        Command::Volume { volumes, .. } => {
            let map = container(config).volumes.get_or_insert_with(BTreeMap::new);
            for v in volumes {
                let v = v.trim();
                if v.is_empty() {
                    return Err(MetadataError::EmptyVolume);
                }
                map.insert(v.to_string(), serde_json::json!({}));
            }
        }
        Command::User { user } => container(config).user = Some(user.clone()),
        Command::Workdir { path } => {
            let current = container(config).working_dir.clone().unwrap_or_default();
            container(config).working_dir = Some(normalize_workdir(&current, path));
        }
        Command::Cmd(line) => {
            let shell = current_shell(config);
            let c = container(config);
            c.cmd = Some(command_args(line, &shell));
            c.args_escaped = Some(true);
            meta.cmd_set = true;
        }
        Command::Entrypoint(line) => {
            let shell = current_shell(config);
            let c = container(config);
            c.entrypoint = Some(command_args(line, &shell));
            c.args_escaped = Some(true);
            if !meta.cmd_set {
                c.cmd = None;
            }
        }
        Command::Shell { shell } => container(config).shell = Some(shell.clone()),
        Command::Stopsignal { signal } => {
            validate_signal(signal)?;
            container(config).stop_signal = Some(signal.clone());
        }
        Command::Healthcheck(h) => container(config).healthcheck = Some(healthcheck(h)),
        Command::Onbuild(o) => container(config)
            .on_build
            .get_or_insert_with(Vec::new)
            .push(o.expression.clone()),
        Command::Arg { .. }
        | Command::From(_)
        | Command::Run(_)
        | Command::Copy(_)
        | Command::Add(_) => return Ok(false),
    }
    Ok(true)
}

fn healthcheck(h: &Healthcheck) -> ConfigHealthcheck {
    let nonzero = |v: i64| (v != 0).then_some(v);
    ConfigHealthcheck {
        test: Some(h.test.clone()),
        interval: nonzero(h.interval),
        timeout: nonzero(h.timeout),
        start_period: nonzero(h.start_period),
        start_interval: nonzero(h.start_interval),
        retries: nonzero(h.retries),
        extra: Default::default(),
    }
}

/// WORKDIR: a relative path joins the current one (`path.Join`, cleaned); an absolute path is
/// kept as written (`/app/` stays `/app/` in the config and history), as BuildKit's
/// `NormalizeWorkdir` does on Linux. The directory made for it is [`clean_abs`] of it.
pub fn normalize_workdir(current: &str, path: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    clean_abs(&format!("/{current}/{path}"))
}

/// Go's `path.Clean` for an absolute path.
pub fn clean_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// EXPOSE `[ip:][hostport:]port[-end][/proto]` → one `port/proto` key per port.
pub fn parse_expose(word: &str) -> Result<Vec<String>, MetadataError> {
    let (spec, proto) = match word.rsplit_once('/') {
        Some((s, p)) => (s, p.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(MetadataError::InvalidProto(proto));
    }
    // The container port is the last `:` field.
    let port = spec.rsplit(':').next().unwrap_or(spec);
    let bad = || MetadataError::InvalidPort(port.to_string());
    let (start, end) = match port.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = port.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if end < start {
        return Err(bad());
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// A nonzero number, or a signal name with or without `SIG`, in any case.
pub fn validate_signal(signal: &str) -> Result<(), MetadataError> {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    if let Ok(n) = signal.parse::<u32>() {
        return if n == 0 {
            Err(MetadataError::InvalidSignal(signal.to_string()))
        } else {
            Ok(())
        };
    }
    let upper = signal.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = name
        .strip_prefix("RTMIN+")
        .or_else(|| name.strip_prefix("RTMAX-"))
        .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n <= 15));
    if NAMES.contains(&name) || realtime {
        Ok(())
    } else {
        Err(MetadataError::InvalidSignal(signal.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use crate::dockerfile::parse_dockerfile;

    fn config_after(dockerfile: &str) -> ImageConfig {
        let df = parse_dockerfile(&SourceFile::new("Dockerfile", dockerfile)).unwrap();
        let mut config = ImageConfig::default();
        let mut meta = StageMeta::default();
        for i in &df.stages[0].instructions {
            apply(&mut config, &mut meta, &i.command).unwrap();
        }
        config
    }

    #[test]
    fn env_replaces_in_place_and_labels_merge() {
        let c = config_after("FROM scratch\nENV A=1 B=2\nENV A=3\nLABEL x=1 y=2\nLABEL x=3\n");
        let cc = c.config.unwrap();
        assert_eq!(cc.env.unwrap(), vec!["A=3", "B=2"]);
        assert_eq!(cc.labels.unwrap().get("x").map(String::as_str), Some("3"));
    }

    #[test]
    fn cmd_entrypoint_shell_forms() {
        let c = config_after("FROM scratch\nCMD echo hi\nENTRYPOINT [\"/e\"]\n")
            .config
            .unwrap();
        assert_eq!(c.cmd.unwrap(), vec!["/bin/sh", "-c", "echo hi"]);
        assert_eq!(c.entrypoint.unwrap(), vec!["/e"]);
        assert_eq!(c.args_escaped, Some(true));
        // ENTRYPOINT without a CMD in this stage clears the inherited one.
        let df = parse_dockerfile(&SourceFile::new("D", "FROM scratch\nENTRYPOINT x\n")).unwrap();
        let mut config = ImageConfig::default();
        container(&mut config).cmd = Some(vec!["inherited".into()]);
        apply(
            &mut config,
            &mut StageMeta::default(),
            &df.stages[0].instructions[0].command,
        )
        .unwrap();
        assert_eq!(config.config.unwrap().cmd, None);
        let c = config_after("FROM scratch\nSHELL [\"/bin/bash\", \"-xc\"]\nCMD run it\n")
            .config
            .unwrap();
        assert_eq!(c.cmd.unwrap(), vec!["/bin/bash", "-xc", "run it"]);
    }

    #[test]
    fn expose_volume_workdir_user_stopsignal_healthcheck() {
        let c = config_after(
            "FROM scratch\nEXPOSE 80 53/UDP 8000-8002\nVOLUME /data /logs\nWORKDIR /app\nWORKDIR sub/../x\nUSER app:app\nSTOPSIGNAL SIGTERM\nHEALTHCHECK --interval=5s CMD curl -f localhost\nMAINTAINER me\n",
        );
        let cc = c.config.clone().unwrap();
        let ports: Vec<_> = cc.exposed_ports.unwrap().keys().cloned().collect();
        assert_eq!(
            ports,
            vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert_eq!(cc.volumes.unwrap().len(), 2);
        assert_eq!(cc.working_dir.as_deref(), Some("/app/x"));
        assert_eq!(cc.user.as_deref(), Some("app:app"));
        assert_eq!(cc.stop_signal.as_deref(), Some("SIGTERM"));
        let h = cc.healthcheck.unwrap();
        assert_eq!(h.test.unwrap(), vec!["CMD-SHELL", "curl -f localhost"]);
        assert_eq!(h.interval, Some(5_000_000_000));
        assert_eq!(h.timeout, None);
        assert_eq!(c.author.as_deref(), Some("me"));
    }

    #[test]
    fn an_absolute_workdir_is_kept_as_written_a_relative_one_joined_and_cleaned() {
        for (lines, want) in [
            ("WORKDIR /app/", "/app/"),
            ("WORKDIR /a/../b", "/a/../b"),
            ("WORKDIR /a/../b\nWORKDIR c/", "/b/c"),
            ("WORKDIR /srv/\nWORKDIR ./x/./y/", "/srv/x/y"),
        ] {
            let c = config_after(&format!("FROM scratch\n{lines}\n"));
            let wd = c.config.and_then(|c| c.working_dir);
            assert_eq!(wd.as_deref(), Some(want), "{lines}");
        }
    }

    #[test]
    fn signals_and_ports() {
        for ok in ["9", "KILL", "sigterm", "SIGRTMIN+3"] {
            assert!(validate_signal(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "SIGNOPE", ""] {
            assert!(validate_signal(bad).is_err(), "{bad}");
        }
        assert!(parse_expose("80/xyz").is_err());
        assert!(parse_expose("abc").is_err());
        assert_eq!(parse_expose("127.0.0.1:8080:80").unwrap(), vec!["80/tcp"]);
    }
}
