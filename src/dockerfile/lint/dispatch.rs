//! The stage walk: BuildKit's converter in lint mode dispatches every stage in file order, with
//! the environment each instruction expands against. Checks that need that state run here.

use super::instruction::{self, Tracker};
use super::variables::{self, Env, NON_ENV_ARGS};
use super::{copy, expose, IgnoreChecker, Linter};
use crate::dockerfile::shell::Lexer;
use crate::dockerfile::{Command, Dockerfile, Instruction};

/// What a stage hands to a stage built `FROM` it.
#[derive(Debug, Clone, Default)]
struct StageState {
    /// The environment expansions see: base image env (`PATH`), ENVs, ARGs with values.
    env: Env,
    /// ARG names declared in the stage (and its parent stages).
    args: Vec<String>,
    /// A SHELL instruction set the shell.
    shell_set: bool,
    /// A WORKDIR ran in this stage or a parent stage.
    workdir_set: bool,
}

struct Ctx<'a> {
    lexer: Lexer,
    /// The lexer for heredoc bodies (`\` escapes, quotes kept).
    raw_lexer: Lexer,
    globals: Env,
    ignore: Option<&'a dyn IgnoreChecker>,
}

#[derive(Default)]
struct Trackers {
    cmd: Tracker,
    entrypoint: Tracker,
    healthcheck: Tracker,
}

pub(super) fn run(linter: &mut Linter, df: &Dockerfile, ignore: Option<&dyn IgnoreChecker>) {
    let lexer = Lexer::new(df.escape);
    variables::check_default_args_in_from(linter, df, &lexer);
    let defaults = variables::default_args(&variables::target_stage_name(df));
    // A global ARG default that cannot be expanded fails the build before any stage.
    let Some((globals, declared)) = variables::meta_args(df, &lexer, defaults) else {
        return;
    };
    let bases: Vec<String> = df
        .stages
        .iter()
        .map(|stage| variables::check_from(linter, stage, &lexer, &globals, &declared))
        .collect();
    let mut raw_lexer = Lexer::new('\\');
    raw_lexer.skip_process_quotes = true;
    let ctx = Ctx {
        lexer,
        raw_lexer,
        globals,
        ignore,
    };
    let mut states: Vec<StageState> = Vec::with_capacity(df.stages.len());
    for (i, stage) in df.stages.iter().enumerate() {
        let parent = bases.get(i).and_then(|base| {
            df.stages[..i]
                .iter()
                .rposition(|s| s.name.as_deref() == Some(base.as_str()))
        });
        let mut state = match parent.and_then(|p| states.get(p)) {
            Some(p) => p.clone(),
            None => {
                let mut env = Env::default();
                // An image's own env is unknown without pulling it; `PATH` is always set.
                env.set("PATH", variables::DEFAULT_PATH);
                StageState {
                    env,
                    ..StageState::default()
                }
            }
        };
        let mut trackers = Trackers::default();
        // The parent stage's ONBUILD triggers run first, located at this stage's FROM.
        if let Some(p) = parent.and_then(|p| df.stages.get(p)) {
            for ins in &p.instructions {
                if let Command::Onbuild(ob) = &ins.command {
                    let mut trigger = (*ob.trigger).clone();
                    trigger.span = stage.from.span;
                    dispatch(linter, &ctx, &mut state, &mut trackers, &trigger);
                }
            }
        }
        for ins in &stage.instructions {
            dispatch(linter, &ctx, &mut state, &mut trackers, ins);
        }
        states.push(state);
    }
}

