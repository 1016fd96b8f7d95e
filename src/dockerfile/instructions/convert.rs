//! Raw [`Node`]s → typed [`Instruction`]s, and instructions → stages. Exec-style instructions are in
//! `convert_exec`, COPY/ADD in `convert_files`; the rest (metadata instructions) are here.

use super::flags::{suggest, FlagError, FlagKind, Flags};
use super::{convert_exec, convert_files, locate};
use super::{ArgDef, Command, Dockerfile, From, Instruction, KeyValue, Onbuild, Stage};
use crate::diag::{SourceFile, Span};
use crate::dockerfile::ast::Node;
use crate::dockerfile::error::ParseError;
use crate::dockerfile::parser::{self, KEYWORDS};

/// What a converter needs: the node, the source (to point at things) and the escape token.
pub(super) struct Ctx<'a> {
    pub node: &'a Node,
    pub source: &'a SourceFile,
    pub escape: char,
}

impl Ctx<'_> {
    /// An error about the whole instruction (pointing at its keyword).
    pub fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError::new(message, self.keyword_span())
    }

    /// An error pointing at `needle` in the instruction's text (or its first line).
    pub fn error_at(&self, message: impl Into<String>, needle: &str) -> ParseError {
        ParseError::new(message, locate(self.source, self.node.span, needle))
    }

    pub fn keyword_span(&self) -> Span {
        locate(self.source, self.node.span, &self.node.keyword)
    }

    /// Parses the node's flags against what the instruction declares.
    pub fn flags(&self, declared: &[(&'static str, FlagKind)]) -> Result<Flags, ParseError> {
        let mut flags = Flags::new(declared);
        flags
            .parse(&self.node.flags)
            .map_err(|FlagError { message, flag }| self.error_at(message, &flag))?;
        Ok(flags)
    }

    pub fn args(&self) -> &[String] {
        &self.node.args
    }

    fn exactly_one(&self, name: &str) -> Result<String, ParseError> {
        match self.args() {
            [one] => Ok(one.clone()),
            _ => Err(self.error(format!("{name} requires exactly one argument"))),
        }
    }

    fn at_least_one(&self, name: &str) -> Result<(), ParseError> {
        if self.args().is_empty() {
            return Err(self.error(format!("{name} requires at least one argument")));
        }
        Ok(())
    }
}

/// Parses a whole Dockerfile into stages of typed instructions.
pub fn parse_dockerfile(source: &SourceFile) -> Result<Dockerfile, ParseError> {
    let ast = parser::parse(source)?;
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &ast.nodes {
        let instruction = instruction_from_node(source, node, ast.escape)?;
        if let Command::From(from) = &instruction.command {
            stages.push(Stage {
                index: stages.len(),
                name: from.name.clone(),
                from: instruction,
                instructions: Vec::new(),
            });
            continue;
        }
        match stages.last_mut() {
            Some(stage) => stage.instructions.push(instruction),
            None if matches!(instruction.command, Command::Arg { .. }) => {
                meta_args.push(instruction)
            }
            None => {
                return Err(ParseError::new(
                    format!(
                        "no build stage in current context: {} comes before the first FROM (only ARG may)",
                        instruction.command.name()
                    ),
                    locate(source, instruction.span, &instruction.keyword),
                ))
            }
        }
    }
    if stages.is_empty() {
        let end = source.text().len();
        return Err(ParseError::new(
            "dockerfile contains no stages to build: it needs a FROM instruction",
            source.span(end, end),
        ));
    }
    Ok(Dockerfile {
        escape: ast.escape,
        directives: ast.directives,
        meta_args,
        stages,
        warnings: ast.warnings,
    })
}

/// Makes one typed instruction from a raw node.
pub fn instruction_from_node(
    source: &SourceFile,
    node: &Node,
    escape: char,
) -> Result<Instruction, ParseError> {
    let ctx = Ctx {
        node,
        source,
        escape,
    };
    let command = match node.command().as_str() {
        "from" => parse_from(&ctx)?,
        "run" => convert_exec::parse_run(&ctx)?,
        "cmd" => convert_exec::parse_cmd(&ctx)?,
        "entrypoint" => convert_exec::parse_entrypoint(&ctx)?,
        "shell" => convert_exec::parse_shell(&ctx)?,
        "healthcheck" => convert_exec::parse_healthcheck(&ctx)?,
        "copy" => convert_files::parse_copy(&ctx)?,
        "add" => convert_files::parse_add(&ctx)?,
        "env" => Command::Env {
            env: parse_kvps(&ctx, "ENV")?,
        },
        "label" => Command::Label {
            labels: parse_kvps(&ctx, "LABEL")?,
        },
        "maintainer" => {
            ctx.flags(&[])?;
            Command::Maintainer {
                maintainer: ctx.exactly_one("MAINTAINER")?,
            }
        }
        "expose" => {
            ctx.at_least_one("EXPOSE")?;
            ctx.flags(&[])?;
            let mut ports = ctx.args().to_vec();
            ports.sort();
            Command::Expose { ports }
        }
        "volume" => parse_volume(&ctx)?,
        "user" => {
            ctx.flags(&[])?;
            Command::User {
                user: ctx.exactly_one("USER")?,
            }
        }
        "workdir" => {
            ctx.flags(&[])?;
            Command::Workdir {
                path: ctx.exactly_one("WORKDIR")?,
            }
        }
        "stopsignal" => {
            ctx.flags(&[])?;
            Command::Stopsignal {
                signal: ctx.exactly_one("STOPSIGNAL")?,
            }
        }
        "arg" => parse_arg(&ctx)?,
        "onbuild" => parse_onbuild(&ctx)?,
        _ => {
            let upper = node.keyword.to_ascii_uppercase();
            let mut message = format!("unknown instruction: {upper}");
            if let Some(s) = suggest(&node.keyword, KEYWORDS) {
                message.push_str(&format!(" (did you mean {}?)", s.to_ascii_uppercase()));
            }
            return Err(ctx.error(message));
        }
    };
    Ok(Instruction {
        keyword: node.keyword.clone(),
        original: node.original.clone(),
        span: node.span,
        comments: node.prev_comment.clone(),
        command,
    })
}

/// ENV/LABEL `key value sep` triples → pairs.
fn parse_kvps(ctx: &Ctx, name: &str) -> Result<Vec<KeyValue>, ParseError> {
    ctx.flags(&[])?;
    ctx.at_least_one(name)?;
    let args = ctx.args();
    if !args.len().is_multiple_of(3) {
        return Err(ctx.error(format!("Bad input to {name}, too many arguments")));
    }
    args.chunks(3)
        .map(|kv| {
            if kv[0].is_empty() {
                return Err(ctx.error(format!("{name} names can not be blank")));
            }
            Ok(KeyValue {
                key: kv[0].clone(),
                value: kv[1].clone(),
                legacy: kv[2].is_empty(),
            })
        })
        .collect()
}

fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn parse_from(ctx: &Ctx) -> Result<Command, ParseError> {
    let args = ctx.args();
    let (name, name_as_written, as_keyword) = match args {
        [_] => (None, None, None),
        [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            if !is_valid_stage_name(&lower) {
                return Err(ctx.error_at(
                    format!(
                        "invalid name for build stage: {}, name can't start with a number or contain symbols",
                        crate::dockerfile::go_quote(name)
                    ),
                    name,
                ));
            }
            (Some(lower), Some(name.clone()), Some(as_kw.clone()))
        }
        _ => {
            return Err(ctx.error("FROM requires either one or three arguments"));
        }
    };
    let flags = ctx.flags(&[("platform", FlagKind::String)])?;
    Ok(Command::From(From {
        base: args[0].clone(),
        name,
        name_as_written,
        as_keyword,
        platform: flags.string("platform"),
    }))
}

fn parse_volume(ctx: &Ctx) -> Result<Command, ParseError> {
    ctx.at_least_one("VOLUME")?;
    ctx.flags(&[])?;
    let mut volumes = Vec::new();
    for v in ctx.args() {
        let v = v.trim();
        if v.is_empty() {
            return Err(ctx.error("VOLUME specified can not be an empty string"));
        }
        volumes.push(v.to_string());
    }
    Ok(Command::Volume {
        volumes,
        json: ctx.node.json,
    })
}

fn parse_arg(ctx: &Ctx) -> Result<Command, ParseError> {
    ctx.at_least_one("ARG")?;
    ctx.flags(&[])?;
    let mut args = Vec::new();
    for word in ctx.args() {
        let (key, default) = match word.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (word.clone(), None),
        };
        if key.is_empty() {
            return Err(ctx.error_at("ARG names can not be blank", word));
        }
        args.push(ArgDef { key, default });
    }
    Ok(Command::Arg { args })
}

