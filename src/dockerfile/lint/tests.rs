use super::*;
use crate::dockerfile::parse_dockerfile;

fn run(text: &str) -> Vec<(usize, String, String)> {
    let src = SourceFile::new("Dockerfile", text);
    let df = parse_dockerfile(&src).unwrap();
    lint(&src, &df, &LintOptions::default())
        .into_iter()
        .map(|f| (f.line(), f.rule.to_string(), f.message))
        .collect()
}

#[test]
fn check_directive_parses_like_buildkit() {
    let c = CheckConfig::parse("skip=A, B ;error=true").unwrap();
    assert_eq!(c.skip, vec!["A", "B"]);
    assert!(c.error);
    assert!(CheckConfig::parse("skip=all").unwrap().skip_all);
    assert!(CheckConfig::parse("").unwrap() == CheckConfig::default());
    assert_eq!(
        CheckConfig::parse("foo").unwrap_err().to_string(),
        "invalid check option \"foo\""
    );
    assert_eq!(
        CheckConfig::parse("bogus=1").unwrap_err().to_string(),
        "invalid check option \"bogus\""
    );
    assert_eq!(
        CheckConfig::parse("error=maybe").unwrap_err().to_string(),
        "failed to parse check option \"error=maybe\": strconv.ParseBool: parsing \"maybe\": invalid syntax"
    );
    // More than three parts: the third keeps the rest, as strings.SplitN does.
    assert_eq!(
        CheckConfig::parse("skip=A;error=1;skip=B;x").unwrap().skip,
        vec!["B;x"]
    );
    let c = CheckConfig::parse("experimental=all").unwrap();
    assert!(c.experimental_all);
}

#[test]
fn experimental_rules_ignore_skip() {
    let mut c = CheckConfig::parse("skip=all;experimental=CopyIgnoredFile").unwrap();
    assert!(c.enabled(&rules::COPY_IGNORED_FILE));
    assert!(!c.enabled(&rules::STAGE_NAME_CASING));
    c.experimental.clear();
    assert!(!c.enabled(&rules::COPY_IGNORED_FILE));
}

#[test]
fn suggest_matches_buildkit() {
    assert_eq!(
        suggest("BULIDPLATFORM", ["BUILDPLATFORM", "TARGETOS"], true).as_deref(),
        Some("BUILDPLATFORM")
    );
    assert_eq!(suggest("PAHT", ["PATH"], true).as_deref(), Some("PATH"));
    assert_eq!(suggest("x", ["PATH"], true), None);
    assert_eq!(suggest("PATH", ["PATH", "PATx"], true), None);
}

#[test]
fn stage_rules() {
    let f = run("FROM scratch AS BadStageName\nFROM scratch as base2\nFROM scratch AS base3\n");
    assert_eq!(
        f,
        vec![
            (
                1,
                "StageNameCasing".into(),
                "Stage name 'BadStageName' should be lowercase".into()
            ),
            (
                2,
                "FromAsCasing".into(),
                "'as' and 'FROM' keywords' casing do not match".into()
            ),
        ]
    );
}

#[test]
fn registry_has_every_rule() {
    assert_eq!(RULES.len(), 20);
    assert!(rule("UndefinedVar").is_some());
    assert!(rule("CopyIgnoredFile").is_some_and(|r| r.experimental));
}

#[test]
fn error_message_lists_rules() {
    let src = SourceFile::new(
        "Dockerfile",
        "# check=error=true\nFROM scratch as base\ncopy a b\n",
    );
    let df = parse_dockerfile(&src).unwrap();
    let report = check(&src, &df, &LintOptions::default()).unwrap();
    assert_eq!(
        report.error().as_deref(),
        Some("lint violation found for rules: ConsistentInstructionCasing, FromAsCasing")
    );
}

#[test]
fn onbuild_triggers_run_in_the_child_stage_at_its_from() {
    let f = run("FROM scratch AS base\nONBUILD CMD run\n\nFROM base\nFROM base\n");
    let json: Vec<_> = f
        .iter()
        .filter(|(_, r, _)| r == "JSONArgsRecommended")
        .map(|(l, _, _)| *l)
        .collect();
    assert_eq!(json, vec![4, 5]);
}

#[test]
fn stage_state_is_inherited_but_trackers_are_not() {
    let f = run("FROM scratch AS a\nSHELL [\"/bin/bash\", \"-c\"]\nWORKDIR /x\nCMD [\"a\"]\nFROM a\nCMD b\nWORKDIR y\n");
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn copy_from_another_stage_is_not_checked_against_dockerignore() {
    struct All;
    impl IgnoreChecker for All {
        fn is_ignored(&self, _: &str) -> bool {
            true
        }
    }
    let text = "# check=experimental=CopyIgnoredFile\nFROM scratch AS a\nCOPY --from=a /x /y\nCOPY . /\nADD https://example.com/a /a\nCOPY ./a/../b /\n";
    let src = SourceFile::new("Dockerfile", text);
    let df = parse_dockerfile(&src).unwrap();
    let opts = LintOptions {
        config: None,
        ignore: Some(&All),
    };
    let f: Vec<_> = lint(&src, &df, &opts)
        .into_iter()
        .map(|f| (f.line(), f.message))
        .collect();
    assert_eq!(
        f,
        vec![(
            6,
            "Attempting to Copy file \"b\" that is excluded by .dockerignore".to_string()
        )]
    );
}
