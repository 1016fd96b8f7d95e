//! `.dockerignore` conformance: golden cases in `fixtures/dockerignore/` (see its README) ported
//! from moby/patternmatcher's tests plus kiln's own, the `<Dockerfile>.dockerignore` precedence,
//! and walking a context.

use kiln::context::ignore::{
    load_ignore_patterns, read_ignore_file, IgnoreError, MatchInfo, PatternMatcher,
};
use kiln::context::walk::{walk_context, EntryKind, WalkEntry};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dockerignore")
}

/// patternmatcher_test.go's way of checking `MatchesUsingParentResults`: feed every parent
/// directory (split after Go's `filepath.Dir`) first.
fn via_parent_results(pm: &PatternMatcher, text: &str) -> bool {
    let parent = match text.rfind('/') {
        Some(i) => {
            let d = text[..i].trim_end_matches('/');
            if d.is_empty() {
                "/".to_string()
            } else {
                d.to_string()
            }
        }
        None => ".".to_string(),
    };
    let mut info = MatchInfo::default();
    if parent != "." {
        let dirs: Vec<&str> = parent.split('/').collect();
        for i in 0..dirs.len() {
            info = pm
                .matches_using_parent_results(dirs[..=i].join("/"), &info)
                .1;
        }
    }
    pm.matches_using_parent_results(text, &info).0
}

#[test]
fn patternmatcher_table() {
    let table = fs::read_to_string(fixtures().join("patternmatcher_table.tsv")).expect("table");
    let mut failures = Vec::new();
    let mut rows = 0;
    for (n, line) in table.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        rows += 1;
        let mut fields = line.split('\t');
        let expect = fields.next().unwrap_or_default();
        let text = fields.next().unwrap_or_default();
        let patterns: Vec<&str> = fields.collect();
        let at = format!("line {}: patterns={patterns:?} text={text:?}", n + 1);
        let pm = match (PatternMatcher::new(&patterns), expect) {
            (Err(_), "error") => continue,
            (Ok(_), "error") => {
                failures.push(format!("{at}: expected an error"));
                continue;
            }
            (Err(e), _) => {
                failures.push(format!("{at}: unexpected error {e}"));
                continue;
            }
            (Ok(pm), _) => pm,
        };
        let mut check = |what: &str, got: bool, want: bool| {
            if got != want {
                failures.push(format!("{at}: {what} = {got}, want {want}"));
            }
        };
        match expect {
            "exact" | "inexact" | "fail" => {
                let want = expect != "fail";
                check(
                    "matches_or_parent_matches",
                    pm.matches_or_parent_matches(text),
                    want,
                );
                check(
                    "matches_using_parent_results",
                    via_parent_results(&pm, text),
                    want,
                );
                check(
                    "matches_using_parent_results(no context)",
                    pm.matches_using_parent_results(text, &MatchInfo::default())
                        .0,
                    want,
                );
                // Go checks MatchesExact only for the single-pattern rows.
                if patterns.len() == 1 {
                    check("matches_exact", pm.matches_exact(text), expect == "exact");
                }
            }
            "match" | "nomatch" => check("matches", pm.matches(text), expect == "match"),
            other => failures.push(format!("{at}: unknown expectation {other:?}")),
        }
    }
    assert!(rows > 150, "table has only {rows} rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A case file's sections: name → raw bytes of the body.
fn sections(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let header = text.trim_end_matches(['\n', '\r']);
        if header.starts_with('[') && header.ends_with(']') && !header.contains(' ') {
            let name = header[1..header.len() - 1].to_string();
            if matches!(
                name.as_str(),
                "dockerignore" | "patterns" | "excluded" | "included" | "error" | "tree" | "walk"
            ) {
                out.entry(name.clone()).or_default();
                current = Some(name);
                continue;
            }
        }
        if let Some(name) = &current {
            out.entry(name.clone()).or_default().extend_from_slice(line);
        }
    }
    out
}

/// The lines of a section, without comments and blank lines.
fn lines(sections: &BTreeMap<String, Vec<u8>>, name: &str) -> Vec<String> {
    sections
        .get(name)
        .map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect()
        })
        .unwrap_or_default()
}

fn case_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(fixtures().join(dir))
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    files.sort();
    files
}

