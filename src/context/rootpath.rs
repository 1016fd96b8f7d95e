//! A path below a root directory with its symlinks resolved as a process chrooted at the root
//! would see them: absolute targets start again at the root and `..` never climbs above it.
//! This is containerd continuity's `fs.RootPath`, which BuildKit's COPY applies to each source
//! (and its mounts to a bind source): `COPY link /x`, where `link` is a symlink in the
//! context, copies what `link` points to.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
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
/// resolved inside `root`; empty is the root itself. A missing component ends the resolution:
/// it and what follows are kept as written, so the caller's lookup fails as it would. Paths
/// are bytes: names and symlink targets need not be UTF-8, and are kept byte for byte.
pub fn resolve(root: &Path, rel: impl AsRef<[u8]>) -> Result<Vec<u8>, RootPathError> {
    let rel = rel.as_ref();
    let mut pending: VecDeque<Vec<u8>> = rel.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_slice() {
            b"" | b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(part);
        let here = root.join(OsStr::from_bytes(&done.join(&b'/')));
        let Ok(meta) = fs::symlink_metadata(&here) else {
            // Missing (or unreadable): nothing below it can be a symlink to follow.
            done.extend(
                pending
                    .into_iter()
                    .filter(|p| !p.is_empty() && p.as_slice() != b"."),
            );
            return Ok(lexical(&done));
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(RootPathError::TooManyLinks {
                path: String::from_utf8_lossy(rel).into_owned(),
            });
        }
        let target = fs::read_link(&here).map_err(|source| RootPathError::ReadLink {
            path: here.clone(),
            source,
        })?;
        done.pop();
        let target = target.as_os_str().as_bytes();
        if target.starts_with(b"/") {
            done.clear();
        }
        for p in target.split(|&b| b == b'/').rev() {
            pending.push_front(p.to_vec());
        }
    }
    Ok(done.join(&b'/'))
}

/// Joins components after a missing one, where `..` is taken lexically (there is nothing on
/// disk to follow).
fn lexical(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    for p in parts {
        if p.as_slice() == b".." {
            out.pop();
        } else {
            out.push(p);
        }
    }
    out.join(&b'/')
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
        let r = |p: &str| String::from_utf8(resolve(root, p).unwrap()).unwrap();
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

    #[test]
    fn names_and_link_targets_that_are_not_utf8_are_kept_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let raw = |b: &[u8]| root.join(OsStr::from_bytes(b));
        fs::create_dir_all(raw(b"caf\xe9/sub")).unwrap();
        // Targets that are not UTF-8: relative, and absolute (from the root).
        symlink(OsStr::from_bytes(b"caf\xe9/sub"), raw(b"rel")).unwrap();
        symlink(OsStr::from_bytes(b"/caf\xe9"), raw(b"\xff")).unwrap();
        assert_eq!(resolve(root, b"rel/x").unwrap(), b"caf\xe9/sub/x");
        assert_eq!(resolve(root, b"\xff/sub").unwrap(), b"caf\xe9/sub");
        assert_eq!(resolve(root, b"/\xff/../rel").unwrap(), b"caf\xe9/sub");
    }
}
