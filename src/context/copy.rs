//! COPY/ADD file operations with BuildKit's semantics: sources (globs, directories copied by
//! their contents, `.dockerignore` and `--exclude` applied; a source path's symlinks followed
//! inside the source root, those under a copied directory copied as symlinks) into a
//! destination inside a root filesystem, every path there resolved in a [`SafeRoot`]
//! (`openat2(RESOLVE_IN_ROOT)`) so no symlink in the image can lead outside.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::gosyntax::{clean_bytes, go_runes};
use super::ignore::PatternMatcher;
use crate::oci::{Digest, NewDir, SafeRoot};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("failed to compute cache key: \"{0}\" not found")]
    NotFound(String),
    #[error("no source files were specified")]
    NoSources,
    #[error("invalid --chmod {0:?}")]
    BadChmod(String),
    #[error("invalid pattern {0:?}")]
    BadPattern(String),
    #[error(transparent)]
    Io(#[from] crate::oci::IoError),
    #[error("cannot copy a directory onto the non-directory {0}")]
    NotADirectory(String),
    #[error(transparent)]
    Resolve(#[from] super::rootpath::RootPathError),
}

/// A slash-separated path below a root, as bytes (names need not be UTF-8).
pub type RelPath = Vec<u8>;

/// A path below a root, given as bytes (names need not be UTF-8), as the OS takes it.
fn os(rel: &[u8]) -> &OsStr {
    OsStr::from_bytes(rel)
}

/// A path for a message: names that are not UTF-8 shown with U+FFFD.
fn shown(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> CopyError {
    let path = path.into();
    move |source| CopyError::Io(crate::oci::IoError { op, path, source })
}

fn errno(op: &'static str, path: &[u8]) -> impl FnOnce(rustix::io::Errno) -> CopyError {
    let path = PathBuf::from(os(path));
    move |e| {
        CopyError::Io(crate::oci::IoError {
            op,
            path,
            source: e.into(),
        })
    }
}

/// `--chmod`: octal, or symbolic clauses like `u+x,g-w,o=r`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChmodSpec {
    Octal(u32),
    Symbolic(Vec<(u32, char, u32)>),
}

impl ChmodSpec {
    pub fn parse(s: &str) -> Result<ChmodSpec, CopyError> {
        if let Ok(n) = u32::from_str_radix(s, 8) {
            return Ok(ChmodSpec::Octal(n & 0o7777));
        }
        let mut clauses = Vec::new();
        for clause in s.split(',') {
            let pos = clause
                .find(['+', '-', '='])
                .ok_or_else(|| CopyError::BadChmod(s.into()))?;
            let (who, rest) = clause.split_at(pos);
            let op = rest
                .chars()
                .next()
                .ok_or_else(|| CopyError::BadChmod(s.into()))?;
            let mut mask = 0;
            for c in if who.is_empty() {
                "a".chars()
            } else {
                who.chars()
            } {
                mask |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => return Err(CopyError::BadChmod(s.into())),
                };
            }
            let mut bits = 0;
            for c in rest[1..].chars() {
                bits |= match c {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    's' => 0o6000,
                    't' => 0o1000,
                    _ => return Err(CopyError::BadChmod(s.into())),
                };
            }
            clauses.push((mask, op, bits));
        }
        Ok(ChmodSpec::Symbolic(clauses))
    }

    pub fn apply(&self, mode: u32) -> u32 {
        match self {
            ChmodSpec::Octal(n) => *n,
            ChmodSpec::Symbolic(clauses) => {
                clauses
                    .iter()
                    .fold(mode & 0o7777, |m, (mask, op, bits)| match op {
                        '+' => m | (bits & mask),
                        '-' => m & !(bits & mask),
                        _ => (m & !mask) | (bits & mask),
                    })
            }
        }
    }
}

pub struct CopyRequest<'a> {
    /// The build context, or another stage's root for `--from`.
    pub source_root: &'a Path,
    /// `.dockerignore`, for context sources.
    pub ignore: Option<&'a PatternMatcher>,
    /// As written (wildcards allowed); bytes, as a source named by an earlier match may not
    /// be UTF-8.
    pub sources: Vec<OsString>,
    pub dest: String,
    pub workdir: String,
    pub dest_root: &'a Path,
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<ChmodSpec>,
    pub parents: bool,
    pub excludes: Vec<String>,
    pub source_date_epoch: Option<i64>,
    /// Keep the sources' uid/gid and file capabilities (`--from` copies); context files become
    /// 0:0 and carry no xattrs.
    pub preserve_owner: bool,
    /// Files already in the destination as hard links to an earlier build of the same step
    /// (see `exec::seed`): one identical to what would be written is kept as it is.
    pub seeded: Option<&'a Seeded>,
    /// Context copies: learns what each regular file written or kept holds (see [`ContentLog`]).
    pub contents: Option<&'a ContentLog<'a>>,
}

/// The files a COPY's destination was seeded with, and every path the copy wrote or kept.
#[derive(Debug, Default)]
pub struct Seeded {
    /// Inode numbers of the seeded (hard-linked) files.
    pub inodes: std::collections::HashSet<u64>,
    /// What each seeded file holds, by destination path, as logged when it was written (a
    /// [`ContentLog`] kept with the snapshot); a file missing here is compared byte for byte.
    pub contents: std::collections::HashMap<String, Digest>,
    pub claimed: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The content digest of every regular file a context copy wrote or kept, by destination path.
/// Kept with the snapshot, it lets the next build of the step tell that a seeded file already
/// holds what the source holds now without reading either. The digests come from the context
/// hash cache, checked against the same stat the copy uses: the file's bytes are trusted to be
/// what was hashed to the same degree as the step's cache key is.
pub struct ContentLog<'a> {
    pub hashes: &'a super::hashcache::FileHashCache,
    pub written: std::sync::Mutex<std::collections::BTreeMap<String, Digest>>,
}

impl<'a> ContentLog<'a> {
    pub fn new(hashes: &'a super::hashcache::FileHashCache) -> Self {
        ContentLog {
            hashes,
            written: Default::default(),
        }
    }

    fn record(&self, rel: &str, digest: Digest) {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rel.to_string(), digest);
    }

    pub fn into_written(self) -> std::collections::BTreeMap<String, Digest> {
        self.written.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl Seeded {
    fn claim(&self, rel: &str) {
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rel.to_string());
    }
}

