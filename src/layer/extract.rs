//! Safe, streaming extraction of a layer tar into a directory.
//!
//! The `tar` crate only *reads* the archive (headers, PAX records, GNU long names); every file is
//! written by this module relative to a directory fd of the target. Parent directories are
//! resolved in a [`SafeRoot`] (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`), so `..`,
//! absolute symlinks and symlinks that climb out are all resolved *inside* the target, and the last component is always
//! created with a `*at` call that does not follow symlinks. Entry names are cleaned lexically
//! first: `..` stops at the root and a leading `/` is dropped, so `../evil` and `/abs/evil` land at
//! `evil` and `abs/evil` inside the target (as containerd does).
//!
//! Whiteouts follow the OCI image spec: in [`WhiteoutMode::Overlay`] they are converted to the
//! overlayfs form (a 0/0 character device, `trusted.overlay.opaque=y`), in [`WhiteoutMode::Apply`]
//! they delete what lower layers put in the directory.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::oci::{Compression, DiffId, NewDir, SafeRoot};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// What to do with whiteout entries (`.wh.NAME`, `.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// The target is one layer of an overlayfs stack: `.wh.NAME` becomes a character device 0/0
    /// named `NAME` and an opaque marker sets `trusted.overlay.opaque=y` on its directory.
    Overlay,
    /// The layer is applied on top of the lower layers already in the target: `.wh.NAME` deletes
    /// `NAME` and an opaque marker deletes the directory's children that this layer did not add.
    Apply,
}

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub whiteouts: WhiteoutMode,
    /// Give entries the uid/gid of their headers (needs root). Otherwise files belong to the
    /// extracting user.
    pub chown: bool,
}

impl ExtractOptions {
    /// Overlay whiteouts, chown when running as root.
    pub fn overlay() -> ExtractOptions {
        ExtractOptions {
            whiteouts: WhiteoutMode::Overlay,
            chown: rustix::process::geteuid().is_root(),
        }
    }

    /// Applied whiteouts, chown when running as root.
    pub fn apply() -> ExtractOptions {
        ExtractOptions {
            whiteouts: WhiteoutMode::Apply,
            ..ExtractOptions::overlay()
        }
    }
}

impl Default for ExtractOptions {
    fn default() -> ExtractOptions {
        ExtractOptions::overlay()
    }
}

/// What an extraction did, with the DiffID to check against the image config's `rootfs.diff_ids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    /// sha256 of the whole uncompressed tar stream, end-of-archive padding included.
    pub diff_id: DiffId,
    /// Size of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Tar entries read (whiteouts included, PAX/GNU meta headers not).
    pub entries: u64,
    /// Whiteout entries converted or applied.
    pub whiteouts: u64,
    /// Extended attributes not set: `trusted.overlay.*` from the tar (never trusted), or ones the
    /// filesystem refused as unsupported / not permitted for `security.*`, `trusted.*`.
    pub xattrs_skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot open extraction target {path}: {source}")]
    Target { path: PathBuf, source: io::Error },
    #[error("reading layer for {target}: {source}")]
    Read { target: PathBuf, source: io::Error },
    #[error(transparent)]
    Io(#[from] crate::oci::IoError),
    #[error("invalid layer entry {name:?}: {reason}")]
    InvalidEntry { name: String, reason: String },
    #[error("hardlink {path} -> {link_name:?}: the target does not exist in {target}")]
    MissingHardlinkTarget {
        path: PathBuf,
        link_name: String,
        target: PathBuf,
    },
}

