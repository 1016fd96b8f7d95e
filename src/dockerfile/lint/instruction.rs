//! Per-instruction checks BuildKit runs while dispatching a stage: JSONArgsRecommended,
//! MultipleInstructionsDisallowed, WorkdirRelativePath, LegacyKeyValueFormat,
//! SecretsUsedInArgOrEnv.

use super::{rules, Linter};
use crate::diag::Span;
use regex::Regex;
use std::sync::OnceLock;

/// Remembers where CMD, ENTRYPOINT or HEALTHCHECK was last set in the stage
/// (`instructionTracker`); a second one reports the first, which is the one ignored.
#[derive(Debug, Default, Clone)]
pub(super) struct Tracker(Option<Span>);

impl Tracker {
    pub fn used(&mut self, linter: &mut Linter, keyword: &str, span: Span) {
        if let Some(previous) = self.0 {
            linter.report(
                &rules::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                previous,
                rules::multiple_instructions_disallowed(keyword),
            );
        }
        self.0 = Some(span);
    }
}

/// JSONArgsRecommended: a shell-form CMD or ENTRYPOINT while no SHELL is configured.
pub(super) fn check_json_args(
    linter: &mut Linter,
    keyword: &str,
    span: Span,
    shell_form: bool,
    shell_set: bool,
) {
    if shell_form && !shell_set {
        linter.report(
            &rules::JSON_ARGS_RECOMMENDED,
            span,
            rules::json_args_recommended(keyword),
        );
    }
}

/// WorkdirRelativePath: the first WORKDIR of the build chain is relative.
pub(super) fn check_workdir(linter: &mut Linter, span: Span, path: &str, workdir_set: bool) {
    if !workdir_set && !path.starts_with('/') {
        linter.report(
            &rules::WORKDIR_RELATIVE_PATH,
            span,
            rules::workdir_relative_path(path),
        );
    }
}

/// LegacyKeyValueFormat: `ENV key value` / `LABEL key value`.
pub(super) fn check_legacy(linter: &mut Linter, keyword: &str, span: Span, legacy: bool) {
    if legacy {
        linter.report(
            &rules::LEGACY_KEY_VALUE_FORMAT,
            span,
            rules::legacy_key_value_format(keyword),
        );
    }
}

fn secret_regexes() -> &'static (Regex, Regex) {
    static RE: OnceLock<(Regex, Regex)> = OnceLock::new();
    RE.get_or_init(|| {
        let deny = [
            "apikey",
            "auth",
            "credential",
            "credentials",
            "key",
            "password",
            "pword",
            "passwd",
            "secret",
            "token",
        ];
        let allow = ["public", "file", "version"];
        let build = |tokens: &[&str]| {
            // The patterns are constants, so building them cannot fail.
            Regex::new(&format!("(?i)(?:_|^)(?:{})(?:_|$)", tokens.join("|")))
                .unwrap_or_else(|e| panic!("secrets regex: {e}"))
        };
        (build(&deny), build(&allow))
    })
}

/// SecretsUsedInArgOrEnv: a name with a secret-looking word (`api_key`, `DB_PASSWORD`) that has
/// no harmless one (`public`, `file`, `version`).
pub(super) fn check_secret(linter: &mut Linter, instruction: &str, key: &str, span: Span) {
    let (deny, allow) = secret_regexes();
    if deny.is_match(key) && !allow.is_match(key) {
        linter.report(
            &rules::SECRETS_USED_IN_ARG_OR_ENV,
            span,
            rules::secrets_used_in_arg_or_env(instruction, key),
        );
    }
}
