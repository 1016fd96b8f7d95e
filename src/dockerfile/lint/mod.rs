//! Build checks: BuildKit's Dockerfile linter (`frontend/dockerfile/linter`), with the same rule
//! names, descriptions, URLs and messages, reported on the lines BuildKit reports them.
//!
//! [`lint`] walks a parsed [`Dockerfile`] the way BuildKit's converter dispatches it in lint mode
//! (every stage, in file order), tracking each stage's environment for the variable checks. Which
//! rules run is decided by the `# check=` directive ([`CheckConfig`]).

mod copy;
mod dispatch;
mod expose;
mod instruction;
mod platform;
mod reference;
mod rules;
mod stage;
mod variables;

use crate::diag::{SourceFile, Span};
use crate::dockerfile::{Directive, Dockerfile};
use serde::Serialize;

pub use rules::{rule, Rule, RULES};

/// One check violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule's name (`StageNameCasing`).
    pub rule: &'static str,
    /// The rule's formatted message (BuildKit's `Detail`).
    pub message: String,
    /// The rule's description.
    pub description: &'static str,
    /// The rule's documentation page.
    pub url: &'static str,
    /// The instruction (or line) the finding is about.
    #[serde(skip)]
    pub span: Span,
    /// First and last line (1-based) of the place the finding refers to.
    pub start_line: usize,
    pub end_line: usize,
}

impl Finding {
    /// The line BuildKit prints for the finding.
    pub fn line(&self) -> usize {
        self.start_line
    }
}

/// Why a `# check=` directive could not be used (BuildKit's `ParseLintOptions` errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckConfigError {
    #[error("invalid check option {}", crate::dockerfile::go_quote(.0))]
    InvalidOption(String),
    #[error("failed to parse check option {}: strconv.ParseBool: parsing {}: invalid syntax", crate::dockerfile::go_quote(.option), crate::dockerfile::go_quote(.value))]
    InvalidBool { option: String, value: String },
}

/// Which rules run and whether findings fail the build: `# check=skip=A,B;error=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckConfig {
    pub skip_all: bool,
    pub skip: Vec<String>,
    /// `error=true`: findings make the check (and a build) fail.
    pub error: bool,
    pub experimental_all: bool,
    pub experimental: Vec<String>,
}

impl CheckConfig {
    /// Parses a `check` directive value with BuildKit's rules: at most three `;`-separated
    /// `key=value` parts (`skip`, `error`, `experimental`); anything else is an error.
    pub fn parse(value: &str) -> Result<CheckConfig, CheckConfigError> {
        let value = value.trim();
        let mut config = CheckConfig::default();
        if value.is_empty() {
            return Ok(config);
        }
        for part in value.splitn(3, ';') {
            let Some((key, v)) = part.split_once('=') else {
                return Err(CheckConfigError::InvalidOption(part.to_string()));
            };
            match key.trim() {
                "skip" => {
                    let v = v.trim();
                    if v == "all" {
                        config.skip_all = true;
                    } else {
                        config.skip = v.split(',').map(|r| r.trim().to_string()).collect();
                    }
                }
                "experimental" => {
                    let v = v.trim();
                    if v == "all" {
                        config.experimental_all = true;
                    } else {
                        config.experimental = v.split(',').map(|r| r.trim().to_string()).collect();
                    }
                }
                "error" => {
                    config.error =
                        parse_go_bool(v.trim()).ok_or_else(|| CheckConfigError::InvalidBool {
                            option: part.to_string(),
                            value: v.trim().to_string(),
                        })?;
                }
                other => return Err(CheckConfigError::InvalidOption(other.to_string())),
            }
        }
        Ok(config)
    }

    /// The configuration from a Dockerfile's `# check=` directive (the default without one).
    pub fn from_directives(directives: &[Directive]) -> Result<CheckConfig, CheckConfigError> {
        match directives.iter().find(|d| d.name == "check") {
            Some(d) => CheckConfig::parse(&d.value),
            None => Ok(CheckConfig::default()),
        }
    }

    /// Whether a finding of `rule` is reported: experimental rules only when enabled (and then
    /// even with `skip`), the others unless skipped.
    pub fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.iter().any(|r| r == rule.name)
        } else {
            !self.skip_all && !self.skip.iter().any(|r| r == rule.name)
        }
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Answers whether a build-context path is excluded by `.dockerignore` (for CopyIgnoredFile).
pub trait IgnoreChecker {
    /// The path (slash-separated, relative to the context root, cleaned) or one of its parents
    /// is excluded (patternmatcher's `MatchesOrParentMatches`).
    fn is_ignored(&self, path: &str) -> bool;
    /// The patterns contain exclusions (`!pattern`); BuildKit then skips the check.
    fn has_exclusions(&self) -> bool {
        false
    }
    /// A pattern excludes every root entry (`*`, `**`, `**/*`), so copying `.` copies nothing.
    fn excludes_root(&self) -> bool {
        false
    }
}