/// Extracts one layer tar read from `reader` (compressed as `compression`) into `target`, which
/// must be an existing directory. Streams: nothing is held in memory beyond one copy buffer and a
/// set of the paths the layer wrote.
pub fn extract_layer(
    reader: impl Read + Send,
    compression: Compression,
    target: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractStats, LayerError> {
    let root = SafeRoot::open(target).map_err(|e| LayerError::Target {
        path: target.to_path_buf(),
        source: e.source,
    })?;
    let read_err = |source: io::Error| LayerError::Read {
        target: target.to_path_buf(),
        source,
    };
    let decoder = Decoder::new(reader, compression).map_err(read_err)?;
    let mut ex = Extractor {
        root,
        opts,
        added: HashSet::new(),
        dirs: HashMap::new(),
        stats: Counts::default(),
        last_dir: None,
        removed: std::cell::Cell::new(false),
        copy_buf: Vec::new(),
    };
    // Inflating and hashing run on threads of their own, ahead of the file creation here.
    let (written, diff_id) = std::thread::scope(|scope| {
        let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel(super::readahead::DEPTH);
        let (tx, rx) = std::sync::mpsc::sync_channel(super::readahead::DEPTH);
        scope.spawn(move || drop(super::readahead::pump(decoder, raw_tx)));
        let producer = scope.spawn(move || super::readahead::hash_forward(raw_rx, tx));
        let written = (|| -> Result<(), LayerError> {
            let mut archive = tar::Archive::new(super::readahead::ChannelReader::new(rx));
            for entry in archive.entries().map_err(read_err)? {
                let mut entry = entry.map_err(read_err)?;
                ex.entry(&mut entry)?;
            }
            ex.finish_dirs()?;
            // The tar reader stops at the first end-of-archive block; the DiffID covers the
            // whole stream.
            let mut rest = archive.into_inner();
            io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
            Ok(())
        })();
        // On an error the channel is gone by now, so the producer stops at its next chunk.
        let digest = producer.join();
        (written, digest)
    });
    written?;
    let (digest, size) =
        diff_id.map_err(|_| read_err(io::Error::other("the thread reading the layer panicked")))?;
    Ok(ExtractStats {
        diff_id: DiffId(digest),
        uncompressed_size: size,
        entries: ex.stats.entries,
        whiteouts: ex.stats.whiteouts,
        xattrs_skipped: ex.stats.xattrs_skipped,
    })
}

enum Decoder<R: Read> {
    Plain(R),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Decoder<R> {
    fn new(reader: R, compression: Compression) -> io::Result<Decoder<R>> {
        Ok(match compression {
            Compression::None => Decoder::Plain(reader),
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(reader))),
            Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::new(reader)?),
        })
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

#[derive(Default)]
struct Counts {
    entries: u64,
    whiteouts: u64,
    xattrs_skipped: u64,
}

/// Header metadata, PAX records applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct DirMeta {
    mode: u32,
    times: Timestamps,
}

struct Extractor<'a> {
    root: SafeRoot,
    opts: &'a ExtractOptions,
    /// Cleaned paths (`a/b/c`) this layer created, for opaque whiteouts in apply mode.
    added: HashSet<Vec<u8>>,
    /// Directory mode and times, applied after all entries (writing children changes a
    /// directory's mtime, and a read-only mode would stop them being written).
    dirs: HashMap<Vec<u8>, DirMeta>,
    stats: Counts,
    /// The parent directory of the last entry, kept open: a tar lists a directory's entries
    /// together, so most entries skip resolving their parent again. Dropped whenever anything
    /// is removed (the directory or one above it may be gone).
    last_dir: Option<(Vec<u8>, OwnedFd)>,
    /// Set by `remove_all`: something was removed during this entry.
    removed: std::cell::Cell<bool>,
    /// The buffer file contents go through (see `copy_content`).
    copy_buf: Vec<u8>,
}

/// File contents are written in blocks of up to this size: one `write` for most files of a
/// layer, where `io::copy`'s 8 KiB buffer made one per 8 KiB (42,000 writes for python:3.11-slim).
const COPY_BLOCK: usize = 1 << 20;

/// `a/./b/../../../c/` → `["c"]`; a leading `/` is dropped and `..` stops at the root.
fn clean(raw: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn timespec(secs: i64, nanos: u32) -> Timespec {
    Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    }
}

/// A PAX time (`1700000000.123456789`, `-1.5`) as seconds and nanoseconds.
fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(value).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(if !neg {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    })
}

impl<'a> Extractor<'a> {
    fn path(&self, rel: &[u8]) -> PathBuf {
        self.root.host_path(os(rel))
    }

    fn io(&self, op: &'static str, rel: &[u8], e: impl Into<io::Error>) -> LayerError {
        LayerError::Io(crate::oci::IoError {
            op,
            path: self.path(rel),
            source: e.into(),
        })
    }

