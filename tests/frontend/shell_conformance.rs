//! BuildKit's own shell-lexer golden cases (`shell/envVarTest`, `shell/wordsTest`), read from the
//! conformance corpus beside the clone, plus kiln's own cases in `fixtures/shell/`.

use std::path::PathBuf;

use kiln::dockerfile::shell::{env_from_strings, Lexer};

fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/buildkit"),
    };
    if dir.join("shell").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: BuildKit conformance corpus not found at {} (set KILN_CONFORMANCE_DIR); \
             only fixtures/shell cases ran",
            dir.display()
        );
        None
    }
}

/// `PLATFORM | input | expected` lines; `W` (Windows) lines are skipped.
fn run_env_var_cases(text: &str, origin: &str) -> usize {
    let env = env_from_strings(&["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="]);
    let lexer = Lexer::new('\\');
    let mut failures = Vec::new();
    let mut count = 0;
    for (n, raw) in text.lines().enumerate() {
        if raw.starts_with('#') {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(
            fields.len(),
            3,
            "{origin}:{}: malformed case {raw:?}",
            n + 1
        );
        let (platform, source, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        if platform == "W" {
            continue;
        }
        assert!(
            platform == "A" || platform == "U",
            "{origin}:{}: bad platform",
            n + 1
        );
        count += 1;
        let got = lexer.process_word(source, &env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(p), exp) => exp != "error" && p.result == exp,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{origin}:{}: {source:?} → {got:?}, want {expected:?}",
                n + 1
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    count
}

/// `input | w1,w2` lines; `ENV k=v` lines extend the environment.
fn run_words_cases(text: &str, origin: &str) -> usize {
    let lexer = Lexer::new('\\');
    let mut env: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    let mut count = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            env.push(rest.trim_start_matches(' ').to_string());
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(
            fields.len(),
            2,
            "{origin}:{}: malformed case {raw:?}",
            n + 1
        );
        let input = fields[0].trim();
        let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
        count += 1;
        let got = match lexer.process_words(input, &env_from_strings(&env)) {
            Ok(words) => words,
            Err(_) => vec!["error".to_string()],
        };
        if got != expected {
            failures.push(format!(
                "{origin}:{}: {input:?} → {got:?}, want {expected:?}",
                n + 1
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    count
}

#[test]
fn buildkit_env_var_test() {
    let Some(dir) = corpus_dir() else { return };
    let path = dir.join("shell/envVarTest");
    let text = std::fs::read_to_string(&path).expect("read envVarTest");
    let n = run_env_var_cases(&text, "envVarTest");
    assert!(n > 200, "only {n} cases ran");
}

#[test]
fn buildkit_words_test() {
    let Some(dir) = corpus_dir() else { return };
    let text = std::fs::read_to_string(dir.join("shell/wordsTest")).expect("read wordsTest");
    let n = run_words_cases(&text, "wordsTest");
    assert!(n > 20, "only {n} cases ran");
}

#[test]
fn kiln_expansion_fixtures() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/shell");
    let text =
        std::fs::read_to_string(base.join("expansion.txt")).expect("fixtures/shell/expansion.txt");
    assert!(run_env_var_cases(&text, "expansion.txt") > 40);
    let text = std::fs::read_to_string(base.join("words.txt")).expect("fixtures/shell/words.txt");
    assert!(run_words_cases(&text, "words.txt") > 10);
}