fn parse_onbuild(ctx: &Ctx) -> Result<Command, ParseError> {
    ctx.flags(&[])?;
    let Some(sub) = &ctx.node.sub else {
        return Err(ctx.error("ONBUILD requires at least one argument"));
    };
    let trigger = sub.keyword.to_ascii_uppercase();
    match trigger.as_str() {
        "ONBUILD" => {
            return Err(ctx.error_at(
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                &sub.keyword,
            ))
        }
        "MAINTAINER" | "FROM" => {
            return Err(ctx.error_at(
                format!("{trigger} isn't allowed as an ONBUILD trigger"),
                &sub.keyword,
            ))
        }
        _ => {}
    }
    // The heredoc bodies belong to the trigger.
    let mut sub = (**sub).clone();
    sub.heredocs = ctx.node.heredocs.clone();
    sub.span = ctx.node.span;
    let trigger = instruction_from_node(ctx.source, &sub, ctx.escape)?;
    // The text after the keyword, as BuildKit stores it (`(?i)^\s*ONBUILD\s*` removed).
    let original = ctx.node.original.trim_start();
    let mut expression = original
        .get(ctx.node.keyword.len()..)
        .unwrap_or("")
        .trim_start()
        .to_string();
    for h in &ctx.node.heredocs {
        expression.push('\n');
        expression.push_str(&h.content);
        expression.push_str(&h.name);
    }
    Ok(Command::Onbuild(Onbuild {
        expression,
        trigger: Box::new(trigger),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dockerfile, ParseError> {
        parse_dockerfile(&SourceFile::new("Dockerfile", text))
    }

    #[test]
    fn stages_and_meta_args() {
        let df =
            parse("ARG V=1\nFROM a:$V AS Build\nRUN x\nFROM scratch\nCOPY --from=build /x /x\n")
                .unwrap();
        assert_eq!(df.meta_args.len(), 1);
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(
            df.stages[0].from_cmd().name_as_written.as_deref(),
            Some("Build")
        );
        assert_eq!(df.stages[1].instructions.len(), 1);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse("FROM a\nRUNN x\n").unwrap_err();
        assert_eq!(e.message, "unknown instruction: RUNN (did you mean RUN?)");
        assert_eq!((e.span.start_pos.line, e.span.start_pos.column), (2, 1));
        let e = parse("FROM a\nCOPY --form=x a b\n").unwrap_err();
        assert!(e.message.starts_with("unknown flag: --form"));
        assert_eq!(e.span.start_pos.column, 6);
        let e = parse("RUN x\nFROM a\n").unwrap_err();
        assert!(e.message.contains("no build stage"));
        let e = parse("FROM a AS 1x\n").unwrap_err();
        assert!(e.message.contains("invalid name for build stage"));
        let e = parse("FROM a\nONBUILD ONBUILD RUN x\n").unwrap_err();
        assert!(e.message.contains("Chaining ONBUILD"));
        let e = parse("ARG x\n").unwrap_err();
        assert!(e.message.contains("no stages"));
    }

    #[test]
    fn onbuild_keeps_expression() {
        let df = parse("FROM a\nONBUILD RUN echo hi\n").unwrap();
        match &df.stages[0].instructions[0].command {
            Command::Onbuild(o) => {
                assert_eq!(o.expression, "RUN echo hi");
                assert!(matches!(o.trigger.command, Command::Run(_)));
            }
            other => panic!("{other:?}"),
        }
    }
}