    fn invalid(name: &[u8], reason: impl Into<String>) -> LayerError {
        LayerError::InvalidEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            reason: reason.into(),
        }
    }

    /// Writes the `size` bytes of content `entry` holds into `file`, a block at a time.
    fn copy_content(
        &mut self,
        entry: &mut impl Read,
        file: &mut File,
        rel: &[u8],
        size: u64,
    ) -> Result<(), LayerError> {
        let mut buf = std::mem::take(&mut self.copy_buf);
        let block = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .clamp(1, COPY_BLOCK);
        if buf.len() < block {
            buf.resize(block, 0);
        }
        let result = (|| loop {
            let mut filled = 0;
            while filled < block {
                match entry.read(&mut buf[filled..block]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.read_err(e)),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            io::Write::write_all(file, &buf[..filled]).map_err(|e| self.io("write", rel, e))?;
            if filled < block {
                return Ok(());
            }
        })();
        self.copy_buf = buf;
        result
    }

    fn read_err(&self, source: io::Error) -> LayerError {
        LayerError::Read {
            target: self.root.path().to_path_buf(),
            source,
        }
    }

    /// Opens directory `comps` (an `O_PATH` fd) resolved inside the root. With `create`, missing
    /// directories are made (mode 0755, as docker does) and recorded as added by this layer.
    /// Without it, a missing directory is `Ok(None)`.
    fn open_dir(&mut self, comps: &[&[u8]], create: bool) -> Result<Option<OwnedFd>, LayerError> {
        let full = join(comps);
        if !create {
            return match self.root.open_dir(os(&full)) {
                Ok(fd) => Ok(Some(fd)),
                Err(e) if e == Errno::NOENT => Ok(None),
                Err(e) => Err(self.io("open directory", &full, e)),
            };
        }
        let added = &mut self.added;
        self.root
            .mkdir_all(os(&full), |d: &NewDir<'_>| {
                added.insert(d.rel.as_bytes().to_vec());
                Ok::<_, LayerError>(())
            })
            .map(Some)
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<Meta, LayerError> {
        let header = entry.header();
        let bad = |what: &str| Self::invalid(name, format!("bad {what} in header"));
        let old = header.as_old();
        // An empty field reads as 0, as Go's archive/tar reads it; anything else must parse.
        let field = |what: &str, raw: &[u8], parsed: io::Result<u64>| match parsed {
            Ok(v) => Ok(v),
            Err(_) if empty_numeric(raw) => Ok(0),
            Err(_) => Err(Self::invalid(
                name,
                format!(
                    "bad {what} in header: {:?} is not an octal or base-256 number",
                    raw.escape_ascii().to_string()
                ),
            )),
        };
        let mode = header.mode().map(u64::from);
        let mode = field("mode", &old.mode, mode)? as u32 & 0o7777;
        let mut uid = field("uid", &old.uid, header.uid())?;
        let mut gid = field("gid", &old.gid, header.gid())?;
        let mtime = field("mtime", &old.mtime, header.mtime())?;
        let mut mtime = (i64::try_from(mtime).map_err(|_| bad("mtime"))?, 0u32);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.read_err(e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.read_err(e))?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let number = || -> Result<u64, LayerError> {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad(key))
                };
                match key {
                    "uid" => uid = number()?,
                    "gid" => gid = number()?,
                    "mtime" => mtime = parse_pax_time(value).ok_or_else(|| bad("PAX mtime"))?,
                    "atime" => atime = parse_pax_time(value),
                    _ => {
                        if let Some(attr) = key.strip_prefix(PAX_XATTR_PREFIX) {
                            xattrs.push((attr.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let id = |v: u64, what: &str| match u32::try_from(v) {
            Ok(v) if v != u32::MAX => Ok(v),
            _ => Err(Self::invalid(name, format!("{what} {v} out of range"))),
        };
        // As docker: the access time is never older than the modification time.
        let atime = atime.filter(|a| *a > mtime).unwrap_or(mtime);
        Ok(Meta {
            mode,
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            times: Timestamps {
                last_access: timespec(atime.0, atime.1),
                last_modification: timespec(mtime.0, mtime.1),
            },
            xattrs,
        })
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        self.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let comps = clean(&raw);
        let meta = self.meta(entry, &raw)?;

        if let Some(last) = comps.last() {
            if last.starts_with(WHITEOUT_PREFIX) {
                self.last_dir = None;
                return self.whiteout(&comps, &meta);
            }
        }
        let Some((name, parent)) = comps.split_last() else {
            // The layer root itself (`./`, `/`, an empty name): a directory gives it its
            // metadata; anything else could only replace the target, so it is skipped, as
            // moby's archive.Unpack (BuildKit's ADD) and containerd's layer apply do.
            if kind == EntryType::Directory {
                self.dirs.insert(
                    Vec::new(),
                    DirMeta {
                        mode: meta.mode,
                        times: meta.times,
                    },
                );
            }
            return Ok(());
        };
        let rel = join(&comps);
        let parent_rel = join(parent);
        let dir = match self.last_dir.take() {
            Some((cached, fd)) if cached == parent_rel => fd,
            _ => self
                .open_dir(parent, true)?
                .ok_or_else(|| Self::invalid(&raw, "parent directory vanished"))?,
        };
        self.removed.set(false);
        let result = if kind == EntryType::Link {
            self.hardlink(entry, &dir, name, &rel)
        } else {
            self.create(entry, &dir, name, &rel, &meta)
        };
        if result.is_ok() && !self.removed.get() {
            self.last_dir = Some((parent_rel, dir));
        }
        result
    }

    /// Creates entry `name` (not a hard link) in `dir`, replacing what is there.
    fn create<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let kind = entry.header().entry_type();
        // Replace what is there, except a directory over a directory (docker's archive.go).
        // Files and directories, most entries, are made first and only looked at when that
        // fails: in a new layer directory nothing is there. `dir_ready`: a directory entry's
        // directory exists (made now, or one that was there).
        let dir_ready = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => false,
            EntryType::Directory => match rfs::mkdirat(dir, os(name), Mode::from_raw_mode(0o700)) {
                Ok(()) => true,
                Err(Errno::EXIST) if self.is_dir_at(dir, name, rel)? => true,
                Err(Errno::EXIST) => {
                    self.remove_all(dir, name, rel)?;
                    false
                }
                Err(e) => return Err(self.io("create directory", rel, e)),
            },
            _ => {
                match rfs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(_) => self.remove_all(dir, name, rel)?,
                    Err(e) if e == Errno::NOENT => {}
                    Err(e) => return Err(self.io("stat", rel, e)),
                }
                false
            }
        };

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let create = || {
                    rfs::openat(
                        dir,
                        os(name),
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                };
                let fd = match create() {
                    Err(Errno::EXIST) => {
                        self.remove_all(dir, name, rel)?;
                        create()
                    }
                    made => made,
                }
                .map_err(|e| self.io("create file", rel, e))?;
                let mut file = File::from(fd);
                let size = entry.size();
                self.copy_content(entry, &mut file, rel, size)?;
                self.set_meta_fd(file.as_fd(), meta, rel, true)?;
            }
            EntryType::Directory => {
                if !dir_ready {
                    rfs::mkdirat(dir, os(name), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.io("create directory", rel, e))?;
                }
                let fd = rfs::openat(
                    dir,
                    os(name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io("open directory", rel, e))?;
                self.set_meta_fd(fd.as_fd(), meta, rel, false)?;
                self.dirs.insert(
                    rel.to_vec(),
                    DirMeta {
                        mode: meta.mode,
                        times: meta.times.clone(),
                    },
                );
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| Self::invalid(rel, "symlink without a target"))?;
                rfs::symlinkat(os(&link), dir, os(name))
                    .map_err(|e| self.io("create symlink", rel, e))?;
                self.set_meta_at(dir, name, meta, rel, false)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = if kind == EntryType::Fifo {
                    (FileType::Fifo, 0)
                } else {
                    let header = entry.header();
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    let ft = if kind == EntryType::Char {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    (ft, rfs::makedev(major, minor))
                };
                match rfs::mknodat(dir, os(name), file_type, Mode::from_raw_mode(0o600), dev) {
                    Ok(()) => self.set_meta_at(dir, name, meta, rel, true)?,
                    // Without CAP_MKNOD (a user namespace, an unprivileged container) a device
                    // node is left out, as rootless podman does: a container's /dev comes from
                    // its runtime, and the layer's DiffID is the tar's, not the directory's.
                    Err(Errno::PERM) if file_type != FileType::Fifo => return Ok(()),
                    Err(e) => return Err(self.io("create device node", rel, e)),
                }
            }
            other => {
                return Err(Self::invalid(
                    rel,
                    format!("unsupported tar entry type {other:?}"),
                ))
            }
        }
        self.added.insert(rel.to_vec());
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &[u8],
        rel: &[u8],
    ) -> Result<(), LayerError> {
        let raw_link = entry
            .link_name_bytes()
            .ok_or_else(|| Self::invalid(rel, "hardlink without a target"))?
            .into_owned();
        let link_comps = clean(&raw_link);
        let (path, target) = (self.path(rel), self.root.path().to_path_buf());
        let missing = || LayerError::MissingHardlinkTarget {
            path: path.clone(),
            link_name: String::from_utf8_lossy(&raw_link).into_owned(),
            target: target.clone(),
        };
        let Some((link_name, link_parent)) = link_comps.split_last() else {
            return Err(missing());
        };
        let link_rel = join(&link_comps);
        if link_rel == rel {
            return Ok(()); // a link to itself: nothing to do
        }
        let Some(link_dir) = self.open_dir(link_parent, false)? else {
            return Err(missing());
        };
        match rfs::statat(&link_dir, os(link_name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(Self::invalid(rel, "hardlink to a directory"))
            }
            Ok(_) => {}
            Err(e) if e == Errno::NOENT => return Err(missing()),
            Err(e) => return Err(self.io("stat", &link_rel, e)),
        }
        match rfs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => self.remove_all(dir, name, rel)?,
            Err(e) if e == Errno::NOENT => {}
            Err(e) => return Err(self.io("stat", rel, e)),
        }
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, never its target.
        rfs::linkat(&link_dir, os(link_name), dir, os(name), AtFlags::empty())
            .map_err(|e| self.io("create hardlink", rel, e))?;
        self.added.insert(rel.to_vec());
        Ok(())
    }

    fn whiteout(&mut self, comps: &[&[u8]], meta: &Meta) -> Result<(), LayerError> {
        self.stats.whiteouts += 1;
        let Some((name, parent)) = comps.split_last() else {
            return Ok(());
        };
        let parent_rel = join(parent);
        if *name == WHITEOUT_OPAQUE {
            return match self.opts.whiteouts {
                WhiteoutMode::Overlay => {
                    self.open_dir(parent, true)?;
                    let fd = self
                        .root
                        .open_at(os(&parent_rel), OFlags::RDONLY | OFlags::DIRECTORY)
                        .map_err(|e| self.io("open directory", &parent_rel, e))?;
                    rfs::fsetxattr(
                        &fd,
                        super::overlay::opaque_xattr(),
                        b"y",
                        XattrFlags::empty(),
                    )
                    .map_err(|e| self.io("set opaque xattr on", &parent_rel, e))
                }
                WhiteoutMode::Apply => {
                    let Some(dir) = self.open_dir(parent, false)? else {
                        return Ok(());
                    };
                    self.prune(&dir, &parent_rel)
                }
            };
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping (e.g. `.wh..wh.plnk`): skipped, as docker does.
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(Self::invalid(&join(comps), "whiteout of an invalid name"));
        }
        let mut hidden_rel = parent_rel.clone();
        if !hidden_rel.is_empty() {
            hidden_rel.push(b'/');
        }
        hidden_rel.extend_from_slice(hidden);
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                let dir = self
                    .open_dir(parent, true)?
                    .ok_or_else(|| Self::invalid(&hidden_rel, "parent directory vanished"))?;
                match rfs::statat(&dir, os(hidden), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(_) => self.remove_all(&dir, hidden, &hidden_rel)?,
                    Err(e) if e == Errno::NOENT => {}
                    Err(e) => return Err(self.io("stat", &hidden_rel, e)),
                }
                rfs::mknodat(
                    &dir,
                    os(hidden),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
                .map_err(|e| self.io("create whiteout device", &hidden_rel, e))?;
                if self.opts.chown {
                    rfs::chownat(
                        &dir,
                        os(hidden),
                        Some(rustix::fs::Uid::from_raw(meta.uid)),
                        Some(rustix::fs::Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.io("chown", &hidden_rel, e))?;
                }
                self.added.insert(hidden_rel);
            }
            WhiteoutMode::Apply => {
                // Whiteouts only hide what lower layers have (OCI image spec).
                if self.added.contains(&hidden_rel) {
                    return Ok(());
                }
                let Some(dir) = self.open_dir(parent, false)? else {
                    return Ok(());
                };
                match rfs::statat(&dir, os(hidden), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(_) => self.remove_all(&dir, hidden, &hidden_rel)?,
                    Err(e) if e == Errno::NOENT => {}
                    Err(e) => return Err(self.io("stat", &hidden_rel, e)),
                }
            }
        }
        Ok(())
    }

    /// Removes everything under `dir` (at `rel`) that this layer did not add.
    fn prune(&self, dir: &OwnedFd, rel: &[u8]) -> Result<(), LayerError> {
        for (child, file_type) in self.children(dir, rel)? {
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(&child);
            if !self.added.contains(&child_rel) {
                self.remove_all(dir, &child, &child_rel)?;
            } else if file_type == FileType::Directory {
                let sub = rfs::openat(
                    dir,
                    os(&child),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io("open directory", &child_rel, e))?;
                self.prune(&sub, &child_rel)?;
            }
        }
        Ok(())
    }

    fn children(&self, dir: &OwnedFd, rel: &[u8]) -> Result<Vec<(Vec<u8>, FileType)>, LayerError> {
        let mut out = Vec::new();
        // `dir` may be an O_PATH fd, which getdents refuses: reopen it for reading.
        let readable = rfs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open directory", rel, e))?;
        let entries =
            rfs::Dir::read_from(&readable).map_err(|e| self.io("read directory", rel, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.io("read directory", rel, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut file_type = entry.file_type();
            if file_type == FileType::Unknown {
                file_type = rfs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode))
                    .map_err(|e| self.io("stat", rel, e))?;
            }
            out.push((name.to_vec(), file_type));
        }
        Ok(out)
    }

    /// Whether `name` in `dir` is a directory (not a symlink to one).
    fn is_dir_at(&self, dir: &OwnedFd, name: &[u8], rel: &[u8]) -> Result<bool, LayerError> {
        match rfs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(FileType::from_raw_mode(st.st_mode) == FileType::Directory),
            Err(e) => Err(self.io("stat", rel, e)),
        }
    }

    /// Removes `name` in `dir`, recursively if it is a directory; never follows symlinks.
    fn remove_all(&self, dir: &OwnedFd, name: &[u8], rel: &[u8]) -> Result<(), LayerError> {
        self.removed.set(true);
        match rfs::unlinkat(dir, os(name), AtFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(e) if e == Errno::ISDIR || e == Errno::PERM => {}
            Err(e) if e == Errno::NOENT => return Ok(()),
            Err(e) => return Err(self.io("remove", rel, e)),
        }
        let sub = rfs::openat(
            dir,
            os(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open directory", rel, e))?;
        for (child, _) in self.children(&sub, rel)? {
            let mut child_rel = rel.to_vec();
            child_rel.push(b'/');
            child_rel.extend_from_slice(&child);
            self.remove_all(&sub, &child, &child_rel)?;
        }
        rfs::unlinkat(dir, os(name), AtFlags::REMOVEDIR).map_err(|e| self.io("remove", rel, e))
    }

    /// Owner, mode, xattrs and (for non-directories) times through an open fd. Ownership goes first:
    /// chown clears setuid/setgid bits and file capabilities.
    fn set_meta_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        rel: &[u8],
        times_and_mode: bool,
    ) -> Result<(), LayerError> {
        if self.opts.chown {
            rfs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.io("chown", rel, e))?;
        }
        if times_and_mode {
            rfs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| self.io("chmod", rel, e))?;
        }
        for (name, value) in &meta.xattrs {
            if self.skip_xattr(name) {
                continue;
            }
            let result = rfs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty());
            self.xattr_result(result, name, rel)?;
        }
        if times_and_mode {
            rfs::futimens(fd, &meta.times).map_err(|e| self.io("set times on", rel, e))?;
        }
        Ok(())
    }

    /// The same for entries that cannot be opened (symlinks, device nodes, fifos).
    fn set_meta_at(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        meta: &Meta,
        rel: &[u8],
        chmod: bool,
    ) -> Result<(), LayerError> {
        if self.opts.chown {
            rfs::chownat(
                dir,
                os(name),
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.io("chown", rel, e))?;
        }
        if chmod {
            // The node was just created by mknodat, so it is not a symlink.
            rfs::chmodat(
                dir,
                os(name),
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| self.io("chmod", rel, e))?;
        }
        if !meta.xattrs.is_empty() {
            // No fd-based call reaches a symlink or device node's xattrs; go through the parent's
            // fd in /proc, whose last component lsetxattr does not follow.
            let mut proc_path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            proc_path.extend_from_slice(name);
            for (attr, value) in &meta.xattrs {
                if self.skip_xattr(attr) {
                    continue;
                }
                let result =
                    rfs::lsetxattr(os(&proc_path), attr.as_str(), value, XattrFlags::empty());
                self.xattr_result(result, attr, rel)?;
            }
        }
        rfs::utimensat(dir, os(name), &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io("set times on", rel, e))
    }

    fn skip_xattr(&mut self, name: &str) -> bool {
        // overlayfs reads these from upper/lower dirs; a layer must not smuggle in redirects,
        // metacopy or opaque flags except through whiteout entries.
        let skip = super::overlay::is_overlay_xattr(name) || name.is_empty();
        if skip {
            self.stats.xattrs_skipped += 1;
        }
        skip
    }

    fn xattr_result(
        &mut self,
        result: rustix::io::Result<()>,
        name: &str,
        rel: &[u8],
    ) -> Result<(), LayerError> {
        match result {
            Ok(()) => Ok(()),
            // Best effort, as docker and containerd: a filesystem without xattrs, or a privileged
            // namespace the extracting user may not write.
            Err(e)
                if e == Errno::NOTSUP
                    || (e == Errno::PERM
                        && (name.starts_with("security.") || name.starts_with("trusted."))) =>
            {
                self.stats.xattrs_skipped += 1;
                Ok(())
            }
            Err(e) => Err(LayerError::Io(crate::oci::IoError {
                op: "set xattr",
                path: self.path(rel),
                source: io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{name}: {}", io::Error::from(e)),
                ),
            })),
        }
    }

    /// Applies directory modes and times last, when no child will be written any more.
    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, meta) in dirs {
            let fd = match self.root.open_at(
                os(&rel),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Replaced by a later entry or removed by a whiteout: nothing to do.
                Err(e) if e == Errno::NOENT || e == Errno::NOTDIR || e == Errno::LOOP => continue,
                Err(e) => return Err(self.io("open directory", &rel, e)),
            };
            rfs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| self.io("chmod", &rel, e))?;
            rfs::futimens(&fd, &meta.times).map_err(|e| self.io("set times on", &rel, e))?;
        }
        Ok(())
    }
}