/// Whether the seeded file at `rel` (`name` in `dir`) is exactly what copying `src` would
/// write: the same size, mtime, mode and owner, and the same bytes: the same content digest
/// when both are known (`source_digest`, and the seeded file's in `seeded.contents`), else
/// compared byte for byte.
/// Whether the seeded file `name` in `dir` (`rel` below the destination root) already is what
/// copying `source` would write.
fn seeded_copy_is_identical(
    seeded: &Seeded,
    dir: &impl AsFd,
    (rel, name): (&str, &[u8]),
    source: &Source<'_>,
    wanted: &Wanted<'_>,
) -> bool {
    let (src, meta) = (source.path, source.meta);
    let (mode, owner, source_digest) = (wanted.mode, wanted.owner, wanted.digest);
    let Ok(st) = rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    let same_meta = seeded.inodes.contains(&{ st.st_ino })
        && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        && st.st_size as u64 == meta.len()
        && st.st_mtime == meta.mtime()
        && st.st_mtime_nsec as i64 == meta.mtime_nsec()
        && (st.st_mode & 0o7777) == mode
        && (st.st_uid, st.st_gid) == owner;
    if !same_meta {
        return false;
    }
    if let (Some(want), Some(have)) = (source_digest, seeded.contents.get(rel)) {
        return want == have;
    }
    let Ok(fd) = rustix::fs::openat(
        dir,
        os(name),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let (Ok(mut a), mut b) = (fs::File::open(src), fs::File::from(fd)) else {
        return false;
    };
    same_bytes(&mut a, &mut b).unwrap_or(false)
}

fn same_bytes(a: &mut impl io::Read, b: &mut impl io::Read) -> io::Result<bool> {
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(a, &mut x)?;
        let m = read_full(b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// One selected source: its path relative to the source root as named (its base name is what
/// lands in a destination directory), where it really is once symlinks are followed inside the
/// source root (what is read), and the part kept under the destination with `--parents`.
#[derive(Debug, Clone)]
struct Selected {
    rel: Vec<u8>,
    real: Vec<u8>,
    keep: Vec<u8>,
}

/// Whether a source has wildcards.
pub fn has_glob(s: impl AsRef<[u8]>) -> bool {
    s.as_ref().iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// A path as a source that selects just it: the wildcard characters of each component that
/// has any escaped (a component without them is taken literally, backslashes included).
pub fn literal_source(path: &[u8]) -> OsString {
    let parts: Vec<Vec<u8>> = path
        .split(|&b| b == b'/')
        .map(|part| {
            if !has_glob(part) {
                return part.to_vec();
            }
            let mut out = Vec::with_capacity(part.len() + 4);
            for &b in part {
                if matches!(b, b'*' | b'?' | b'[' | b'\\') {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out
        })
        .collect();
    OsString::from(os(&parts.join(&b'/')))
}

/// One path component against a Go `filepath.Match` pattern component. Names are matched as
/// [`go_runes`] shows them (a byte that is not UTF-8 is one character for `?` and classes, as
/// `filepath.Match` decodes it); so is the pattern, whose literal U+FFFD, unlike Go's byte
/// comparison, then also matches such a byte.
fn component_regex(pattern: &[u8]) -> Result<regex::Regex, CopyError> {
    let pattern = go_runes(pattern);
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'^') || chars.peek() == Some(&'!') {
                    chars.next();
                    re.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' || c == '[' {
                        re.push('\\');
                    }
                    re.push(c);
                }
                re.push(']');
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    re.push_str(&regex::escape(&n.to_string()));
                }
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|_| CopyError::BadPattern(pattern.to_string()))
}

/// Whether `.dockerignore` leaves `rel` out of the context (see
/// [`PatternMatcher::keeps_excluded_dir`] for the directories it keeps).
fn ignored(ignore: Option<&PatternMatcher>, rel: &[u8], is_dir: bool) -> bool {
    ignore.is_some_and(|m| {
        !rel.is_empty() && m.matches(rel) && !(is_dir && m.keeps_excluded_dir(rel))
    })
}

fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// What the sources name, each as `(path as named, where it really is)` below the source root:
/// wildcards expanded, symlinks followed inside the root, `.dockerignore` applied; the error a
/// copy of them would give when one names nothing.
pub fn expand_sources(req: &CopyRequest<'_>) -> Result<Vec<(RelPath, RelPath)>, CopyError> {
    Ok(select(req)?.into_iter().map(|s| (s.rel, s.real)).collect())
}

/// Expands the sources against the source root. As BuildKit's copy (`FollowSymlinks`), the
/// path before the first wildcard and each match are resolved inside the root; directories a
/// wildcard walks through are not followed.
fn select(req: &CopyRequest<'_>) -> Result<Vec<Selected>, CopyError> {
    let mut out = Vec::new();
    if req.sources.is_empty() {
        return Err(CopyError::NoSources);
    }
    let resolve = |rel: &[u8]| super::rootpath::resolve(req.source_root, rel);
    // What `rel` (found at `real`) is, if it is in the context: a path .dockerignore leaves out,
    // by name or where it leads, is not there.
    let present = |rel: &[u8], real: &[u8]| -> Option<fs::Metadata> {
        let m = fs::symlink_metadata(req.source_root.join(os(real))).ok()?;
        let out = ignored(req.ignore, rel, m.is_dir()) || ignored(req.ignore, real, m.is_dir());
        (!out).then_some(m)
    };
    for src in &req.sources {
        let src = src.as_bytes();
        // `--parents` keeps what follows a `/./` pivot (or the whole path).
        let pivot_at = src.windows(3).position(|w| w == b"/./");
        let (pivot, src_path) = match pivot_at {
            Some(i) if req.parents => (
                Some(trim_slashes(&clean_bytes(&src[..i])).to_vec()),
                replace_pivots(src),
            ),
            _ => (None, src.to_vec()),
        };
        let cleaned = clean_bytes(&[b"/", src_path.as_slice()].concat());
        let rel = trim_slashes(&cleaned).to_vec();
        let keep_of = |r: &[u8]| -> Vec<u8> {
            match &pivot {
                Some(p) if !p.is_empty() && p.as_slice() != b"." => {
                    trim_slashes(r.strip_prefix(p.as_slice()).unwrap_or(r)).to_vec()
                }
                _ => r.to_vec(),
            }
        };
        if !has_glob(&rel) {
            let real = resolve(&rel)?;
            if present(&rel, &real).is_none() {
                // A symlink that leads nowhere is named by where it leads, as BuildKit does.
                let missing = if real == rel {
                    shown(src)
                } else {
                    format!("/{}", shown(&real))
                };
                return Err(CopyError::NotFound(missing));
            }
            out.push(Selected {
                keep: keep_of(&rel),
                rel,
                real,
            });
            continue;
        }
        let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        let first_glob = parts.iter().position(has_glob).unwrap_or(0);
        let prefix = parts[..first_glob].join(&b'/');
        // (as named, where it really is)
        let mut matches = vec![(prefix.clone(), resolve(&prefix)?)];
        for part in &parts[first_glob..] {
            let mut next = Vec::new();
            for (base, real) in &matches {
                let dir = req.source_root.join(os(real));
                // Only real directories are walked into, never a symlink to one.
                if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                let names: Vec<Vec<u8>> = if has_glob(part) {
                    let re = component_regex(part)?;
                    let Ok(entries) = fs::read_dir(&dir) else {
                        continue;
                    };
                    let mut names: Vec<Vec<u8>> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().into_encoded_bytes())
                        .filter(|n| re.is_match(&go_runes(n)))
                        .collect();
                    names.sort();
                    names
                } else if fs::symlink_metadata(dir.join(os(part))).is_ok() {
                    vec![part.to_vec()]
                } else {
                    Vec::new()
                };
                for n in names {
                    next.push((join_rel(base, &n), join_rel(real, &n)));
                }
            }
            matches = next;
        }
        let before = out.len();
        for (m, real) in matches {
            let real = resolve(&real)?;
            if ignored(req.ignore, &m, is_dir(&req.source_root.join(os(&real)))) {
                continue;
            }
            if present(&m, &real).is_none() {
                return Err(CopyError::NotFound(format!("/{}", shown(&real))));
            }
            out.push(Selected {
                keep: keep_of(&m),
                rel: m,
                real,
            });
        }
        // A wildcard that matches nothing copies nothing, as BuildKit's copy with
        // `AllowEmptyWildcard` (`COPY pyproject.toml poetry.lock* ./` without a lock file);
        // only a missing directory before the wildcard is an error, as BuildKit's lstat of it.
        if out.len() == before
            && fs::symlink_metadata(req.source_root.join(os(&resolve(&prefix)?))).is_err()
        {
            return Err(CopyError::NotFound(shown(src)));
        }
    }
    Ok(out)
}

fn trim_slashes(p: &[u8]) -> &[u8] {
    let start = p.iter().position(|&b| b != b'/').unwrap_or(p.len());
    &p[start..]
}

/// Every `/./` of a `--parents` source made `/`.
fn replace_pivots(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        if src[i..].starts_with(b"/./") {
            out.push(b'/');
            i += 3;
        } else {
            out.push(src[i]);
            i += 1;
        }
    }
    out
}

/// What [`walk_source`] calls for each entry: its path below the source, where it is, its stat.
type Visit<'a> = dyn FnMut(&[u8], &Path, &fs::Metadata) -> Result<(), CopyError> + 'a;

/// Walks a selected source: `(relative path under the source, metadata)` for it and, for a
/// directory, everything below, sorted by name (bytes), without following symlinks.
fn walk_source(
    req: &CopyRequest<'_>,
    excludes: Option<&PatternMatcher>,
    base_rel: &[u8],
    visit: &mut Visit<'_>,
) -> Result<(), CopyError> {
    fn rec(
        req: &CopyRequest<'_>,
        excludes: Option<&PatternMatcher>,
        base_rel: &[u8],
        sub: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<(), CopyError> {
        let dir = req.source_root.join(os(base_rel)).join(os(sub));
        // Names are kept as bytes: one that is not UTF-8 is copied as it is, as BuildKit does.
        let mut entries: Vec<(OsString, fs::DirEntry)> = fs::read_dir(&dir)
            .map_err(io_err("list", &dir))?
            .filter_map(|e| e.ok())
            .map(|e| (e.file_name(), e))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in entries {
            let child = join_rel(sub, name.as_bytes());
            let full_rel = join_rel(base_rel, &child);
            let path = req.source_root.join(os(&full_rel));
            // Relative to the open directory: no walk of the whole path for each file.
            let meta = entry.metadata().map_err(io_err("stat", &path))?;
            let skip_ignored = ignored(req.ignore, &full_rel, meta.is_dir());
            let skip_excluded = excludes.is_some_and(|m| m.matches(&child));
            let has_exceptions = req.ignore.is_some_and(|m| m.exclusions());
            if (skip_ignored || skip_excluded)
                && !(meta.is_dir() && has_exceptions && !skip_excluded)
            {
                continue;
            }
            if !(skip_ignored && meta.is_dir()) {
                visit(&child, &path, &meta)?;
            }
            if meta.is_dir() {
                rec(req, excludes, base_rel, &child, visit)?;
            }
        }
        Ok(())
    }
    rec(req, excludes, base_rel, b"", visit)
}

/// A root directory that every path is resolved in, symlinks included.
struct DestRoot {
    root: SafeRoot,
    /// The directory `mkdir_all` resolved last: the files of a source directory are copied one
    /// after another into the same destination directory, and resolving its path component by
    /// component for each of them was most of a large COPY's system calls. Forgotten whenever
    /// the copy unlinks anything (a replaced symlink could change what a path resolves to).
    last_dir: std::sync::Mutex<Option<(Vec<u8>, std::sync::Arc<ResolvedDir>)>>,
    /// The root's path with symlinks resolved, to name an open directory inside it.
    real_root: Option<PathBuf>,
    /// Where each multiply-linked source file (device, inode) was first written by the
    /// source being copied: the next names of it become hard links to that file, as BuildKit's
    /// copy keeps them. Each source starts afresh (BuildKit copies each on its own).
    links: std::sync::Mutex<std::collections::HashMap<(u64, u64), Vec<u8>>>,
}

/// A destination directory `mkdir_all` resolved (symlinks inside the root followed).
struct ResolvedDir {
    fd: OwnedFd,
    /// Its path relative to the root once symlinks are resolved (`bin` in a Debian image is
    /// `usr/bin`), looked up when first asked for.
    real: std::sync::OnceLock<Option<Vec<u8>>>,
}

impl AsFd for ResolvedDir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl ResolvedDir {
    /// Where this directory really is below `root` (`None` if the kernel will not say).
    fn real_rel(&self, root: &DestRoot) -> Option<&[u8]> {
        self.real
            .get_or_init(|| {
                use std::os::fd::AsRawFd;
                let link = fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).ok()?;
                let rel = link.strip_prefix(root.real_root.as_ref()?).ok()?;
                Some(rel.as_os_str().as_bytes().to_vec())
            })
            .as_deref()
    }
}

impl DestRoot {
    fn open(path: &Path) -> Result<DestRoot, CopyError> {
        let root = SafeRoot::open(path).map_err(|e| {
            CopyError::Io(crate::oci::IoError {
                op: e.op,
                path: e.path,
                source: e.source,
            })
        })?;
        Ok(DestRoot {
            root,
            last_dir: Default::default(),
            real_root: fs::canonicalize(path).ok(),
            links: Default::default(),
        })
    }

    /// Where the source file `id` was written before in this copy, if it was; else
    /// remembers `rel` for it.
    fn earlier_link(&self, id: (u64, u64), rel: &[u8]) -> Option<Vec<u8>> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match links.get(&id) {
            Some(first) => Some(first.clone()),
            None => {
                links.insert(id, rel.to_vec());
                None
            }
        }
    }

    fn forget_links(&self) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn forget_dirs(&self) {
        *self.last_dir.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Directory `rel` (an `O_PATH` fd), resolved inside the root.
    fn open_dir(&self, rel: &[u8]) -> rustix::io::Result<OwnedFd> {
        self.root.open_dir(os(rel))
    }

    fn is_dir(&self, rel: &[u8]) -> bool {
        self.open_dir(rel).is_ok()
    }

    /// `mkdir -p` inside the root, through dangling symlinks (their targets are made, inside
    /// the root); new directories get `owner` and mode 0755.
    fn mkdir_all(
        &self,
        rel: &[u8],
        owner: (u32, u32),
    ) -> Result<std::sync::Arc<ResolvedDir>, CopyError> {
        let mut last = self.last_dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((dir, fd)) = last.as_ref() {
            if dir == rel {
                return Ok(fd.clone());
            }
        }
        let made = |d: &NewDir<'_>| {
            rustix::fs::chownat(
                d.parent,
                d.name,
                Some(rustix::fs::Uid::from_raw(owner.0)),
                Some(rustix::fs::Gid::from_raw(owner.1)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.root.error("chown", d.rel, e))?;
            // 0755 whatever the umask.
            rustix::fs::chmodat(
                d.parent,
                d.name,
                Mode::from_raw_mode(0o755),
                AtFlags::empty(),
            )
            .map_err(|e| self.root.error("chmod", d.rel, e))
        };
        let fd = self.root.mkdir_all_following(os(rel), made).map_err(|e| {
            if e.errno() == Some(rustix::io::Errno::NOTDIR) {
                let inside = e.path.strip_prefix(self.root.path()).unwrap_or(&e.path);
                return CopyError::NotADirectory(format!("/{}", inside.display()));
            }
            CopyError::Io(crate::oci::IoError {
                op: e.op,
                path: e.path,
                source: e.source,
            })
        })?;
        let fd = std::sync::Arc::new(ResolvedDir {
            fd,
            real: Default::default(),
        });
        *last = Some((rel.to_vec(), fd.clone()));
        Ok(fd)
    }
}

fn set_times(dir: &impl AsFd, name: &[u8], secs: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: nsec as _,
    };
    let _ = rustix::fs::utimensat(
        dir,
        os(name),
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    );
}

fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (b"", rel),
    }
}

/// Copies the selected sources into the root; returns what was written.
pub fn copy_into_root(req: &CopyRequest<'_>) -> Result<CopyStats, CopyError> {
    let selected = select(req)?;
    let excludes = if req.excludes.is_empty() {
        None
    } else {
        Some(PatternMatcher::new(&req.excludes).map_err(|e| CopyError::BadPattern(e.to_string()))?)
    };
    let dest_abs = if req.dest.starts_with('/') {
        req.dest.clone()
    } else {
        format!("{}/{}", req.workdir.trim_end_matches('/'), req.dest)
    };
    let dest_rel = trim_slashes(&clean_bytes(dest_abs.as_bytes())).to_vec();
    let root = DestRoot::open(req.dest_root)?;
    // A wildcard with one match copies like that one source named: to a file at a
    // destination without `/`, as BuildKit copies each match to the destination as given.
    let multiple = selected.len() > 1;
    let dest_is_dir = req.dest.ends_with('/')
        || req.dest == "."
        || multiple
        || req.parents
        || root.is_dir(&dest_rel);
    let owner_of = |m: &fs::Metadata| {
        req.chown.unwrap_or_else(|| {
            // Files from the build context belong to root; --from copies keep their owners.
            if req.preserve_owner {
                (m.uid(), m.gid())
            } else {
                (0, 0)
            }
        })
    };
    let mut stats = CopyStats::default();
    for sel in &selected {
        root.forget_links();
        let src_path = req.source_root.join(os(&sel.real));
        let meta = fs::symlink_metadata(&src_path).map_err(io_err("stat", &src_path))?;
        let base_name = split_parent(&sel.rel).1;
        let target = if req.parents {
            join_rel(&dest_rel, &sel.keep)
        } else if meta.is_dir() {
            dest_rel.clone()
        } else if dest_is_dir {
            join_rel(&dest_rel, base_name)
        } else {
            // BuildKit resolves the destination itself through symlinks (`fs.RootPath`):
            // `COPY f /usr/bin/awk` replaces the file the awk link leads to, not the link, and a
            // dangling link's target is created.
            root.root
                .resolve_last(os(&dest_rel))
                .map_err(errno("resolve", &dest_rel))?
        };
        let created_owner = req.chown.unwrap_or((0, 0));
        if meta.is_dir() {
            let fd = root.mkdir_all(&target, created_owner)?;
            if req.parents {
                apply_meta(&root, &target, &meta, owner_of(&meta), req.chmod.as_ref())?;
            }
            drop(fd);
            stats.dirs += 1;
            // Writing into a directory moves its mtime; like BuildKit, copied directories
            // get their source times back once their contents are in.
            let mut dirs = Vec::new();
            walk_source(req, excludes.as_ref(), &sel.real, &mut |child, path, m| {
                let rel = join_rel(&target, child);
                let key = source_key(&sel.real, child);
                let source = Source {
                    key: &key,
                    path,
                    meta: m,
                };
                write_entry(&root, req, &rel, &source, owner_of(m), &mut stats)?;
                if m.is_dir() {
                    dirs.push((rel, m.mtime(), m.mtime_nsec()));
                }
                Ok(())
            })?;
            for (rel, secs, nanos) in dirs {
                let (parent, name) = split_parent(&rel);
                if let Ok(pfd) = root.open_dir(parent) {
                    set_times(&pfd, name, secs, nanos);
                }
            }
        } else {
            let (parent, _) = split_parent(&target);
            root.mkdir_all(parent, created_owner)?;
            let source = Source {
                key: &sel.real,
                path: &src_path,
                meta: &meta,
            };
            write_entry(&root, req, &target, &source, owner_of(&meta), &mut stats)?;
        }
    }
    Ok(stats)
}

