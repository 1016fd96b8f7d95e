//! `.dockerignore`: reading the file (moby/patternmatcher `ignorefile.ReadAll`), matching paths
//! against its patterns (moby/patternmatcher `PatternMatcher`), and finding the file to use
//! (BuildKit: `<Dockerfile>.dockerignore` next to the Dockerfile first, then `.dockerignore` at the
//! context root).
//!
//! Patterns are matched against cleaned, slash-separated paths relative to the context root,
//! as bytes (a name need not be UTF-8; a byte that is not is one character, U+FFFD, for `?`,
//! `*` and classes, as for Go's `regexp`).
//! `*` matches any run of characters except `/`, `?` one character except `/`, `[a-c]` / `[^a]`
//! a class (Go syntax: `[!a]` is the class of `!` and `a`, not a negation), `\` escapes the next
//! character, and `**` any number of directories (including none). A pattern that matches a
//! directory matches everything under it. The last pattern that matches a path decides: a `!`
//! pattern re-includes what earlier patterns excluded.

use super::gosyntax;
use regex::Regex;
use std::io;
use std::path::{Path, PathBuf};

/// A `.dockerignore` that cannot be read or a pattern that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// A pattern that is just `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// A pattern `filepath.Match` or Go's `regexp` would reject.
    #[error("syntax error in pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    /// An ignore file that exists but cannot be read.
    #[error("cannot read ignore file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `ignorefile.ReadAll`: the patterns of an ignore file.
