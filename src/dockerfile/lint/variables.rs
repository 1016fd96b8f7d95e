//! Variable checks: the global ARGs FROM sees (UndefinedArgInFrom, InvalidDefaultArgInFrom,
//! RedundantTargetPlatform, FromPlatformFlagConstDisallowed) and undefined variables in a stage
//! (UndefinedVar), against the environment BuildKit tracks.

use super::platform::Platform;
use super::{reference, rules, suggest, Linter};
use crate::diag::Span;
use crate::dockerfile::shell::{Lexer, ProcessedWord};
use crate::dockerfile::{Command, Dockerfile, Instruction, Stage};

/// Build args that never enter a stage's environment (`nonEnvArgs`).
pub(super) const NON_ENV_ARGS: &[&str] =
    &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// `PATH` when the base image sets none (`system.DefaultPathEnv("linux")`).
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An ordered environment: a name set again keeps its place and takes the new value.
#[derive(Debug, Clone, Default)]
pub(super) struct Env(pub Vec<(String, String)>);

impl Env {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Expands `word`; `None` when the lexer refuses it (BuildKit would stop with an error).
    pub fn process(&self, lexer: &Lexer, word: &str) -> Option<ProcessedWord> {
        lexer.process_word(word, &self.0).ok()
    }
}

/// The automatic platform ARGs of global scope (`defaultArgs`), for the host platform.
pub(super) fn default_args(target_stage: &str) -> Env {
    let p = Platform::host();
    let mut env = Env::default();
    for prefix in ["BUILD", "TARGET"] {
        env.set(&format!("{prefix}PLATFORM"), &p.format());
        env.set(&format!("{prefix}OS"), &p.os);
        env.set(&format!("{prefix}OSVERSION"), "");
        env.set(&format!("{prefix}ARCH"), &p.arch);
        env.set(&format!("{prefix}VARIANT"), &p.variant);
    }
    env.set("TARGETSTAGE", target_stage);
    env
}

/// The global ARGs in order (`buildMetaArgs` without build args): each default expanded against
/// the args so far; `None` if a default cannot be expanded. Also returns every declared name.
pub(super) fn meta_args(
    df: &Dockerfile,
    lexer: &Lexer,
    mut args: Env,
) -> Option<(Env, Vec<String>)> {
    let mut declared = Vec::new();
    for ins in &df.meta_args {
        let Command::Arg { args: defs } = &ins.command else {
            continue;
        };
        for def in defs {
            if let Some(default) = &def.default {
                let value = args.process(lexer, default)?.result;
                args.set(&def.key, &value);
            }
            if !declared.contains(&def.key) {
                declared.push(def.key.clone());
            }
        }
    }
    Some((args, declared))
}

/// The target stage's name as BuildKit's TARGETSTAGE default has it: the last stage's name.
pub(super) fn target_stage_name(df: &Dockerfile) -> String {
    df.stages
        .last()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| "default".into())
}

/// InvalidDefaultArgInFrom: every base name expanded with only the defaults of the global ARGs
/// must be a valid image reference.
pub(super) fn check_default_args_in_from(linter: &mut Linter, df: &Dockerfile, lexer: &Lexer) {
    let Some((args, _)) = meta_args(df, lexer, default_args(&target_stage_name(df))) else {
        return;
    };
    for stage in &df.stages {
        let base = &stage.from_cmd().base;
        let Some(word) = args.process(lexer, base) else {
            return;
        };
        if !reference::is_valid_normalized_named(&word.result) {
            linter.report(
                &rules::INVALID_DEFAULT_ARG_IN_FROM,
                stage.from.span,
                rules::invalid_default_arg_in_from(base),
            );
        }
    }
}

/// The FROM checks of one stage, against the global args: UndefinedArgInFrom for the base name and
/// `--platform`, RedundantTargetPlatform and FromPlatformFlagConstDisallowed. Returns the expanded
/// base name.
pub(super) fn check_from(
    linter: &mut Linter,
    stage: &Stage,
    lexer: &Lexer,
    globals: &Env,
    declared: &[String],
) -> String {
    let from = stage.from_cmd();
    let span = stage.from.span;
    let mut keys: Vec<&str> = globals.keys().collect();
    for d in declared {
        if !keys.contains(&d.as_str()) {
            keys.push(d);
        }
    }
    let base = globals.process(lexer, &from.base);
    if let Some(word) = &base {
        report_unused_from_args(linter, span, &keys, word);
    }
    if let Some(platform) = &from.platform {
        if let Some(word) = globals.process(lexer, platform) {
            report_unused_from_args(linter, span, &keys, &word);
            // RedundantTargetPlatform: only `$TARGETPLATFORM` was substituted, to its own value.
            if word.matched.len() == 1
                && word.unmatched.is_empty()
                && word.matched.contains("TARGETPLATFORM")
                && globals.get("TARGETPLATFORM") == Some(word.result.as_str())
            {
                linter.report(
                    &rules::REDUNDANT_TARGET_PLATFORM,
                    span,
                    rules::redundant_target_platform(platform),
                );
            }
            // FromPlatformFlagConstDisallowed: a constant that parses as a platform, unless the
            // stage name mentions its OS or architecture.
            if word.matched.is_empty() && word.unmatched.is_empty() {
                if let Some(p) = Platform::parse(&word.result) {
                    let name = from.name.as_deref().unwrap_or("");
                    if !name.contains(p.os.as_str()) && !name.contains(p.arch.as_str()) {
                        linter.report(
                            &rules::FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                            span,
                            rules::from_platform_flag_const_disallowed(&word.result),
                        );
                    }
                }
            }
        }
    }
    base.map_or_else(|| from.base.clone(), |w| w.result)
}

fn report_unused_from_args(linter: &mut Linter, span: Span, keys: &[&str], word: &ProcessedWord) {
    for arg in &word.unmatched {
        if keys.contains(&arg.as_str()) {
            continue;
        }
        let suggestion = suggest(arg, keys.iter().copied(), true);
        linter.report(
            &rules::UNDEFINED_ARG_IN_FROM,
            span,
            rules::undefined_arg_in_from(arg, suggestion.as_deref()),
        );
    }
}

/// UndefinedVar for one expansion: names the lexer found unset, minus the stage's declared ARGs
/// and the non-env build args, with a suggestion from the environment's names.
pub(super) fn report_unmatched(
    linter: &mut Linter,
    ins: &Instruction,
    env: &Env,
    declared_args: &[String],
    word: &ProcessedWord,
) {
    for var in &word.unmatched {
        if declared_args.iter().any(|a| a == var) || NON_ENV_ARGS.contains(&var.as_str()) {
            continue;
        }
        let suggestion = suggest(var, env.keys(), true);
        linter.report(
            &rules::UNDEFINED_VAR,
            ins.span,
            rules::undefined_var(var, suggestion.as_deref()),
        );
    }
}