#[test]
fn golden_cases() {
    let mut failures = Vec::new();
    let files = case_files("cases");
    assert!(files.len() >= 10);
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let s = sections(&fs::read(&file).expect("case file"));
        let patterns = read_ignore_file(s.get("dockerignore").map(Vec::as_slice).unwrap_or(&[]));
        if s.contains_key("patterns") {
            let want = s
                .get("patterns")
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .lines()
                        .map(|l| l.trim_end_matches('\r').to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            if patterns != want {
                failures.push(format!("{name}: read {patterns:?}, want {want:?}"));
            }
        }
        let pm = PatternMatcher::new(&patterns);
        if let Some(err) = lines(&s, "error").first() {
            match pm {
                Ok(_) => failures.push(format!("{name}: expected error {err:?}")),
                Err(e) if e.to_string().contains(err.as_str()) => {}
                Err(e) => failures.push(format!("{name}: error {e}, want {err:?}")),
            }
            continue;
        }
        let pm = match pm {
            Ok(pm) => pm,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        for (section, want) in [("excluded", true), ("included", false)] {
            for path in lines(&s, section) {
                if pm.matches(&path) != want {
                    failures.push(format!("{name}: {path:?} should be {section}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn kind_letter(e: &WalkEntry) -> &'static str {
    match e.kind {
        EntryKind::Dir => "d",
        EntryKind::File => "f",
        EntryKind::Symlink => "l",
        EntryKind::Other => "o",
    }
}

#[test]
fn walk_cases() {
    let mut failures = Vec::new();
    for file in case_files("walk") {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let s = sections(&fs::read(&file).expect("case file"));
        let tmp = tempfile::tempdir().expect("tempdir");
        for line in lines(&s, "tree") {
            let (kind, rest) = line.split_once(' ').expect("tree line: kind path");
            let path = tmp.path().join(rest.split(" -> ").next().unwrap_or(rest));
            match kind {
                "d" => fs::create_dir_all(&path).expect("mkdir"),
                "f" => fs::write(&path, rest).expect("write"),
                "l" => {
                    let target = rest.split(" -> ").nth(1).expect("link target");
                    std::os::unix::fs::symlink(target, &path).expect("symlink");
                }
                other => panic!("{name}: unknown tree kind {other}"),
            }
        }
        let patterns = read_ignore_file(s.get("dockerignore").map(Vec::as_slice).unwrap_or(&[]));
        let pm = PatternMatcher::new(&patterns).expect("patterns");
        let got: Vec<String> = walk_context(tmp.path(), Some(&pm))
            .expect("walk")
            .iter()
            .map(|e| format!("{} {}", kind_letter(e), e.path.display()))
            .collect();
        let want = lines(&s, "walk");
        if got != want {
            failures.push(format!("{name}:\n got {got:?}\nwant {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn walk_without_matcher_reports_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::create_dir(tmp.path().join("d")).expect("mkdir");
    fs::write(tmp.path().join("d/f"), "x").expect("write");
    let entries = walk_context(tmp.path(), None).expect("walk");
    let got: Vec<(&str, EntryKind)> = entries
        .iter()
        .map(|e| (e.path.to_str().expect("UTF-8"), e.kind))
        .collect();
    assert_eq!(got, vec![("d", EntryKind::Dir), ("d/f", EntryKind::File)]);
    assert_eq!(entries[1].fs_path, tmp.path().join("d/f"));
}

#[test]
fn walk_does_not_follow_symlinked_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    fs::write(outside.path().join("secret"), "x").expect("write");
    std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).expect("symlink");
    let entries = walk_context(tmp.path(), None).expect("walk");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, "link");
    assert_eq!(entries[0].kind, EntryKind::Symlink);
}

#[test]
fn walk_error_names_the_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing");
    let err = walk_context(&missing, None).expect_err("missing root");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let ctx = tempfile::tempdir().expect("tempdir");
    fs::create_dir(ctx.path().join("build")).expect("mkdir");
    let dockerfile = ctx.path().join("build/app.Dockerfile");
    fs::write(&dockerfile, "FROM scratch\n").expect("write");
    fs::write(ctx.path().join(".dockerignore"), "root-rule\n").expect("write");

    // Only the root file.
    let (patterns, from) = load_ignore_patterns(ctx.path(), Some(&dockerfile)).expect("load");
    assert_eq!(patterns, vec!["root-rule"]);
    assert_eq!(from, Some(ctx.path().join(".dockerignore")));

    // <Dockerfile>.dockerignore next to the Dockerfile takes precedence.
    let specific = ctx.path().join("build/app.Dockerfile.dockerignore");
    fs::write(&specific, "/specific\n!keep\n").expect("write");
    let (patterns, from) = load_ignore_patterns(ctx.path(), Some(&dockerfile)).expect("load");
    assert_eq!(patterns, vec!["specific", "!keep"]);
    assert_eq!(from, Some(specific.clone()));

    // Without a Dockerfile path only the root file counts.
    let (patterns, _) = load_ignore_patterns(ctx.path(), None).expect("load");
    assert_eq!(patterns, vec!["root-rule"]);

    // A .dockerignore in the Dockerfile's directory (not named after it) is not used.
    fs::remove_file(&specific).expect("rm");
    fs::remove_file(ctx.path().join(".dockerignore")).expect("rm");
    fs::write(ctx.path().join("build/.dockerignore"), "nope\n").expect("write");
    let (patterns, from) = load_ignore_patterns(ctx.path(), Some(&dockerfile)).expect("load");
    assert!(patterns.is_empty());
    assert_eq!(from, None);
}

#[test]
fn unreadable_ignore_file_error_names_the_path() {
    let ctx = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be: reading it fails with something other than
    // NotFound.
    fs::create_dir(ctx.path().join(".dockerignore")).expect("mkdir");
    let err = load_ignore_patterns(ctx.path(), None).expect_err("unreadable");
    assert!(matches!(err, IgnoreError::Read { .. }));
    assert!(
        err.to_string()
            .contains(&ctx.path().join(".dockerignore").display().to_string()),
        "{err}"
    );
}

#[test]
fn loaded_patterns_drive_the_walk() {
    let ctx = tempfile::tempdir().expect("tempdir");
    fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").expect("write");
    fs::write(
        ctx.path().join("Dockerfile.dockerignore"),
        "\u{feff}# only the app\r\n*\r\n!app\r\n!Dockerfile\r\n",
    )
    .expect("write");
    fs::create_dir(ctx.path().join("app")).expect("mkdir");
    fs::write(ctx.path().join("app/main.rs"), "").expect("write");
    fs::create_dir(ctx.path().join("target")).expect("mkdir");
    fs::write(ctx.path().join("target/big"), "").expect("write");
    let (patterns, _) =
        load_ignore_patterns(ctx.path(), Some(&ctx.path().join("Dockerfile"))).expect("load");
    let pm = PatternMatcher::new(&patterns).expect("patterns");
    let got: Vec<String> = walk_context(ctx.path(), Some(&pm))
        .expect("walk")
        .into_iter()
        .map(|e| e.path.to_string_lossy().into_owned())
        .collect();
    assert_eq!(got, vec!["Dockerfile", "app", "app/main.rs"]);
}