/// How a file under a selected directory is named in the cache key and the context hash cache.
fn source_key(selected: &[u8], child: &[u8]) -> Vec<u8> {
    [selected, b"/", child].concat()
}

fn join_rel(a: &[u8], b: &[u8]) -> Vec<u8> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_vec(),
        (_, true) => a.to_vec(),
        _ => [a, b"/", b].concat(),
    }
}

fn apply_meta(
    root: &DestRoot,
    rel: &[u8],
    meta: &fs::Metadata,
    owner: (u32, u32),
    chmod: Option<&ChmodSpec>,
) -> Result<(), CopyError> {
    let (parent, name) = split_parent(rel);
    let pfd = root.open_dir(parent).map_err(errno("open", rel))?;
    rustix::fs::chownat(
        &pfd,
        os(name),
        Some(rustix::fs::Uid::from_raw(owner.0)),
        Some(rustix::fs::Gid::from_raw(owner.1)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(errno("chown", rel))?;
    // Linux has no mode on a symlink (fchmodat refuses AT_SYMLINK_NOFOLLOW), and following
    // it would change its target: a symlink keeps the mode it was made with, as in BuildKit.
    if !meta.file_type().is_symlink() {
        let mode = chmod.map_or(meta.mode() & 0o7777, |c| c.apply(meta.mode()));
        rustix::fs::chmodat(&pfd, os(name), Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(errno("chmod", rel))?;
    }
    set_times(&pfd, name, meta.mtime(), meta.mtime_nsec());
    Ok(())
}

/// Writes one source entry at `rel` in the destination; `source_key` names `src` in the
/// context hash cache (as [`hash_sources`] does).
/// One entry of a COPY's sources: its key in the context hash cache, where it is, its stat.
struct Source<'a> {
    key: &'a [u8],
    path: &'a Path,
    meta: &'a fs::Metadata,
}

/// What a destination file must be to stand for its source unchanged.
struct Wanted<'a> {
    mode: u32,
    owner: (u32, u32),
    digest: Option<&'a Digest>,
}

fn write_entry(
    root: &DestRoot,
    req: &CopyRequest<'_>,
    rel: &[u8],
    source: &Source<'_>,
    owner: (u32, u32),
    stats: &mut CopyStats,
) -> Result<(), CopyError> {
    let (source_key, src, meta) = (source.key, source.path, source.meta);
    let chmod = req.chmod.as_ref();
    let (parent, name) = split_parent(rel);
    let pfd = root.mkdir_all(parent, owner)?;
    let ft = meta.file_type();
    let source_digest = match req.contents {
        Some(log) if ft.is_file() => log.hashes.digest(source_key, src, meta).ok(),
        _ => None,
    };
    let name = os(name);
    // Seeding and its records go by where the entry really is: `COPY x /bin/x` on a Debian
    // base writes `usr/bin/x`, which is also where the seeded file is.
    let tracked = req.seeded.is_some() || req.contents.is_some();
    let real_rel = match tracked.then(|| pfd.real_rel(root)).flatten() {
        Some(dir) => join_rel(dir, name.as_bytes()),
        None => rel.to_vec(),
    };
    // Seeding and the content log know UTF-8 paths only (seeding leaves other names to the
    // copy): such a file is simply written.
    let tracked_rel = std::str::from_utf8(&real_rel).ok();
    let (seeded, contents) = match tracked_rel {
        Some(_) => (req.seeded, req.contents),
        None => (None, None),
    };
    let tracked_rel = tracked_rel.unwrap_or_default();
    // A second name of a source file (a hard link) becomes a hard link to the first copy.
    let link_to = (ft.is_file() && meta.nlink() > 1)
        .then(|| root.earlier_link((meta.dev(), meta.ino()), rel))
        .flatten()
        // The same source named twice for one destination is just copied again.
        .filter(|first| first != rel);
    if let Some(seeded) = seeded {
        seeded.claim(tracked_rel);
        let mode = chmod.map_or(meta.mode() & 0o7777, |c| c.apply(meta.mode()));
        if ft.is_file()
            && link_to.is_none()
            && seeded_copy_is_identical(
                seeded,
                &pfd,
                (tracked_rel, name.as_bytes()),
                source,
                &Wanted {
                    mode,
                    owner,
                    digest: source_digest.as_ref(),
                },
            )
        {
            if let (Some(log), Some(d)) = (contents, source_digest) {
                log.record(tracked_rel, d);
            }
            stats.files += 1;
            stats.bytes += meta.len();
            return Ok(());
        }
    }
    if ft.is_dir() {
        match rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                if !root.is_dir(rel) {
                    root.forget_dirs();
                    let _ = rustix::fs::unlinkat(&pfd, name, AtFlags::empty());
                    rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o755))
                        .map_err(errno("create directory", rel))?;
                }
            }
            Err(e) => return Err(errno("create directory", rel)(e)),
        }
        stats.dirs += 1;
    } else {
        // Replace whatever is there (never write through an existing symlink).
        match rustix::fs::unlinkat(&pfd, name, AtFlags::empty()) {
            Err(rustix::io::Errno::ISDIR) => {
                return Err(CopyError::NotADirectory(format!("/{}", shown(rel))))
            }
            Ok(()) => root.forget_dirs(),
            Err(_) => {}
        }
        if let Some(first) = link_to {
            let (first_parent, first_name) = split_parent(&first);
            let first_dir = root
                .open_dir(first_parent)
                .map_err(errno("open", first_parent))?;
            rustix::fs::linkat(&first_dir, os(first_name), &pfd, name, AtFlags::empty())
                .map_err(errno("link", rel))?;
            if let (Some(log), Some(d)) = (contents, source_digest) {
                log.record(tracked_rel, d);
            }
            stats.files += 1;
            // Owner, mode and times are the first name's: it is the same file.
            return Ok(());
        }
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_err("read link", src))?;
            rustix::fs::symlinkat(&target, &pfd, name).map_err(errno("create symlink", rel))?;
            stats.symlinks += 1;
        } else if ft.is_file() {
            let fd = rustix::fs::openat(
                &pfd,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(errno("create", rel))?;
            let mut out = fs::File::from(fd);
            let mut input = fs::File::open(src).map_err(io_err("open", src))?;
            let copied = io::copy(&mut input, &mut out).map_err(io_err("copy", src))?;
            out.flush()
                .map_err(io_err("write", root.root.host_path(os(rel))))?;
            // A file that changed size since it was hashed is not logged (it is then compared
            // byte for byte if it is ever seeded).
            if let (Some(log), Some(d)) = (contents, source_digest) {
                if copied == meta.len() {
                    log.record(tracked_rel, d);
                }
            }
            stats.bytes += copied;
            stats.files += 1;
        } else {
            // Devices, fifos and sockets in a context are skipped, as BuildKit's fsutil does.
            return Ok(());
        }
    }
    apply_meta(root, rel, meta, owner, chmod)?;
    if req.preserve_owner && ft.is_file() {
        copy_capability(src, &*pfd, name, rel)?;
    }
    Ok(())
}

