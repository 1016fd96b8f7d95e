//! Turning a finished writable snapshot into a layer: the overlay upper directory's diff,
//! written once through compression and hashing into a store ingest, then committed both as a
//! blob and as the next snapshot in the chain.

use std::path::Path;

use crate::layer::pargzip::ChunkIndex;
use crate::layer::{write_overlay_diff, Compression, DiffOptions, LayerWriter};

/// Where compressed gzip chunks of stored layers are indexed (see `layer::pargzip`).
pub const GZIP_CHUNKS_DIR: &str = "gzip-chunks-v2";
use crate::progress::PhaseTimer;
use crate::snapshot::{ChainId, Snapshotter};
use crate::store::Store;

use super::base::LayerState;
use super::error::BuildError;
use crate::oci::BlobRef;

#[derive(Debug, Clone, Copy)]
pub struct LayerSettings {
    pub compression: Compression,
    pub level: Option<u32>,
    pub source_date_epoch: Option<i64>,
    /// Uncompressed layers were asked for (`--compression uncompressed`), rather than left
    /// uncompressed for a push to gzip (the default): the image's tags record it.
    pub keep_uncompressed: bool,
}

/// Where a step's layer goes: the blob into the store, the snapshot into the snapshotter, with
/// the phases timed.
pub struct LayerSink<'a> {
    pub store: &'a Store,
    pub snapshots: &'a Snapshotter,
    pub settings: &'a LayerSettings,
    pub timer: PhaseTimer<'a>,
}

/// Commits the active snapshot `key` as a layer on top of `parent`. A step that changed
/// nothing still makes one (an empty tar), as BuildKit's RUN, COPY, ADD and WORKDIR do.
pub fn commit_active(
    sink: &LayerSink<'_>,
    key: &str,
    parent: Option<&ChainId>,
) -> Result<LayerState, BuildError> {
    let snapshots = sink.snapshots;
    snapshots.settle(key, crate::snapshot::MountPoints::default())?;
    let upper = snapshots.upper_dir(key)?;
    let layer = sink.timer.time("layer (diff, compress, store)", || {
        write_layer(sink.store, &upper, sink.settings)
    })?;
    let info = sink
        .timer
        .time("snapshot commit", || snapshots.commit(key, &layer.1))?;
    let chain = info.chain_id;
    debug_assert_eq!(Some(chain.clone()), Some(ChainId::of(parent, &layer.1)));
    Ok(LayerState {
        layer: layer.0,
        diff_id: layer.1,
        chain,
    })
}

/// Writes the diff of `upper` as a compressed blob into the store (an empty diff is the empty
/// tar, diffID `sha256:5f70bf18…`).
pub fn write_layer(
    store: &Store,
    upper: &Path,
    settings: &LayerSettings,
) -> Result<(BlobRef, crate::oci::DiffId), BuildError> {
    let ingest = store.ingest(None, None)?;
    let chunk_index = std::sync::Arc::new(ChunkIndex::new(
        store.root().join(GZIP_CHUNKS_DIR),
        store.blobs_dir(),
    ));
    let mut writer = LayerWriter::new(ingest, settings.compression, settings.level)?
        .with_chunk_index(chunk_index.clone());
    write_overlay_diff(
        upper,
        &mut writer,
        &DiffOptions {
            source_date_epoch: settings.source_date_epoch,
        },
    )?;
    let (info, ingest) = writer.finish()?;
    let blob = ingest.commit()?;
    chunk_index.record(
        &blob.digest,
        settings.level.unwrap_or(6).min(9),
        &info.gzip_chunks,
    );
    Ok((
        BlobRef {
            media_type: info.media_type.to_string(),
            digest: blob.digest,
            size: blob.size,
        },
        info.diff_id,
    ))
}
