//! Writing layers: one streaming pass that hashes the tar (DiffID), compresses it and hashes
//! the blob; and the overlay-upper-directory differ that produces the tar of a step's change.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read as _, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::oci::{Compression, DiffId, HashAhead};

use super::LayerError;

/// What a finished layer blob is. Its digest and size are the sink's to compute: a store ingest
/// hashes what it is given anyway, and hashing the compressed bytes twice cost a whole sha256
/// pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub diff_id: DiffId,
    pub uncompressed_size: u64,
    pub media_type: &'static str,
    /// gzip only: where each compressed chunk went, for [`super::pargzip::ChunkIndex::record`].
    pub gzip_chunks: Vec<super::pargzip::ChunkPlacement>,
}

enum Encoder<W: Write> {
    None(W),
    Gzip(super::pargzip::ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    /// Only while swapping encoders in `with_chunk_index`.
    Taken,
}

/// tar bytes in → compressed blob out, with the DiffID computed on the way.
pub struct LayerWriter<W: Write> {
    tar: HashAhead<Encoder<W>>,
    compression: Compression,
}

impl<W: Write> LayerWriter<W> {
    pub fn new(out: W, compression: Compression, level: Option<u32>) -> Result<Self, LayerError> {
        let blob = out;
        let encoder = match compression {
            Compression::None => Encoder::None(blob),
            // A fixed header (no name, mtime 0) and fixed chunking keep the digest reproducible.
            Compression::Gzip => {
                Encoder::Gzip(super::pargzip::ParallelGzip::new(blob, level.unwrap_or(6)))
            }
            Compression::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(blob, level.unwrap_or(3) as i32).map_err(
                    |e| {
                        LayerError::Io(crate::oci::IoError {
                            op: "start zstd",
                            path: Default::default(),
                            source: e,
                        })
                    },
                )?,
            ),
        };
        Ok(LayerWriter {
            tar: HashAhead::new(encoder),
            compression,
        })
    }

    /// gzip: reuse compressed chunks an earlier layer left in `index` (same output bytes).
    pub fn with_chunk_index(mut self, index: std::sync::Arc<super::pargzip::ChunkIndex>) -> Self {
        // Only gzip has chunks; any other encoder is put back untouched.
        *self.tar.get_mut() = match std::mem::replace(self.tar.get_mut(), Encoder::Taken) {
            Encoder::Gzip(g) => Encoder::Gzip(g.with_index(index)),
            other => other,
        };
        self
    }

    pub fn finish(self) -> Result<(LayerInfo, W), LayerError> {
        let io_err = |source| {
            LayerError::Io(crate::oci::IoError {
                op: "finish layer compression",
                path: Default::default(),
                source,
            })
        };
        let (diff_id, uncompressed_size, encoder) = self.tar.finish().map_err(io_err)?;
        let mut gzip_chunks = Vec::new();
        let out = match encoder {
            Encoder::None(w) => w,
            Encoder::Gzip(g) => {
                let (w, placements) = g.finish().map_err(io_err)?;
                gzip_chunks = placements;
                w
            }
            Encoder::Zstd(z) => z.finish().map_err(io_err)?,
            Encoder::Taken => return Err(io_err(io::Error::other("layer encoder missing"))),
        };
        // Always the OCI type; the export maps it to Docker's when asked to.
        let media_type = self.compression.layer_media_type(true);
        Ok((
            LayerInfo {
                diff_id: DiffId(diff_id),
                uncompressed_size,
                media_type,
                gzip_chunks,
            },
            out,
        ))
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
            Encoder::Taken => Err(io::Error::other("layer encoder missing")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
            Encoder::Taken => Ok(()),
        }
    }
}

impl<W: Write> Write for LayerWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tar.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tar.flush()
    }
}

