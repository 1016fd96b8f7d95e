//! Layer extraction: escapes refused or rebased inside the target, metadata kept, whiteouts in
//! both modes, compression, DiffIDs, and an overlay mount of what the snapshotter describes.
//!
//! Tests that need root call `require_root()`, which fails (never skips) when not root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::layer::{extract_layer, Compression, ExtractOptions, LayerError, WhiteoutMode};
use kiln::oci::{DiffId, Digest};
use kiln::snapshot::{chain_ids, Snapshotter};
use tar::{EntryType, Header};

fn require_root(test: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{test} needs root (chown, mknod, trusted.* xattrs or mount): run the tests as root"
    );
}

/// A tar built entry by entry from raw headers, so names can be anything (`../evil`, `/abs`).
struct TarBuf {
    out: Vec<u8>,
}

fn header(name: &[u8], kind: EntryType, size: u64, mode: u32) -> Header {
    let mut h = Header::new_ustar();
    let old = h.as_old_mut();
    assert!(name.len() <= 100, "use pax() for long names");
    old.name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h
}

fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len = len.to_string().len() + rest;
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

impl TarBuf {
    fn new() -> TarBuf {
        TarBuf { out: Vec::new() }
    }

    fn raw(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data = pax_records(records);
        self.raw(header(b"PaxHeader", EntryType::XHeader, 0, 0o644), &data)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(header(name.as_bytes(), EntryType::Regular, 0, 0o644), data)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(header(name.as_bytes(), EntryType::Directory, 0, 0o755), b"")
    }

    fn link(&mut self, kind: EntryType, name: &str, target: &str) -> &mut Self {
        let mut h = header(name.as_bytes(), kind, 0, 0o777);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.raw(h, b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, name, target)
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, name, target)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

/// A scratch dir holding `target/` and nothing else, to check nothing lands beside it.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("target")).unwrap();
        Scratch { dir }
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("target")
    }

    fn assert_nothing_outside(&self) {
        let names: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["target"], "something was written beside the target");
        for evil in ["/evil", "/etc/evil", "/abs/evil", "/evil2", "/outside"] {
            assert!(!Path::new(evil).exists(), "{evil} was created");
        }
    }
}

fn unprivileged(mode: WhiteoutMode) -> ExtractOptions {
    ExtractOptions {
        whiteouts: mode,
        chown: false,
    }
}

fn extract(
    tar: &[u8],
    target: &Path,
    opts: &ExtractOptions,
) -> Result<kiln::layer::ExtractStats, LayerError> {
    extract_layer(tar, Compression::None, target, opts)
}

#[test]
fn escaping_names_and_symlinks_stay_inside() {
    let s = Scratch::new();
    let passwd = fs::read("/etc/passwd").unwrap();
    let tar = TarBuf::new()
        .file("../evil", b"dotdot")
        .file("/abs/evil", b"absolute")
        .symlink("link", "/")
        .file("link/etc/evil", b"through absolute symlink")
        .symlink("up", "../../..")
        .file("up/evil2", b"through climbing symlink")
        .symlink("pw", "/etc/passwd")
        .file("pw", b"replaces the symlink, not its target")
        .symlink("dirlink", "/etc")
        .dir("dirlink/sub/")
        .finish();
    extract(&tar, &s.target(), &unprivileged(WhiteoutMode::Overlay)).unwrap();
    s.assert_nothing_outside();
    let t = s.target();
    assert_eq!(fs::read(t.join("evil")).unwrap(), b"dotdot");
    assert_eq!(fs::read(t.join("abs/evil")).unwrap(), b"absolute");
    assert_eq!(
        fs::read(t.join("etc/evil")).unwrap(),
        b"through absolute symlink"
    );
    assert_eq!(
        fs::read(t.join("evil2")).unwrap(),
        b"through climbing symlink"
    );
    assert!(t.join("etc/sub").is_dir());
    assert!(!Path::new("/etc/sub").exists());
    let pw = fs::symlink_metadata(t.join("pw")).unwrap();
    assert!(pw.file_type().is_file());
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd);
}

