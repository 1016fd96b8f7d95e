//! Broken Dockerfiles: each must be an error (never a panic) that names a sensible line and column
//! and renders as `Dockerfile:LINE:COL: message` with the source line and a caret under it.
//!
//! Where BuildKit accepts something that looks broken, the case lives in `ACCEPTED` instead, so the
//! table also pins down what is *not* an error (invalid JSON in RUN/CMD falls back to shell form,
//! `CMD <<EOF` is no heredoc, `STOPSIGNAL a b` is checked only when the build runs, ...).

use kiln::diag::{Position, SourceFile};
use kiln::dockerfile::{parse_dockerfile, parser};

/// (name, Dockerfile, expected line of the error, text the message must contain).
const MALFORMED: &[(&str, &str, usize, &str)] = &[
    // --- the line parser and directives
    ("unknown_instruction", "FROM a\nFOO bar\n", 2, "unknown instruction: FOO"),
    ("unknown_instruction_lowercase", "FROM a\n\nfrob x\n", 3, "unknown instruction"),
    ("unknown_instruction_in_onbuild", "FROM a\nONBUILD FOO x\n", 2, "FOO"),
    ("unknown_instruction_crlf", "FROM a\r\nFOO x\r\n", 2, "unknown instruction: FOO"),
    ("cmd_heredoc_is_not_a_heredoc", "FROM a\nCMD <<EOF\necho hi\nEOF\n", 3, "unknown instruction"),
    ("escape_directive_x", "# escape=x\nFROM a\n", 1, "invalid escape token 'x'"),
    ("escape_directive_two_chars", "# escape=``\nFROM a\n", 1, "invalid escape token"),
    ("duplicate_escape_directive", "# escape=`\n# escape=`\nFROM a\n", 2, "only one escape"),
    ("duplicate_syntax_directive", "# syntax=a\n# SYNTAX=b\nFROM a\n", 2, "only one syntax"),
    ("duplicate_check_directive", "# check=skip=all\n# check=error=true\nFROM a\n", 2, "only one check"),
    ("nul_byte", "FROM a\nRUN a\0b\n", 2, "NUL byte"),
    ("nul_byte_first_line", "\0FROM a\n", 1, "NUL byte"),
    ("nul_byte_in_heredoc", "FROM a\nRUN <<EOF\nx\0\nEOF\n", 3, "NUL byte"),
    ("empty_file", "", 1, "no instructions"),
    ("only_comments", "# hello\n# there\n", 2, "no instructions"),
    ("only_blank_lines", "\n\n\n", 3, "no instructions"),
    ("only_directive", "# syntax=docker/dockerfile:1\n", 1, "no instructions"),
    ("only_bom", "\u{feff}", 1, "no instructions"),
    ("only_continuation", "\\\n", 1, "unknown instruction"),
    // --- heredocs (RUN/COPY/ADD in shell form only)
    ("heredoc_unterminated_run", "FROM a\nRUN <<EOF\necho hi\n", 2, "unterminated heredoc"),
    ("heredoc_unterminated_copy", "FROM a\nCOPY <<EOF /x\nhi\n", 2, "unterminated heredoc"),
    ("heredoc_unterminated_add", "FROM a\nADD <<EOF /x\nhi\n", 2, "unterminated heredoc"),
    ("heredoc_second_unterminated", "FROM a\nRUN <<A <<B\na\nA\nb\n", 2, "unterminated heredoc"),
    ("heredoc_unterminated_chomp", "FROM a\nRUN <<-EOF\n\techo\n  EOF\n", 2, "unterminated heredoc"),
    ("heredoc_unterminated_onbuild", "FROM a\nONBUILD RUN <<EOF\nx\n", 2, "unterminated heredoc"),
    // --- FROM and stages
    ("from_missing_image", "FROM\n", 1, "FROM requires"),
    ("from_as_without_name", "FROM a AS\n", 1, "FROM requires"),
    ("from_two_words", "FROM a b\n", 1, "FROM requires"),
    ("from_bad_as_keyword", "FROM a b c\n", 1, "FROM requires"),
    ("from_bad_stage_name", "FROM a AS Bad!Name\n", 1, "invalid name for build stage"),
    ("from_unknown_flag", "FROM --foo=bar a\n", 1, "unknown flag: --foo"),
    ("run_before_from", "RUN x\nFROM a\n", 1, "no build stage"),
    ("env_before_from", "ARG x\nENV a=b\nFROM a\n", 2, "no build stage"),
    ("copy_before_from", "# c\n\nCOPY a b\n", 3, "no build stage"),
    // --- ONBUILD
    ("onbuild_from", "FROM a\nONBUILD FROM b\n", 2, "FROM isn't allowed as an ONBUILD trigger"),
    ("onbuild_maintainer", "FROM a\nONBUILD MAINTAINER x\n", 2, "MAINTAINER isn't allowed"),
    ("onbuild_onbuild", "FROM a\nONBUILD ONBUILD RUN x\n", 2, "Chaining ONBUILD"),
    ("onbuild_empty", "FROM a\nONBUILD\n", 2, "ONBUILD requires at least one argument"),
    ("onbuild_nested_deep", "FROM a\nONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD ONBUILD RUN x\n", 2, "ONBUILD"),
    // --- flags
    ("copy_from_without_value", "FROM a\nCOPY --from a b\n", 2, "missing a value on flag: --from"),
    ("copy_chown_without_value", "FROM a\nCOPY --chown a b\n", 2, "missing a value on flag: --chown"),
    ("copy_exclude_without_value", "FROM a\nCOPY --exclude a b\n", 2, "missing a value on flag: --exclude"),
    ("copy_from_empty", "FROM a\nCOPY --from= a b\n", 2, "--from cannot be empty"),
    ("copy_unknown_flag", "FROM a\nCOPY --bogus=1 a b\n", 2, "unknown flag: --bogus"),
    ("run_unknown_flag", "FROM a\nRUN --foo=bar echo\n", 2, "unknown flag: --foo"),
    ("duplicate_flag", "FROM a\nCOPY --from=a --from=b a b\n", 2, "duplicate flag specified: --from"),
    ("copy_link_not_bool", "FROM a\nCOPY --link=maybe a b\n", 2, "expecting boolean value for flag --link"),
    ("copy_parents_not_bool", "FROM a\nCOPY --parents=maybe a b\n", 2, "expecting boolean value"),
    ("add_keep_git_dir_not_bool", "FROM a\nADD --keep-git-dir=maybe a b\n", 2, "expecting boolean value"),
    ("chmod_not_octal_range", "FROM a\nCOPY --chmod=999 a b\n", 2, "invalid chmod parameter"),
    ("chmod_letters", "FROM a\nCOPY --chmod=abc a b\n", 2, "invalid chmod parameter"),
    ("network_unknown", "FROM a\nRUN --network=bogus true\n", 2, "unsupported network mode"),
    ("security_unknown", "FROM a\nRUN --security=bogus true\n", 2, "unsupported security mode"),
    // --- RUN --mount
    ("mount_without_value", "FROM a\nRUN --mount true\n", 2, "missing a value on flag: --mount"),
    ("mount_unknown_key", "FROM a\nRUN --mount=type=cache,target=/x,bogus=1 true\n", 2, "unexpected key 'bogus'"),
    ("mount_unknown_type", "FROM a\nRUN --mount=type=nope,target=/x true\n", 2, "unsupported mount type"),
    ("mount_bad_sharing", "FROM a\nRUN --mount=type=cache,target=/x,sharing=maybe true\n", 2, "unsupported sharing value"),
    ("mount_bad_bool", "FROM a\nRUN --mount=type=bind,target=/x,rw=perhaps true\n", 2, "invalid value for rw"),
    ("mount_bad_mode", "FROM a\nRUN --mount=type=cache,target=/x,mode=abc true\n", 2, "invalid value abc for mode"),
    ("mount_bad_uid", "FROM a\nRUN --mount=type=cache,target=/x,uid=abc true\n", 2, "invalid value abc for uid"),
    ("mount_secret_bad_required", "FROM a\nRUN --mount=type=secret,required=maybe true\n", 2, "invalid value for required"),
    ("mount_secret_without_id", "FROM a\nRUN --mount=type=secret true\n", 2, "one of source, target required"),
    ("mount_bind_mode", "FROM a\nRUN --mount=type=bind,target=/x,mode=0700 true\n", 2, "mode not allowed"),
    ("mount_bare_word", "FROM a\nRUN --mount=target true\n", 2, "key=value"),
    // --- HEALTHCHECK
    ("healthcheck_bad_interval", "FROM a\nHEALTHCHECK --interval=abc CMD true\n", 2, "invalid duration"),
    ("healthcheck_negative_interval", "FROM a\nHEALTHCHECK --interval=-1s CMD true\n", 2, "cannot be less than"),
    ("healthcheck_timeout_no_unit", "FROM a\nHEALTHCHECK --timeout=5 CMD true\n", 2, "missing unit"),
    ("healthcheck_start_interval_unit", "FROM a\nHEALTHCHECK --start-interval=1x CMD true\n", 2, "unknown unit"),
    ("healthcheck_retries_word", "FROM a\nHEALTHCHECK --retries=x CMD true\n", 2, "invalid syntax"),
    ("healthcheck_retries_negative", "FROM a\nHEALTHCHECK --retries=-1 CMD true\n", 2, "--retries cannot be negative"),
    ("healthcheck_without_cmd", "FROM a\nHEALTHCHECK --interval=5s\n", 2, "HEALTHCHECK requires at least one argument"),
    ("healthcheck_empty", "FROM a\nHEALTHCHECK\n", 2, "HEALTHCHECK requires"),
    ("healthcheck_unknown_type", "FROM a\nHEALTHCHECK FOO true\n", 2, "Unknown type \"FOO\""),
    ("healthcheck_none_with_args", "FROM a\nHEALTHCHECK NONE x\n", 2, "HEALTHCHECK NONE takes no arguments"),
    // --- arguments
    ("copy_one_arg", "FROM a\nCOPY a\n", 2, "COPY requires at least two arguments"),
    ("copy_no_args", "FROM a\nCOPY\n", 2, "COPY requires at least two arguments"),
    ("add_one_arg", "FROM a\nADD a\n", 2, "ADD requires at least two arguments"),
    ("copy_json_one_arg", "FROM a\nCOPY [\"a\"]\n", 2, "COPY requires at least two arguments"),
    ("env_without_value", "FROM a\nENV FOO\n", 2, "ENV must have two arguments"),
    ("env_empty", "FROM a\nENV\n", 2, "ENV requires at least one argument"),
    ("env_blank_name", "FROM a\nENV =x\n", 2, "ENV names can not be blank"),
    ("env_mixed_forms", "FROM a\nENV a=b c\n", 2, "can't find = in \"c\""),
    ("label_without_equals", "FROM a\nLABEL a=b c\n", 2, "can't find = in \"c\""),
    ("label_single_word", "FROM a\nLABEL maintainer\n", 2, "LABEL must have two arguments"),
    ("label_empty", "FROM a\nLABEL\n", 2, "LABEL requires at least one argument"),
    ("arg_empty", "FROM a\nARG\n", 2, "ARG requires at least one argument"),
    ("arg_blank_name", "FROM a\nARG =x\n", 2, "ARG names can not be blank"),
    ("expose_empty", "FROM a\nEXPOSE\n", 2, "EXPOSE requires at least one argument"),
    ("stopsignal_empty", "FROM a\nSTOPSIGNAL\n", 2, "STOPSIGNAL requires exactly one argument"),
    ("maintainer_empty", "FROM a\nMAINTAINER\n", 2, "MAINTAINER requires exactly one argument"),
    ("workdir_empty", "FROM a\nWORKDIR\n", 2, "WORKDIR requires exactly one argument"),
    ("user_empty", "FROM a\nUSER\n", 2, "USER requires exactly one argument"),
    ("volume_empty", "FROM a\nVOLUME\n", 2, "VOLUME requires at least one argument"),
    ("volume_empty_json", "FROM a\nVOLUME []\n", 2, "VOLUME requires at least one argument"),
    ("run_empty", "FROM a\nRUN\n", 2, "RUN requires at least one argument"),
    ("shell_not_json", "FROM a\nSHELL /bin/sh -c\n", 2, "SHELL requires the arguments to be in JSON form"),
    ("shell_unterminated_json", "FROM a\nSHELL [\"/bin/sh\", \n", 2, "JSON form"),
    ("shell_empty_json", "FROM a\nSHELL []\n", 2, "SHELL requires at least one argument"),
    // --- positions across continuations and comments
    ("error_after_continuation", "FROM a\nRUN echo \\\n  hi\nFOO x\n", 4, "unknown instruction: FOO"),
    ("error_in_continued_instruction", "FROM a\nCOPY \\\n  --bogus=1 \\\n  a b\n", 3, "unknown flag"),
    ("error_after_heredoc", "FROM a\nRUN <<EOF\nx\nEOF\nBAD x\n", 5, "unknown instruction: BAD"),
];

