//! Pulling an image into the store: resolve the reference on the first endpoint that answers
//! (mirrors first), pick the platform from an index, then fetch config and layers in parallel
//! (bounded), each streamed into a resumable ingest that verifies size and digest before the
//! blob becomes visible. The pulled manifest is tagged with the full reference. With a layer
//! tap (`registry::tap`) the config comes first, and each layer's bytes also go to the tap as
//! they arrive, so a build can unpack it during the download.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::oci::{self, media, BlobRef, Digest, Platform, Reference};
use crate::progress::{Direction, Event, Reporter, TransferOutcome};
use crate::store::{Descriptor, Ingest, Store, StoreError};

use super::client::{BlobSink, FetchedManifest, RegistryClient};
use super::config::RegistryConfig;
use super::credentials::CredentialSources;
use super::error::RegistryError;
use super::tap::{SharedTap, TapSender};

/// The manifest digest as the registry knows it (what `docker images --digests` shows).
pub const ANNOTATION_SOURCE_DIGEST: &str = "dev.kiln.image.registry-digest";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credentials(#[from] super::credentials::CredentialError),
    #[error("{reference} has no image for platform {wanted}; the registry offers: {available}")]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{reference} is a Docker schema 1 manifest, which kiln does not support (it was deprecated in 2019)\n  hint: re-push the image with a current docker or skopeo to get a schema 2 / OCI manifest")]
    Schema1 { reference: String },
    #[error("{reference}: unsupported manifest type {media_type:?} from registry {registry}")]
    UnsupportedManifest {
        reference: String,
        registry: String,
        media_type: String,
    },
    #[error("{reference}: invalid manifest from registry {registry}: {message}")]
    InvalidManifest {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("download of {what} failed: {message}")]
    Task { what: String, message: String },
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub platform: Platform,
    /// Blobs downloaded at once.
    pub concurrency: usize,
    /// Gets each layer's bytes as they download (the config is then fetched first).
    pub tap: Option<SharedTap>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            concurrency: 3,
            tap: None,
        }
    }
}

/// What a pull left in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The tag written into the store (the full reference).
    pub tag: String,
    /// The platform-specific manifest that the tag points at.
    pub manifest: Descriptor,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
    /// Which endpoint served the image (a mirror or the registry itself).
    pub endpoint: String,
    /// Bytes downloaded now (0 when everything was already present).
    pub downloaded: u64,
}

#[derive(Deserialize)]
struct WireDocument {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<oci::Descriptor>>,
    #[serde(default)]
    config: Option<oci::Descriptor>,
    #[serde(default)]
    layers: Option<Vec<oci::Descriptor>>,
    #[serde(default, rename = "fsLayers")]
    fs_layers: Option<serde_json::Value>,
}

// Short-lived and never stored in bulk, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum ManifestKind {
    Index(Vec<oci::Descriptor>),
    Image {
        config: BlobRef,
        layers: Vec<BlobRef>,
        media_type: String,
    },
}

pub struct Puller {
    pub config: RegistryConfig,
    pub credentials: CredentialSources,
    pub store: Store,
    pub reporter: Arc<dyn Reporter>,
}

impl Puller {
    pub async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<PulledImage, PullError> {
        let endpoints = self
            .config
            .endpoints(reference.registry(), &self.credentials)?;
        let count = endpoints.len();
        let mut last_error = None;
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let name = endpoint.name.clone();
            let client = Arc::new(RegistryClient::new(endpoint)?);
            match self.pull_from(&client, reference, options).await {
                Ok(image) => return Ok(image),
                // Only problems of the endpoint itself send us to the next one.
                Err(PullError::Registry(e)) if i + 1 < count && endpoint_may_differ(&e) => {
                    self.reporter.report(Event::Warning {
                        message: format!(
                            "{name} could not serve {reference}: {e}; trying the next endpoint"
                        ),
                    });
                    last_error = Some(PullError::Registry(e));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| PullError::Task {
            what: reference.to_string(),
            message: "no registry endpoint to pull from".into(),
        }))
    }