/// A file's capability (`setcap` in the other stage) comes along in a `--from` copy, as
/// BuildKit's copy keeps it; it is set after the chown, which would clear it. Context files
/// arrive in BuildKit without xattrs, so those copies never carry one.
fn copy_capability(src: &Path, pfd: &impl AsFd, name: &OsStr, rel: &[u8]) -> Result<(), CopyError> {
    const CAP: &str = "security.capability";
    let mut buf = [0u8; 64];
    let n = match rustix::fs::lgetxattr(src, CAP, &mut buf) {
        Ok(n) => n,
        Err(_) => return Ok(()), // none, or a filesystem without xattrs
    };
    let fd = rustix::fs::openat(
        pfd,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("open", rel))?;
    match rustix::fs::fsetxattr(&fd, CAP, &buf[..n], rustix::fs::XattrFlags::empty()) {
        // Without CAP_SETFCAP (rootless) or xattrs, the file is copied without it, as an
        // image extraction leaves out what it cannot set.
        Ok(()) | Err(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP) => Ok(()),
        Err(e) => Err(errno("set the capability of", rel)(e)),
    }
}

/// What a COPY's sources hash to: one digest for the cache key, and each selected path with
/// the digest of what lands for it (to tell which paths changed when a key misses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDigest {
    pub digest: Digest,
    pub entries: Vec<(String, String)>,
}

/// A digest of what the sources would copy: paths, types, modes, symlink targets, file contents,
/// and owners where they land in the layer (`--from` copies keep them; context files become
/// 0:0). Not times. File contents come from `cache` when their metadata is unchanged; the rest
/// are read on all cores.
pub fn hash_sources(
    req: &CopyRequest<'_>,
    cache: &super::hashcache::FileHashCache,
) -> Result<SourceDigest, CopyError> {
    let selected = select(req)?;
    let excludes = if req.excludes.is_empty() {
        None
    } else {
        Some(PatternMatcher::new(&req.excludes).map_err(|e| CopyError::BadPattern(e.to_string()))?)
    };
    // (context hash cache key: the path read), and the name it is copied under.
    let mut found: Vec<(Vec<u8>, PathBuf, fs::Metadata)> = Vec::new();
    let mut names: Vec<Vec<u8>> = Vec::new();
    for sel in &selected {
        let path = req.source_root.join(os(&sel.real));
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        let is_dir = meta.is_dir();
        found.push((sel.real.clone(), path, meta));
        names.push(sel.rel.clone());
        if is_dir {
            walk_source(req, excludes.as_ref(), &sel.real, &mut |child, p, m| {
                found.push((source_key(&sel.real, child), p.to_path_buf(), m.clone()));
                names.push(source_key(&sel.rel, child));
                Ok(())
            })?;
        }
    }
    let contents = content_digests(&found, cache)?;
    // Bytes: names and symlink targets that are not UTF-8 are part of the key as they are.
    let mut text: Vec<u8> = Vec::new();
    let mut entries = Vec::with_capacity(found.len());
    for (((_, _, m), content), rel) in found.iter().zip(contents).zip(&names) {
        let kind = if m.is_dir() {
            'd'
        } else if m.file_type().is_symlink() {
            'l'
        } else {
            'f'
        };
        let owner = if req.preserve_owner {
            format!("{}:{}", m.uid(), m.gid())
        } else {
            String::new()
        };
        let head = format!("{kind}{:o}\0{owner}\0", m.permissions().mode() & 0o7777);
        for part in [rel.as_slice(), b"\0", head.as_bytes(), &content, b"\n"] {
            text.extend_from_slice(part);
        }
        entries.push((shown(rel), format!("{head}{}", shown(&content))));
    }
    Ok(SourceDigest {
        digest: Digest::of(&text),
        entries,
    })
}