/// Looks broken but BuildKit's parser and instruction parsing accept it.
const ACCEPTED: &[(&str, &str)] = &[
    // Invalid JSON falls back to shell form.
    ("run_unterminated_json", "FROM a\nRUN [\"echo\", \"hi\"\n"),
    ("cmd_unterminated_json", "FROM a\nCMD [\"echo\"\n"),
    ("entrypoint_trailing_comma", "FROM a\nENTRYPOINT [\"a\",]\n"),
    ("run_single_quoted_json", "FROM a\nRUN ['echo']\n"),
    // A heredoc marker in exec form, or in CMD, is just text.
    ("exec_form_heredoc_marker", "FROM a\nRUN [\"<<EOF\"]\n"),
    ("cmd_heredoc_marker", "FROM a\nCMD <<EOF\n"),
    // parseString keeps the rest of the line as one argument; the signal is checked at build time.
    ("stopsignal_two_words", "FROM a\nSTOPSIGNAL a b\n"),
    ("user_two_words", "FROM a\nUSER a b\n"),
    // Not directives, so nothing to reject.
    ("escape_directive_empty", "# escape=\nFROM a\n"),
    ("escape_directive_after_instruction", "FROM a\n# escape=x\n"),
    // Boolean flags need no value; empty CMD is allowed; the last continuation may end the file.
    ("bool_flag_without_value", "FROM a\nCOPY --link a b\n"),
    ("cmd_empty", "FROM a\nCMD\n"),
    ("continuation_at_eof", "FROM a\nRUN echo \\\n"),
    (
        "healthcheck_retries_zero",
        "FROM a\nHEALTHCHECK --retries=0 CMD true\n",
    ),
];

