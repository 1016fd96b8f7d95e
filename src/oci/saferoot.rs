//! Paths inside a root directory resolved on the host without escaping it: every lookup is
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a directory fd of the root, so `..`,
//! absolute symlinks and symlinks that climb out are resolved *inside* the root, as they would be
//! for a process chrooted there, and `/proc/self/...`-style magic links are refused (`ELOOP`).
//!
//! It lives in `oci` although it is not wire vocabulary: layer extraction, the sandbox's rootfs
//! and COPY all resolve paths in a root filesystem, and `oci` is the one module all three may
//! import (`layer` may import nothing else). It uses nothing but std and rustix.

use std::ffi::OsStr;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::io_error::IoError;

/// Symlinks [`SafeRoot::mkdir_all_following`] follows to a missing target before giving up
/// (the kernel's own limit for one path is 40).
const MAX_DANGLING: usize = 40;

/// A directory [`SafeRoot::mkdir_all`] has just created.
pub struct NewDir<'a> {
    /// The directory it was created in.
    pub parent: BorrowedFd<'a>,
    /// Its name in `parent`.
    pub name: &'a OsStr,
    /// Its path below the root, as asked for (symlinks not resolved).
    pub rel: &'a OsStr,
}

/// A root directory opened once (an `O_PATH` fd); paths below it are relative to it, and a
/// leading `/` means the root itself.
#[derive(Debug)]
pub struct SafeRoot {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for SafeRoot {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn as_os<P: AsRef<OsStr> + ?Sized>(p: &P) -> &OsStr {
    p.as_ref()
}

impl SafeRoot {
    /// Opens `path` (an existing directory; symlinks in `path` itself are followed).
    pub fn open(path: &Path) -> Result<SafeRoot, IoError> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| IoError {
            op: "open",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(SafeRoot {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root's path on the host, as opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `rel` is on the host, lexically (for error messages; never open it).
    pub fn host_path(&self, rel: impl AsRef<OsStr>) -> PathBuf {
        let rel = rel.as_ref().as_bytes();
        let start = rel.iter().take_while(|&&b| b == b'/').count();
        self.path.join(OsStr::from_bytes(&rel[start..]))
    }

    /// An error for `op` on `rel`, named on the host.
    pub fn error(&self, op: &'static str, rel: impl AsRef<OsStr>, e: Errno) -> IoError {
        IoError {
            op,
            path: self.host_path(rel),
            source: e.into(),
        }
    }

    /// Opens `rel` resolved inside the root with `flags` (`O_CLOEXEC` added); `""` and `"/"`
    /// are the root itself.
    pub fn open_at(&self, rel: impl AsRef<OsStr>, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let rel = rel.as_ref();
        let rel = if rel.is_empty() { OsStr::new(".") } else { rel };
        rfs::openat2(
            &self.fd,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The directory `rel` as an `O_PATH` fd, for `*at` calls.
    pub fn open_dir(&self, rel: impl AsRef<OsStr>) -> rustix::io::Result<OwnedFd> {
        self.open_at(rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// The directory holding `rel` (an `O_PATH` fd) and the last component's name in it, for
    /// a `*at` call that does not follow it. `rel` should be lexically clean (no `.` or `..`
    /// as its last component); `EINVAL` when it has no last component.
    pub fn open_parent<'p, P: AsRef<OsStr> + ?Sized>(
        &self,
        rel: &'p P,
    ) -> rustix::io::Result<(OwnedFd, &'p OsStr)> {
        let bytes = as_os(rel).as_bytes();
        let trimmed = match bytes.iter().rposition(|&b| b != b'/') {
            Some(end) => &bytes[..=end],
            None => return Err(Errno::INVAL),
        };
        let (parent, name) = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (&b""[..], trimmed),
        };
        Ok((
            self.open_dir(OsStr::from_bytes(parent))?,
            OsStr::from_bytes(name),
        ))
    }

    /// `mkdir -p` inside the root; returns the directory (`O_PATH`). Missing directories are
    /// made with mode 0755 (before the umask) and passed to `made` as they are, parents first
    /// (to chown them, or remember them). A dangling symlink on the way is an error (`EEXIST`).
    /// One `openat2` when the directory exists already.
    pub fn mkdir_all<E, F>(&self, rel: impl AsRef<OsStr>, mut made: F) -> Result<OwnedFd, E>
    where
        E: From<IoError>,
        F: FnMut(&NewDir<'_>) -> Result<(), E>,
    {
        self.mkdir_all_at(rel.as_ref(), false, 0, &mut made)
    }

    /// [`SafeRoot::mkdir_all`], but a dangling symlink on the way has its target created
    /// (inside the root), as `mkdir -p` through it would.
    pub fn mkdir_all_following<E, F>(
        &self,
        rel: impl AsRef<OsStr>,
        mut made: F,
    ) -> Result<OwnedFd, E>
    where
        E: From<IoError>,
        F: FnMut(&NewDir<'_>) -> Result<(), E>,
    {
        self.mkdir_all_at(rel.as_ref(), true, 0, &mut made)
    }

    fn mkdir_all_at<E, F>(
        &self,
        rel: &OsStr,
        follow: bool,
        depth: usize,
        made: &mut F,
    ) -> Result<OwnedFd, E>
    where
        E: From<IoError>,
        F: FnMut(&NewDir<'_>) -> Result<(), E>,
    {
        if depth > MAX_DANGLING {
            return Err(self.error("create directory", rel, Errno::LOOP).into());
        }
        // Most calls are for a directory that exists: one lookup.
        if let Ok(fd) = self.open_dir(rel) {
            return Ok(fd);
        }
        let open_err =
            |prefix: &[u8], e| self.error("open directory", OsStr::from_bytes(prefix), e);
        let mut dir = self.open_dir("").map_err(|e| open_err(b"", e))?;
        let bytes = rel.as_bytes();
        let mut end = 0;
        for comp in bytes.split(|&b| b == b'/') {
            let start = end;
            end += comp.len() + 1;
            if comp.is_empty() || comp == b"." {
                continue;
            }
            let prefix = &bytes[..(start + comp.len()).min(bytes.len())];
            dir = match self.open_dir(OsStr::from_bytes(prefix)) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let name = OsStr::from_bytes(comp);
                    if follow {
                        if let Some(target) = self.dangling_target(&dir, comp, prefix) {
                            self.mkdir_all_at(OsStr::from_bytes(&target), follow, depth + 1, made)?;
                            dir = self
                                .open_dir(OsStr::from_bytes(prefix))
                                .map_err(|e| open_err(prefix, e))?;
                            continue;
                        }
                    }
                    match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => made(&NewDir {
                            parent: dir.as_fd(),
                            name,
                            rel: OsStr::from_bytes(prefix),
                        })?,
                        // Made by someone else meanwhile (COPY writes in parallel).
                        Err(Errno::EXIST) if self.open_dir(OsStr::from_bytes(prefix)).is_ok() => {}
                        Err(e) => {
                            return Err(self
                                .error("create directory", OsStr::from_bytes(prefix), e)
                                .into())
                        }
                    }
                    self.open_dir(OsStr::from_bytes(prefix))
                        .map_err(|e| open_err(prefix, e))?
                }
                Err(e) => return Err(open_err(prefix, e).into()),
            };
        }
        Ok(dir)
    }

    /// `rel` with its last component followed while it is a symlink (to anything, or to
    /// nothing), as a clean path below the root: where a file written "at" `rel` lands for
    /// BuildKit's copy, which resolves its destination with `fs.RootPath`. `rel` itself
    /// (cleaned) when that is no symlink; `ELOOP` after [`MAX_DANGLING`] links. Bytes, as
    /// names and link targets need not be UTF-8.
    pub fn resolve_last(&self, rel: impl AsRef<OsStr>) -> rustix::io::Result<Vec<u8>> {
        let mut at = clean(rel.as_ref().as_bytes());
        for _ in 0..=MAX_DANGLING {
            if at.is_empty() {
                return Ok(at);
            }
            // A missing parent holds no symlink: `at` is where the file goes (its parents are
            // made then). A relative link is joined to the path as written, as for
            // `mkdir_all_following`.
            let (dir, name) = match self.open_parent(OsStr::from_bytes(&at)) {
                Ok(found) => found,
                Err(Errno::NOENT) => return Ok(at),
                Err(e) => return Err(e),
            };
            let name = name.as_bytes().to_vec();
            match self.dangling_target(&dir, &name, &at) {
                Some(target) => at = target,
                None => return Ok(at),
            }
        }
        Err(Errno::LOOP)
    }

    /// Where the dangling symlink `name` in `dir` (at `prefix`) points, as a path below the
    /// root; `None` if `name` is no symlink.
    fn dangling_target(&self, dir: &OwnedFd, name: &[u8], prefix: &[u8]) -> Option<Vec<u8>> {
        let target = rfs::readlinkat(dir, OsStr::from_bytes(name), Vec::new()).ok()?;
        let target = target.as_bytes();
        let mut joined = Vec::new();
        if target.first() != Some(&b'/') {
            // Relative to the symlink's directory.
            if let Some(i) = prefix.iter().rposition(|&b| b == b'/') {
                joined.extend_from_slice(&prefix[..i]);
            }
            joined.push(b'/');
        }
        joined.extend_from_slice(target);
        Some(clean(&joined))
    }
}

/// `a/./b/../c` → `a/c`, lexically; `..` stops at the root (as `mkdir -p` through a symlink
/// to a missing directory sees its target).
fn clean(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn read(root: &SafeRoot, rel: &str) -> rustix::io::Result<String> {
        let fd = root.open_at(rel, OFlags::RDONLY)?;
        Ok(std::io::read_to_string(fs::File::from(fd)).unwrap())
    }

    fn none(_: &NewDir<'_>) -> Result<(), IoError> {
        Ok(())
    }

    /// A root with `etc/passwd` inside and a `secret` file beside it, outside.
    fn fixture() -> (tempfile::TempDir, SafeRoot) {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("secret"), "outside").unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "inside").unwrap();
        let r = SafeRoot::open(&root).unwrap();
        (t, r)
    }

    #[test]
    fn dot_dot_stays_inside() {
        let (_t, r) = fixture();
        assert_eq!(read(&r, "../secret"), Err(Errno::NOENT));
        assert_eq!(read(&r, "../../../etc/passwd").unwrap(), "inside");
        assert_eq!(read(&r, "/etc/../../etc/passwd").unwrap(), "inside");
        symlink("../secret", r.path().join("etc/up")).unwrap();
        assert_eq!(read(&r, "etc/up"), Err(Errno::NOENT));
    }

    #[test]
    fn absolute_symlinks_are_relative_to_the_root() {
        let (t, r) = fixture();
        symlink("/etc/passwd", r.path().join("abs")).unwrap();
        symlink(t.path().join("secret"), r.path().join("host")).unwrap();
        symlink("/etc", r.path().join("etcdir")).unwrap();
        assert_eq!(read(&r, "abs").unwrap(), "inside");
        assert_eq!(read(&r, "host"), Err(Errno::NOENT));
        assert_eq!(read(&r, "etcdir/passwd").unwrap(), "inside");
        let (dir, name) = r.open_parent("etcdir/passwd").unwrap();
        assert_eq!(name, "passwd");
        let st = rfs::statat(&dir, name, rfs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(st.st_size, 6);
    }

    #[test]
    fn resolve_last_follows_a_final_symlink_chain_inside_the_root() {
        let (_t, r) = fixture();
        fs::create_dir_all(r.path().join("usr/bin")).unwrap();
        fs::write(r.path().join("usr/bin/mawk"), "m").unwrap();
        symlink("/usr/bin/mawk", r.path().join("etc/awk")).unwrap();
        symlink("../../etc/awk", r.path().join("usr/bin/awk")).unwrap();
        symlink("/nowhere/file", r.path().join("dangling")).unwrap();
        symlink("../../../../x", r.path().join("etc/up")).unwrap();
        assert_eq!(
            r.resolve_last("usr/bin/awk").unwrap(),
            "usr/bin/mawk".as_bytes()
        );
        assert_eq!(
            r.resolve_last("/dangling").unwrap(),
            "nowhere/file".as_bytes()
        );
        assert_eq!(r.resolve_last("etc/up").unwrap(), "x".as_bytes());
        assert_eq!(
            r.resolve_last("etc/passwd").unwrap(),
            "etc/passwd".as_bytes()
        );
        assert_eq!(r.resolve_last("new/file").unwrap(), "new/file".as_bytes());
        symlink("loop", r.path().join("loop")).unwrap();
        assert_eq!(r.resolve_last("loop").unwrap_err(), Errno::LOOP);
        // A dangling target that is not UTF-8 is kept byte for byte.
        symlink(OsStr::from_bytes(b"caf\xe9/f"), r.path().join("raw")).unwrap();
        assert_eq!(r.resolve_last("raw").unwrap(), b"caf\xe9/f");
    }

    #[test]
    fn symlink_loops_fail_with_eloop() {
        let (_t, r) = fixture();
        symlink("b", r.path().join("a")).unwrap();
        symlink("a", r.path().join("b")).unwrap();
        symlink("self/x", r.path().join("self")).unwrap();
        assert_eq!(read(&r, "a"), Err(Errno::LOOP));
        assert_eq!(r.open_dir("self").unwrap_err(), Errno::LOOP);
        let e = r.mkdir_all("a/x", none).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::LOOP), "{e}");
        let e = r.mkdir_all_following("a/x", none).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::LOOP), "{e}");
    }