#[test]
fn hardlinks_resolve_inside_the_target() {
    let s = Scratch::new();
    let real = fs::metadata("/etc/passwd").unwrap();
    let tar = TarBuf::new()
        .file("etc/passwd", b"layer's own passwd")
        .hardlink("pw", "/etc/passwd")
        .hardlink("pw2", "../../../etc/passwd")
        .finish();
    extract(&tar, &s.target(), &unprivileged(WhiteoutMode::Overlay)).unwrap();
    s.assert_nothing_outside();
    let t = s.target();
    let own = fs::metadata(t.join("etc/passwd")).unwrap();
    for name in ["pw", "pw2"] {
        let m = fs::metadata(t.join(name)).unwrap();
        assert_eq!(m.ino(), own.ino());
        assert_ne!(m.ino(), real.ino());
    }
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), real.nlink());

    // A target that is not in the layer is an error, never a link to the host's file.
    for link in ["/etc/passwd", "../outside", "../../etc/shadow"] {
        let s = Scratch::new();
        let tar = TarBuf::new().hardlink("pw", link).finish();
        let err = extract(&tar, &s.target(), &unprivileged(WhiteoutMode::Overlay)).unwrap_err();
        assert!(
            matches!(err, LayerError::MissingHardlinkTarget { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("pw"), "{err}");
        s.assert_nothing_outside();
        assert!(!s.target().join("pw").exists());
    }

    // Through a symlink pointing out: resolved inside the root, so still missing.
    let s = Scratch::new();
    let tar = TarBuf::new()
        .symlink("hostetc", "/etc")
        .hardlink("pw", "hostetc/passwd")
        .finish();
    assert!(extract(&tar, &s.target(), &unprivileged(WhiteoutMode::Overlay)).is_err());
    s.assert_nothing_outside();
}

#[test]
fn entries_replace_existing_ones() {
    let s = Scratch::new();
    let t = s.target();
    let tar = TarBuf::new()
        .dir("d/")
        .file("d/child", b"x")
        .file("d", b"a file now")
        .file("f", b"a file")
        .dir("f/")
        .file("f/inner", b"inner")
        .dir("keep/")
        .file("keep/a", b"a")
        .dir("keep/")
        .symlink("s", "somewhere")
        .symlink("s", "elsewhere")
        .file("twice", b"first")
        .file("twice", b"second")
        .finish();
    extract(&tar, &t, &unprivileged(WhiteoutMode::Overlay)).unwrap();
    assert_eq!(fs::read(t.join("twice")).unwrap(), b"second");
    assert_eq!(fs::read(t.join("d")).unwrap(), b"a file now");
    assert_eq!(fs::read(t.join("f/inner")).unwrap(), b"inner");
    assert_eq!(fs::read(t.join("keep/a")).unwrap(), b"a");
    assert_eq!(fs::read_link(t.join("s")).unwrap(), Path::new("elsewhere"));
}

#[test]
fn long_names_from_pax_and_gnu() {
    let s = Scratch::new();
    let t = s.target();
    let long_dir = "d".repeat(120);
    let pax_name = format!("{long_dir}/{}", "p".repeat(150));
    let gnu_name = format!("{long_dir}/{}", "g".repeat(150));
    let link_target = format!("{long_dir}/{}", "t".repeat(150));
    let mut tar = TarBuf::new();
    tar.pax(&[("path", pax_name.as_bytes())])
        .file("truncated", b"pax");
    tar.pax(&[("path", b"psym"), ("linkpath", link_target.as_bytes())])
        .symlink("truncated-link", "short");
    let mut bytes = tar.finish();
    bytes.truncate(bytes.len() - 1024);
    let mut b = tar::Builder::new(bytes);
    let mut h = Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &gnu_name, &b"gnu"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    extract(&bytes, &t, &unprivileged(WhiteoutMode::Overlay)).unwrap();
    assert_eq!(fs::read(t.join(&pax_name)).unwrap(), b"pax");
    assert_eq!(fs::read(t.join(&gnu_name)).unwrap(), b"gnu");
    assert_eq!(
        fs::read_link(t.join("psym")).unwrap(),
        Path::new(&link_target)
    );
    assert!(!t.join("truncated").exists());
}

fn sample_tar() -> Vec<u8> {
    TarBuf::new()
        .dir("etc/")
        .file("etc/hostname", b"kiln\n")
        .symlink("etc/alias", "hostname")
        .file("big", &vec![42u8; 300_000])
        .file("empty", b"")
        .file("larger-than-a-copy-block", &varied(2_621_447))
        .finish()
}

/// Bytes that differ from block to block, so a block written twice or out of place shows.
fn varied(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
}

#[test]
fn compression_and_diff_id() {
    let tar = sample_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (compression, blob) in [
        (Compression::None, &tar),
        (Compression::Gzip, &gz),
        (Compression::Zstd, &zst),
    ] {
        let s = Scratch::new();
        let stats = extract_layer(
            &blob[..],
            compression,
            &s.target(),
            &unprivileged(WhiteoutMode::Overlay),
        )
        .unwrap();
        assert_eq!(stats.diff_id, DiffId(Digest::of(&tar)), "{compression:?}");
        assert_eq!(stats.uncompressed_size, tar.len() as u64);
        assert_eq!(stats.entries, 6);
        assert_eq!(
            fs::read(s.target().join("etc/hostname")).unwrap(),
            b"kiln\n"
        );
        assert_eq!(fs::read(s.target().join("etc/alias")).unwrap(), b"kiln\n");
        assert_eq!(fs::read(s.target().join("big")).unwrap().len(), 300_000);
        assert_eq!(fs::read(s.target().join("empty")).unwrap(), b"");
        assert!(
            fs::read(s.target().join("larger-than-a-copy-block")).unwrap() == varied(2_621_447),
            "{compression:?}: a file of several copy blocks"
        );
    }
    // Trailing bytes after the end-of-archive blocks count too (the DiffID is of the stream).
    let mut padded = tar.clone();
    padded.extend(std::iter::repeat_n(0u8, 8192));
    let s = Scratch::new();
    let stats = extract(&padded, &s.target(), &unprivileged(WhiteoutMode::Overlay)).unwrap();
    assert_eq!(stats.diff_id, DiffId(Digest::of(&padded)));

    // A corrupt gzip stream is an error naming the target.
    let s = Scratch::new();
    let err = extract_layer(
        &gz[..gz.len() / 2],
        Compression::Gzip,
        &s.target(),
        &unprivileged(WhiteoutMode::Overlay),
    )
    .unwrap_err();
    assert!(err.to_string().contains("target"), "{err}");
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    rustix::fs::lgetxattr(path, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

#[test]
fn metadata_is_preserved_as_root() {
    require_root("metadata_is_preserved_as_root");
    let s = Scratch::new();
    let t = s.target();
    let mut tar = TarBuf::new();
    let mut h = header(b"bin/", EntryType::Directory, 0, 0o1777);
    h.set_mtime(1_500_000_000);
    tar.raw(h, b"");
    tar.pax(&[
        ("mtime", b"1600000000.123456789"),
        ("SCHILY.xattr.user.kiln", b"hello"),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("uid", b"100000"),
    ]);
    let mut h = header(b"bin/su", EntryType::Regular, 0, 0o4755);
    h.set_gid(5678);
    tar.raw(h, b"#!/bin/sh\n");
    tar.hardlink("bin/su-link", "bin/su");
    let mut h = header(b"bin/sym", EntryType::Symlink, 0, 0o777);
    h.as_old_mut().linkname[..2].copy_from_slice(b"su");
    h.set_uid(42);
    h.set_gid(43);
    h.set_mtime(1_400_000_000);
    tar.raw(h, b"");
    tar.raw(header(b"dev/fifo", EntryType::Fifo, 0, 0o640), b"");
    let mut h = header(b"dev/null", EntryType::Char, 0, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    tar.raw(h, b"");
    let mut h = header(b"dev/loop0", EntryType::Block, 0, 0o660);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    tar.raw(h, b"");
    let tar = tar.finish();
    let stats = extract(&tar, &t, &ExtractOptions::overlay()).unwrap();
    assert_eq!(
        stats.xattrs_skipped, 1,
        "trusted.overlay.* from a tar is never set"
    );

    let su = fs::symlink_metadata(t.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!((su.uid(), su.gid()), (100000, 5678));
    assert_eq!((su.mtime(), su.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!(
        lgetxattr(&t.join("bin/su"), "user.kiln").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        lgetxattr(&t.join("bin/su"), "trusted.overlay.redirect"),
        None
    );
    let link = fs::symlink_metadata(t.join("bin/su-link")).unwrap();
    assert_eq!((link.ino(), link.nlink()), (su.ino(), 2));

    let sym = fs::symlink_metadata(t.join("bin/sym")).unwrap();
    assert!(sym.file_type().is_symlink());
    assert_eq!((sym.uid(), sym.gid(), sym.mtime()), (42, 43, 1_400_000_000));

    let bin = fs::symlink_metadata(t.join("bin")).unwrap();
    assert_eq!(bin.mode() & 0o7777, 0o1777);
    assert_eq!(
        bin.mtime(),
        1_500_000_000,
        "directory times are set after its children"
    );

    let fifo = fs::symlink_metadata(t.join("dev/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    let null = fs::symlink_metadata(t.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    let lp = fs::symlink_metadata(t.join("dev/loop0")).unwrap();
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), rustix::fs::makedev(7, 0));
    assert_eq!(lp.mode() & 0o7777, 0o660);
}

#[test]
fn modes_and_times_without_chown() {
    let s = Scratch::new();
    let t = s.target();
    let mut tar = TarBuf::new();
    tar.raw(header(b"ro/", EntryType::Directory, 0, 0o555), b"");
    tar.raw(header(b"ro/x", EntryType::Regular, 0, 0o600), b"x");
    tar.raw(header(b"fifo", EntryType::Fifo, 0, 0o600), b"");
    let tar = tar.finish();
    extract(&tar, &t, &unprivileged(WhiteoutMode::Overlay)).unwrap();
    let ro = fs::metadata(t.join("ro")).unwrap();
    assert_eq!(ro.permissions().mode() & 0o7777, 0o555);
    assert_eq!(ro.mtime(), 1_600_000_000);
    assert_eq!(fs::metadata(t.join("ro/x")).unwrap().mode() & 0o7777, 0o600);
    assert!(fs::symlink_metadata(t.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

fn lower_layer() -> Vec<u8> {
    TarBuf::new()
        .dir("a/")
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("a/gonedir/")
        .file("a/gonedir/f", b"f")
        .dir("d/")
        .file("d/old", b"old")
        .dir("d/sub/")
        .file("d/sub/deep", b"deep")
        .finish()
}

fn upper_layer() -> Vec<u8> {
    TarBuf::new()
        .file("a/.wh.gone", b"")
        .file("a/.wh.gonedir", b"")
        .file("a/same", b"added and whited out in one layer")
        .file("a/.wh.same", b"")
        .file("a/.wh.never-existed", b"")
        .dir("d/")
        .file("d/new", b"new")
        .dir("d/sub/")
        .file("d/sub/fresh", b"fresh")
        .file("d/.wh..wh..opq", b"")
        .file(".wh..wh.plnk", b"")
        .finish()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn whiteouts_in_apply_mode() {
    let s = Scratch::new();
    let t = s.target();
    let opts = unprivileged(WhiteoutMode::Apply);
    extract(&lower_layer(), &t, &opts).unwrap();
    let stats = extract(&upper_layer(), &t, &opts).unwrap();
    assert_eq!(stats.whiteouts, 6);
    assert_eq!(names(&t.join("a")), ["keep", "same"]);
    assert_eq!(names(&t.join("d")), ["new", "sub"]);
    assert_eq!(names(&t.join("d/sub")), ["fresh"]);
    assert_eq!(names(&t), ["a", "d"]);
    s.assert_nothing_outside();
}

#[test]
fn whiteouts_in_overlay_mode() {
    require_root("whiteouts_in_overlay_mode");
    let s = Scratch::new();
    let t = s.target();
    extract(&upper_layer(), &t, &ExtractOptions::overlay()).unwrap();
    for name in ["a/gone", "a/gonedir", "a/never-existed"] {
        let m = fs::symlink_metadata(t.join(name)).unwrap();
        assert!(m.file_type().is_char_device(), "{name}");
        assert_eq!(m.rdev(), 0, "{name}");
    }
    // A whiteout in the same layer as the file wins in overlay form: overlay cannot hold both.
    assert!(fs::symlink_metadata(t.join("a/same"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        lgetxattr(&t.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(lgetxattr(&t.join("a"), "trusted.overlay.opaque"), None);
    assert_eq!(names(&t), ["a", "d"]);
    assert!(!t.join(".wh..wh.plnk").exists());
}

fn mount_overlay(mount: &kiln::snapshot::Mount, target: &Path) {
    let status = Command::new("mount")
        .arg("-t")
        .arg(&mount.kind)
        .arg("-o")
        .arg(mount.options_string())
        .arg(&mount.source)
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success(), "mount {mount:?} failed");
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn overlay_mount_of_prepared_snapshot_hides_whited_out_entries() {
    require_root("overlay_mount_of_prepared_snapshot_hides_whited_out_entries");
    let tmp = tempfile::tempdir().unwrap();
    let snaps = Snapshotter::new(tmp.path().join("snapshots")).unwrap();
    let (lower, upper) = (lower_layer(), upper_layer());
    let diffs = [DiffId(Digest::of(&lower)), DiffId(Digest::of(&upper))];
    let chain = chain_ids(&diffs);
    let l0 = snaps
        .unpack(None, &diffs[0], &lower[..], Compression::None)
        .unwrap();
    assert_eq!(l0.chain_id, chain[0]);
    let l1 = snaps
        .unpack(Some(&chain[0]), &diffs[1], &upper[..], Compression::None)
        .unwrap();
    assert_eq!(l1.chain_id, chain[1]);
    assert_eq!(l1.size, Some(upper.len() as u64));

    let mounts = snaps.prepare("run-1", Some(&chain[1])).unwrap();
    assert_eq!(mounts.len(), 1);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    mount_overlay(&mounts[0], &mnt);
    let guard = Unmount(mnt.clone());
    assert_eq!(names(&mnt.join("a")), ["keep"]);
    assert_eq!(names(&mnt.join("d")), ["new", "sub"]);
    assert_eq!(names(&mnt.join("d/sub")), ["fresh"]);
    assert_eq!(fs::read(mnt.join("a/keep")).unwrap(), b"keep");
    fs::write(mnt.join("a/written"), b"by the step").unwrap();
    fs::remove_file(mnt.join("a/keep")).unwrap();
    drop(guard);

    let upper_dir = snaps.upper_dir("run-1").unwrap();
    assert_eq!(
        fs::read(upper_dir.join("a/written")).unwrap(),
        b"by the step"
    );
    let wh = fs::symlink_metadata(upper_dir.join("a/keep")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);

    // Commit, then a read-only view of the three layers.
    let diff = DiffId(Digest::of(b"pretend layer of run-1"));
    let l2 = snaps.commit("run-1", &diff).unwrap();
    assert_eq!(l2.parent.as_ref(), Some(&chain[1]));
    let view = snaps.view(&l2.chain_id).unwrap();
    let mnt2 = tmp.path().join("view");
    fs::create_dir(&mnt2).unwrap();
    mount_overlay(&view[0], &mnt2);
    let guard = Unmount(mnt2.clone());
    assert_eq!(names(&mnt2.join("a")), ["written"]);
    assert!(
        fs::write(mnt2.join("nope"), b"").is_err(),
        "a view is read-only"
    );
    drop(guard);
}

#[test]
fn unpack_rejects_a_wrong_diff_id_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let snaps = Snapshotter::new(tmp.path()).unwrap();
    let tar = sample_tar();
    let wrong = DiffId(Digest::of(b"not this layer"));
    let opts_err = snaps
        .unpack(None, &wrong, &tar[..], Compression::None)
        .unwrap_err();
    assert!(opts_err.to_string().contains("DiffID"), "{opts_err}");
    assert!(snaps.list().unwrap().is_empty());
    assert_eq!(names(&tmp.path().join("tmp")), Vec::<String>::new());
    let right = DiffId(Digest::of(&tar));
    let info = snaps
        .unpack(None, &right, &tar[..], Compression::None)
        .unwrap();
    assert!(snaps.exists(&info.chain_id));
    assert_eq!(
        fs::read(snaps.fs_path(&info.chain_id).join("etc/hostname")).unwrap(),
        b"kiln\n"
    );
    // Unpacking again finds it without reading the (here empty) stream.
    let again = snaps
        .unpack(None, &right, &b""[..], Compression::None)
        .unwrap();
    assert_eq!(again, info);
}

#[test]
fn streams_a_large_layer_without_holding_it() {
    // 16 MiB generated on the fly: neither the test nor the extractor holds the tar in memory.
    const SIZE: u64 = 16 << 20;
    let stream = || {
        let mut h = header(b"large.bin", EntryType::Regular, SIZE, 0o644);
        h.set_size(SIZE);
        h.set_cksum();
        std::io::Read::chain(
            std::io::Read::chain(std::io::Cursor::new(h.as_bytes().to_vec()), {
                std::io::Read::take(std::io::repeat(7), SIZE)
            }),
            std::io::Read::take(std::io::repeat(0), 1024),
        )
    };
    let mut expected = kiln::oci::DigestingReader::new(stream());
    std::io::copy(&mut expected, &mut std::io::sink()).unwrap();
    let (expected, len) = expected.finish();
    let s = Scratch::new();
    let stats = extract_layer(
        stream(),
        Compression::None,
        &s.target(),
        &unprivileged(WhiteoutMode::Overlay),
    )
    .unwrap();
    assert_eq!(stats.diff_id, DiffId(expected));
    assert_eq!(stats.uncompressed_size, len);
    assert_eq!(
        fs::metadata(s.target().join("large.bin")).unwrap().len(),
        SIZE
    );
}

#[test]
fn non_directory_entries_naming_the_root_are_skipped() {
    // moby's archive.Unpack (BuildKit's ADD) and containerd's layer apply both skip an entry
    // that resolves to the target itself; a file can never be written there.
    for mode in [WhiteoutMode::Apply, WhiteoutMode::Overlay] {
        let s = Scratch::new();
        let tar = TarBuf::new()
            .file("", b"no name")
            .file("./", b"dot slash")
            .file("/", b"slash")
            .symlink(".", "/etc")
            .hardlink("a/..", "a.txt")
            .file("a.txt", b"kept")
            .finish();
        extract(&tar, &s.target(), &unprivileged(mode)).unwrap();
        assert!(s.target().is_dir() && !s.target().is_symlink());
        assert_eq!(names(&s.target()), ["a.txt"], "{mode:?}");
        assert_eq!(fs::read(s.target().join("a.txt")).unwrap(), b"kept");
        s.assert_nothing_outside();
    }
}