fn check_error(name: &str, source: &SourceFile, line: usize, needle: &str) {
    let err = match parse_dockerfile(source) {
        Ok(df) => panic!("{name}: expected an error, parsed {df:?}"),
        Err(err) => err,
    };
    let Position { line: got, column } = err.span.start_pos;
    assert_eq!(got, line, "{name}: wrong line for {err:?}");
    assert!(column >= 1, "{name}: column 0 in {err:?}");
    let line_len = source.line_text(got).chars().count();
    assert!(
        column <= line_len + 1,
        "{name}: column {column} past the line ({line_len} chars)"
    );
    assert!(
        err.message.contains(needle),
        "{name}: message {:?} lacks {needle:?}",
        err.message
    );
    let rendered = err.render(source);
    let location = format!("Dockerfile:{got}:{column}: ");
    assert!(rendered.starts_with(&location), "{name}: {rendered}");
    let mut lines = rendered.lines();
    let caret = lines.next_back().unwrap_or_default();
    assert!(
        caret.trim_start().starts_with('|') && caret.contains('^'),
        "{name}: no caret line in\n{rendered}"
    );
    // The caret sits under the reported column (tabs render as one space; long lines are windowed).
    if line_len <= 100 {
        let gutter = got.to_string().len() + 3;
        assert_eq!(
            caret.find('^'),
            Some(gutter + column - 1),
            "{name}:\n{rendered}"
        );
    }
    assert!(
        rendered.len() < 4096,
        "{name}: render is {} bytes",
        rendered.len()
    );
}

