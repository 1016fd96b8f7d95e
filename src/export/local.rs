//! The image's final root filesystem: layers applied in order into a directory (whiteouts
//! delete, owners, modes, times and xattrs kept), or that tree written as one tar.
//!
//! The tar goes through a scratch directory on the store's file system rather than being merged
//! from the layer tars in memory: applying whiteouts needs the lower layers' names, and disk is
//! cheap where memory is not.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::layer::{extract_layer, ExtractOptions};
use crate::oci::Compression;
use crate::store::Store;

use super::{ExportError, ExportSource};

/// Applies every layer of `image` into `dest` (created if missing), bottom first, checking each
/// layer's diffID against the config.
pub fn write_rootfs_dir(
    store: &Store,
    image: &ExportSource,
    dest: &Path,
) -> Result<(), ExportError> {
    fs::create_dir_all(dest).map_err(ExportError::io("create", dest))?;
    let options = ExtractOptions::apply();
    for (layer, diff_id) in image
        .manifest
        .layers
        .iter()
        .zip(&image.config.rootfs.diff_ids)
    {
        let file = store.open_blob(&layer.digest)?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        // Trust the bytes over the media type (foreign and odd types exist in the wild).
        let prefix = io::BufRead::fill_buf(&mut reader)
            .map_err(ExportError::io("read", store.blob_path(&layer.digest)))?;
        let compression = Compression::sniff(prefix);
        let stats = extract_layer(reader, compression, dest, &options).map_err(|source| {
            ExportError::Layer {
                digest: layer.digest.clone(),
                source,
            }
        })?;
        if stats.diff_id != *diff_id {
            return Err(ExportError::DiffIdMismatch {
                digest: layer.digest.clone(),
                expected: diff_id.0.clone(),
                actual: stats.diff_id.0,
            });
        }
    }
    Ok(())
}

/// Writes the root filesystem of `image` as a tar into `out` (sorted, PAX xattrs, hard links as
/// links), unpacking it first in a scratch directory under the store root.
pub fn write_rootfs_tar<W: Write>(
    store: &Store,
    image: &ExportSource,
    out: W,
) -> Result<W, ExportError> {
    let scratch = tempfile::Builder::new()
        .prefix("export-rootfs-")
        .tempdir_in(store.root())
        .map_err(ExportError::io(
            "create a scratch directory in",
            store.root(),
        ))?;
    write_rootfs_dir(store, image, scratch.path())?;
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut links = HashMap::new();
    append_tree(&mut tar, scratch.path(), Path::new(""), &mut links)?;
    let mut out = tar.into_inner().map_err(ExportError::Write)?;
    out.flush().map_err(ExportError::Write)?;
    Ok(out)
}

/// Appends the children of `root/rel`, depth first in name order.
fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), ExportError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(ExportError::io("list", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(ExportError::io("list", &dir))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).map_err(ExportError::io("stat", &path))?;
        append_xattrs(tar, &path)?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        // Permission bits only, as GNU tar and BuildKit write them (the type is the entry type).
        h.set_mode(meta.mode() & 0o7777);
        let ft = meta.file_type();
        if ft.is_dir() {
            tar.append_data(&mut h, &rel, io::empty())
                .map_err(ExportError::Write)?;
            append_tree(tar, root, &rel, links)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(ExportError::io("read link", &path))?;
            h.set_size(0);
            tar.append_link(&mut h, &rel, &target)
                .map_err(ExportError::Write)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    tar.append_link(&mut h, &rel, first)
                        .map_err(ExportError::Write)?;
                    continue;
                }
                links.insert(key, rel.clone());
            }
            let file = File::open(&path).map_err(ExportError::io("open", &path))?;
            let mut reader = BufReader::with_capacity(256 * 1024, file).take(meta.len());
            tar.append_data(&mut h, &rel, &mut reader)
                .map_err(ExportError::Write)?;
        } else {
            // Devices and fifos: the header carries type and device numbers.
            h.set_size(0);
            tar.append_data(&mut h, &rel, io::empty())
                .map_err(ExportError::Write)?;
        }
    }
    Ok(())
}

/// Writes `path`'s xattrs as a PAX header for the next entry (overlay's own are left out).
fn append_xattrs<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> Result<(), ExportError> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        // No xattr support on this file system: there are none to keep.
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(ExportError::io("list xattrs of", path)(e.into())),
    };
    let mut records = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if crate::layer::overlay::is_overlay_xattr(name) {
            continue;
        }
        let mut value = vec![0u8; 64 * 1024];
        let n = rustix::fs::lgetxattr(path, name, &mut value)
            .map_err(|e| ExportError::io("read xattr of", path)(e.into()))?;
        value.truncate(n);
        records.push((format!("SCHILY.xattr.{name}"), value));
    }
    if records.is_empty() {
        return Ok(());
    }
    tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(ExportError::Write)
}
