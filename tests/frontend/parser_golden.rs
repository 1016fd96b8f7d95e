//! kiln's own parser golden tests: each `fixtures/parser/<case>/` holds a `Dockerfile` and the
//! expected `dump` (BuildKit's AST dump format), `typed` (one line per typed instruction with its
//! span), or `error` (`line:col: message`). Run with `KILN_BLESS=1` to rewrite the expectations,
//! then review the diff: a golden file is only as good as its review.

use kiln::diag::SourceFile;
use kiln::dockerfile::{dump::dump, parse_dockerfile, parser::parse, Dockerfile, Instruction};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn typed_summary(df: &Dockerfile) -> String {
    let mut out = String::new();
    let line = |out: &mut String, i: &Instruction| {
        let s = i.span;
        let json = serde_json::to_value(&i.command).expect("serialisable");
        let _ = writeln!(
            out,
            "{}:{}-{}:{} {}",
            s.start_pos.line, s.start_pos.column, s.end_pos.line, s.end_pos.column, json
        );
    };
    for d in &df.directives {
        let _ = writeln!(out, "directive {}={}", d.name, d.value);
    }
    let _ = writeln!(out, "escape {}", df.escape);
    for w in &df.warnings {
        let _ = writeln!(
            out,
            "warning {}:{} {}",
            w.span.start_pos.line, w.rule, w.message
        );
    }
    for a in &df.meta_args {
        line(&mut out, a);
    }
    for stage in &df.stages {
        let _ = writeln!(out, "stage {} {:?}", stage.index, stage.name);
        line(&mut out, &stage.from);
        for i in &stage.instructions {
            line(&mut out, i);
        }
    }
    out
}

fn check(dir: &Path, file: &str, actual: String, failures: &mut Vec<String>) {
    let path = dir.join(file);
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{}:\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        ));
    }
}

#[test]
fn parser_golden_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/parser");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures/parser")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected at least 10 golden cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for dir in &cases {
        let bytes = std::fs::read(dir.join("Dockerfile")).expect("read Dockerfile");
        let source = SourceFile::from_bytes("Dockerfile", bytes).expect("fixture is UTF-8");
        match parse_dockerfile(&source) {
            Ok(df) => {
                let ast = parse(&source).expect("raw parse succeeds when typed parse does");
                check(dir, "dump", dump(&ast), &mut failures);
                check(dir, "typed", typed_summary(&df), &mut failures);
            }
            Err(e) => {
                let msg = format!(
                    "{}:{}: {}\n",
                    e.span.start_pos.line, e.span.start_pos.column, e.message
                );
                check(dir, "error", msg, &mut failures);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
