//! `.dockerignore` for `kiln check`'s CopyIgnoredFile.
//!
//! TEMPORARY: `kiln::context::ignore` (moby/patternmatcher semantics) is still a placeholder on
//! this branch, so this is a minimal matcher: plain paths, `*` and `?` within one path element,
//! `**` across elements, a pattern matching a parent matches its children, `!` marks an exclusion
//! (which makes the check stand down, as BuildKit does). Replace it with the real module.

use crate::dockerfile::lint::IgnoreChecker;
use anyhow::Context as _;
use regex::Regex;
use std::path::Path;

/// The non-exclusion patterns of a `.dockerignore`, compiled.
pub struct DockerIgnore {
    patterns: Vec<(String, Regex)>,
    exclusions: bool,
}

impl DockerIgnore {
    /// Reads `<dockerfile>.dockerignore` if it exists, else `<context>/.dockerignore`; `None` if
    /// neither does.
    pub fn load(context: &Path, dockerfile: &Path) -> anyhow::Result<Option<DockerIgnore>> {
        let mut candidates = Vec::new();
        if let Some(name) = dockerfile.file_name() {
            let mut n = name.to_os_string();
            n.push(".dockerignore");
            candidates.push(dockerfile.with_file_name(n));
        }
        candidates.push(context.join(".dockerignore"));
        for path in candidates {
            match std::fs::read_to_string(&path) {
                Ok(text) => return Ok(Some(DockerIgnore::parse(&text))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", path.display()));
                }
            }
        }
        Ok(None)
    }

    pub fn parse(text: &str) -> DockerIgnore {
        let mut patterns = Vec::new();
        let mut exclusions = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('!') {
                exclusions = true;
                continue;
            }
            let cleaned = clean(line.trim_start_matches('/'));
            if let Some(re) = to_regex(&cleaned) {
                patterns.push((cleaned, re));
            }
        }
        DockerIgnore {
            patterns,
            exclusions,
        }
    }
}

fn clean(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn to_regex(pattern: &str) -> Option<Regex> {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                // `**/` matches zero or more directories, a trailing `**` anything.
                if chars.get(i + 2) == Some(&'/') {
                    re.push_str("(?:.*/)?");
                    i += 3;
                } else {
                    re.push_str(".*");
                    i += 2;
                }
                continue;
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    re.push('$');
    Regex::new(&re).ok()
}

impl IgnoreChecker for DockerIgnore {
    fn is_ignored(&self, path: &str) -> bool {
        let path = clean(path.trim_start_matches('/'));
        let mut prefix = String::new();
        for (i, part) in path.split('/').enumerate() {
            if i > 0 {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.patterns.iter().any(|(_, re)| re.is_match(&prefix)) {
                return true;
            }
        }
        false
    }

    fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    fn excludes_root(&self) -> bool {
        self.patterns
            .iter()
            .any(|(p, _)| matches!(p.as_str(), "*" | "**" | "**/*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_prefixes_and_stars() {
        let ig = DockerIgnore::parse("# comment\nDockerfile\n/build/\n*.log\ndocs/**/*.md\n");
        assert!(ig.is_ignored("Dockerfile"));
        assert!(ig.is_ignored("build/out/a"));
        assert!(ig.is_ignored("x.log"));
        assert!(!ig.is_ignored("dir/x.log"));
        assert!(ig.is_ignored("docs/a/b/c.md"));
        assert!(ig.is_ignored("docs/c.md"));
        assert!(!ig.is_ignored("src/main.rs"));
        assert!(!ig.has_exclusions());
        assert!(DockerIgnore::parse("*\n!keep\n").has_exclusions());
        assert!(DockerIgnore::parse("*\n").excludes_root());
    }
}
