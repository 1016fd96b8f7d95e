//! Base images: from the store (or pulled), their layers unpacked once into snapshots keyed by
//! chain ID.

use crate::oci::manifest::ImageConfig;
use crate::oci::{BlobRef, Compression};
use crate::oci::{DiffId, Digest, Platform, Reference};
use crate::registry::pull::{PullOptions, Puller};
use crate::registry::tap::{self, LayerTap, SharedTap, TapSender};
use crate::snapshot::{chain_ids, ChainId, ExtractStarter, Snapshotter, Unpacked};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::error::BuildError;

/// One layer of an image being built, with the snapshot that holds it unpacked.
#[derive(Debug, Clone)]
pub struct LayerState {
    pub layer: BlobRef,
    pub diff_id: DiffId,
    pub chain: ChainId,
}

/// An image as a stage sees it: its config and its layers, bottom first.
#[derive(Debug, Clone, Default)]
pub struct ImageState {
    pub config: ImageConfig,
    pub layers: Vec<LayerState>,
    /// The image ID (config digest) of the pulled image this state starts from, if any.
    pub base_id: Option<Digest>,
}

impl ImageState {
    pub fn top_chain(&self) -> Option<&ChainId> {
        self.layers.last().map(|l| &l.chain)
    }
}

/// The image `reference` for `platform`: the store's copy unless `pull` (or absent), then its
/// layers unpacked into `snapshots`.
pub async fn resolve_image(
    puller: &Puller,
    snapshots: &Snapshotter,
    reference: &str,
    platform: &Platform,
    pull: bool,
) -> Result<(Reference, ImageState), BuildError> {
    let reference = Reference::parse(reference)?;
    let store = &puller.store;
    let tag = reference.to_string();
    let is_for_platform = |image: &crate::store::StoredImage| {
        let p = image.config.platform();
        let variant = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        p.os == platform.os
            && p.architecture == platform.architecture
            && (variant(&p.variant).is_none() || variant(&p.variant) == variant(&platform.variant))
    };
    let local = if pull {
        None
    } else {
        match store.image(&tag, platform)?.filter(is_for_platform) {
            Some(image) => Some(image),
            // The tag names another platform's image now: what a pull for this one stored.
            None => store
                .pulled_platform(&tag, platform)?
                .filter(is_for_platform),
        }
    };
    let streaming = Arc::new(UnpackWhileDownloading::new(snapshots.extract_starter()));
    let image = match local {
        Some(image) => image,
        None => {
            let options = PullOptions {
                platform: platform.clone(),
                tap: Some(SharedTap(streaming.clone())),
                ..PullOptions::default()
            };
            let start = std::time::Instant::now();
            // What was pulled, not what the tag names now: the pull of another platform
            // (of the same multi-platform build) may have moved the tag since.
            let pulled = match puller.pull(&reference, &options).await {
                Ok(pulled) => pulled,
                Err(e) => {
                    // Their taps are closed, so the extraction threads end now, each removing
                    // its directory. Waited for off the runtime: the aborted downloads that
                    // close the last taps may need this very thread to run.
                    let threads = streaming.handles();
                    let _ = tokio::task::spawn_blocking(move || join_extractions(threads)).await;
                    return Err(e.into());
                }
            };
            puller.reporter.report(crate::progress::Event::Timing {
                phase: format!("pull {reference}"),
                elapsed: start.elapsed(),
            });
            store.image_at(&tag, pulled.manifest, platform)?
        }
    };
    // The pull has returned, so every tap is closed and these threads end without waiting on
    // the download.
    let streamed = streaming.handles();
    let diff_ids = &image.config.rootfs.diff_ids;
    if diff_ids.len() != image.manifest.layers.len() {
        // Not left to end after the process: each removes its temporary directory.
        drop(join_extractions(streamed));
        return Err(BuildError::LayerCountMismatch {
            image: tag,
            layers: image.manifest.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    let mut parent: Option<ChainId> = None;
    for (descriptor, diff_id) in image.manifest.layers.iter().zip(diff_ids) {
        let chain = ChainId::of(parent.as_ref(), diff_id);
        layers.push(LayerState {
            layer: BlobRef {
                media_type: descriptor.media_type.clone(),
                digest: descriptor.digest.clone(),
                size: descriptor.size,
            },
            diff_id: diff_id.clone(),
            chain: chain.clone(),
        });
        parent = Some(chain);
    }
    // The pull has verified and stored every blob, so what was extracted from their taps is
    // those blobs' content (and each extraction checked its DiffID).
    let start = std::time::Instant::now();
    let unpacked = unpack_layers(store, snapshots, &layers, streamed)?;
    puller.reporter.report(crate::progress::Event::Timing {
        phase: format!(
            "{tag} unpack ({} of {} layers while downloading)",
            unpacked.while_downloading, unpacked.unpacked
        ),
        elapsed: start.elapsed(),
    });
    let base_id = image.id().clone();
    let mut config = image.config;
    config.created = None;
    // BuildKit's image type keeps only the OCI fields plus Docker's Healthcheck, ArgsEscaped,
    // OnBuild and Shell: legacy fields of Docker-built bases (container_config,
    // docker_version, Hostname, …) do not reach the new image.
    config.extra.clear();
    config.author = None;
    if let Some(c) = config.config.as_mut() {
        c.extra.clear();
    }
    Ok((
        reference,
        ImageState {
            config,
            layers,
            base_id: Some(base_id),
        },
    ))
}

/// Unpacks a base's layers while they download (`registry::tap`): each layer the pull fetches
/// from its first byte is extracted on a thread of its own as the bytes arrive. Nothing is
/// installed here: what the threads made waits in temporary directories until the pull has
/// verified every blob. A failed extraction only means the stored blob is extracted again
/// afterwards, which reports the error if there is one.
struct UnpackWhileDownloading {
    starter: ExtractStarter,
    /// The pulled image's DiffIDs, from the config the pull fetched first.
    diff_ids: std::sync::OnceLock<Option<Vec<DiffId>>>,
    threads: Mutex<Vec<JoinHandle<Option<Unpacked>>>>,
}

impl UnpackWhileDownloading {
    fn new(starter: ExtractStarter) -> UnpackWhileDownloading {
        UnpackWhileDownloading {
            starter,
            diff_ids: std::sync::OnceLock::new(),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// The extraction threads started so far.
    fn handles(&self) -> Vec<JoinHandle<Option<Unpacked>>> {
        std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn join_extractions(threads: Vec<JoinHandle<Option<Unpacked>>>) -> Vec<Unpacked> {
    threads
        .into_iter()
        .filter_map(|t| t.join().ok().flatten())
        .collect()
}

impl LayerTap for UnpackWhileDownloading {
    fn layer_started(
        &self,
        index: usize,
        layer: &crate::oci::BlobRef,
        config: &[u8],
    ) -> Option<TapSender> {
        // An unknown media type is sniffed from the stored blob's first bytes instead.
        let compression = Compression::from_media_type(&layer.media_type)?;
        // One image per tap: its config is parsed once, for the first layer.
        let diff_ids = self
            .diff_ids
            .get_or_init(|| {
                serde_json::from_slice::<ImageConfig>(config)
                    .ok()
                    .map(|c| c.rootfs.diff_ids)
            })
            .as_ref()?;
        let chains = chain_ids(diff_ids.get(..=index)?);
        let diff_id = diff_ids.get(index)?;
        let parent = index.checked_sub(1).and_then(|p| chains.get(p));
        let pending = self.starter.begin(parent, diff_id).ok()?;
        let (sender, reader) = tap::channel();
        let thread = std::thread::Builder::new()
            .name(format!("unpack layer {}", index + 1))
            .spawn(move || pending.run(reader, compression).ok())
            .ok()?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thread);
        Some(sender)
    }
}

/// Unpacks the layers of `layers` (bottom first) that have no snapshot yet, taking those that
/// `streamed` (extractions fed during the pull) made. Their directories do not depend on each
/// other (overlay whiteouts), so up to one layer per core is extracted at a time
/// (python:3.11-slim's two layers: 1.0 s one after the other), and each is installed once the
/// ones below it are.
fn unpack_layers(
    store: &Store,
    snapshots: &Snapshotter,
    layers: &[LayerState],
    streamed: Vec<JoinHandle<Option<Unpacked>>>,
) -> Result<UnpackCounts, BuildError> {
    let missing: Vec<(Option<&ChainId>, &LayerState)> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (i.checked_sub(1).map(|p| &layers[p].chain), l))
        .filter(|(_, l)| !snapshots.exists(&l.chain))
        .collect();
    let mut ready: HashMap<ChainId, Unpacked> = join_extractions(streamed)
        .into_iter()
        .map(|u| (u.chain_id().clone(), u))
        .collect();
    let to_extract: Vec<&(Option<&ChainId>, &LayerState)> = missing
        .iter()
        .filter(|(_, l)| !ready.contains_key(&l.chain))
        .collect();
    let width = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    for window in to_extract.chunks(width) {
        let extracted: Vec<Result<Unpacked, BuildError>> = std::thread::scope(|scope| {
            let threads: Vec<_> = window
                .iter()
                .map(|(parent, l)| scope.spawn(move || extract_blob(store, snapshots, *parent, l)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or(Err(BuildError::StagePanicked)))
                .collect()
        });
        for unpacked in extracted {
            let unpacked = unpacked?;
            ready.insert(unpacked.chain_id().clone(), unpacked);
        }
    }
    for (_, layer) in &missing {
        if let Some(unpacked) = ready.remove(&layer.chain) {
            snapshots.install_unpacked(unpacked)?;
        }
    }
    Ok(UnpackCounts {
        unpacked: missing.len(),
        while_downloading: missing.len() - to_extract.len(),
    })
}

/// How many layers [`unpack_layers`] unpacked, and how many of them during their download.
struct UnpackCounts {
    unpacked: usize,
    while_downloading: usize,
}

/// Extracts the stored blob of `layer` (to go on top of `parent`) into a temporary directory.
fn extract_blob(
    store: &Store,
    snapshots: &Snapshotter,
    parent: Option<&ChainId>,
    layer: &LayerState,
) -> Result<crate::snapshot::Unpacked, BuildError> {
    let digest = &layer.layer.digest;
    let (reader, compression) = open_layer_blob(store, digest, &layer.layer.media_type)?;
    Ok(snapshots.extract(parent, &layer.diff_id, reader, compression)?)
}

/// A stored layer blob to read, and its compression (from the media type, else its first
/// bytes).
fn open_layer_blob(
    store: &Store,
    digest: &Digest,
    media_type: &str,
) -> Result<(std::io::BufReader<std::fs::File>, Compression), BuildError> {
    let file = store.open_blob(digest)?;
    let compression = match Compression::from_media_type(media_type) {
        Some(c) => c,
        None => {
            let mut prefix = [0u8; 8];
            let n = std::io::Read::read(&mut &file, &mut prefix)
                .map_err(BuildError::io("read", store.blob_path(digest)))?;
            std::io::Seek::seek(&mut &file, std::io::SeekFrom::Start(0))
                .map_err(BuildError::io("seek", store.blob_path(digest)))?;
            Compression::sniff(&prefix[..n])
        }
    };
    Ok((
        std::io::BufReader::with_capacity(1 << 20, file),
        compression,
    ))
}

/// Unpacks a stored layer blob on top of `parent`.
pub fn unpack_blob(
    store: &Store,
    snapshots: &Snapshotter,
    parent: Option<&ChainId>,
    diff_id: &DiffId,
    digest: &crate::oci::Digest,
    media_type: &str,
) -> Result<ChainId, BuildError> {
    let (reader, compression) = open_layer_blob(store, digest, media_type)?;
    Ok(snapshots
        .unpack(parent, diff_id, reader, compression)?
        .chain_id)
}
