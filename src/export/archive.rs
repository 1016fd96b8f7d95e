//! Image archives, written by streaming blobs out of the store into a tar.
//!
//! Both formats share one body, an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), as `docker save` (25+) and BuildKit's docker exporter write it; the
//! Docker format adds `manifest.json` (`Config`, `RepoTags`, `Layers` as paths of the blobs),
//! which is what `docker load` (20.10 too, which decompresses gzip layers itself) and
//! `podman load` read.
//!
//! Docker before 23 cannot decompress zstd, so in the Docker format a zstd layer is also
//! written uncompressed (`blobs/sha256/<diffID>`, decompressed twice: once to learn the size
//! for the tar header, once into the archive) and `manifest.json` points at that copy.
//!
//! `index.json` names each image as BuildKit does: `io.containerd.image.name` is the full
//! reference, `org.opencontainers.image.ref.name` only its tag (what `skopeo
//! oci-archive:FILE:TAG` looks up).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use crate::oci::{media, Compression, Digest, DigestingReader, Reference};
use crate::store::{Store, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, OCI_LAYOUT};

use super::{ExportError, ExportSource, IndexSource};

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
    let mut tar = start_layout(out)?;
    let mut written = BTreeSet::new();
    let mut docker_layers = Vec::new();
    for image in images {
        for blob in image.blobs() {
            if written.insert(blob.digest.clone()) {
                append_blob(&mut tar, store, &blob.digest, blob.size)?;
            }
        }
        if format == ArchiveFormat::Docker {
            let mut paths = Vec::new();
            for (layer, diff_id) in image
                .manifest
                .layers
                .iter()
                .zip(&image.config.rootfs.diff_ids)
            {
                if Compression::from_media_type(&layer.media_type) == Some(Compression::Zstd) {
                    if written.insert(diff_id.0.clone()) {
                        append_decompressed(&mut tar, store, &layer.digest, &diff_id.0)?;
                    }
                    paths.push(blob_path(&diff_id.0));
                } else {
                    paths.push(blob_path(&layer.digest));
                }
            }
            docker_layers.push(paths);
        }
    }
    let index = oci_index(images);
    append_json(&mut tar, "index.json", &index)?;
    if format == ArchiveFormat::Docker {
        append_json(
            &mut tar,
            "manifest.json",
            &docker_manifest(images, &docker_layers),
        )?;
    }
    finish(tar)
}

/// Writes a multi-platform image as an OCI archive into `out` (flushed): every platform's
/// blobs, the index blob, and `index.json` naming the index under each of `index.names`.
pub fn write_index_archive<W: Write>(
    store: &Store,
    index: &IndexSource,
    out: W,
) -> Result<W, ExportError> {
    let mut tar = start_layout(out)?;
    let mut written = BTreeSet::new();
    for image in &index.platforms {
        for blob in image.blobs() {
            if written.insert(blob.digest.clone()) {
                append_blob(&mut tar, store, &blob.digest, blob.size)?;
            }
        }
    }
    append_blob(
        &mut tar,
        store,
        &index.descriptor.digest,
        index.descriptor.size,
    )?;
    let entry = [(index.descriptor.clone(), index.names.clone())];
    append_json(&mut tar, "index.json", &layout_index(&entry))?;
    finish(tar)
}

/// An archive's tar with the OCI layout's marker file and blob directories.
fn start_layout<W: Write>(out: W) -> Result<tar::Builder<W>, ExportError> {
    let mut tar = tar::Builder::new(out);
    append_bytes(&mut tar, "oci-layout", OCI_LAYOUT.as_bytes())?;
    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    Ok(tar)
}

/// Ends the tar and flushes what it wrote to.
fn finish<W: Write>(tar: tar::Builder<W>) -> Result<W, ExportError> {
    let mut out = tar.into_inner().map_err(ExportError::Write)?;
    out.flush().map_err(ExportError::Write)?;
    Ok(out)
}

fn oci_index(images: &[ExportSource]) -> serde_json::Value {
    let entries: Vec<(crate::oci::Descriptor, Vec<String>)> = images
        .iter()
        .map(|i| (i.descriptor.clone(), i.names.clone()))
        .collect();
    layout_index(&entries)
}

/// `index.json`: each descriptor once per name it carries (once when it has none).
fn layout_index(entries: &[(crate::oci::Descriptor, Vec<String>)]) -> serde_json::Value {
    let mut manifests = Vec::new();
    for (descriptor, names) in entries {
        if names.is_empty() {
            manifests.push(serde_json::to_value(descriptor).unwrap_or_default());
        }
        for name in names {
            let mut d = descriptor.clone();
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
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    })
}

