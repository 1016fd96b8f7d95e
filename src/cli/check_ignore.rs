//! `.dockerignore` for `kiln check`'s CopyIgnoredFile: the context module's patternmatcher,
//! seen through the lint's `IgnoreChecker` hook (the adapter lives here because `dockerfile`
//! and `context` do not import each other).

use std::path::Path;

use crate::context::ignore::{load_ignore_patterns, PatternMatcher};
use crate::dockerfile::lint::IgnoreChecker;

pub struct DockerIgnore {
    matcher: PatternMatcher,
}

impl DockerIgnore {
    /// Reads `<dockerfile>.dockerignore` if it exists, else `<context>/.dockerignore`; `None` if
    /// neither does.
    pub fn load(context: &Path, dockerfile: &Path) -> anyhow::Result<Option<DockerIgnore>> {
        let (patterns, file) = load_ignore_patterns(context, Some(dockerfile))?;
        let Some(file) = file else { return Ok(None) };
        let matcher = PatternMatcher::new(&patterns)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        Ok(Some(DockerIgnore { matcher }))
    }
}

impl IgnoreChecker for DockerIgnore {
    fn is_ignored(&self, path: &str) -> bool {
        self.matcher.matches(path.trim_start_matches('/'))
    }

    fn has_exclusions(&self) -> bool {
        self.matcher.exclusions()
    }

    fn excludes_root(&self) -> bool {
        self.matcher
            .patterns()
            .iter()
            .any(|p| !p.is_exclusion() && matches!(p.as_str(), "*" | "**" | "**/*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_patternmatcher_semantics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".dockerignore"),
            "# c\nDockerfile\n/build/\n*.log\ndocs/**/*.md\n",
        )
        .unwrap();
        let ig = DockerIgnore::load(dir.path(), &dir.path().join("Dockerfile"))
            .unwrap()
            .unwrap();
        assert!(ig.is_ignored("Dockerfile"));
        assert!(ig.is_ignored("build/out/a"));
        assert!(ig.is_ignored("x.log"));
        assert!(!ig.is_ignored("sub/x.log"));
        assert!(ig.is_ignored("docs/a/b/c.md"));
        assert!(!ig.is_ignored("src/main.rs"));
        assert!(!ig.has_exclusions() && !ig.excludes_root());
    }
}