/// Inputs besides the Dockerfile.
#[derive(Default)]
pub struct LintOptions<'a> {
    /// The check configuration; `None` means "from the Dockerfile's `# check=` directive".
    pub config: Option<CheckConfig>,
    /// The context's `.dockerignore`, if there is a context and it has one.
    pub ignore: Option<&'a dyn IgnoreChecker>,
}

/// The outcome of [`check`]: findings (sorted by line, then message) and the configuration used.
#[derive(Debug, Clone)]
pub struct LintReport {
    pub findings: Vec<Finding>,
    pub config: CheckConfig,
}

impl LintReport {
    /// BuildKit's `lint violation found for rules: …` when `error=true` and there are findings.
    pub fn error(&self) -> Option<String> {
        if !self.config.error || self.findings.is_empty() {
            return None;
        }
        let mut rules: Vec<&str> = self.findings.iter().map(|f| f.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        Some(format!(
            "lint violation found for rules: {}",
            rules.join(", ")
        ))
    }
}

/// Runs every check, with the configuration from `opts` or else the `# check=` directive.
pub fn check(
    source: &SourceFile,
    df: &Dockerfile,
    opts: &LintOptions,
) -> Result<LintReport, CheckConfigError> {
    let config = match &opts.config {
        Some(c) => c.clone(),
        None => CheckConfig::from_directives(&df.directives)?,
    };
    let findings = run(source, df, &config, opts.ignore);
    Ok(LintReport { findings, config })
}

/// Runs every check and returns the findings, sorted by line then message. An invalid `# check=`
/// directive is treated as absent here; use [`check`] to see its error.
pub fn lint(source: &SourceFile, df: &Dockerfile, opts: &LintOptions) -> Vec<Finding> {
    let config = match &opts.config {
        Some(c) => c.clone(),
        None => CheckConfig::from_directives(&df.directives).unwrap_or_default(),
    };
    run(source, df, &config, opts.ignore)
}

fn run(
    source: &SourceFile,
    df: &Dockerfile,
    config: &CheckConfig,
    ignore: Option<&dyn IgnoreChecker>,
) -> Vec<Finding> {
    let mut linter = Linter {
        config,
        findings: Vec::new(),
        source,
    };
    // Parser warnings first, as BuildKit's converter does.
    for w in &df.warnings {
        if w.rule == rules::NO_EMPTY_CONTINUATION.name {
            linter.report(
                &rules::NO_EMPTY_CONTINUATION,
                w.span,
                "Empty continuation line".into(),
            );
        }
    }
    stage::check_parse_time(&mut linter, df);
    stage::check_stage_names(&mut linter, df);
    stage::check_instruction_casing(&mut linter, df);
    dispatch::run(&mut linter, df, ignore);
    let mut findings = linter.findings;
    findings.sort_by(|a, b| {
        a.start_line
            .cmp(&b.start_line)
            .then_with(|| a.message.cmp(&b.message))
    });
    findings
}

/// Collects findings for the rules the configuration enables.
pub(crate) struct Linter<'a> {
    config: &'a CheckConfig,
    findings: Vec<Finding>,
    #[allow(dead_code)]
    source: &'a SourceFile,
}

impl Linter<'_> {
    pub(crate) fn report(&mut self, rule: &Rule, span: Span, message: String) {
        if !self.config.enabled(rule) {
            return;
        }
        self.findings.push(Finding {
            rule: rule.name,
            message,
            description: rule.description,
            url: rule.url,
            span,
            start_line: span.start_pos.line,
            end_line: span.end_pos.line.max(span.start_pos.line),
        });
    }
}

/// BuildKit's `suggest.Search`: the option closest to `value` within Levenshtein distance 2 (the
/// first one on ties), none for an exact match.
pub(crate) fn suggest<'a>(
    value: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    let val = if case_sensitive {
        value.to_string()
    } else {
        value.to_lowercase()
    };
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let o = if case_sensitive {
            opt.to_string()
        } else {
            opt.to_lowercase()
        };
        if o == val {
            return None;
        }
        let d = levenshtein(&val, &o);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                o
            } else if value == value.to_lowercase() {
                o.to_lowercase()
            } else if value == value.to_uppercase() {
                o.to_uppercase()
            } else {
                o
            });
        }
    }
    best
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