#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Clamp entry times to this (SOURCE_DATE_EPOCH).
    pub source_date_epoch: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub entries: u64,
    pub bytes: u64,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerError {
    let path = path.to_path_buf();
    move |source| LayerError::Io(crate::oci::IoError { op, path, source })
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

/// Writes the change recorded in an overlayfs upper directory as a layer tar: entries sorted
/// (parents first), numeric owners, PAX for long names, overlay whiteouts as `.wh.` files and
/// opaque directories as `.wh..wh..opq`, hardlinks within the upper dir kept.
pub fn write_overlay_diff(
    upper: &Path,
    mut out: impl Write,
    opts: &DiffOptions,
) -> Result<DiffStats, LayerError> {
    // The files are read and the tar is made on a thread of its own while this one passes the
    // stream on (to compression and hashing): both are a full pass over every byte.
    let (tar_out, tar_in) = crate::oci::pipe::pipe();
    std::thread::scope(|s| {
        let producer = s.spawn(move || -> Result<DiffStats, LayerError> {
            let mut builder = tar::Builder::new(tar_out);
            builder.follow_symlinks(false);
            let mut diff = DiffWalk {
                upper,
                tar: &mut builder,
                stats: DiffStats::default(),
                links: HashMap::new(),
                opts,
                file_buf: Vec::new(),
            };
            diff.walk(upper)?;
            let stats = diff.stats;
            let finished = builder.into_inner().and_then(|w| w.close());
            finished.map_err(io_err("finish tar of", upper))?;
            Ok(stats)
        });
        let mut written = Ok(());
        while let Some(piece) = tar_in.next_piece() {
            written = out.write_all(&piece);
            if written.is_err() {
                break;
            }
            tar_in.give_back(piece);
        }
        // Dropping the reading end makes a producer still writing stop with an error.
        drop(tar_in);
        let produced = producer.join().unwrap_or_else(|_| {
            Err(io_err("write the tar of", upper)(io::Error::other(
                "the tar thread panicked",
            )))
        });
        written.map_err(io_err("write the layer of", upper))?;
        produced
    })
}

/// Files up to this size are read whole into one reused buffer and handed to the tar writer
/// in a single write (most files of a source tree); larger ones are streamed.
const WHOLE_FILE: u64 = 1 << 20;

fn clamp(mtime: i64, opts: &DiffOptions) -> u64 {
    let t = match opts.source_date_epoch {
        Some(e) if mtime > e => e,
        _ => mtime,
    };
    t.max(0) as u64
}

fn header_for(meta: &fs::Metadata, opts: &DiffOptions) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(clamp(meta.mtime(), opts));
    h.set_size(0);
    h
}

/// The one extended attribute BuildKit's layers keep (`setcap` in a RUN): a PAX header with
/// `SCHILY.xattr.security.capability` goes before the entry. Other xattrs (`user.*`) are left
/// out, as BuildKit leaves them out.
fn append_capability<W: Write>(b: &mut tar::Builder<W>, path: &Path) -> Result<(), LayerError> {
    const NAME: &str = "security.capability";
    let Some(value) = xattr(path, NAME) else {
        return Ok(());
    };
    let record = pax_record(&format!("SCHILY.xattr.{NAME}"), &value);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_size(record.len() as u64);
    h.set_path("PaxHeader")
        .map_err(io_err("write tar entry for", path))?;
    h.set_cksum();
    b.append(&h, &record[..])
        .map_err(io_err("write tar entry for", path))
}

/// One PAX record, `"<len> <key>=<value>\n"`, where `len` counts the whole record, itself too.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // the space, '=' and '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// A directory's entry name: its path with a trailing slash.
fn dir_name(rel: &Path) -> PathBuf {
    let mut name = rel.as_os_str().to_os_string();
    name.push("/");
    PathBuf::from(name)
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &Path,
    data: impl io::Read,
    at: &Path,
) -> Result<(), LayerError> {
    b.append_data(h, name, data)
        .map_err(io_err("write tar entry for", at))
}

