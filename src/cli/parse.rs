//! `kiln parse`: the parsed Dockerfile as JSON, or BuildKit's AST dump (`--dump`).

use crate::dockerfile::{dump::dump, parse_dockerfile, parser};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// The Dockerfile to read (`-` for stdin)
    #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
    file: PathBuf,
    /// Print BuildKit's AST dump format instead of JSON, to diff against BuildKit
    #[arg(long)]
    dump: bool,
}

pub fn run(args: ParseArgs) -> anyhow::Result<ExitCode> {
    let source = super::read_dockerfile(&args.file)?;
    let output = if args.dump {
        match parser::parse(&source) {
            Ok(ast) => dump(&ast),
            Err(err) => {
                eprintln!("error: {}", err.render(&source));
                return Ok(ExitCode::FAILURE);
            }
        }
    } else {
        match parse_dockerfile(&source) {
            Ok(df) => {
                let mut json = serde_json::to_string_pretty(&df)?;
                json.push('\n');
                json
            }
            Err(err) => {
                eprintln!("error: {}", err.render(&source));
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`kiln parse | head`) is not an error worth reporting.
    match stdout.write_all(output.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => {
            other?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