/// File digests (and symlink targets) of `found`, in order, hashed on all cores.
#[allow(clippy::type_complexity)]
fn content_digests(
    found: &[(Vec<u8>, PathBuf, fs::Metadata)],
    cache: &super::hashcache::FileHashCache,
) -> Result<Vec<Vec<u8>>, CopyError> {
    let one = |(rel, path, m): &(Vec<u8>, PathBuf, fs::Metadata)| -> Result<Vec<u8>, CopyError> {
        if m.is_file() {
            Ok(cache
                .digest(rel, path, m)
                .map_err(io_err("read", path))?
                .to_string()
                .into_bytes())
        } else if m.file_type().is_symlink() {
            Ok(fs::read_link(path)
                .map_err(io_err("read link", path))?
                .into_os_string()
                .into_encoded_bytes())
        } else {
            Ok(Vec::new())
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads == 1 || found.len() < 64 {
        return found.iter().map(one).collect();
    }
    // Interleaved slices balance big and small files without a work queue.
    let results: Vec<Result<Vec<(usize, Vec<u8>)>, CopyError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..found.len())
                        .step_by(threads)
                        .map(|i| one(&found[i]).map(|d| (i, d)))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(CopyError::BadPattern("a hashing thread panicked".into()))
                })
            })
            .collect()
    });
    let mut out = vec![Vec::new(); found.len()];
    for part in results {
        for (i, d) in part? {
            out[i] = d;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(src: &'a Path, dst: &'a Path, sources: &[&str], dest: &str) -> CopyRequest<'a> {
        CopyRequest {
            source_root: src,
            ignore: None,
            sources: sources.iter().map(Into::into).collect(),
            dest: dest.into(),
            workdir: "/app".into(),
            dest_root: dst,
            chown: None,
            chmod: None,
            parents: false,
            excludes: Vec::new(),
            source_date_epoch: None,
            preserve_owner: false,
            seeded: None,
            contents: None,
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        let root = d.path().join("root");
        fs::create_dir_all(ctx.join("src/sub")).unwrap();
        fs::create_dir_all(&root).unwrap();
        fs::write(ctx.join("a.txt"), "a").unwrap();
        fs::write(ctx.join("b.txt"), "b").unwrap();
        fs::write(ctx.join("src/main.py"), "print()").unwrap();
        fs::write(ctx.join("src/sub/x.py"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).unwrap();
        (d, ctx, root)
    }

    #[test]
    fn buildkit_copy_semantics() {
        let (_d, ctx, root) = setup();
        copy_into_root(&req(&ctx, &root, &["a.txt"], ".")).unwrap();
        assert_eq!(fs::read_to_string(root.join("app/a.txt")).unwrap(), "a");
        copy_into_root(&req(&ctx, &root, &["a.txt"], "/renamed")).unwrap();
        assert_eq!(fs::read_to_string(root.join("renamed")).unwrap(), "a");
        copy_into_root(&req(&ctx, &root, &["src/"], "/code/")).unwrap();
        assert!(root.join("code/main.py").exists() && root.join("code/sub/x.py").exists());
        copy_into_root(&req(&ctx, &root, &["*.txt"], "/txt")).unwrap();
        assert!(root.join("txt/a.txt").exists() && root.join("txt/b.txt").exists());
        assert!(matches!(
            copy_into_root(&req(&ctx, &root, &["missing"], "/x/")),
            Err(CopyError::NotFound(_))
        ));
        // A source symlink is followed inside the context: to a file there, or to nothing.
        std::os::unix::fs::symlink("src/main.py", ctx.join("to-main")).unwrap();
        copy_into_root(&req(&ctx, &root, &["to-main"], "/l")).unwrap();
        assert!(fs::symlink_metadata(root.join("l")).unwrap().is_file());
        assert_eq!(fs::read_to_string(root.join("l")).unwrap(), "print()");
        assert!(matches!(
            copy_into_root(&req(&ctx, &root, &["link"], "/l2")),
            Err(CopyError::NotFound(p)) if p == "/etc/passwd"
        ));
        // Under a copied directory it stays a symlink.
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("src/sub/link")).unwrap();
        copy_into_root(&req(&ctx, &root, &["src"], "/code2")).unwrap();
        assert_eq!(
            fs::read_link(root.join("code2/sub/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        // `..` cannot leave the context.
        copy_into_root(&req(&ctx, &root, &["../../a.txt"], "/up")).unwrap();
        assert_eq!(fs::read_to_string(root.join("up")).unwrap(), "a");
    }

    #[test]
    fn a_wildcard_that_matches_nothing_copies_nothing_and_one_match_copies_as_named() {
        let (_d, ctx, root) = setup();
        // `COPY pyproject.toml poetry.lock* ./` without a lock file, and a lone empty wildcard.
        copy_into_root(&req(&ctx, &root, &["a.txt", "*.lock*"], "/w/")).unwrap();
        assert!(root.join("w/a.txt").is_file());
        copy_into_root(&req(&ctx, &root, &["*.nope"], "/x/")).unwrap();
        assert!(!root.join("x").exists());
        let d = hash_sources(&req(&ctx, &root, &["a.txt", "*.nope"], "/w/"), &mem()).unwrap();
        let a = hash_sources(&req(&ctx, &root, &["a.txt"], "/w/"), &mem()).unwrap();
        assert_eq!(d.digest, a.digest);
        // Matches that .dockerignore leaves out are no matches.
        let ignore = PatternMatcher::new(["*.txt"]).unwrap();
        let mut r = req(&ctx, &root, &["*.txt"], "/ig/");
        r.ignore = Some(&ignore);
        copy_into_root(&r).unwrap();
        assert!(!root.join("ig").exists());
        // A missing directory before the wildcard is still an error.
        assert!(matches!(
            copy_into_root(&req(&ctx, &root, &["nope/*.txt"], "/x/")),
            Err(CopyError::NotFound(p)) if p == "nope/*.txt"
        ));
        // One match to a destination without `/` is that file, as BuildKit copies each match.
        copy_into_root(&req(&ctx, &root, &["a.tx?"], "/one")).unwrap();
        assert_eq!(fs::read_to_string(root.join("one")).unwrap(), "a");
        copy_into_root(&req(&ctx, &root, &["a.txt", "*.nope"], "/two")).unwrap();
        assert_eq!(fs::read_to_string(root.join("two")).unwrap(), "a");
    }

    #[test]
    fn a_from_copy_keeps_a_file_capability_after_its_chown_and_a_context_copy_does_not() {
        let (_d, ctx, root) = setup();
        // cap_net_bind_service=ep, as `setcap` writes it.
        let cap: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let xattr_flags = rustix::fs::XattrFlags::empty();
        rustix::fs::setxattr(ctx.join("a.txt"), "security.capability", &cap, xattr_flags).unwrap();
        rustix::fs::setxattr(ctx.join("a.txt"), "user.x", b"1", xattr_flags).unwrap();
        let get = |p: &Path, name: &str| {
            let mut buf = [0u8; 64];
            rustix::fs::lgetxattr(p, name, &mut buf)
                .map(|n| buf[..n].to_vec())
                .ok()
        };
        let from = CopyRequest {
            preserve_owner: true,
            chown: Some((7, 7)),
            ..req(&ctx, &root, &["a.txt"], "/from")
        };
        copy_into_root(&from).unwrap();
        assert_eq!(
            get(&root.join("from"), "security.capability"),
            Some(cap.to_vec())
        );
        assert_eq!(get(&root.join("from"), "user.x"), None);
        copy_into_root(&req(&ctx, &root, &["a.txt"], "/context")).unwrap();
        assert_eq!(get(&root.join("context"), "security.capability"), None);
    }

    #[test]
    fn source_names_and_link_targets_that_are_not_utf8_are_copied_byte_for_byte() {
        // BuildKit copies such names as they are (Go strings are bytes); they were refused.
        let (_d, ctx, root) = setup();
        let raw = |b: &[u8]| PathBuf::from(OsStr::from_bytes(b));
        fs::write(ctx.join("src").join(raw(b"caf\xe9")), "latin-1").unwrap();
        fs::create_dir(ctx.join("src").join(raw(b"d\xff"))).unwrap();
        fs::write(ctx.join("src").join(raw(b"d\xff/in")), "in").unwrap();
        fs::write(ctx.join("src").join(raw(b"skip\xe9")), "no").unwrap();
        std::os::unix::fs::symlink(raw(b"caf\xe9"), ctx.join("src").join(raw(b"l\xe8"))).unwrap();
        let ignore = PatternMatcher::new(["src/skip?"]).unwrap();
        let stats = copy_into_root(&CopyRequest {
            ignore: Some(&ignore),
            ..req(&ctx, &root, &["src"], "/code")
        })
        .unwrap();
        let code = root.join("code");
        assert_eq!(
            fs::read_to_string(code.join(raw(b"caf\xe9"))).unwrap(),
            "latin-1"
        );
        assert_eq!(
            fs::read_to_string(code.join(raw(b"d\xff/in"))).unwrap(),
            "in"
        );
        assert_eq!(
            fs::read_link(code.join(raw(b"l\xe8"))).unwrap(),
            raw(b"caf\xe9")
        );
        assert!(fs::symlink_metadata(code.join(raw(b"skip\xe9"))).is_err());
        assert_eq!((stats.symlinks, stats.dirs), (1, 3));

        // A wildcard matches such a name (one character for `?`), and a source may name one.
        let wild = copy_into_root(&req(&ctx, &root, &["src/caf?"], "/w/")).unwrap();
        assert_eq!(wild.files, 1);
        assert!(root.join("w").join(raw(b"caf\xe9")).is_file());
        let named = CopyRequest {
            sources: vec![OsString::from(raw(b"src/d\xff"))],
            ..req(&ctx, &root, &[], "/n")
        };
        copy_into_root(&named).unwrap();
        assert!(root.join("n/in").is_file());
        // A name with wildcard characters, named back literally (as ADD narrows a wildcard).
        fs::create_dir(ctx.join("b\\s")).unwrap();
        fs::write(ctx.join("b\\s").join(raw(b"a[1]*\xe9")), "w").unwrap();
        fs::write(ctx.join("b\\s/a1x"), "not me").unwrap();
        let lit = literal_source(b"b\\s/a[1]*\xe9");
        assert_eq!(lit.as_bytes(), b"b\\s/a\\[1]\\*\xe9");
        let sel = expand_sources(&CopyRequest {
            sources: vec![lit],
            ..req(&ctx, &root, &[], "/")
        })
        .unwrap();
        assert_eq!(
            sel,
            [(b"b\\s/a[1]*\xe9".to_vec(), b"b\\s/a[1]*\xe9".to_vec())]
        );

        // The key tells names and targets apart byte for byte (they were all U+FFFD).
        let key = || hash_sources(&req(&ctx, &root, &["src"], "/"), &mem()).unwrap();
        let before = key();
        fs::rename(
            ctx.join("src").join(raw(b"caf\xe9")),
            ctx.join("src").join(raw(b"caf\xe8")),
        )
        .unwrap();
        let renamed = key();
        assert_ne!(renamed.digest, before.digest);
        fs::remove_file(ctx.join("src").join(raw(b"l\xe8"))).unwrap();
        std::os::unix::fs::symlink(raw(b"caf\xe8"), ctx.join("src").join(raw(b"l\xe8"))).unwrap();
        assert_ne!(key().digest, renamed.digest);
        // A name that is UTF-8 keeps the key it had.
        assert!(before.entries.iter().any(|(p, _)| p == "src/main.py"));
    }

    #[test]
    fn a_file_destination_that_is_a_symlink_is_followed_inside_the_root() {
        // As BuildKit (fs.RootPath on the destination): the file the link chain leads to is
        // replaced, the links stay; a dangling link's target is created; a link out of the
        // root lands inside it.
        let (d, ctx, root) = setup();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        fs::write(root.join("usr/bin/mawk"), "binary").unwrap();
        std::os::unix::fs::symlink("/usr/bin/mawk", root.join("etc/alternatives/awk")).unwrap();
        std::os::unix::fs::symlink("/etc/alternatives/awk", root.join("usr/bin/awk")).unwrap();
        std::os::unix::fs::symlink("/nowhere/file", root.join("dangling")).unwrap();
        let outside = d.path().join("outside.txt");
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        for dest in ["/usr/bin/awk", "/dangling", "/out"] {
            copy_into_root(&req(&ctx, &root, &["a.txt"], dest)).unwrap();
        }
        assert_eq!(fs::read_to_string(root.join("usr/bin/mawk")).unwrap(), "a");
        assert!(fs::symlink_metadata(root.join("usr/bin/awk"))
            .unwrap()
            .is_symlink());
        assert_eq!(fs::read_to_string(root.join("nowhere/file")).unwrap(), "a");
        assert!(!outside.exists(), "wrote through a symlink out of the root");
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read_to_string(inside).unwrap(), "a");
    }

    #[test]
    fn destination_symlinks_stay_inside_the_root() {
        let (d, ctx, root) = setup();
        let outside = d.path().join("outside");
        std::os::unix::fs::symlink(&outside, root.join("app")).unwrap();
        copy_into_root(&req(&ctx, &root, &["a.txt"], "/app/")).unwrap();
        assert!(!outside.exists(), "wrote through a symlink out of the root");
        let inside = root.join(outside.strip_prefix("/").unwrap()).join("a.txt");
        assert_eq!(fs::read_to_string(inside).unwrap(), "a");
    }

    #[test]
    fn chmod_chown_parents_exclude_ignore_and_hash() {
        let (_d, ctx, root) = setup();
        let mut r = req(&ctx, &root, &["a.txt"], "/m/");
        r.chmod = Some(ChmodSpec::parse("u+x,g-w").unwrap());
        r.chown = Some((1000, 1000));
        copy_into_root(&r).unwrap();
        let m = fs::metadata(root.join("m/a.txt")).unwrap();
        assert_eq!(m.uid(), 1000);
        assert_eq!(ChmodSpec::parse("0755").unwrap().apply(0o644), 0o755);
        assert_eq!(ChmodSpec::parse("u+x,g-w").unwrap().apply(0o664), 0o744);
        let mut r = req(&ctx, &root, &["src/sub/x.py"], "/p/");
        r.parents = true;
        copy_into_root(&r).unwrap();
        assert!(root.join("p/src/sub/x.py").exists());
        let mut r = req(&ctx, &root, &["src"], "/e/");
        r.excludes = vec!["*.py".into()];
        copy_into_root(&r).unwrap();
        assert!(root.join("e/sub").exists() && !root.join("e/main.py").exists());
        let ignore = PatternMatcher::new(["b.txt"]).unwrap();
        let mut r = req(&ctx, &root, &["b.txt"], "/i");
        r.ignore = Some(&ignore);
        assert!(matches!(copy_into_root(&r), Err(CopyError::NotFound(_))));
        let h1 = hash_sources(&req(&ctx, &root, &["src"], "/"), &mem()).unwrap();
        fs::write(ctx.join("src/main.py"), "print(1)").unwrap();
        assert_ne!(
            h1,
            hash_sources(&req(&ctx, &root, &["src"], "/"), &mem()).unwrap()
        );
    }

    /// A file made immutable (`chattr +i`) until dropped: even root cannot chown it.
    struct Immutable(fs::File, rustix::fs::IFlags);

    impl Immutable {
        fn new(path: &Path) -> Immutable {
            let f = fs::File::open(path).unwrap();
            let flags = rustix::fs::ioctl_getflags(&f)
                .expect("the temp dir's filesystem has no chattr flags");
            rustix::fs::ioctl_setflags(&f, flags | rustix::fs::IFlags::IMMUTABLE).unwrap();
            Immutable(f, flags)
        }
    }

    impl Drop for Immutable {
        fn drop(&mut self) {
            let _ = rustix::fs::ioctl_setflags(&self.0, self.1);
        }
    }

    #[test]
    fn a_refused_chown_or_a_vanished_entry_is_an_error_naming_the_path() {
        let (_d, ctx, root) = setup();
        fs::write(root.join("locked"), "x").unwrap();
        let dest = DestRoot::open(&root).unwrap();
        let meta = fs::metadata(ctx.join("a.txt")).unwrap();
        let e = {
            let _locked = Immutable::new(&root.join("locked"));
            apply_meta(&dest, b"locked", &meta, (1000, 1000), None).unwrap_err()
        };
        assert!(
            matches!(&e, CopyError::Io(crate::oci::IoError { op: "chown", path, .. }) if path == Path::new("locked")),
            "{e}"
        );
        assert!(e.to_string().starts_with("cannot chown locked: "), "{e}");
        // An entry that vanished under the copy fails it too, instead of passing unnoticed.
        let e = apply_meta(&dest, b"gone", &meta, (0, 0), None).unwrap_err();
        assert!(
            matches!(&e, CopyError::Io(crate::oci::IoError { op: "chown", .. })),
            "{e}"
        );
        // A symlink gets its owner but no mode (Linux has none for it), and that is no error.
        std::os::unix::fs::symlink("a.txt", root.join("l")).unwrap();
        let link_meta = fs::symlink_metadata(ctx.join("link")).unwrap();
        let chmod = ChmodSpec::parse("0600").unwrap();
        apply_meta(&dest, b"l", &link_meta, (1000, 1000), Some(&chmod)).unwrap();
        assert_eq!(fs::symlink_metadata(root.join("l")).unwrap().uid(), 1000);
    }

    fn mem() -> super::super::hashcache::FileHashCache {
        super::super::hashcache::FileHashCache::in_memory()
    }

    #[test]
    fn source_digest_sees_exactly_what_lands_in_the_layer() {
        let (_d, ctx, root) = setup();
        let digest = |srcs: &[&str]| hash_sources(&req(&ctx, &root, srcs, "/"), &mem()).unwrap();
        let src = digest(&["src"]);
        let a = digest(&["a.txt"]);
        // A file the COPY does not select, and times, do not matter.
        fs::write(ctx.join("b.txt"), "changed").unwrap();
        fs::File::options()
            .write(true)
            .open(ctx.join("src/main.py"))
            .unwrap()
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(digest(&["src"]), src);
        assert_eq!(digest(&["a.txt"]), a);
        // Mode, a new file under a copied directory, and a symlink target do.
        fs::set_permissions(ctx.join("src/main.py"), fs::Permissions::from_mode(0o755)).unwrap();
        let moded = digest(&["src"]);
        assert_ne!(moded.digest, src.digest);
        assert_eq!(
            moded
                .entries
                .iter()
                .filter(|(p, l)| !src.entries.contains(&(p.clone(), l.clone())))
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>(),
            ["src/main.py"]
        );
        fs::write(ctx.join("src/sub/new.py"), "n").unwrap();
        assert_ne!(digest(&["src"]).digest, moded.digest);
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("src/link")).unwrap();
        let link = digest(&["src"]);
        fs::remove_file(ctx.join("src/link")).unwrap();
        std::os::unix::fs::symlink("/etc/group", ctx.join("src/link")).unwrap();
        assert_ne!(digest(&["src"]).digest, link.digest);
        // A followed source symlink stands for its target's content, under its own name.
        std::os::unix::fs::symlink("a.txt", ctx.join("to-a")).unwrap();
        let followed = digest(&["to-a"]);
        assert_eq!(followed.entries[0].0, "to-a");
        fs::write(ctx.join("a.txt"), "a2").unwrap();
        assert_ne!(digest(&["to-a"]).digest, followed.digest);
    }

    #[test]
    fn parallel_hashing_equals_one_file_at_a_time() {
        let (_d, ctx, root) = setup();
        for i in 0..300 {
            fs::write(ctx.join(format!("src/f{i}.txt")), format!("{i}")).unwrap();
        }
        let all = hash_sources(&req(&ctx, &root, &["src"], "/"), &mem()).unwrap();
        let mut text = String::new();
        for (rel, line) in &all.entries {
            text.push_str(&format!("{rel}\0{line}\n"));
        }
        assert_eq!(all.digest, Digest::of(text.as_bytes()));
        assert_eq!(all.entries.len(), 304);
        assert!(all
            .entries
            .iter()
            .any(|(p, l)| p == "src/f7.txt" && l.ends_with(&Digest::of(b"7").to_string())));
    }
}
