//! Walking a build context: every entry under the root, sorted by name at each level, with
//! `.dockerignore` exclusions applied the way BuildKit's fsutil walker applies them.
//!
//! Symlinks are reported as symlinks and never followed. An excluded directory is skipped
//! entirely unless an exception (`!` pattern) could match something inside it; then it is walked,
//! its entries are filtered one by one, and the directory itself is yielded (before its first
//! included entry) only if something inside it is included, so that entry's parents exist. An
//! excluded directory that an exception names literally below it (`!dir/file`) is yielded
//! whether or not that file exists, as the fsutil of Moby 20.10's BuildKit does.

use super::ignore::{MatchInfo, PatternMatcher};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What kind of file an entry is (never following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// One entry of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkEntry {
    /// Slash-separated path relative to the context root, byte for byte as on disk (a name
    /// need not be UTF-8); the patterns were matched against its bytes.
    pub path: OsString,
    /// The entry on disk.
    pub fs_path: PathBuf,
    pub kind: EntryKind,
}

/// A context that cannot be walked.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot read directory {}: {source}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read file type of {}: {source}", path.display())]
    FileType {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Walk `root`, skipping what `matcher` excludes (nothing when `None`), depth first, each
/// directory's entries sorted by name (byte order), a directory before its contents.
pub fn walk_context(
    root: &Path,
    matcher: Option<&PatternMatcher>,
) -> Result<Vec<WalkEntry>, WalkError> {
    let mut walker = Walker {
        matcher,
        descend_all_excluded: matcher.is_some_and(exceptions_have_wildcards),
        out: Vec::new(),
        pending: Vec::new(),
    };
    walker.walk_dir(root, b"", &MatchInfo::default())?;
    Ok(walker.out)
}

struct Walker<'a> {
    matcher: Option<&'a PatternMatcher>,
    /// An exception has wildcards, so any excluded directory may hold something it re-includes.
    descend_all_excluded: bool,
    out: Vec<WalkEntry>,
    /// Excluded directories being walked whose entry has not been yielded yet.
    pending: Vec<WalkEntry>,
}

impl Walker<'_> {
    fn walk_dir(&mut self, dir: &Path, rel: &[u8], info: &MatchInfo) -> Result<(), WalkError> {
        let read_dir_err = |source| WalkError::ReadDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries = fs::read_dir(dir)
            .map_err(read_dir_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_dir_err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let fs_path = entry.path();
            let file_type = entry.file_type().map_err(|source| WalkError::FileType {
                path: fs_path.clone(),
                source,
            })?;
            let kind = if file_type.is_symlink() {
                EntryKind::Symlink
            } else if file_type.is_dir() {
                EntryKind::Dir
            } else if file_type.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            let name = entry.file_name();
            let path = if rel.is_empty() {
                name.into_vec()
            } else {
                [rel, b"/", name.as_bytes()].concat()
            };
            let (excluded, child_info) = match self.matcher {
                Some(m) => m.matches_using_parent_results(&path, info),
                None => (false, MatchInfo::default()),
            };
            let entry = WalkEntry {
                path: OsString::from_vec(path),
                fs_path,
                kind,
            };
            // Only an excluded directory is asked: this runs for every entry of the context.
            let passes = excluded
                && kind == EntryKind::Dir
                && self
                    .matcher
                    .is_some_and(|m| m.keeps_excluded_dir(entry.path.as_bytes()));
            if excluded && !passes {
                if kind == EntryKind::Dir && self.may_hold_exceptions(entry.path.as_bytes()) {
                    let depth = self.pending.len();
                    let (fs_path, path) = (entry.fs_path.clone(), entry.path.clone());
                    self.pending.push(entry);
                    self.walk_dir(&fs_path, path.as_bytes(), &child_info)?;
                    self.pending.truncate(depth);
                }
                continue;
            }
            self.out.append(&mut self.pending);
            if kind == EntryKind::Dir {
                let (fs_path, path) = (entry.fs_path.clone(), entry.path.clone());
                self.out.push(entry);
                self.walk_dir(&fs_path, path.as_bytes(), &child_info)?;
            } else {
                self.out.push(entry);
            }
        }
        Ok(())
    }

    /// Whether an exception pattern could match something under the excluded directory `dir`
    /// (fsutil: a literal exception must lie under `dir/`; one with wildcards might be anywhere).
    fn may_hold_exceptions(&self, dir: &[u8]) -> bool {
        let Some(m) = self.matcher else {
            return false;
        };
        if !m.exclusions() {
            return false;
        }
        self.descend_all_excluded || m.keeps_excluded_dir(dir)
    }
}

fn exceptions_have_wildcards(m: &PatternMatcher) -> bool {
    m.patterns()
        .iter()
        .filter(|p| p.is_exclusion())
        .any(|p| p.as_str().contains(['*', '?', '[', '\\']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_utf8_are_walked_and_matched_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let raw = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
        fs::create_dir(root.join(raw(b"caf\xe9"))).unwrap();
        fs::write(root.join(raw(b"caf\xe9/\xff.o")), "o").unwrap();
        fs::write(root.join(raw(b"caf\xe9/\xff.c")), "c").unwrap();
        fs::write(root.join(raw(b"caf\xe8")), "x").unwrap();
        let m = PatternMatcher::new(["caf?/*.o", "caf\u{fffd}"]).unwrap();
        let got: Vec<Vec<u8>> = walk_context(root, Some(&m))
            .unwrap()
            .into_iter()
            .map(|e| e.path.into_vec())
            .collect();
        // Sorted by bytes; `caf\u{fffd}` (UTF-8 bytes) excludes neither name.
        assert_eq!(
            got,
            vec![
                b"caf\xe8".to_vec(),
                b"caf\xe9".to_vec(),
                b"caf\xe9/\xff.c".to_vec()
            ]
        );
    }

    #[test]
    fn missing_root_names_the_path() {
        let e = walk_context(Path::new("/nonexistent/kiln-context"), None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kiln-context"), "{e}");
    }
}
