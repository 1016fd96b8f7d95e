//! A path below a root directory with its symlinks resolved as a process chrooted at the root
//! would see them: absolute targets start again at the root and `..` never climbs above it.
//! This is containerd continuity's `fs.RootPath`, which BuildKit's COPY applies to each source
//! (and its mounts to a bind source): `COPY link /x`, where `link` is a symlink in the
//! context, copies what `link` points to.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Symlinks followed for one path before giving up (continuity's limit).
const MAX_LINKS: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum RootPathError {
    #[error("failed to resolve {path}: too many levels of symbolic links")]
    TooManyLinks { path: String },
    #[error("failed to read symlink {}: {source}", path.display())]
    ReadLink { path: PathBuf, source: io::Error },
}

/// `rel` (relative to `root`; a leading `/` means the root) with every symlink on the way
/// resolved inside `root`; `""` is the root itself. A missing component ends the resolution:
/// it and what follows are kept as written, so the caller's lookup fails as it would.
pub fn resolve(root: &Path, rel: &str) -> Result<String, RootPathError> {
    let mut pending: VecDeque<String> = rel.split('/').map(str::to_string).collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(part);
        let here = root.join(done.join("/"));
        let Ok(meta) = fs::symlink_metadata(&here) else {
            // Missing (or unreadable): nothing below it can be a symlink to follow.
            done.extend(pending.into_iter().filter(|p| !p.is_empty() && p != "."));
            return Ok(lexical(&done));
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(RootPathError::TooManyLinks {
                path: rel.to_string(),
            });
        }
        let target = fs::read_link(&here).map_err(|source| RootPathError::ReadLink {
            path: here.clone(),
            source,
        })?;
        done.pop();
        let target = target.to_string_lossy().to_string();
        if target.starts_with('/') {
            done.clear();
        }
        for p in target.split('/').rev() {
            pending.push_front(p.to_string());
        }
    }
    Ok(done.join("/"))
}

/// Joins components after a missing one, where `..` is taken lexically (there is nothing on
/// disk to follow).
fn lexical(parts: &[String]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for p in parts {
        if p == ".." {
            out.pop();
        } else {
            out.push(p);
        }
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("project/pkg")).unwrap();
        fs::write(root.join("project/pkg/mod.py"), "x").unwrap();
        symlink("project", root.join("current")).unwrap();
        symlink("pkg/mod.py", root.join("project/link.py")).unwrap();
        symlink("/project/pkg", root.join("abs")).unwrap();
        symlink("../../../../project", root.join("project/pkg/up")).unwrap();
        symlink("/etc/passwd", root.join("out")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str| resolve(root, p).unwrap();
        assert_eq!(r("current"), "project");
        assert_eq!(r("/current/pkg/mod.py"), "project/pkg/mod.py");
        assert_eq!(r("current/link.py"), "project/pkg/mod.py");
        assert_eq!(r("abs/mod.py"), "project/pkg/mod.py");
        // `..` stops at the root, and an absolute target starts again from it.
        assert_eq!(r("project/pkg/up/pkg"), "project/pkg");
        assert_eq!(r("out"), "etc/passwd");
        assert_eq!(r("missing/../x/y"), "x/y");
        assert_eq!(r("."), "");
        assert!(matches!(
            resolve(root, "loop"),
            Err(RootPathError::TooManyLinks { .. })
        ));
    }
}
