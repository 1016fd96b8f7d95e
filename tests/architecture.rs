//! The module table of DESIGN.md, kept true: every `crate::X` reference in `src/**/*.rs`
//! (`use crate::X…`, `use crate::{X, …}`, a path `crate::X::…`, `$crate::X` in macros) must be
//! to a module its top-level module may import. Comments and string literals are not code.
//! Reads the sources only; builds nothing.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// DESIGN.md's "Modules: one concern each": module → what it may import (itself always).
const RULES: &[(&str, &[&str])] = &[
    ("diag", &[]),
    ("oci", &["diag"]),
    ("dockerfile", &["diag"]),
    ("graph", &["dockerfile", "oci", "diag"]),
    ("context", &["oci", "diag"]),
    ("store", &["oci"]),
    ("cache", &["oci", "store"]),
    ("layer", &["oci"]),
    ("snapshot", &["oci", "layer"]),
    ("sandbox", &["oci", "snapshot"]),
    ("registry", &["oci", "store"]),
    ("progress", &["oci"]),
    // Not in DESIGN.md yet (amend it): compose and bake files → a plan of builds, pure.
    ("bake", &["oci", "diag"]),
    // "all of the above"
    (
        "exec",
        &[
            "diag",
            "oci",
            "dockerfile",
            "graph",
            "context",
            "store",
            "cache",
            "layer",
            "snapshot",
            "sandbox",
            "registry",
            "progress",
        ],
    ),
    ("export", &["store", "registry", "oci", "progress"]),
    // "everything"
    (
        "cli",
        &[
            "diag",
            "oci",
            "dockerfile",
            "graph",
            "context",
            "store",
            "cache",
            "layer",
            "snapshot",
            "sandbox",
            "registry",
            "progress",
            "exec",
            "export",
            "bake",
        ],
    ),
];

/// Imports today's code makes that the table does not list, and why the code is right.
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "exec",
        "export",
        "the diagram's exec ─▶ export: a build hands its image to the exporters",
    ),
    (
        "export",
        "layer",
        "type=local/tar apply layers with layer's safe extraction; archives name its Compression",
    ),
    (
        "cache",
        "graph",
        "exported caches name the key scheme that graph derives step keys with (KEY_SCHEME)",
    ),
    (
        "registry",
        "progress",
        "pull and push report bytes moved as progress events through a Reporter",
    ),
];

/// Crate-root files that are not a module of the table: lib.rs only declares the modules,
/// main.rs is the binary crate (its `crate::` is itself; it reaches the library as `kiln::`).
const ROOT_FILES: &[&str] = &["lib.rs", "main.rs"];

fn may_import(from: &str, to: &str) -> Option<bool> {
    let (_, allowed) = RULES.iter().find(|(m, _)| *m == from)?;
    Some(
        from == to
            || allowed.contains(&to)
            || ALLOWED.iter().any(|(f, t, _)| *f == from && *t == to),
    )
}

/// One `crate::X` reference: the 1-based line and X.
#[derive(Debug, PartialEq)]
struct Reference {
    line: usize,
    module: String,
}

