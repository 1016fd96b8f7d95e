//! CopyIgnoredFile (experimental): a COPY or ADD source from the build context that
//! `.dockerignore` excludes.

use super::{rules, IgnoreChecker, Linter};
use crate::diag::Span;

/// Checks the expanded sources of a COPY (without `--from`) or ADD.
pub(super) fn check_sources(
    linter: &mut Linter,
    span: Span,
    is_add: bool,
    sources: &[String],
    ignore: Option<&dyn IgnoreChecker>,
) {
    let Some(ignore) = ignore else { return };
    // Exclusions (`!pattern`) make the answer depend on the files; BuildKit does not guess.
    if ignore.has_exclusions() {
        return;
    }
    let cmd = if is_add { "Add" } else { "Copy" };
    for src in sources {
        if is_remote(src) {
            continue;
        }
        let src = clean(&src.replace('\\', "/"));
        if (src == "." || src == "/") && !ignore.excludes_root() {
            continue;
        }
        if ignore.is_ignored(&src) {
            linter.report(
                &rules::COPY_IGNORED_FILE,
                span,
                rules::copy_ignored_file(cmd, &src),
            );
        }
    }
}

/// URLs and git sources are not read from the context.
fn is_remote(src: &str) -> bool {
    ["http://", "https://", "git://", "git@", "ssh://"]
        .iter()
        .any(|p| src.starts_with(p))
}

/// Go's `path.Clean`.
pub(super) fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|p| *p != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn cleans_like_go() {
        for (i, o) in [
            ("", "."),
            (".", "."),
            ("./a/", "a"),
            ("a//b/./c/..", "a/b"),
            ("/../a", "/a"),
            ("../../a", "../../a"),
            ("/", "/"),
            ("a/..", "."),
        ] {
            assert_eq!(clean(i), o, "{i}");
        }
    }
}
