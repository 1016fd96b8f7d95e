//! `kiln check`: golden fixtures (fixtures/check/<Rule>/[case/]{Dockerfile,.dockerignore,
//! expected.txt,exit_code}) run through the binary, the JSON format, exit codes, and a sweep over
//! BuildKit's parser corpus. `KILN_BLESS=1` rewrites expected files.
//!
//! Expectations follow BuildKit's own lint tests (frontend/dockerfile/dockerfile_lint_test.go):
//! same Dockerfiles, same messages, same lines; findings are sorted by line, then message.

use kiln::diag::SourceFile;
use kiln::dockerfile::lint::{self, LintOptions};
use kiln::dockerfile::parse_dockerfile;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/check")
}

fn fixture_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    if dir.join("Dockerfile").is_file() {
        out.push(dir.to_path_buf());
    }
    for e in entries.into_iter().filter(|e| e.is_dir()) {
        fixture_dirs(&e, out);
    }
}

fn check_in(dir: &Path, args: &[&str]) -> Output {
    kiln()
        .arg("check")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run kiln")
}

#[test]
fn golden_fixtures() {
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut dirs = Vec::new();
    fixture_dirs(&fixtures(), &mut dirs);
    assert!(dirs.len() >= 40, "found only {} fixtures", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        let out = check_in(dir, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or(-1);
        let expected_path = dir.join("expected.txt");
        let code_path = dir.join("exit_code");
        if bless {
            std::fs::write(&expected_path, &stderr).expect("write expected.txt");
            if code == 0 {
                let _ = std::fs::remove_file(&code_path);
            } else {
                std::fs::write(&code_path, format!("{code}\n")).expect("write exit_code");
            }
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        let expected_code: i32 = std::fs::read_to_string(&code_path)
            .map(|s| s.trim().parse().expect("exit_code is a number"))
            .unwrap_or(0);
        if stderr != expected || code != expected_code {
            failures.push(format!(
                "{}:\n--- expected (exit {expected_code})\n{expected}--- got (exit {code})\n{stderr}",
                dir.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every rule has a fixture that reports it and one that does not.
#[test]
fn every_rule_has_positive_and_negative_fixtures() {
    for rule in lint::RULES {
        let dir = fixtures().join(rule.name);
        let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap_or_default();
        assert!(
            expected.contains(&format!(": {}: ", rule.name)),
            "no positive fixture for {}",
            rule.name
        );
        let ok = std::fs::read_to_string(dir.join("ok/expected.txt"))
            .unwrap_or_else(|_| panic!("no negative fixture for {}", rule.name));
        assert!(
            !ok.contains(&format!(": {}: ", rule.name)),
            "{}/ok reports the rule",
            rule.name
        );
    }
}

#[test]
fn json_format_lists_findings_on_stdout() {
    let out = check_in(
        &fixtures().join("LegacyKeyValueFormat"),
        &["--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["file"], "Dockerfile");
    assert!(doc["error"].is_null());
    let findings = doc["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), 2);
    let f = &findings[0];
    assert_eq!(f["rule"], "LegacyKeyValueFormat");
    assert_eq!(
        f["message"],
        "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format"
    );
    assert_eq!(
        f["description"],
        "Legacy key/value format with whitespace separator should not be used"
    );
    assert_eq!(
        f["url"],
        "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/"
    );
    assert_eq!(f["file"], "Dockerfile");
    assert_eq!(f["start_line"], 3);
    assert_eq!(f["end_line"], 3);
    assert_eq!(findings[1]["start_line"], 4);

    let out = check_in(
        &fixtures().join("directives/skip-one-error"),
        &["--format", "json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["error"], "lint violation found for rules: FromAsCasing");
}

#[test]
fn exit_codes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // Warnings only: 0.
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nMAINTAINER me\n").expect("write");
    let out = check_in(dir, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Dockerfile:2: MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label\n"
    );
    assert!(out.stdout.is_empty());
    // error=true with findings: 1; without findings: 0.
    std::fs::write(
        dir.join("Dockerfile"),
        "# check=error=true\nFROM scratch\nMAINTAINER me\n",
    )
    .expect("write");
    assert_eq!(check_in(dir, &[]).status.code(), Some(1));
    std::fs::write(dir.join("Dockerfile"), "# check=error=true\nFROM scratch\n").expect("write");
    assert_eq!(check_in(dir, &[]).status.code(), Some(0));
    // A parse error: 1, rendered with file:line:col and a caret.
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nRUNN x\n").expect("write");
    let out = check_in(dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: Dockerfile:2:1: unknown instruction: RUNN (did you mean RUN?)"),
        "{err}"
    );
    assert!(err.contains("2 | RUNN x\n  | ^^^^"), "{err}");
    // -f with another name: findings name that file.
    std::fs::write(dir.join("app.Dockerfile"), "FROM scratch\nCMD run\n").expect("write");
    let out = check_in(dir, &["-f", "app.Dockerfile"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("app.Dockerfile:2: JSONArgsRecommended: ")
    );
    // A missing Dockerfile: 1; usage errors: 2.
    assert_eq!(check_in(dir, &["-f", "nope"]).status.code(), Some(1));
    assert_eq!(check_in(dir, &["--format", "yaml"]).status.code(), Some(2));
    assert_eq!(check_in(dir, &["--bogus"]).status.code(), Some(2));
}

#[test]
fn context_dockerignore_next_to_dockerfile_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(
        dir.join("app.Dockerfile"),
        "# check=experimental=CopyIgnoredFile\nFROM scratch\nCOPY a b ./\n",
    )
    .expect("write");
    std::fs::write(dir.join(".dockerignore"), "a\n").expect("write");
    std::fs::write(dir.join("app.Dockerfile.dockerignore"), "b\n").expect("write");
    let out = check_in(dir, &["-f", "app.Dockerfile", "."]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "app.Dockerfile:3: CopyIgnoredFile: Attempting to Copy file \"b\" that is excluded by .dockerignore\n"
    );
}

/// The corpus directory of BuildKit's parser test files, if present.
fn corpus() -> Option<PathBuf> {
    let dir = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/buildkit"),
    };
    if dir.join("parser").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "\n*** SKIPPED: BuildKit conformance corpus not found at {}; set KILN_CONFORMANCE_DIR ***\n",
            dir.display()
        );
        None
    }
}

#[test]
fn conformance_corpus_checks_without_panicking() {
    let Some(dir) = corpus() else { return };
    let mut files = Vec::new();
    collect_dockerfiles(&dir.join("parser"), &mut files);
    assert!(files.len() >= 30, "corpus has {} Dockerfiles", files.len());
    let mut linted = 0;
    let mut total = 0;
    for path in &files {
        let bytes = std::fs::read(path).expect("read corpus file");
        let Ok(source) = SourceFile::from_bytes("Dockerfile", bytes) else {
            continue;
        };
        let Ok(df) = parse_dockerfile(&source) else {
            continue;
        };
        linted += 1;
        let findings = lint::lint(&source, &df, &LintOptions::default());
        for f in &findings {
            assert!(
                f.start_line >= 1
                    && f.start_line <= f.end_line
                    && f.end_line <= source.line_count(),
                "{}: {f:?}",
                path.display()
            );
            total += 1;
        }
        // The binary prints the same findings, one `Dockerfile:LINE: Rule: message` each.
        let out = kiln()
            .args(["check", "-f"])
            .arg(path)
            .arg(path.parent().expect("parent"))
            .output()
            .expect("run kiln");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("error: "))
            .collect();
        assert_eq!(lines.len(), findings.len(), "{}:\n{stderr}", path.display());
        for (line, f) in lines.iter().zip(&findings) {
            let expected = format!("{}:{}: {}: {}", path.display(), f.line(), f.rule, f.message);
            assert_eq!(*line, expected);
        }
    }
    assert!(linted >= 25, "only {linted} corpus files parsed");
    assert!(total > 0, "the corpus should produce some findings");
}

fn collect_dockerfiles(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read corpus dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect_dockerfiles(&e, out);
        } else if e.file_name().is_some_and(|n| n == "Dockerfile") {
            out.push(e);
        }
    }
}
