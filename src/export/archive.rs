//! Image archives, written by streaming blobs out of the store into a tar.
//!
//! Both formats share one body, an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), as `docker save` (25+) and BuildKit's docker exporter write it; the
//! Docker format adds `manifest.json` (`Config`, `RepoTags`, `Layers` as paths of the blobs),
//! which is what `docker load` (20.10 too, which decompresses gzip layers itself) and
//! `podman load` read.
//!
//! `index.json` names each image as BuildKit does: `io.containerd.image.name` is the full
//! reference, `org.opencontainers.image.ref.name` only its tag (what `skopeo
//! oci-archive:FILE:TAG` looks up).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use crate::oci::{Digest, DigestingReader, Reference};
use crate::store::{
    Store, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_INDEX, OCI_LAYOUT,
};

use super::{ExportError, ExportSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout in a tar (`docker buildx -o type=oci`, `skopeo oci-archive:`).
    Oci,
    /// A docker-archive (`docker save`, `docker load`, `podman load`).
    Docker,
}

/// Where a blob lives inside the archive.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

/// Writes `images` as one archive into `out` and returns `out` (flushed). Every blob is streamed
/// from the store and re-hashed on the way, so a damaged store never yields a quietly wrong
/// archive; blobs shared between images are written once.
pub fn write_archive<W: Write>(
    store: &Store,
    images: &[ExportSource],
    format: ArchiveFormat,
    out: W,
) -> Result<W, ExportError> {
    let mut tar = tar::Builder::new(out);
    append_bytes(&mut tar, "oci-layout", OCI_LAYOUT.as_bytes())?;
    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    let mut written = BTreeSet::new();
    for image in images {
        for (digest, size) in image.blobs() {
            if written.insert(digest.clone()) {
                append_blob(&mut tar, store, &digest, size)?;
            }
        }
    }
    let index = oci_index(images);
    append_json(&mut tar, "index.json", &index)?;
    if format == ArchiveFormat::Docker {
        append_json(&mut tar, "manifest.json", &docker_manifest(images))?;
    }
    let mut out = tar.into_inner().map_err(ExportError::Write)?;
    out.flush().map_err(ExportError::Write)?;
    Ok(out)
}

fn oci_index(images: &[ExportSource]) -> serde_json::Value {
    let mut manifests = Vec::new();
    for image in images {
        if image.names.is_empty() {
            manifests.push(serde_json::to_value(&image.descriptor).unwrap_or_default());
        }
        for name in &image.names {
            let mut d = image.descriptor.clone();
            let annotations = d.annotations.get_or_insert_with(Default::default);
            annotations.insert(ANNOTATION_CONTAINERD_NAME.to_string(), name.clone());
            if let Some(tag) = Reference::parse(name).ok().as_ref().and_then(|r| r.tag()) {
                annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
            }
            manifests.push(serde_json::to_value(&d).unwrap_or_default());
        }
    }
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": manifests,
    })
}

fn docker_manifest(images: &[ExportSource]) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = images
        .iter()
        .map(|image| {
            // Docker lists tagged names only, in their short form (`busybox:latest`).
            let repo_tags: Vec<String> = image
                .names
                .iter()
                .filter_map(|n| Reference::parse(n).ok())
                .filter(|r| r.tag().is_some() && r.digest().is_none())
                .map(|r| r.familiar())
                .collect();
            let layers: Vec<String> = image
                .manifest
                .layers
                .iter()
                .map(|l| blob_path(&l.digest))
                .collect();
            serde_json::json!({
                "Config": blob_path(image.id()),
                "RepoTags": repo_tags,
                "Layers": layers,
            })
        })
        .collect();
    serde_json::Value::Array(entries)
}

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    // Fixed owner and time: the same images give the same archive bytes.
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> Result<(), ExportError> {
    let mut h = header(0, 0o755, tar::EntryType::Directory);
    tar.append_data(&mut h, path, io::empty())
        .map_err(ExportError::Write)
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
) -> Result<(), ExportError> {
    let mut h = header(bytes.len() as u64, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, path, bytes)
        .map_err(ExportError::Write)
}

fn append_json<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &'static str,
    value: &serde_json::Value,
) -> Result<(), ExportError> {
    let bytes =
        serde_json::to_vec(value).map_err(|source| ExportError::Json { what: path, source })?;
    append_bytes(tar, path, &bytes)
}

/// Streams one blob from the store into the archive, checking its size and digest.
fn append_blob<W: Write>(
    tar: &mut tar::Builder<W>,
    store: &Store,
    digest: &Digest,
    size: u64,
) -> Result<(), ExportError> {
    let file = store.open_blob(digest)?;
    let actual_size = store.blob_size(digest)?;
    if actual_size != size {
        return Err(crate::store::StoreError::SizeMismatch {
            digest: Some(digest.clone()),
            expected: size,
            actual: actual_size,
        }
        .into());
    }
    let mut reader =
        DigestingReader::new(io::BufReader::with_capacity(256 * 1024, file).take(size));
    let mut h = header(size, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, blob_path(digest), &mut reader)
        .map_err(ExportError::Write)?;
    let (actual, read) = reader.finish();
    if &actual != digest || read != size {
        return Err(ExportError::BlobChanged {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}