/// Writes `rel` as a hard link when its inode was written under another name before;
/// otherwise remembers `rel` as the inode's first name and says no.
fn linked_before<W: Write>(
    links: &mut HashMap<(u64, u64), PathBuf>,
    b: &mut tar::Builder<W>,
    meta: &fs::Metadata,
    rel: &Path,
    h: &mut tar::Header,
    path: &Path,
) -> Result<bool, LayerError> {
    let key = (meta.dev(), meta.ino());
    let Some(first) = links.get(&key) else {
        links.insert(key, rel.to_path_buf());
        return Ok(false);
    };
    h.set_entry_type(tar::EntryType::Link);
    b.append_link(h, rel, first)
        .map_err(io_err("write tar entry for", path))?;
    Ok(true)
}

struct DiffWalk<'a, W: Write> {
    upper: &'a Path,
    tar: &'a mut tar::Builder<W>,
    stats: DiffStats,
    /// First path of each multiply-linked inode, for hardlink entries.
    links: HashMap<(u64, u64), PathBuf>,
    opts: &'a DiffOptions,
    file_buf: Vec<u8>,
}

impl<W: Write> DiffWalk<'_, W> {
    fn walk(&mut self, dir: &Path) -> Result<(), LayerError> {
        let (upper, opts) = (self.upper, self.opts);
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map_err(io_err("list", dir))?
            .filter_map(|e| e.ok())
            .map(|e| (e.file_name(), e))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // Files are opened relative to their directory, not by walking the whole path again.
        let dir_fd = rustix::fs::open(
            dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_err("open", dir)(e.into()))?;
        for (name, entry) in entries {
            let path = dir.join(&name);
            // A path, not a string: a name made in a RUN may be any bytes (`touch $'\xff'`),
            // and the tar keeps them as they are, as BuildKit's does.
            let rel = path
                .strip_prefix(upper)
                .unwrap_or(Path::new(""))
                .to_path_buf();
            let meta = entry.metadata().map_err(io_err("stat", &path))?;
            self.stats.entries += 1;
            let ft = meta.file_type();
            let b = &mut *self.tar;
            if is_whiteout(&meta) {
                let mut base = std::ffi::OsString::from(".wh.");
                base.push(&name);
                let wh = rel.with_file_name(base);
                let mut h = header_for(&meta, opts);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                append(b, &mut h, &wh, io::empty(), &path)?;
                continue;
            }
            let mut h = header_for(&meta, opts);
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                append_capability(b, &path)?;
                append(b, &mut h, &dir_name(&rel), io::empty(), &path)?;
                if xattr(&path, crate::layer::overlay::opaque_xattr()).as_deref() == Some(b"y") {
                    let mut o = header_for(&meta, opts);
                    o.set_entry_type(tar::EntryType::Regular);
                    o.set_mode(0o644);
                    append(b, &mut o, &rel.join(".wh..wh..opq"), io::empty(), &path)?;
                }
                self.walk(&path)?;
            } else if meta.nlink() > 1
                && linked_before(&mut self.links, b, &meta, &rel, &mut h, &path)?
            {
                // A later name of an inode already written (a file, or a symlink, fifo or device
                // given a second name with `ln`): a hard link entry, as BuildKit writes.
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(io_err("read link", &path))?;
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, &rel, &target)
                    .map_err(io_err("write tar entry for", &path))?;
            } else if ft.is_file() {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                append_capability(b, &path)?;
                let f = rustix::fs::openat(
                    &dir_fd,
                    name.as_os_str(),
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map(fs::File::from)
                .map_err(|e| io_err("open", &path)(e.into()))?;
                self.stats.bytes += meta.len();
                if meta.len() <= WHOLE_FILE {
                    let buf = &mut self.file_buf;
                    buf.clear();
                    io::Read::take(f, meta.len() + 1)
                        .read_to_end(buf)
                        .map_err(io_err("read", &path))?;
                    if buf.len() as u64 != meta.len() {
                        // The header already says how long it is: a tar that disagrees is corrupt.
                        return Err(io_err("archive (it changed while being read)", &path)(
                            io::Error::other(format!(
                                "{} bytes instead of {}",
                                buf.len(),
                                meta.len()
                            )),
                        ));
                    }
                    append(b, &mut h, &rel, &buf[..], &path)?;
                } else {
                    let reader = io::BufReader::with_capacity(WHOLE_FILE as usize, f);
                    append(b, &mut h, &rel, reader, &path)?;
                }
            } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
                h.set_entry_type(if ft.is_fifo() {
                    tar::EntryType::Fifo
                } else if ft.is_char_device() {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                let rdev = meta.rdev();
                let _ = h.set_device_major(rustix::fs::major(rdev));
                let _ = h.set_device_minor(rustix::fs::minor(rdev));
                append(b, &mut h, &rel, io::empty(), &path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_index_leaves_other_encoders_alone() {
        let dir = tempfile::tempdir().unwrap();
        let index = std::sync::Arc::new(super::super::pargzip::ChunkIndex::new(
            dir.path().join("chunks"),
            dir.path().join("blobs"),
        ));
        for compression in [Compression::None, Compression::Zstd] {
            let mut w = LayerWriter::new(Vec::new(), compression, None)
                .unwrap()
                .with_chunk_index(index.clone());
            w.write_all(b"some tar bytes").unwrap();
            let (info, blob) = w.finish().unwrap();
            assert!(!blob.is_empty());
            assert_eq!(info.uncompressed_size, 14);
        }
    }

    #[test]
    fn diff_ids_and_digests_and_empty_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        fs::create_dir_all(upper.join("app/sub")).unwrap();
        fs::write(upper.join("app/a.txt"), "hello").unwrap();
        fs::hard_link(upper.join("app/a.txt"), upper.join("app/b.txt")).unwrap();
        std::os::unix::fs::symlink("a.txt", upper.join("app/link")).unwrap();
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut w = LayerWriter::new(Vec::new(), compression, None).unwrap();
            let stats = write_overlay_diff(&upper, &mut w, &DiffOptions::default()).unwrap();
            assert_eq!(stats.entries, 5);
            let (info, blob) = w.finish().unwrap();
            assert!(blob.len() > 512 || compression != Compression::None);
            // Extracting gives the same DiffID back.
            let target = dir.path().join(format!("x{compression:?}"));
            fs::create_dir(&target).unwrap();
            let ex = crate::layer::extract_layer(
                &blob[..],
                compression,
                &target,
                &crate::layer::ExtractOptions::apply(),
            )
            .unwrap();
            assert_eq!(ex.diff_id, info.diff_id);
            assert_eq!(
                fs::read_to_string(target.join("app/b.txt")).unwrap(),
                "hello"
            );
            assert_eq!(
                fs::read_link(target.join("app/link")).unwrap().to_str(),
                Some("a.txt")
            );
        }
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let mut w = LayerWriter::new(Vec::new(), Compression::Gzip, None).unwrap();
        assert_eq!(
            write_overlay_diff(&empty, &mut w, &DiffOptions::default())
                .unwrap()
                .entries,
            0
        );
    }

    #[test]
    fn deterministic_with_source_date_epoch() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "x").unwrap();
        let run = || {
            let mut w = LayerWriter::new(Vec::new(), Compression::Gzip, None).unwrap();
            write_overlay_diff(
                dir.path(),
                &mut w,
                &DiffOptions {
                    source_date_epoch: Some(0),
                },
            )
            .unwrap();
            w.finish().unwrap().0
        };
        assert_eq!(run(), run());
    }
}

