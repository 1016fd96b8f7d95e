//! RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK: instructions that carry a command line.

use super::convert::Ctx;
use super::duration::parse_go_duration;
use super::flags::FlagKind;
use super::mount::{parse_mount, NetworkMode, SecurityMode};
use super::{Command, CommandLine, Healthcheck, InlineFile, Run};
use crate::dockerfile::error::ParseError;

/// The arguments as a command line: exec form as given, shell form as one string.
fn command_line(ctx: &Ctx) -> CommandLine {
    let node = ctx.node;
    let args = if node.json || node.args.is_empty() {
        node.args.clone()
    } else {
        vec![node.args.join(" ")]
    };
    CommandLine {
        args,
        shell_form: !node.json,
        files: node
            .heredocs
            .iter()
            .map(|h| InlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
                chomp: h.chomp,
                expand: h.expand,
            })
            .collect(),
    }
}

pub(super) fn parse_run(ctx: &Ctx) -> Result<Command, ParseError> {
    let flags = ctx.flags(&[
        ("mount", FlagKind::Strings),
        ("network", FlagKind::String),
        ("security", FlagKind::String),
        ("device", FlagKind::Strings),
    ])?;
    let cmd = command_line(ctx);
    if cmd.args.is_empty() {
        return Err(ctx.error("RUN requires at least one argument"));
    }
    let mut mounts = Vec::new();
    for raw in flags.strings("mount") {
        let mount = parse_mount(&raw, None)
            .map_err(|m| ctx.error_at(format!("--mount={raw}: {m}"), &raw))?;
        mounts.push(mount);
    }
    let network = flags
        .string("network")
        .map(|n| NetworkMode::parse(&n).map_err(|m| ctx.error_at(m, &n)))
        .transpose()?;
    let security = flags
        .string("security")
        .map(|s| SecurityMode::parse(&s).map_err(|m| ctx.error_at(m, &s)))
        .transpose()?;
    Ok(Command::Run(Run {
        cmd,
        mounts,
        network,
        security,
        devices: flags.strings("device"),
    }))
}

pub(super) fn parse_cmd(ctx: &Ctx) -> Result<Command, ParseError> {
    ctx.flags(&[])?;
    Ok(Command::Cmd(command_line(ctx)))
}

pub(super) fn parse_entrypoint(ctx: &Ctx) -> Result<Command, ParseError> {
    ctx.flags(&[])?;
    Ok(Command::Entrypoint(command_line(ctx)))
}

pub(super) fn parse_shell(ctx: &Ctx) -> Result<Command, ParseError> {
    ctx.flags(&[])?;
    if ctx.args().is_empty() {
        return Err(ctx.error("SHELL requires at least one argument"));
    }
    if !ctx.node.json {
        return Err(ctx.error(
            "SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]",
        ));
    }
    Ok(Command::Shell {
        shell: ctx.args().to_vec(),
    })
}

/// A HEALTHCHECK duration flag: unset or zero is 0; otherwise at least 1ms.
fn interval(ctx: &Ctx, name: &str, value: Option<String>) -> Result<i64, ParseError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(0);
    };
    let d = parse_go_duration(&value).map_err(|m| ctx.error_at(m, &value))?;
    if d == 0 {
        return Ok(0);
    }
    if d < 1_000_000 {
        return Err(ctx.error_at(
            format!("Interval \"{name}\" cannot be less than 1ms"),
            &value,
        ));
    }
    Ok(d)
}

pub(super) fn parse_healthcheck(ctx: &Ctx) -> Result<Command, ParseError> {
    let args = ctx.args();
    let Some(first) = args.first() else {
        return Err(ctx.error("HEALTHCHECK requires at least one argument"));
    };
    let typ = first.to_ascii_uppercase();
    let flags = ctx.flags(&[
        ("interval", FlagKind::String),
        ("timeout", FlagKind::String),
        ("start-period", FlagKind::String),
        ("start-interval", FlagKind::String),
        ("retries", FlagKind::String),
    ])?;
    let rest = &args[1..];
    if typ == "NONE" {
        if !rest.is_empty() {
            return Err(ctx.error("HEALTHCHECK NONE takes no arguments"));
        }
        return Ok(Command::Healthcheck(Healthcheck {
            test: vec!["NONE".into()],
            interval: 0,
            timeout: 0,
            start_period: 0,
            start_interval: 0,
            retries: 0,
        }));
    }
    if typ != "CMD" {
        return Err(ctx.error_at(
            format!("Unknown type \"{typ}\" in HEALTHCHECK (try CMD)"),
            first,
        ));
    }
    let mut cmd: Vec<String> = if ctx.node.json {
        rest.to_vec()
    } else if rest.is_empty() {
        Vec::new()
    } else {
        vec![rest.join(" ")]
    };
    if cmd.is_empty() {
        return Err(ctx.error("Missing command after HEALTHCHECK CMD"));
    }
    let kind = if ctx.node.json { "CMD" } else { "CMD-SHELL" };
    cmd.insert(0, kind.to_string());
    let retries = match flags.string("retries").filter(|r| !r.is_empty()) {
        None => 0,
        Some(r) => {
            let n: i64 = r
                .parse::<i32>()
                .map_err(|_| {
                    ctx.error_at(
                        format!("strconv.ParseInt: parsing \"{r}\": invalid syntax"),
                        &r,
                    )
                })?
                .into();
            if n < 0 {
                return Err(ctx.error_at(format!("--retries cannot be negative ({n})"), &r));
            }
            n
        }
    };
    Ok(Command::Healthcheck(Healthcheck {
        test: cmd,
        interval: interval(ctx, "interval", flags.string("interval"))?,
        timeout: interval(ctx, "timeout", flags.string("timeout"))?,
        start_period: interval(ctx, "start-period", flags.string("start-period"))?,
        start_interval: interval(ctx, "start-interval", flags.string("start-interval"))?,
        retries,
    }))
}