    /// The manifest `reference` names, from the first endpoint (mirrors first) that has it.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<super::client::FetchedManifest, PullError> {
        let endpoints = self
            .config
            .endpoints(reference.registry(), &self.credentials)?;
        let mut last = None;
        for endpoint in endpoints {
            let client = RegistryClient::new(endpoint)?;
            match client
                .get_manifest(reference.repository(), &reference.manifest_reference())
                .await
            {
                Ok(m) => return Ok(m),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => e.into(),
            None => PullError::Task {
                what: reference.to_string(),
                message: "no registry endpoint to fetch from".into(),
            },
        })
    }

    /// Downloads one blob of `reference`'s repository into the store (digest and size
    /// checked), from the first endpoint that serves it; bytes moved (0 if already present).
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        blob: &BlobRef,
        label: &str,
    ) -> Result<u64, PullError> {
        let endpoints = self
            .config
            .endpoints(reference.registry(), &self.credentials)?;
        let job = BlobJob {
            blob: blob.clone(),
            label: label.to_string(),
            tap: None,
        };
        let mut last = None;
        for endpoint in endpoints {
            let client = RegistryClient::new(endpoint)?;
            match fetch_one(
                &client,
                &self.store,
                &*self.reporter,
                reference.repository(),
                &job,
            )
            .await
            {
                Ok(n) => return Ok(n),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| PullError::Task {
            what: reference.to_string(),
            message: "no registry endpoint to fetch from".into(),
        }))
    }

    async fn pull_from(
        &self,
        client: &Arc<RegistryClient>,
        reference: &Reference,
        options: &PullOptions,
    ) -> Result<PulledImage, PullError> {
        let repo = reference.repository().to_string();
        self.reporter.report(Event::Status {
            message: format!("Resolving {reference} on {}", client.name()),
        });
        let first = client
            .get_manifest(&repo, &reference.manifest_reference())
            .await?;
        let (manifest, kind) = match self.classify(&first, reference, client.name())? {
            ManifestKind::Index(entries) => {
                let chosen = self.choose_platform(&entries, reference, &options.platform)?;
                let child = client.get_manifest(&repo, &chosen.to_string()).await?;
                match self.classify(&child, reference, client.name())? {
                    ManifestKind::Index(_) => {
                        return Err(PullError::InvalidManifest {
                            reference: reference.to_string(),
                            registry: client.name().to_string(),
                            message: "an index entry points at another index".into(),
                        })
                    }
                    image => (child, image),
                }
            }
            image => (first, image),
        };
        let ManifestKind::Image {
            config,
            layers,
            media_type,
        } = kind
        else {
            unreachable!("indexes were resolved above");
        };

        let config_job = BlobJob {
            blob: config.clone(),
            label: "config".to_string(),
            tap: None,
        };
        let layer_jobs = |tap: Option<(SharedTap, Arc<Vec<u8>>)>| -> Vec<BlobJob> {
            layers
                .iter()
                .enumerate()
                .map(|(index, l)| BlobJob {
                    blob: l.clone(),
                    label: format!("layer {}", index + 1),
                    tap: tap.as_ref().map(|(tap, config)| LayerTapJob {
                        tap: tap.clone(),
                        index,
                        config: config.clone(),
                    }),
                })
                .collect()
        };
        let downloaded = match &options.tap {
            // A tap needs the config (its DiffIDs) before the first layer byte arrives.
            Some(tap) => {
                let mut moved = self
                    .fetch_blobs(client, &repo, vec![config_job], options.concurrency)
                    .await?;
                let config_bytes = Arc::new(self.store.read_blob(&config.digest)?);
                let jobs = layer_jobs(Some((tap.clone(), config_bytes)));
                moved += self
                    .fetch_blobs(client, &repo, jobs, options.concurrency)
                    .await?;
                moved
            }
            None => {
                let jobs = std::iter::once(config_job)
                    .chain(layer_jobs(None))
                    .collect();
                self.fetch_blobs(client, &repo, jobs, options.concurrency)
                    .await?
            }
        };

        // The store is an OCI layout that skopeo and umoci must read, and they only accept OCI
        // media types there: a Docker schema 2 manifest is rewritten with OCI types. Config and
        // layer blobs are byte-identical, so only the manifest digest changes; the registry's
        // digest is kept in an annotation.
        let (bytes, media_type, source_digest) = if media_type == media::DOCKER_MANIFEST {
            let converted = docker_manifest_to_oci(&manifest.bytes).map_err(|message| {
                PullError::InvalidManifest {
                    reference: reference.to_string(),
                    registry: client.name().to_string(),
                    message,
                }
            })?;
            (
                converted,
                media::OCI_MANIFEST.to_string(),
                Some(manifest.digest.clone()),
            )
        } else {
            (manifest.bytes.clone(), media_type, None)
        };
        let info = self.store.write_blob(&bytes)?;
        let mut descriptor = Descriptor::new(media_type, info.digest, info.size);
        descriptor.set_annotation(
            ANNOTATION_SOURCE_DIGEST,
            source_digest
                .unwrap_or_else(|| manifest.digest.clone())
                .to_string(),
        );
        descriptor.platform = Some(options.platform.clone());
        let tag = reference.to_string();
        self.store.tag(&tag, &descriptor)?;
        // A hint for the next build of another platform, which moves the tag (see
        // `store::platforms`); without it that build asks the registry again.
        let _ = self
            .store
            .record_pulled_platform(&tag, &options.platform, &descriptor);
        self.reporter.report(Event::Status {
            message: format!("Pulled {tag} ({})", descriptor.digest),
        });
        Ok(PulledImage {
            tag,
            manifest: descriptor,
            config,
            layers,
            endpoint: client.name().to_string(),
            downloaded,
        })
    }

    fn classify(
        &self,
        fetched: &FetchedManifest,
        reference: &Reference,
        registry: &str,
    ) -> Result<ManifestKind, PullError> {
        let invalid = |message: String| PullError::InvalidManifest {
            reference: reference.to_string(),
            registry: registry.to_string(),
            message,
        };
        let doc: WireDocument =
            serde_json::from_slice(&fetched.bytes).map_err(|e| invalid(e.to_string()))?;
        // The body's own mediaType wins over a generic Content-Type.
        let declared = doc
            .media_type
            .clone()
            .or_else(|| {
                fetched
                    .media_type
                    .clone()
                    .filter(|m| m != "application/json" && m != "text/plain")
            })
            .unwrap_or_default();
        if doc.schema_version == Some(1)
            || doc.fs_layers.is_some()
            || declared.contains("distribution.manifest.v1+")
        {
            return Err(PullError::Schema1 {
                reference: reference.to_string(),
            });
        }
        let is_index =
            media::is_index(&declared) || (declared.is_empty() && doc.manifests.is_some());
        if is_index {
            return Ok(ManifestKind::Index(doc.manifests.unwrap_or_default()));
        }
        let is_image =
            media::is_manifest(&declared) || (declared.is_empty() && doc.config.is_some());
        if !is_image {
            return Err(PullError::UnsupportedManifest {
                reference: reference.to_string(),
                registry: registry.to_string(),
                media_type: declared,
            });
        }
        let config = doc
            .config
            .ok_or_else(|| invalid("the manifest has no config".into()))?;
        let media_type = if declared.is_empty() {
            media::OCI_MANIFEST.to_string()
        } else {
            declared
        };
        Ok(ManifestKind::Image {
            config: BlobRef::from(&config),
            layers: doc.layers.iter().flatten().map(BlobRef::from).collect(),
            media_type,
        })
    }

    fn choose_platform(
        &self,
        entries: &[oci::Descriptor],
        reference: &Reference,
        wanted: &Platform,
    ) -> Result<Digest, PullError> {
        let images: Vec<(usize, Platform)> = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.platform.clone().map(|p| (i, p)))
            // Attestation manifests carry platform unknown/unknown.
            .filter(|(_, p)| p.os != "unknown")
            .collect();
        match wanted.best_match(images.iter().map(|(_, p)| p)) {
            Some(best) => Ok(entries[images[best].0].digest.clone()),
            None => Err(PullError::NoMatchingPlatform {
                reference: reference.to_string(),
                wanted: wanted.to_string(),
                available: if images.is_empty() {
                    "no platforms".to_string()
                } else {
                    images
                        .iter()
                        .map(|(_, p)| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    /// Downloads the blobs not yet in the store, `concurrency` at a time; returns bytes moved.
    async fn fetch_blobs(
        &self,
        client: &Arc<RegistryClient>,
        repo: &str,
        blobs: Vec<BlobJob>,
        concurrency: usize,
    ) -> Result<u64, PullError> {
        let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for job in blobs {
            let (client, store, reporter, repo, semaphore) = (
                client.clone(),
                self.store.clone(),
                self.reporter.clone(),
                repo.to_string(),
                semaphore.clone(),
            );
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                fetch_one(&client, &store, &*reporter, &repo, &job).await
            });
        }
        // The others stop at the first failure; their partial files stay for a resumed pull.
        let sizes = super::tasks::join_first_error(tasks, |message| PullError::Task {
            what: "a blob".into(),
            message,
        })
        .await?;
        Ok(sizes.into_iter().sum())
    }
}

/// A 404 or a transport failure at a mirror says nothing about the next endpoint; a
/// credential or content problem might, but trying the next endpoint is still what Docker does.
fn endpoint_may_differ(e: &RegistryError) -> bool {
    !matches!(e, RegistryError::Credentials(_))
}

/// One blob to download, and who else gets its bytes.
struct BlobJob {
    blob: BlobRef,
    label: String,
    tap: Option<LayerTapJob>,
}

/// A layer whose bytes a [`super::tap::LayerTap`] gets as well.
struct LayerTapJob {
    tap: SharedTap,
    index: usize,
    config: Arc<Vec<u8>>,
}

/// Streams into a store ingest (and a tap); `reset` restarts from zero when the registry
/// ignores `Range`.
struct IngestSink {
    store: Store,
    digest: Digest,
    size: u64,
    ingest: Option<Ingest>,
    tap: Option<TapSender>,
}

impl BlobSink for IngestSink {
    fn offset(&self) -> u64 {
        self.ingest.as_ref().map_or(0, Ingest::written)
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match &mut self.ingest {
            Some(ingest) => std::io::Write::write_all(ingest, chunk)?,
            None => return Err(std::io::Error::other("ingest already closed")),
        }
        if let Some(tap) = &mut self.tap {
            tap.send(chunk);
        }
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        // The tap saw the bytes before the restart; dropping it tells its reader so.
        self.tap = None;
        if let Some(old) = self.ingest.take() {
            old.abort();
        }
        self.ingest = Some(
            self.store
                .ingest(Some(&self.digest), Some(self.size))
                .map_err(std::io::Error::other)?,
        );
        Ok(())
    }
}

async fn fetch_one(
    client: &RegistryClient,
    store: &Store,
    reporter: &dyn Reporter,
    repo: &str,
    job: &BlobJob,
) -> Result<u64, PullError> {
    let desc = &job.blob;
    let id = desc.digest.to_string();
    let label = format!("{} {}", &desc.digest.hex()[..12], job.label);
    let started = Instant::now();
    // Where the blob lives, for pushes that can mount it instead of uploading it.
    let remember = || {
        let _ = store.record_blob_source(&desc.digest, &format!("{}/{repo}", client.name()));
    };
    if store.has_blob(&desc.digest) {
        remember();
        reporter.report(Event::Status {
            message: format!("{label}: already present"),
        });
        return Ok(0);
    }
    // A partial file left by an interrupted pull is resumed; if what it held turns out wrong,
    // one more attempt starts from nothing.
    for attempt in 0..2 {
        let ingest = if attempt == 0 {
            store.ingest_resume(&desc.digest, Some(desc.size))?
        } else {
            store.ingest(Some(&desc.digest), Some(desc.size))?
        };
        let offset = ingest.written();
        reporter.report(Event::TransferStarted {
            id: id.clone(),
            label: label.clone(),
            total: Some(desc.size),
            offset,
            direction: Direction::Download,
        });
        // Only a download from the first byte can be followed; a resumed one is read back
        // from the store once complete.
        let tap = match &job.tap {
            Some(t) if offset == 0 => t.tap.0.layer_started(t.index, desc, &t.config),
            _ => None,
        };
        let mut sink = IngestSink {
            store: store.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            ingest: Some(ingest),
            tap,
        };
        let progress = |n: u64| {
            reporter.report(Event::TransferProgress {
                id: id.clone(),
                bytes: n,
            })
        };
        let fetched = if offset == desc.size {
            Ok(())
        } else {
            client
                .fetch_blob(repo, &desc.digest, &mut sink, &progress)
                .await
        };
        if let Err(e) = fetched {
            reporter.report(Event::TransferDone {
                id,
                label,
                outcome: TransferOutcome::Failed,
                elapsed: started.elapsed(),
            });
            return Err(e.into());
        }
        let Some(ingest) = sink.ingest.take() else {
            continue;
        };
        match ingest.commit() {
            Ok(info) => {
                if let Some(tap) = sink.tap.take() {
                    tap.finish();
                }
                remember();
                reporter.report(Event::TransferDone {
                    id,
                    label,
                    outcome: TransferOutcome::Transferred,
                    elapsed: started.elapsed(),
                });
                return Ok(info.size.saturating_sub(offset));
            }
            Err(StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. })
                if attempt == 0 && offset > 0 =>
            {
                continue
            }
            Err(StoreError::DigestMismatch {
                expected, actual, ..
            }) => {
                reporter.report(Event::TransferDone {
                    id,
                    label,
                    outcome: TransferOutcome::Failed,
                    elapsed: started.elapsed(),
                });
                return Err(RegistryError::DigestMismatch {
                    registry: client.name().to_string(),
                    what: format!("blob {expected} of {repo}"),
                    expected,
                    actual,
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(PullError::Task {
        what: desc.digest.to_string(),
        message: "the download did not complete".into(),
    })
}

/// Rewrites a Docker schema 2 manifest with the equivalent OCI media types, keeping every other
/// field.
pub fn docker_manifest_to_oci(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let obj = doc
        .as_object_mut()
        .ok_or("the manifest is not a JSON object")?;
    obj.insert("mediaType".into(), media::OCI_MANIFEST.into());
    if let Some(config) = obj.get_mut("config").and_then(|c| c.as_object_mut()) {
        config.insert("mediaType".into(), media::OCI_CONFIG.into());
    }
    if let Some(layers) = obj.get_mut("layers").and_then(|l| l.as_array_mut()) {
        for layer in layers.iter_mut().filter_map(|l| l.as_object_mut()) {
            let old = layer
                .get("mediaType")
                .and_then(|m| m.as_str())
                .unwrap_or_default();
            let new = match old {
                media::DOCKER_LAYER_GZIP => media::OCI_LAYER_GZIP,
                media::DOCKER_LAYER => media::OCI_LAYER,
                media::DOCKER_LAYER_ZSTD => media::OCI_LAYER_ZSTD,
                media::DOCKER_LAYER_FOREIGN => media::OCI_LAYER_NONDISTRIBUTABLE_GZIP,
                media::DOCKER_LAYER_FOREIGN_UNCOMPRESSED => media::OCI_LAYER_NONDISTRIBUTABLE,
                other => return Err(format!("unknown layer media type {other:?}")),
            };
            layer.insert("mediaType".into(), new.into());
        }
    }
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_manifest_becomes_oci_with_same_blobs() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2,"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}]}"#;
        let oci: serde_json::Value =
            serde_json::from_slice(&docker_manifest_to_oci(docker).unwrap()).unwrap();
        assert_eq!(oci["mediaType"], media::OCI_MANIFEST);
        assert_eq!(oci["config"]["mediaType"], media::OCI_CONFIG);
        assert_eq!(oci["layers"][0]["mediaType"], media::OCI_LAYER_GZIP);
        assert_eq!(oci["layers"][0]["size"], 2);
        let bad = br#"{"layers":[{"mediaType":"x/y"}]}"#;
        assert!(docker_manifest_to_oci(bad).is_err());
    }
}
