//! Layers are compressed when they leave the machine, not when they are built.
//!
//! By default a build keeps the layers it makes uncompressed in the store (OCI
//! `application/vnd.oci.image.layer.v1.tar`, a valid layout for skopeo and umoci), as Docker's
//! image store does: gzip at level 6 was 2.5-3 s of a 14 s `apt-get install` build on two
//! cores, and nothing local needs the compressed bytes (snapshots are unpacked from the build
//! itself, and the image ID, the config digest, names DiffIDs only). A push first turns every
//! uncompressed layer of the manifest into a gzip blob in the store and pushes a manifest that
//! names those instead. gzip output is deterministic (fixed header, fixed chunking, pinned
//! backend and level), so pushing the same image twice gives the same manifest digest, and the
//! chunk index makes the second compression of a layer a copy of chunks already written.

use std::io::Read as _;

use crate::layer::pargzip::ChunkIndex;
use crate::layer::LayerWriter;
use crate::oci::{Compression, Digest};
use crate::store::Store;

use super::commit::GZIP_CHUNKS_DIR;
use super::error::BuildError;

/// The gzip level layers get on a push (BuildKit's default).
pub const PUSH_GZIP_LEVEL: u32 = 6;

/// `manifest` (an image or cache manifest, JSON) with each uncompressed layer replaced by a gzip
/// copy written into `store`, itself written into `store` too; the same bytes when no layer is
/// uncompressed. Other fields are kept as they are.
pub fn gzip_layers_for_push(store: &Store, manifest: &[u8]) -> Result<Vec<u8>, BuildError> {
    let invalid = |reason: String| BuildError::PushManifest(reason);
    let mut doc: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Some(layers) = doc.get_mut("layers").and_then(|l| l.as_array_mut()) else {
        return Ok(manifest.to_vec());
    };
    let mut changed = false;
    for layer in layers.iter_mut() {
        let media_type = layer["mediaType"].as_str().unwrap_or_default().to_string();
        // Only the two plain layer types kiln writes; non-distributable layers stay as they are.
        let oci = match media_type.as_str() {
            crate::oci::media::OCI_LAYER => true,
            crate::oci::media::DOCKER_LAYER => false,
            _ => continue,
        };
        let digest: Digest = layer["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| invalid(format!("layer digest: {e}")))?;
        let (gz_digest, gz_size) = gzip_blob(store, &digest)?;
        layer["mediaType"] = Compression::Gzip.layer_media_type(oci).into();
        layer["digest"] = gz_digest.to_string().into();
        layer["size"] = gz_size.into();
        changed = true;
    }
    if !changed {
        return Ok(manifest.to_vec());
    }
    let bytes = serde_json::to_vec(&doc).map_err(|e| invalid(format!("cannot write it: {e}")))?;
    // The store holds every blob of what was pushed, the manifest too (untagged, so garbage
    // collection may drop it; the next push makes the same bytes again).
    store.write_blob(&bytes)?;
    Ok(bytes)
}

/// The image manifest or index `digest` of the store as it is pushed: every manifest (an
/// index's too) with its uncompressed layers replaced by gzip copies, the rewritten documents
/// written into `store`; returns the digest to push (`digest` itself when nothing changed).
pub fn gzip_for_push(store: &Store, digest: &Digest) -> Result<Digest, BuildError> {
    let invalid = |reason: String| BuildError::PushManifest(reason);
    let bytes = store.read_blob(digest)?;
    let mut doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Some(children) = doc.get_mut("manifests").and_then(|m| m.as_array_mut()) else {
        return Ok(Digest::of(&gzip_layers_for_push(store, &bytes)?));
    };
    let mut changed = false;
    for child in children.iter_mut() {
        let old: Digest = child["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| invalid(format!("manifest digest: {e}")))?;
        let new = gzip_layers_for_push(store, &store.read_blob(&old)?)?;
        let new_digest = Digest::of(&new);
        if new_digest != old {
            child["digest"] = new_digest.to_string().into();
            child["size"] = new.len().into();
            changed = true;
        }
    }
    if !changed {
        return Ok(digest.clone());
    }
    let out = serde_json::to_vec(&doc).map_err(|e| invalid(format!("cannot write it: {e}")))?;
    store.write_blob(&out)?;
    Ok(Digest::of(&out))
}

/// Compresses the uncompressed layer blob `digest` into a gzip blob of the store; returns the
/// new blob's digest and size. The tar's sha256 is checked against `digest` on the way (it is
/// the blob's own digest and the layer's DiffID).
fn gzip_blob(store: &Store, digest: &Digest) -> Result<(Digest, u64), BuildError> {
    let path = store.blob_path(digest);
    let mut blob = std::io::BufReader::with_capacity(1 << 20, store.open_blob(digest)?);
    let chunk_index = std::sync::Arc::new(ChunkIndex::new(
        store.root().join(GZIP_CHUNKS_DIR),
        store.blobs_dir(),
    ));
    let mut writer = LayerWriter::new(
        store.ingest(None, None)?,
        Compression::Gzip,
        Some(PUSH_GZIP_LEVEL),
    )?
    .with_chunk_index(chunk_index.clone());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = blob
            .read(&mut buf)
            .map_err(BuildError::io("read layer", &path))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut writer, &buf[..n])
            .map_err(BuildError::io("compress layer", &path))?;
    }
    let (info, ingest) = writer.finish()?;
    if info.diff_id.0 != *digest {
        ingest.abort();
        return Err(BuildError::PushManifest(format!(
            "layer blob {digest} is corrupt: its content hashes to {}",
            info.diff_id.0
        )));
    }
    let committed = ingest.commit()?;
    chunk_index.record(&committed.digest, PUSH_GZIP_LEVEL, &info.gzip_chunks);
    Ok((committed.digest, committed.size))
}