#[cfg(test)]
mod name_and_link_tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn entries(upper: &Path) -> Vec<(Vec<u8>, tar::EntryType, Option<Vec<u8>>)> {
        let mut tar = Vec::new();
        write_overlay_diff(upper, &mut tar, &DiffOptions::default()).unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                (e.path_bytes().into_owned(), e.header().entry_type(), link)
            })
            .collect()
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"dir\xfe");
        fs::create_dir(dir.path().join(odd)).unwrap();
        fs::write(
            dir.path()
                .join(odd)
                .join(std::ffi::OsStr::from_bytes(b"bad\xffname")),
            "x",
        )
        .unwrap();
        let names: Vec<_> = entries(dir.path()).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            vec![b"dir\xfe/".to_vec(), b"dir\xfe/bad\xffname".to_vec()]
        );
    }

    #[test]
    fn a_second_name_of_a_symlink_or_fifo_is_a_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/h1", dir.path().join("a-sym")).unwrap();
        // link(2) on a symlink links the symlink itself, as `ln` in a RUN does.
        rustix::fs::linkat(
            rustix::fs::CWD,
            dir.path().join("a-sym"),
            rustix::fs::CWD,
            dir.path().join("b-sym"),
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("c-fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        fs::hard_link(dir.path().join("c-fifo"), dir.path().join("d-fifo")).unwrap();
        let got = entries(dir.path());
        assert_eq!(got[0].1, tar::EntryType::Symlink);
        assert_eq!(
            got[1],
            (
                b"b-sym".to_vec(),
                tar::EntryType::Link,
                Some(b"a-sym".to_vec())
            )
        );
        assert_eq!(got[2].1, tar::EntryType::Fifo);
        assert_eq!(
            got[3],
            (
                b"d-fifo".to_vec(),
                tar::EntryType::Link,
                Some(b"c-fifo".to_vec())
            )
        );
    }

    #[test]
    fn a_file_capability_goes_into_the_tar_and_back_but_user_xattrs_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let f = upper.join("ping");
        fs::write(&f, "elf").unwrap();
        // cap_net_bind_service=ep, as `setcap` writes it (VFS_CAP_REVISION_2).
        let cap: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        rustix::fs::setxattr(
            &f,
            "security.capability",
            &cap,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(&f, "user.x", b"1", rustix::fs::XattrFlags::empty()).unwrap();
        let mut tar = Vec::new();
        write_overlay_diff(&upper, &mut tar, &DiffOptions::default()).unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        let pax: Vec<(String, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .expect("a PAX header")
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(e.path_bytes().as_ref(), b"ping");
        assert_eq!(
            pax,
            vec![("SCHILY.xattr.security.capability".to_string(), cap.to_vec())]
        );
        let target = dir.path().join("x");
        fs::create_dir(&target).unwrap();
        crate::layer::extract_layer(
            &tar[..],
            Compression::None,
            &target,
            &crate::layer::ExtractOptions::apply(),
        )
        .unwrap();
        assert_eq!(
            xattr(&target.join("ping"), "security.capability"),
            Some(cap.to_vec())
        );
        assert_eq!(fs::read(target.join("ping")).unwrap(), b"elf");

        // A name past 100 bytes gets a GNU long-name entry after the PAX header: both apply.
        let long = "l".repeat(150);
        fs::remove_file(&f).unwrap();
        fs::write(upper.join(&long), "elf").unwrap();
        rustix::fs::setxattr(
            upper.join(&long),
            "security.capability",
            &cap,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let mut tar = Vec::new();
        write_overlay_diff(&upper, &mut tar, &DiffOptions::default()).unwrap();
        let target = dir.path().join("y");
        fs::create_dir(&target).unwrap();
        crate::layer::extract_layer(
            &tar[..],
            Compression::None,
            &target,
            &crate::layer::ExtractOptions::apply(),
        )
        .unwrap();
        assert_eq!(
            xattr(&target.join(&long), "security.capability"),
            Some(cap.to_vec())
        );
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        assert_eq!(pax_record("k", b"v"), b"6 k=v\n");
        // 99 bytes with a 2-digit length; one more byte makes it 3 digits and 101 bytes.
        assert_eq!(pax_record("k", &[b'a'; 93]).len(), 99);
        let rec = pax_record("k", &[b'a'; 94]);
        assert!(rec.starts_with(b"101 k=a"));
        assert_eq!(rec.len(), 101);
    }
}