#[test]
fn malformed_dockerfiles_are_positioned_errors() {
    assert!(MALFORMED.len() >= 60, "only {} cases", MALFORMED.len());
    let mut failures = Vec::new();
    for &(name, text, line, needle) in MALFORMED {
        let source = SourceFile::new("Dockerfile", text);
        let outcome = std::panic::catch_unwind(|| check_error(name, &source, line, needle));
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(msg);
        }
        // The AST-only parser must not panic either, and its errors are positioned too.
        if let Err(err) = parser::parse(&source) {
            assert!(
                err.span.start_pos.line >= 1 && err.span.start_pos.column >= 1,
                "{name}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn lookalikes_buildkit_accepts_still_parse() {
    for &(name, text) in ACCEPTED {
        let source = SourceFile::new("Dockerfile", text);
        if let Err(err) = parse_dockerfile(&source) {
            panic!("{name}: {}", err.render(&source));
        }
    }
}

#[test]
fn one_megabyte_line() {
    let text = format!("FROM a\n# ok\nRUN {}\n", "x".repeat(1 << 20));
    let source = SourceFile::new("Dockerfile", text);
    check_error(
        "one_megabyte_line",
        &source,
        3,
        "dockerfile line greater than max allowed size",
    );
    // Just under BuildKit's scanner limit still parses.
    let text = format!("FROM a\nRUN {}\n", "x".repeat(65_535 - 4));
    assert!(parse_dockerfile(&SourceFile::new("Dockerfile", text)).is_ok());
}

#[test]
fn one_megabyte_line_inside_heredoc() {
    let text = format!("FROM a\nRUN <<EOF\n{}\nEOF\n", "y".repeat(1 << 20));
    let source = SourceFile::new("Dockerfile", text);
    check_error(
        "heredoc_1mb",
        &source,
        3,
        "dockerfile line greater than max allowed size",
    );
}

#[test]
fn invalid_utf8_is_a_positioned_decode_error() {
    let cases: &[(&str, &[u8], usize, usize)] = &[
        ("lone_continuation_byte", b"FROM a\nRUN \x80\n", 2, 5),
        ("invalid_lead_byte", b"\xffFROM a\n", 1, 1),
        (
            "truncated_sequence_at_eof",
            b"FROM a\nRUN echo \xe2\x82",
            2,
            10,
        ),
        ("overlong_encoding", b"FROM a\nLABEL a=\xc0\xaf\n", 2, 9),
        ("surrogate", b"FROM a\n\n\nENV x=\xed\xa0\x80\n", 4, 7),
        (
            "after_multibyte_chars",
            "FROM a\nRUN é€ "
                .bytes()
                .chain(*b"\xfe")
                .collect::<Vec<_>>()
                .leak(),
            2,
            8,
        ),
        ("latin1_file", b"FROM a\nLABEL author=Jos\xe9\n", 2, 17),
    ];
    for &(name, bytes, line, column) in cases {
        let err = match SourceFile::from_bytes("Dockerfile", bytes.to_vec()) {
            Ok(_) => panic!("{name}: decoded invalid UTF-8"),
            Err(err) => err,
        };
        assert_eq!(err.position, Position { line, column }, "{name}: {err}");
        assert!(err.message.contains("UTF-8"), "{name}: {err}");
    }
    // Valid UTF-8 with a BOM is fine.
    let source = SourceFile::from_bytes("Dockerfile", b"\xef\xbb\xbfFROM a\n".to_vec()).unwrap();
    assert!(parse_dockerfile(&source).is_ok());
}

/// Runs `kiln parse -f FILE` on `contents`.
fn run_kiln(contents: &[u8], extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    std::fs::write(&path, contents).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("parse")
        .arg("-f")
        .arg(&path)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn cli_reports_errors_with_location_and_caret() {
    let cases: &[(&[u8], &[&str], &str)] = &[
        (b"FROM a\nFOO bar\n", &[], ":2:1: unknown instruction: FOO"),
        (
            b"FROM a\nRUN <<EOF\necho\n",
            &["--dump"],
            ":2:1: unterminated heredoc",
        ),
        (
            b"FROM a\nCOPY --chown a b\n",
            &[],
            ":2:6: missing a value on flag: --chown",
        ),
        (
            b"FROM a\nRUN --mount=type=nope,target=/x true\n",
            &[],
            ":2:13: ",
        ),
        (b"# escape=x\nFROM a\n", &["--dump"], ":1:1: invalid escape"),
        (b"FROM a\nRUN a\0b\n", &[], ":2:6: NUL byte"),
        (b"", &[], ":1:1: file with no instructions"),
        (
            b"# only\n# comments\n",
            &[],
            ":2:11: file with no instructions",
        ),
    ];
    for &(contents, extra, needle) in cases {
        let (code, stderr) = run_kiln(contents, extra);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("Dockerfile{needle}")),
            "{needle}: {stderr}"
        );
        assert!(
            stderr.lines().any(|l| l.contains('|') && l.contains('^')),
            "{stderr}"
        );
    }
    // A 1 MB line: an error, and the rendered line is windowed, not a megabyte of stderr.
    let big = format!("FROM a\nRUN {}\n", "x".repeat(1 << 20));
    let (code, stderr) = run_kiln(big.as_bytes(), &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Dockerfile:2:1: dockerfile line greater"),
        "{stderr}"
    );
    assert!(
        stderr.contains('^') && stderr.len() < 1024,
        "{} bytes",
        stderr.len()
    );
}

#[test]
fn cli_reports_invalid_utf8_with_position() {
    let (code, stderr) = run_kiln(b"FROM a\nRUN \xff\n", &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("Dockerfile:2:5: invalid UTF-8"), "{stderr}");
}