///
/// Lines are split like Go's `bufio.ScanLines` (`\n`, with one trailing `\r` dropped); a UTF-8
/// BOM is stripped from the first line; lines *starting* with `#` are comments (an indented `#` is
/// a pattern); each line is trimmed; a leading `!` is kept and the rest trimmed again; the pattern
/// is `filepath.Clean`ed and one leading `/` is dropped unless the pattern is just `/`. Invalid
/// UTF-8 is replaced with U+FFFD.
pub fn read_ignore_file(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut patterns = Vec::new();
    for (n, line) in lines.into_iter().enumerate() {
        let mut line = line.strip_suffix(b"\r").unwrap_or(line);
        if n == 0 {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        let text = String::from_utf8_lossy(line);
        if text.starts_with('#') {
            continue;
        }
        let mut pattern = text.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = gosyntax::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        patterns.push(cleaned);
    }
    patterns
}

/// How a compiled pattern is checked (patternmatcher's `matchType`).
#[derive(Debug, Clone)]
enum Kind {
    /// The path equals the pattern.
    Exact,
    /// `dir/**`: the path starts with the pattern minus its `**`.
    Prefix(String),
    /// `**/name`: the path ends with the pattern minus its leading `**`.
    Suffix(String),
    Regex(Regex),
}

/// One pattern of a [`PatternMatcher`].
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` pattern (an exception to the exclusions).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether `path` matches this pattern itself (no parent-directory matching). Paths are
    /// bytes, as Go strings are: a name need not be UTF-8. The exact, prefix and suffix kinds
    /// compare bytes (Go's `==`, `strings.HasPrefix`/`HasSuffix`); a regular expression sees
    /// each byte that is not UTF-8 as U+FFFD, as Go's `regexp` does.
    pub fn matches(&self, path: impl AsRef<[u8]>) -> bool {
        let path = path.as_ref();
        match &self.kind {
            Kind::Exact => path == self.cleaned.as_bytes(),
            Kind::Prefix(prefix) => path.starts_with(prefix.as_bytes()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_bytes())
                    || suffix
                        .strip_prefix('/')
                        .is_some_and(|bare| path == bare.as_bytes())
            }
            Kind::Regex(re) => re.is_match(&gosyntax::go_runes(path)),
        }
    }

    /// Whether this pattern matches `path` or any of its parent directories.
    fn matches_self_or_parent(&self, path: &[u8]) -> bool {
        if self.matches(path) {
            return true;
        }
        let parent = gosyntax::dir(path);
        if parent == b"." {
            return false;
        }
        let dirs: Vec<&[u8]> = parent.split(|&b| b == b'/').collect();
        (1..=dirs.len()).any(|i| self.matches(dirs[..i].join(&b'/')))
    }

    fn compile(cleaned: String, exclusion: bool) -> Result<Pattern, String> {
        let (kind, regex) = compile(&cleaned);
        let kind = match kind {
            MatchType::Exact => Kind::Exact,
            MatchType::Prefix => Kind::Prefix(
                cleaned
                    .strip_suffix("**")
                    .unwrap_or(cleaned.as_str())
                    .to_string(),
            ),
            MatchType::Suffix => Kind::Suffix(
                cleaned
                    .strip_prefix("**")
                    .unwrap_or(cleaned.as_str())
                    .to_string(),
            ),
            MatchType::Regex => {
                let rust = gosyntax::go_regex_to_rust(&regex)?;
                Kind::Regex(Regex::new(&rust).map_err(|e| e.to_string())?)
            }
        };
        Ok(Pattern {
            cleaned,
            exclusion,
            kind,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchType {
    Exact,
    Prefix,
    Suffix,
    Regex,
}

/// patternmatcher's `(*Pattern).compile` with `/` as the separator: the match type and, for
/// [`MatchType::Regex`], the regular expression in Go syntax.
fn compile(pattern: &str) -> (MatchType, String) {
    const SL: char = '/';
    let mut reg = String::from("^");
    let mut detected = MatchType::Exact;
    let mut chars = pattern.chars().peekable();
    // text/scanner skips a BOM at the very start of its input.
    if chars.peek() == Some(&'\u{feff}') {
        chars.next();
    }
    let mut i = 0usize;
    while let Some(ch) = chars.next() {
        match ch {
            '*' => {
                if chars.peek() == Some(&'*') {
                    chars.next();
                    // Treat **/ as ** so eat the "/".
                    if chars.peek() == Some(&SL) {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        // "**" at the end: accept everything below.
                        if detected == MatchType::Exact {
                            detected = MatchType::Prefix;
                        } else {
                            reg.push_str(".*");
                            detected = MatchType::Regex;
                        }
                    } else {
                        // Any number of directories, even none.
                        reg.push_str("(.*/)?");
                        detected = MatchType::Regex;
                    }
                    if i == 0 {
                        detected = MatchType::Suffix;
                    }
                } else {
                    reg.push_str("[^/]*");
                    detected = MatchType::Regex;
                }
            }
            '?' => {
                reg.push_str("[^/]");
                detected = MatchType::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                reg.push('\\');
                reg.push(ch);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    reg.push('\\');
                    reg.push(next);
                    detected = MatchType::Regex;
                }
                None => reg.push('\\'),
            },
            '[' | ']' => {
                reg.push(ch);
                detected = MatchType::Regex;
            }
            _ => reg.push(ch),
        }
        i += 1;
    }
    if detected == MatchType::Regex {
        reg.push('$');
    }
    (detected, reg)
}

/// What a directory's patterns matched, handed to its children by a walker so that they need not
/// re-check every parent ([`PatternMatcher::matches_using_parent_results`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// A compiled list of `.dockerignore` patterns (patternmatcher's `PatternMatcher`).
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// patternmatcher's `New`: each pattern is trimmed, skipped if empty, cleaned; a leading `!`
    /// makes it an exception. Every pattern is checked and compiled here (Go compiles lazily and
    /// reports regexp errors at match time; kiln reports them up front).
    pub fn new<I, S>(patterns: I) -> Result<PatternMatcher, IgnoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut pm = PatternMatcher::default();
        for original in patterns {
            let trimmed = original.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let mut p = gosyntax::clean(trimmed);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(IgnoreError::IllegalExclusion);
                }
                p.remove(0);
                pm.exclusions = true;
            }
            let bad = |reason: String| IgnoreError::BadPattern {
                pattern: trimmed.to_string(),
                reason,
            };
            gosyntax::validate_glob(&p).map_err(|()| bad("invalid glob syntax".into()))?;
            pm.patterns
                .push(Pattern::compile(p, exclusion).map_err(bad)?);
        }
        Ok(pm)
    }

    /// Whether any pattern is a `!` exception.
    pub fn exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether the excluded directory `dir` is still sent with the context because an
    /// exception pattern names a path below it literally (`!dir/file`), whether or not that
    /// path exists: fsutil's walker, as the BuildKit of Moby 20.10 uses it, lets such a
    /// directory pass the filter (`goto passedFilter`), so `COPY dir /x` finds it.
    pub fn keeps_excluded_dir(&self, dir: impl AsRef<[u8]>) -> bool {
        if !self.exclusions {
            return false;
        }
        let dir = gosyntax::clean_bytes(dir.as_ref());
        // `pattern/` starts with `dir/`: the pattern is `dir` itself or lies below it.
        self.patterns.iter().filter(|p| p.is_exclusion()).any(|p| {
            p.as_str()
                .as_bytes()
                .strip_prefix(dir.as_slice())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
        })
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether `path` is excluded: patternmatcher's package-level `MatchesOrParentMatches`. The
    /// path is cleaned first; `.` (the context itself) is never excluded. A pattern matching one
    /// of the path's parent directories matches the path, and the last matching pattern wins.
    pub fn matches(&self, path: impl AsRef<[u8]>) -> bool {
        let path = gosyntax::clean_bytes(path.as_ref());
        if path == b"." {
            return false;
        }
        self.matches_or_parent_matches(&path)
    }

    /// patternmatcher's `(*PatternMatcher).MatchesOrParentMatches`, on `path` as given.
    pub fn matches_or_parent_matches(&self, path: impl AsRef<[u8]>) -> bool {
        let path = path.as_ref();
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an already excluded path, nor an exception a path that
            // is not excluded.
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches_self_or_parent(path) {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// patternmatcher's `MatchesExact`: like [`PatternMatcher::matches_or_parent_matches`]
    /// without matching parent directories.
    pub fn matches_exact(&self, path: impl AsRef<[u8]>) -> bool {
        let path = path.as_ref();
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches(path) {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// patternmatcher's `MatchesUsingParentResults`: the same answer as
    /// [`PatternMatcher::matches_or_parent_matches`], given the [`MatchInfo`] its parent
    /// directory returned (or `MatchInfo::default()` for a top-level entry, or when unknown, in
    /// which case parents are checked the slow way). A `MatchInfo` from another matcher (wrong
    /// length) is treated as unknown, where Go returns an error.
    pub fn matches_using_parent_results(
        &self,
        path: impl AsRef<[u8]>,
        parent: &MatchInfo,
    ) -> (bool, MatchInfo) {
        let path = path.as_ref();
        let parent_matched: &[bool] = if parent.parent_matched.len() == self.patterns.len() {
            &parent.parent_matched
        } else {
            &[]
        };
        let mut matched = false;
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent_matched.get(i).copied().unwrap_or(false);
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = if parent_matched.is_empty() {
                    pattern.matches_self_or_parent(path)
                } else {
                    pattern.matches(path)
                };
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }
}

/// The `.dockerignore` file BuildKit would use: `<Dockerfile name>.dockerignore` next to the
/// Dockerfile if it exists, else `.dockerignore` at the root of the context, else none. Returns
/// the patterns ([`read_ignore_file`]) and the file they came from. A relative `dockerfile_path`
/// is taken as given (relative to the current directory, like `-f`).
pub fn load_ignore_patterns(
    context_dir: &Path,
    dockerfile_path: Option<&Path>,
) -> Result<(Vec<String>, Option<PathBuf>), IgnoreError> {
    let mut candidates = Vec::new();
    if let Some(df) = dockerfile_path {
        if let Some(name) = df.file_name() {
            let mut ignore_name = name.to_os_string();
            ignore_name.push(".dockerignore");
            candidates.push(df.with_file_name(ignore_name));
        }
    }
    candidates.push(context_dir.join(".dockerignore"));
    for path in candidates {
        match std::fs::read(&path) {
            Ok(bytes) => return Ok((read_ignore_file(&bytes), Some(path))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(IgnoreError::Read { path, source }),
        }
    }
    Ok((Vec::new(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(patterns: &[&str]) -> PatternMatcher {
        PatternMatcher::new(patterns).expect("valid patterns")
    }

    #[test]
    fn compile_table_from_patternmatcher() {
        // patternmatcher_test.go compileTests (slash flavour).
        for (pattern, ty, re) in [
            ("*", MatchType::Regex, "^[^/]*$"),
            ("file*", MatchType::Regex, "^file[^/]*$"),
            ("*file", MatchType::Regex, "^[^/]*file$"),
            ("a*/b", MatchType::Regex, "^a[^/]*/b$"),
            ("**", MatchType::Suffix, ""),
            ("**/**", MatchType::Regex, "^(.*/)?.*$"),
            ("dir/**", MatchType::Prefix, ""),
            ("**/dir", MatchType::Suffix, ""),
            ("**/dir2/*", MatchType::Regex, "^(.*/)?dir2/[^/]*$"),
            ("**/dir2/**", MatchType::Regex, "^(.*/)?dir2/.*$"),
            ("**file", MatchType::Suffix, ""),
            ("**/file*txt", MatchType::Regex, "^(.*/)?file[^/]*txt$"),
            ("**/**/*.txt", MatchType::Regex, "^(.*/)?(.*/)?[^/]*\\.txt$"),
            ("a[b-d]e", MatchType::Regex, "^a[b-d]e$"),
            (".*", MatchType::Regex, "^\\.[^/]*$"),
            ("abc.def", MatchType::Exact, ""),
            ("abc?def", MatchType::Regex, "^abc[^/]def$"),
            ("**/foo/bar", MatchType::Suffix, ""),
            ("a(b)c/def", MatchType::Exact, ""),
            ("a.|)$(}+{bc", MatchType::Exact, ""),
        ] {
            let (got_ty, got_re) = compile(&gosyntax::clean(pattern));
            assert_eq!(got_ty, ty, "match type of {pattern:?}");
            if ty == MatchType::Regex {
                assert_eq!(got_re, re, "regexp of {pattern:?}");
            }
        }
    }

    #[test]
    fn read_all_rules() {
        let got = read_ignore_file(
            b"\xEF\xBB\xBF# comment\r\n  a/../b  \r\n\n!  /c//d/\n  # not a comment\n/\n.\n!\n./e\n",
        );
        assert_eq!(
            got,
            vec!["b", "!c/d", "# not a comment", "/", ".", "!", "e"]
        );
    }

    #[test]
    fn last_match_wins() {
        let m = pm(&["*.md", "!README.md", "README*.md"]);
        assert!(m.matches("CHANGES.md"));
        assert!(m.matches("README.md"));
        assert!(m.matches("README-old.md"));
        assert!(!m.matches("main.rs"));
        let m = pm(&["*.md", "!README.md"]);
        assert!(!m.matches("README.md"));
        assert!(m.exclusions());
    }

    #[test]
    fn errors_name_the_pattern() {
        let e = PatternMatcher::new(["!"]).unwrap_err();
        assert_eq!(e.to_string(), "illegal exclusion pattern: \"!\"");
        let e = PatternMatcher::new(["ok", "a["]).unwrap_err();
        assert!(e.to_string().contains("\"a[\""), "{e}");
        // Passes filepath.Match but Go's regexp rejects the range l-O.
        let e = PatternMatcher::new(["[Local-Only]/"]).unwrap_err();
        assert!(e.to_string().contains("[Local-Only]/"), "{e}");
    }

    #[test]
    fn names_that_are_not_utf8_match_as_go_strings_do() {
        // patternmatcher matches Go strings, which are bytes: `caf\xe9` (Latin-1) is one
        // character for `?` and `*`, and is excluded by its directory or a wildcard.
        let m = pm(&["caf?", "raw/*", "**/*.o", "!keep\u{fffd}"]);
        assert!(m.matches(b"caf\xe9"));
        assert!(!m.matches(b"caf\xe9\xe9"));
        assert!(m.matches(b"raw/\xff\xfe"));
        assert!(m.matches(b"raw/\xff/below"));
        assert!(m.matches(b"src/\xe9t\xe9.o"));
        assert!(!m.matches(b"src/\xe9t\xe9.c"));
        // Exact patterns compare bytes: U+FFFD in a pattern is not a byte that is not UTF-8.
        let m = pm(&["keep\u{fffd}"]);
        assert!(!m.matches(b"keep\xe9"));
        assert!(m.matches("keep\u{fffd}"));
        let m = pm(&["dir", "!dir/caf\u{e9}"]);
        assert!(m.keeps_excluded_dir(b"dir"));
        assert!(!m.keeps_excluded_dir(b"d\xe9r"));
        let mut info = MatchInfo::default();
        for p in [b"dir".as_slice(), b"dir/caf\xe9"] {
            let (got, next) = m.matches_using_parent_results(p, &info);
            assert!(got, "{}", String::from_utf8_lossy(p));
            info = next;
        }
    }

    #[test]
    fn parent_results_agree_with_full_check() {
        let m = pm(&["dir", "!dir/keep*", "**/*.o", "!**/main.o"]);
        let paths = [
            "dir",
            "dir/a",
            "dir/keep.txt",
            "dir/keep/x",
            "src",
            "src/a.o",
            "src/main.o",
            "src/sub",
            "src/sub/b.o",
        ];
        for p in paths {
            let mut info = MatchInfo::default();
            let parts: Vec<&str> = p.split('/').collect();
            for i in 1..parts.len() {
                info = m
                    .matches_using_parent_results(parts[..i].join("/"), &info)
                    .1;
            }
            let (got, _) = m.matches_using_parent_results(p, &info);
            assert_eq!(got, m.matches(p), "{p}");
        }
    }
}
