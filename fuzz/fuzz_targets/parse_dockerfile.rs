//! Bytes → `SourceFile::from_bytes` → `parser::parse` → dump, typed instructions, and rendering of
//! any error. Nothing may panic; every error must carry a position inside the file.
#![no_main]

use kiln::diag::SourceFile;
use kiln::dockerfile::{dump::dump, parse_dockerfile, parser, ParseError};
use libfuzzer_sys::fuzz_target;

fn check_error(source: &SourceFile, err: &ParseError) {
    let pos = err.span.start_pos;
    assert!(pos.line >= 1, "error without a line: {err:?}");
    assert!(pos.column >= 1, "error without a column: {err:?}");
    assert!(
        pos.line <= source.line_count().max(1) + 1,
        "error line {} past the end ({} lines): {err:?}",
        pos.line,
        source.line_count()
    );
    let rendered = err.render(source);
    let loc = format!("{}:{}:{}", source.name(), pos.line, pos.column);
    assert!(rendered.starts_with(&loc), "{rendered}");
}

fuzz_target!(|data: &[u8]| {
    let source = match SourceFile::from_bytes("Dockerfile", data.to_vec()) {
        Ok(source) => source,
        Err(err) => {
            assert!(err.position.line >= 1 && err.position.column >= 1);
            return;
        }
    };
    match parser::parse(&source) {
        Ok(ast) => {
            let _ = dump(&ast);
        }
        Err(err) => check_error(&source, &err),
    }
    if let Err(err) = parse_dockerfile(&source) {
        check_error(&source, &err);
    }
});