/// A numeric header field holding only NULs and spaces (some writers leave fields they do not
/// set like that).
fn empty_numeric(raw: &[u8]) -> bool {
    raw.iter().all(|b| *b == 0 || *b == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_keeps_paths_inside() {
        let c = |s: &str| {
            clean(s.as_bytes())
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        };
        assert_eq!(c("../evil"), "evil");
        assert_eq!(c("/abs/evil"), "abs/evil");
        assert_eq!(c("a/./b/../../../../c/"), "c");
        assert_eq!(c("./"), "");
        assert_eq!(c("a//b"), "a/b");
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some((1700000000, 123456789))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1700000000, 500000000))
        );
        assert_eq!(parse_pax_time(b"1700000000"), Some((1700000000, 0)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123456789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500000000)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b".5"), None);
    }

    /// A one-file tar whose header has `uid`, `gid`, `mtime` and `mode` replaced by `fill`.
    fn tar_with_fields(fill: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path("f").unwrap();
        h.set_size(2);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        let old = h.as_old_mut();
        for f in [&mut old.uid[..], &mut old.gid[..], &mut old.mode[..]] {
            f.copy_from_slice(&fill[..f.len()]);
        }
        old.mtime.copy_from_slice(&fill[..12]);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(b"hi");
        out.resize(512 + 512 + 1024, 0);
        out
    }

    /// Regression: a header whose numeric fields are all NULs or all spaces was refused ("bad
    /// uid in header"), where Go's archive/tar reads them as 0; garbage still fails.
    #[test]
    fn empty_numeric_fields_read_as_zero() {
        use std::os::unix::fs::MetadataExt as _;
        let opts = ExtractOptions {
            whiteouts: WhiteoutMode::Apply,
            chown: false,
        };
        for fill in [[0u8; 12], [b' '; 12]] {
            let dir = tempfile::tempdir().unwrap();
            extract_layer(
                &tar_with_fields(&fill)[..],
                Compression::None,
                dir.path(),
                &opts,
            )
            .unwrap();
            let meta = std::fs::metadata(dir.path().join("f")).unwrap();
            assert_eq!(meta.len(), 2);
            assert_eq!(meta.mtime(), 0);
            assert_eq!(meta.mode() & 0o7777, 0);
        }
        let dir = tempfile::tempdir().unwrap();
        let err = extract_layer(
            &tar_with_fields(b"12x4\0\0\0\0\0\0\0\0")[..],
            Compression::None,
            dir.path(),
            &opts,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bad") && err.contains("12x4"), "{err}");
    }
}
