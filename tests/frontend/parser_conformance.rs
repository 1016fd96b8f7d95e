//! BuildKit's own parser golden cases (../shared/conformance/buildkit/parser): every `testfiles`
//! case must dump exactly as BuildKit's `result`, every `testfiles-negative` case must fail, and
//! `testfile-line` must give BuildKit's line ranges.

use kiln::diag::SourceFile;
use kiln::dockerfile::{dump::dump, parser::parse};
use std::path::PathBuf;

/// The corpus directory, or `None` with a loud message when it is absent.
fn corpus() -> Option<PathBuf> {
    let dir = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/buildkit"),
    };
    if dir.join("parser").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "\n*** SKIPPED: BuildKit conformance corpus not found at {}; set KILN_CONFORMANCE_DIR. \
             kiln's own golden tests (tests/parser_golden.rs) still ran. ***\n",
            dir.display()
        );
        None
    }
}

fn read(path: &std::path::Path) -> SourceFile {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    SourceFile::from_bytes(path.display().to_string(), bytes).expect("corpus is UTF-8")
}

#[test]
fn testfiles_dump_like_buildkit() {
    let Some(dir) = corpus() else { return };
    let mut cases: Vec<_> = std::fs::read_dir(dir.join("parser/testfiles"))
        .expect("read testfiles")
        .map(|e| e.expect("entry").path())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 33, "the corpus has 33 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let source = read(&case.join("Dockerfile"));
        let expected = std::fs::read_to_string(case.join("result")).expect("result");
        match parse(&source) {
            Ok(ast) => {
                let got = dump(&ast);
                if got.trim_end() != expected.trim_end() {
                    failures.push(format!(
                        "{}:\n--- expected\n{expected}\n--- got\n{got}",
                        case.display()
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {}", case.display(), e.render(&source))),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn negative_testfiles_fail() {
    let Some(dir) = corpus() else { return };
    let cases: Vec<_> = std::fs::read_dir(dir.join("parser/testfiles-negative"))
        .expect("read testfiles-negative")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(cases.len() >= 4);
    for case in cases {
        let source = read(&case.join("Dockerfile"));
        let result = parse(&source);
        assert!(result.is_err(), "{} should fail to parse", case.display());
    }
}

#[test]
fn testfile_line_ranges() {
    let Some(dir) = corpus() else { return };
    let source = read(&dir.join("parser/testfile-line/Dockerfile"));
    let ast = parse(&source).expect("parses");
    let ranges: Vec<(usize, usize)> = ast
        .nodes
        .iter()
        .map(|n| (n.span.start_pos.line, n.span.end_pos.line))
        .collect();
    assert_eq!(ranges, vec![(5, 5), (11, 12), (17, 31)]);
}
