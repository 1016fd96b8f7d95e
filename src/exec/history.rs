//! History entries in BuildKit's style (`commitToHistory` in dockerfile2llb/convert.go).

use crate::dockerfile::{go_quote, Command, Instruction};

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", inner.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b]`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// `|N K=V … ` prefix of RUN lines for the stage's valued ARGs not shadowed by ENV.
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
        Command::Expose { ports } => {
            let mut p = ports.clone();
            p.sort();
            format!("EXPOSE {}", go_list(&p))
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
        Command::Healthcheck(h) => format!(
            "HEALTHCHECK {{Test:{} Retries:{}}}",
            go_list(&h.test),
            h.retries
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
        assert_eq!(created_by(&i[2], None, "/"), "EXPOSE [53/udp 8000]");
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
}