fn dispatch(
    linter: &mut Linter,
    ctx: &Ctx,
    state: &mut StageState,
    trackers: &mut Trackers,
    ins: &Instruction,
) {
    let span = ins.span;
    let kw = ins.keyword.as_str();
    if let Command::Arg { args } = &ins.command {
        dispatch_arg(linter, ctx, state, ins, args);
        return;
    }
    let Some(expanded) = expand(linter, ctx, state, ins) else {
        return;
    };
    match &expanded.command {
        Command::Env { env } => {
            for kv in env {
                instruction::check_legacy(linter, kw, span, kv.legacy);
                instruction::check_secret(linter, "ENV", &kv.key, span);
                state.env.set(&kv.key, &kv.value);
            }
        }
        Command::Label { labels } => {
            for kv in labels {
                instruction::check_legacy(linter, kw, span, kv.legacy);
            }
        }
        Command::Cmd(c) => {
            trackers.cmd.used(linter, kw, span);
            instruction::check_json_args(linter, kw, span, c.shell_form, state.shell_set);
        }
        Command::Entrypoint(c) => {
            trackers.entrypoint.used(linter, kw, span);
            instruction::check_json_args(linter, kw, span, c.shell_form, state.shell_set);
        }
        Command::Healthcheck(_) => trackers.healthcheck.used(linter, kw, span),
        Command::Shell { shell } => state.shell_set = !shell.is_empty(),
        Command::Workdir { path } => {
            instruction::check_workdir(linter, span, path, state.workdir_set);
            state.workdir_set = true;
        }
        Command::Expose { ports } => expose::check_expose(linter, span, ports),
        Command::Copy(c) if c.from.is_none() => {
            copy::check_sources(linter, span, false, &c.files.sources, ctx.ignore)
        }
        Command::Add(a) => copy::check_sources(linter, span, true, &a.files.sources, ctx.ignore),
        _ => {}
    }
}

/// Expands the instruction's words against the stage environment as BuildKit does before
/// dispatching it, reporting UndefinedVar; `None` when the lexer refuses a word.
fn expand(
    linter: &mut Linter,
    ctx: &Ctx,
    state: &StageState,
    ins: &Instruction,
) -> Option<Instruction> {
    let mut out = ins.clone();
    let word = |linter: &mut Linter, lexer: &Lexer, w: &str| -> Option<String> {
        let processed = state.env.process(lexer, w)?;
        variables::report_unmatched(linter, ins, &state.env, &state.args, &processed);
        Some(processed.result)
    };
    match &mut out.command {
        // COPY/ADD are expanded here so heredoc bodies get the raw lexer.
        Command::Copy(c) => {
            for content in c.files.contents.iter_mut().filter(|c| c.expand) {
                content.data = word(linter, &ctx.raw_lexer, &content.data)?;
            }
            for s in c.files.sources.iter_mut() {
                *s = word(linter, &ctx.lexer, s)?;
            }
            c.files.dest = word(linter, &ctx.lexer, &c.files.dest)?;
            for opt in [&mut c.chown, &mut c.chmod].into_iter().flatten() {
                *opt = word(linter, &ctx.lexer, opt)?;
            }
        }
        Command::Add(a) => {
            for content in a.files.contents.iter_mut().filter(|c| c.expand) {
                content.data = word(linter, &ctx.raw_lexer, &content.data)?;
            }
            for s in a.files.sources.iter_mut() {
                *s = word(linter, &ctx.lexer, s)?;
            }
            a.files.dest = word(linter, &ctx.lexer, &a.files.dest)?;
            for opt in [&mut a.chown, &mut a.chmod, &mut a.checksum]
                .into_iter()
                .flatten()
            {
                *opt = word(linter, &ctx.lexer, opt)?;
            }
        }
        _ => {
            let mut failed = false;
            let result = ins.expand(&mut |w: &str| match word(linter, &ctx.lexer, w) {
                Some(r) => Ok(r),
                None => {
                    failed = true;
                    Err(String::new())
                }
            });
            return match result {
                Ok(e) if !failed => Some(e),
                _ => None,
            };
        }
    }
    Some(out)
}

/// ARG: defaults are expanded against the stage env (reporting UndefinedVar); a name without a
/// default takes the global ARG's value; names with a value join the environment.
fn dispatch_arg(
    linter: &mut Linter,
    ctx: &Ctx,
    state: &mut StageState,
    ins: &Instruction,
    args: &[crate::dockerfile::instructions::ArgDef],
) {
    for def in args {
        instruction::check_secret(linter, "ARG", &def.key, ins.span);
        let value = match &def.default {
            None => ctx.globals.get(&def.key).map(str::to_string),
            Some(default) => {
                let Some(processed) = state.env.process(&ctx.lexer, default) else {
                    return;
                };
                variables::report_unmatched(linter, ins, &state.env, &state.args, &processed);
                Some(processed.result)
            }
        };
        if let Some(v) = value {
            if !NON_ENV_ARGS.contains(&def.key.as_str()) {
                state.env.set(&def.key, &v);
            }
        }
        state.args.push(def.key.clone());
    }
}