    #[test]
    fn magic_links_are_refused_and_proc_paths_stay_inside() {
        let (_t, r) = fixture();
        // A symlink to /proc/self/root names the root's own proc/self/root, not the host's /.
        fs::create_dir_all(r.path().join("proc/self/root/etc")).unwrap();
        fs::write(r.path().join("proc/self/root/etc/passwd"), "fake proc").unwrap();
        symlink("/proc/self/root/etc/passwd", r.path().join("pw")).unwrap();
        assert_eq!(read(&r, "pw").unwrap(), "fake proc");
        // With a real procfs inside the root, its magic links are not followed.
        let slash = SafeRoot::open(Path::new("/")).unwrap();
        assert_eq!(
            slash
                .open_at("proc/self/root/etc", OFlags::PATH)
                .unwrap_err(),
            Errno::LOOP
        );
        let proc_self = SafeRoot::open(Path::new("/proc/self")).unwrap();
        assert_eq!(proc_self.open_dir("cwd").unwrap_err(), Errno::LOOP);
        assert_eq!(proc_self.open_dir("fd/0").unwrap_err(), Errno::LOOP);
    }

    #[test]
    fn mkdir_all_creates_inside_and_reports_what_it_made() {
        let (t, r) = fixture();
        symlink("/var/lib", r.path().join("lib")).unwrap();
        symlink("../../..", r.path().join("etc/up")).unwrap();
        let mut made = Vec::new();
        r.mkdir_all("/etc/up/work/dir", |d: &NewDir<'_>| {
            made.push(d.rel.to_string_lossy().into_owned());
            Ok::<_, IoError>(())
        })
        .unwrap();
        // `etc/up` resolves to the root itself.
        assert!(r.path().join("work/dir").is_dir());
        assert!(!t.path().join("work").exists());
        assert_eq!(made, ["/etc/up/work", "/etc/up/work/dir"]);
        // Existing: nothing made.
        made.clear();
        r.mkdir_all("work/dir", |d: &NewDir<'_>| {
            made.push(d.rel.to_string_lossy().into_owned());
            Ok::<_, IoError>(())
        })
        .unwrap();
        assert!(made.is_empty());
        // A dangling symlink: an error, or its target made inside the root.
        let e = r.mkdir_all("lib/x", none).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EXIST), "{e}");
        assert_eq!(e.path, r.path().join("lib"));
        r.mkdir_all_following("lib/x", none).unwrap();
        assert!(r.path().join("var/lib/x").is_dir());
        assert!(r.open_dir("lib/x").is_ok());
        symlink("../data/./x", r.path().join("etc/rel")).unwrap();
        r.mkdir_all_following("etc/rel/z", none).unwrap();
        assert!(r.path().join("data/x/z").is_dir());
        // A file on the way.
        let e = r.mkdir_all("etc/passwd/x", none).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NOTDIR), "{e}");
        assert_eq!(e.path, r.path().join("etc/passwd"));
    }

    #[test]
    fn open_parent_splits_the_last_component() {
        let (_t, r) = fixture();
        let (_, name) = r.open_parent("/etc/passwd/").unwrap();
        assert_eq!(name, "passwd");
        let (_, name) = r.open_parent("top").unwrap();
        assert_eq!(name, "top");
        assert_eq!(r.open_parent("/").unwrap_err(), Errno::INVAL);
        assert_eq!(r.open_parent("nope/x").unwrap_err(), Errno::NOENT);
        assert_eq!(r.host_path("/etc/x"), r.path().join("etc/x"));
    }
}