/// The source with comments and the contents of string and char literals blanked to spaces,
/// newlines kept, so what is left is code and byte offsets still give the line.
fn code_only(src: &str) -> Vec<u8> {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in Rust.
                let (start, mut depth) = (i, 0usize);
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                blank(&mut out, start, i);
            }
            b'r' if raw_prefix(b, i) && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) => {
                // r"…", r#"…"#, br"…": no escapes; ends at a quote followed by as many #.
                let mut j = i + 1;
                while b.get(j) == Some(&b'#') {
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let hashes = j - i - 1;
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                let body = j + 1;
                let end = b[body..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| body + p);
                blank(&mut out, body, end);
                i = (end + close.len()).min(b.len());
            }
            b'"' => {
                let body = i + 1;
                let mut j = body;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(b.len());
                blank(&mut out, body, end);
                i = end + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former closes.
                let end = if b.get(i + 1) == Some(&b'\\') {
                    // Past the backslash and the character it escapes ('\'', '\\').
                    let from = (i + 3).min(b.len());
                    b[from..].iter().position(|&c| c == b'\'').map(|p| from + p)
                } else {
                    let width = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (b.get(i + 1 + width) == Some(&b'\'')).then_some(i + 1 + width)
                };
                match end {
                    Some(end) => {
                        blank(&mut out, i + 1, end);
                        i = end + 1;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Whether the `r` at `i` starts a raw string (`r"`, `br"`), not the end of an identifier.
fn raw_prefix(b: &[u8], i: usize) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    match i {
        0 => true,
        _ if !ident(b[i - 1]) => true,
        _ => b[i - 1] == b'b' && (i < 2 || !ident(b[i - 2])),
    }
}

/// Every top-level module `src` names through `crate::`.
fn references(src: &str) -> Vec<Reference> {
    let code = code_only(src);
    let line_at = |pos: usize| code[..pos].iter().filter(|&&c| c == b'\n').count() + 1;
    let ident_at = |mut pos: usize| -> (String, usize) {
        while code.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        let start = pos;
        while code
            .get(pos)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
        {
            pos += 1;
        }
        (String::from_utf8_lossy(&code[start..pos]).into_owned(), pos)
    };
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(p) = code[from..].windows(7).position(|w| w == b"crate::") {
        let at = from + p;
        from = at + 7;
        let glued = at > 0 && (code[at - 1].is_ascii_alphanumeric() || code[at - 1] == b'_');
        if glued {
            continue; // e.g. `my_crate::`
        }
        let mut pos = from;
        while code.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        if code.get(pos) != Some(&b'{') {
            let (module, _) = ident_at(pos);
            found.push(Reference {
                line: line_at(at),
                module,
            });
            continue;
        }
        // `crate::{a::b, c, d::{e, f}}`: the first name of each item at depth 1.
        let mut depth = 0;
        let mut item_start = true;
        while pos < code.len() {
            match code[pos] {
                b'{' => {
                    depth += 1;
                    item_start = depth == 1;
                    pos += 1;
                }
                b'}' => {
                    depth -= 1;
                    pos += 1;
                    if depth == 0 {
                        break;
                    }
                }
                b',' => {
                    item_start = depth == 1;
                    pos += 1;
                }
                c if c.is_ascii_whitespace() => pos += 1,
                _ if item_start => {
                    let (module, end) = ident_at(pos);
                    found.push(Reference {
                        line: line_at(pos),
                        module,
                    });
                    item_start = false;
                    pos = end.max(pos + 1);
                }
                _ => pos += 1,
            }
        }
        from = pos;
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_follow_the_module_table_of_design_md() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let known: BTreeSet<&str> = RULES.iter().map(|(m, _)| *m).collect();
    let mut broken = Vec::new();
    let mut seen = 0;
    let mut used: BTreeSet<(&str, String)> = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        if ROOT_FILES.contains(&first.as_ref()) {
            continue;
        }
        let module = first.trim_end_matches(".rs");
        let shown = format!("src/{}", rel.display());
        if !known.contains(module) {
            broken.push(format!(
                "{shown}: module `{module}` is not in the table; add it with what it may import"
            ));
            continue;
        }
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {shown}: {e}"));
        for r in references(&text) {
            seen += 1;
            used.insert((module_name(module), r.module.clone()));
            match may_import(module, &r.module) {
                Some(true) => {}
                Some(false) if known.contains(r.module.as_str()) => broken.push(format!(
                    "{shown}:{}: `{module}` imports `crate::{}`, which DESIGN.md's module table \
                     does not allow",
                    r.line, r.module
                )),
                _ => broken.push(format!(
                    "{shown}:{}: `crate::{}` is not a module of the table",
                    r.line, r.module
                )),
            }
        }
    }
    for (from, to, why) in ALLOWED {
        if !used.contains(&(*from, to.to_string())) {
            broken.push(format!(
                "nothing in src/{from} imports `crate::{to}` any more: remove the allowance \
                 ({why})"
            ));
        }
    }
    // A scanner that finds nothing would pass everything.
    assert!(seen > 100, "only {seen} crate:: references found in src/");
    assert!(broken.is_empty(), "\n{}\n", broken.join("\n"));
}

/// The table's own spelling of a module name, so the set of used pairs outlives the file text.
fn module_name(module: &str) -> &'static str {
    RULES
        .iter()
        .map(|(m, _)| *m)
        .find(|m| *m == module)
        .expect("only modules of the table get here")
}

#[test]
fn allowances_name_table_modules_and_are_not_in_the_table() {
    let known: BTreeSet<&str> = RULES.iter().map(|(m, _)| *m).collect();
    for (from, to, why) in ALLOWED {
        assert!(known.contains(from) && known.contains(to), "{from} → {to}");
        let (_, listed) = RULES.iter().find(|(m, _)| m == from).unwrap();
        assert!(
            !listed.contains(to),
            "{from} → {to} is in the table already ({why})"
        );
    }
}

#[test]
fn the_scanner_reads_paths_groups_and_skips_comments_and_strings() {
    let src = r##"
use crate::oci::Digest;
use crate::{store::Store, layer, progress::{Event, Reporter}};
// use crate::cli::nothing;
/* crate::exec /* nested */ crate::exec */
fn f<'a>(x: &'a str) -> char {
    let _ = "crate::cli in a string \" still";
    let _ = r#"crate::cli raw "# ;
    let _ = my_crate::thing;
    let c = '"'; let q = b'\''; let _ = crate::diag::Span::new;
    crate::export::run(x)
}
"##;
    let refs = references(src);
    let got: Vec<(usize, &str)> = refs.iter().map(|r| (r.line, r.module.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (2, "oci"),
            (3, "store"),
            (3, "layer"),
            (3, "progress"),
            (10, "diag"),
            (11, "export"),
        ]
    );
}
