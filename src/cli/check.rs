//! `kiln check`: BuildKit's build checks on a Dockerfile, as text (`Dockerfile:LINE: Rule: message`
//! on stderr) or a JSON document on stdout.

use super::check_ignore::DockerIgnore;
use crate::diag::{Diagnostic, Severity, SourceFile};
use crate::dockerfile::lint::{self, Finding, IgnoreChecker, LintOptions};
use crate::dockerfile::parse_dockerfile;
use serde::Serialize;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` for stdin)
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The build context, for `.dockerignore` (CopyIgnoredFile)
    #[arg(default_value = ".")]
    context: PathBuf,
    /// Output format: text lines on stderr, or a JSON document on stdout
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Serialize)]
struct JsonFinding<'a> {
    rule: &'a str,
    message: &'a str,
    description: &'a str,
    url: &'a str,
    file: &'a str,
    start_line: usize,
    end_line: usize,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    file: &'a str,
    findings: Vec<JsonFinding<'a>>,
    /// `lint violation found for rules: …` when the check directive has `error=true`.
    error: Option<String>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.file {
        Some(f) => f.clone(),
        None if args.context == std::path::Path::new(".") => PathBuf::from("Dockerfile"),
        None => args.context.join("Dockerfile"),
    };
    let source = super::read_dockerfile(&path)?;
    let df = match parse_dockerfile(&source) {
        Ok(df) => df,
        Err(err) => {
            eprintln!("error: {}", err.render(&source));
            return Ok(ExitCode::FAILURE);
        }
    };
    let ignore = if args.context.is_dir() {
        DockerIgnore::load(&args.context, &path)?
    } else {
        None
    };
    let opts = LintOptions {
        config: None,
        ignore: ignore.as_ref().map(|i| i as &dyn IgnoreChecker),
    };
    let report = match lint::check(&source, &df, &opts) {
        Ok(r) => r,
        Err(err) => {
            eprintln!("error: failed to parse check options: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let error = report.error();
    match args.format {
        Format::Text => {
            let snippets = std::io::stderr().is_terminal();
            let mut out = String::new();
            for f in &report.findings {
                out.push_str(&text_line(&source, f));
                out.push('\n');
                if snippets {
                    out.push_str(&snippet(&source, f));
                    out.push('\n');
                }
            }
            if let Some(e) = &error {
                out.push_str(&format!("error: {e}\n"));
            }
            let _ = std::io::stderr().lock().write_all(out.as_bytes());
        }
        Format::Json => {
            let doc = JsonReport {
                file: source.name(),
                findings: report
                    .findings
                    .iter()
                    .map(|f| JsonFinding {
                        rule: f.rule,
                        message: &f.message,
                        description: f.description,
                        url: f.url,
                        file: source.name(),
                        start_line: f.start_line,
                        end_line: f.end_line,
                    })
                    .collect(),
                error: error.clone(),
            };
            let mut json = serde_json::to_string_pretty(&doc)?;
            json.push('\n');
            match std::io::stdout().lock().write_all(json.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
    }
    Ok(if error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `Dockerfile:LINE: RuleName: message`.
pub fn text_line(source: &SourceFile, f: &Finding) -> String {
    format!("{}:{}: {}: {}", source.name(), f.line(), f.rule, f.message)
}

/// The finding's first line with a caret underline (the rendered diagnostic minus its header).
fn snippet(source: &SourceFile, f: &Finding) -> String {
    let d = Diagnostic {
        severity: Severity::Warning,
        message: String::new(),
        span: Some(f.span),
    };
    let rendered = d.render(source);
    rendered
        .split_once('\n')
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default()
}