fn docker_manifest(images: &[ExportSource], layers: &[Vec<String>]) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = images
        .iter()
        .zip(layers)
        .map(|(image, layers)| {
            // Docker lists tagged names only, in their short form (`busybox:latest`).
            let repo_tags: Vec<String> = image
                .names
                .iter()
                .filter_map(|n| Reference::parse(n).ok())
                .filter(|r| r.tag().is_some() && r.digest().is_none())
                .map(|r| r.familiar())
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

/// Writes a zstd layer uncompressed as `blobs/sha256/<diffID>`, checking the diffID.
fn append_decompressed<W: Write>(
    tar: &mut tar::Builder<W>,
    store: &Store,
    digest: &Digest,
    diff_id: &Digest,
) -> Result<(), ExportError> {
    let path = store.blob_path(digest);
    let open = || -> Result<_, ExportError> {
        let file = io::BufReader::with_capacity(256 * 1024, store.open_blob(digest)?);
        let decoder =
            zstd::stream::read::Decoder::new(file).map_err(ExportError::io("decompress", &path))?;
        Ok(DigestingReader::new(decoder))
    };
    // First pass: the size the tar header needs, and the diffID.
    let mut counting = open()?;
    io::copy(&mut counting, &mut io::sink()).map_err(ExportError::io("decompress", &path))?;
    let (actual, size) = counting.finish();
    if &actual != diff_id {
        return Err(ExportError::DiffIdMismatch {
            digest: digest.clone(),
            expected: diff_id.clone(),
            actual,
        });
    }
    let mut reader = open()?;
    let mut h = header(size, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, blob_path(diff_id), (&mut reader).take(size))
        .map_err(ExportError::Write)?;
    let (again, read) = reader.finish();
    if &again != diff_id || read != size {
        return Err(ExportError::BlobChanged {
            expected: digest.clone(),
            actual: again,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::{ImageConfig, ImageManifest};
    use crate::oci::DiffId;

    /// A one-layer zstd image in a fresh store.
    fn zstd_image(store: &Store) -> (ExportSource, Vec<u8>) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = header(3, 0o644, tar::EntryType::Regular);
        tar.append_data(&mut h, "hi.txt", &b"hi\n"[..]).unwrap();
        let layer_tar = tar.into_inner().unwrap();
        let zst = zstd::encode_all(&layer_tar[..], 3).unwrap();
        let layer = store.write_blob(&zst).unwrap();
        let mut config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        config.rootfs.diff_ids = vec![DiffId(Digest::of(&layer_tar))];
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_blob = store.write_blob(&config_bytes).unwrap();
        let manifest: ImageManifest = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config_blob.digest, "size": config_blob.size},
            "layers": [{"mediaType": media::OCI_LAYER_ZSTD, "digest": layer.digest, "size": layer.size}],
        }))
        .unwrap();
        let manifest_blob = store
            .write_blob(&serde_json::to_vec(&manifest).unwrap())
            .unwrap();
        let source = ExportSource::from_manifest(
            store,
            &manifest_blob.digest,
            vec!["docker.io/library/z:1".into()],
        )
        .unwrap();
        (source, layer_tar)
    }

    fn entries(archive: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        for e in tar::Archive::new(archive).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
        out
    }

    #[test]
    fn docker_format_carries_zstd_layers_uncompressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (source, layer_tar) = zstd_image(&store);
        let archive = write_archive(
            &store,
            std::slice::from_ref(&source),
            ArchiveFormat::Docker,
            Vec::new(),
        )
        .unwrap();
        let files = entries(&archive);
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let layer_path = manifest[0]["Layers"][0].as_str().unwrap();
        assert_eq!(
            files[layer_path], layer_tar,
            "docker's layer is the plain tar"
        );
        assert_eq!(manifest[0]["RepoTags"][0], "z:1");
        // The OCI side still has the zstd blob its manifest names.
        assert!(files.contains_key(&blob_path(&source.manifest.layers[0].digest)));

        let oci = write_archive(&store, &[source], ArchiveFormat::Oci, Vec::new()).unwrap();
        let files = entries(&oci);
        assert!(!files.contains_key("manifest.json"));
        assert!(
            !files.contains_key(layer_path),
            "no extra copy in OCI archives"
        );
    }
}
