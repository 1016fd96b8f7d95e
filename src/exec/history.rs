//! History entries in BuildKit's style (`commitToHistory` in dockerfile2llb/convert.go).

use crate::dockerfile::{go_quote, go_quote_rune, Command, Instruction};

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", inner.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b]`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// A RUN line: `|N K=V … ` (see `StageScope::run_arg_pairs`), then the command.
pub fn run_created_by(args: &[String], arg_pairs: &[(String, String)]) -> String {
    let mut parts = Vec::new();
    if !arg_pairs.is_empty() {
        parts.push(format!("|{}", arg_pairs.len()));
        parts.extend(arg_pairs.iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.extend(args.iter().cloned());
    format!("RUN {} # buildkit", parts.join(" "))
}

/// `created_by` for an expanded instruction other than RUN (`cmd_args` are CMD/ENTRYPOINT's
/// final argument list, with the shell prepended for shell form).
pub fn created_by(instr: &Instruction, cmd_args: Option<&[String]>, workdir: &str) -> String {
    match &instr.command {
        Command::Env { env } => format!(
            "ENV {}",
            env.iter()
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Command::Label { labels } => format!(
            "LABEL {}",
            labels
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Command::Arg { args } => format!(
            "ARG {}",
            args.iter()
                .map(|a| match &a.default {
                    Some(d) => format!("{}={d}", a.key),
                    None => a.key.clone(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Command::Workdir { .. } => format!("WORKDIR {workdir}"),
        Command::User { user } => format!("USER {user}"),
        // Go's `%v` of the `map[nat.Port]struct{}` Moby 20.10's BuildKit builds: the expanded
        // `port/proto` keys, sorted.
        Command::Expose { ports } => {
            let keys: std::collections::BTreeSet<String> = ports
                .iter()
                .filter_map(|w| super::metadata::parse_expose(w).ok())
                .flatten()
                .collect();
            let inner: Vec<String> = keys.iter().map(|k| format!("{k}:{{}}")).collect();
            format!("EXPOSE map[{}]", inner.join(" "))
        }
        Command::Volume { volumes, .. } => format!("VOLUME {}", go_list(volumes)),
        Command::Cmd(line) => format!("CMD {}", go_quoted_list(cmd_args.unwrap_or(&line.args))),
        Command::Entrypoint(line) => {
            format!(
                "ENTRYPOINT {}",
                go_quoted_list(cmd_args.unwrap_or(&line.args))
            )
        }
        Command::Shell { shell } => format!("SHELL {}", go_list(shell)),
        Command::Stopsignal { signal } => format!("STOPSIGNAL {signal}"),
        Command::Maintainer { maintainer } => format!("MAINTAINER {maintainer}"),
        // Go's `%q` of the `*HealthConfig` Moby 20.10's BuildKit keeps (no StartInterval).
        Command::Healthcheck(h) => format!(
            "HEALTHCHECK &{{{} {} {} {} {}}}",
            go_quoted_list(&h.test),
            go_quote(&go_duration(h.interval)),
            go_quote(&go_duration(h.timeout)),
            go_quote(&go_duration(h.start_period)),
            go_quote_rune(h.retries)
        ),
        Command::Copy(c) => files_created_by(
            "COPY",
            &c.files.sources,
            c.files.contents.iter().map(|s| s.path.as_str()),
            &c.files.dest,
        ),
        Command::Add(a) => files_created_by(
            "ADD",
            &a.files.sources,
            a.files.contents.iter().map(|s| s.path.as_str()),
            &a.files.dest,
        ),
        Command::Run(r) => run_created_by(&r.cmd.args, &[]),
        Command::From(_) | Command::Onbuild(_) => instr.original.clone(),
    }
}

/// Go's `time.Duration.String()` of `ns` nanoseconds: `0s`, `1m30s`, `1h0m0s`, `1.5s`, `250ms`.
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    // The fraction of `v / 10^prec`, trailing zeros (and then the point) dropped.
    let frac = |v: u64, prec: u32| -> String {
        let digits = format!("{v:0width$}", width = prec as usize);
        let digits = digits.trim_end_matches('0');
        if digits.is_empty() {
            String::new()
        } else {
            format!(".{digits}")
        }
    };
    let body = if u < 1_000_000_000 {
        let (unit, prec) = match u {
            0..=999 => ("ns", 0),
            1_000..=999_999 => ("\u{b5}s", 3),
            _ => ("ms", 6),
        };
        let scale = 10u64.pow(prec);
        format!("{}{}{unit}", u / scale, frac(u % scale, prec))
    } else {
        let secs = u / 1_000_000_000;
        let f = frac(u % 1_000_000_000, 9);
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            format!("{h}h{m}m{s}{f}s")
        } else if m > 0 {
            format!("{m}m{s}{f}s")
        } else {
            format!("{s}{f}s")
        }
    };
    format!("{sign}{body}")
}

fn files_created_by<'a>(
    keyword: &str,
    sources: &[String],
    contents: impl Iterator<Item = &'a str>,
    dest: &str,
) -> String {
    let mut out = keyword.to_string();
    for s in sources {
        out.push(' ');
        out.push_str(s);
    }
    for c in contents {
        out.push_str(" <<");
        out.push_str(c);
    }
    out.push(' ');
    out.push_str(dest);
    out.push_str(" # buildkit");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use crate::dockerfile::parse_dockerfile;

    #[test]
    fn buildkit_style_lines() {
        let df = parse_dockerfile(&SourceFile::new(
            "D",
            "FROM scratch\nENV A=1 B=2\nCOPY requirements.txt .\nEXPOSE 8000 53/udp\nCMD [\"python\", \"app.py\"]\nARG X=1 Y\n",
        ))
        .unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!(created_by(&i[0], None, "/"), "ENV A=1 B=2");
        assert_eq!(
            created_by(&i[1], None, "/"),
            "COPY requirements.txt . # buildkit"
        );
        assert_eq!(
            created_by(&i[2], None, "/"),
            "EXPOSE map[53/udp:{} 8000/tcp:{}]"
        );
        assert_eq!(created_by(&i[3], None, "/"), "CMD [\"python\" \"app.py\"]");
        assert_eq!(created_by(&i[4], None, "/"), "ARG X=1 Y");
        assert_eq!(
            run_created_by(
                &["/bin/sh".into(), "-c".into(), "pip install x".into()],
                &[("V".into(), "1".into())]
            ),
            "RUN |1 V=1 /bin/sh -c pip install x # buildkit"
        );
    }

    #[test]
    fn expose_and_healthcheck_lines_are_moby_20_10s() {
        // As `docker build` (BuildKit in Moby 20.10) writes them: EXPOSE prints its port map
        // (ranges expanded, keys sorted as strings), HEALTHCHECK `%q` of its config pointer.
        let df = parse_dockerfile(&SourceFile::new(
            "D",
            "FROM scratch\nEXPOSE 8000-8002 80 9000/UDP\n\
             HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2h --retries=3 \
             CMD curl -f \"http://x/\" || exit 1\nHEALTHCHECK NONE\n\
             HEALTHCHECK CMD [\"true\"]\n",
        ))
        .unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!(
            created_by(&i[0], None, "/"),
            "EXPOSE map[80/tcp:{} 8000/tcp:{} 8001/tcp:{} 8002/tcp:{} 9000/udp:{}]"
        );
        assert_eq!(
            created_by(&i[1], None, "/"),
            r#"HEALTHCHECK &{["CMD-SHELL" "curl -f \"http://x/\" || exit 1"] "1m30s" "500ms" "2h0m0s" '\x03'}"#
        );
        assert_eq!(
            created_by(&i[2], None, "/"),
            r#"HEALTHCHECK &{["NONE"] "0s" "0s" "0s" '\x00'}"#
        );
        assert_eq!(
            created_by(&i[3], None, "/"),
            r#"HEALTHCHECK &{["CMD" "true"] "0s" "0s" "0s" '\x00'}"#
        );
    }

    #[test]
    fn durations_print_as_go_does() {
        for (ns, want) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5\u{b5}s"),
            (250_000_000, "250ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (3_723_000_000_000, "1h2m3s"),
            (-2_000_000_000, "-2s"),
        ] {
            assert_eq!(go_duration(ns), want, "{ns}");
        }
    }
}
