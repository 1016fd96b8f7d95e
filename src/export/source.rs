//! What an export reads: one single-platform image manifest in the store, its config, and the
//! names it should carry.

use crate::oci::manifest::{ImageConfig, ImageManifest, Manifest, ManifestKind};
use crate::oci::{media, BlobRef, Descriptor, Digest};
use crate::store::Store;

use super::ExportError;

/// An image to export, read from the store.
#[derive(Debug, Clone)]
pub struct ExportSource {
    /// The manifest's descriptor (media type, digest, size, platform).
    pub descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfig,
    /// Full references (`docker.io/library/app:1`) the image is exported under; may be empty.
    pub names: Vec<String>,
}

impl ExportSource {
    /// Reads the image manifest `digest` (not an index: choose the platform first) and its config.
    pub fn from_manifest(
        store: &Store,
        digest: &Digest,
        names: Vec<String>,
    ) -> Result<ExportSource, ExportError> {
        let invalid = |reason: String| ExportError::InvalidImage {
            digest: digest.clone(),
            reason,
        };
        let bytes = store.read_blob(digest)?;
        let (kind, parsed) = Manifest::parse(&bytes, None).map_err(|e| invalid(e.to_string()))?;
        let manifest = match parsed {
            Manifest::Image(m) => *m,
            Manifest::Index(_) => {
                return Err(invalid(
                    "it is an index; export one platform's manifest".into(),
                ))
            }
        };
        let media_type = match kind {
            ManifestKind::DockerManifest => media::DOCKER_MANIFEST,
            _ => media::OCI_MANIFEST,
        };
        let config_bytes = store.read_blob(&manifest.config.digest)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("its config is not valid JSON: {e}")))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "{} layers but {} diffIDs in the config",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut descriptor = Descriptor::new(media_type, digest.clone(), bytes.len() as u64);
        if !config.os.is_empty() && !config.architecture.is_empty() {
            descriptor.platform = Some(config.platform());
        }
        Ok(ExportSource {
            descriptor,
            manifest,
            config,
            names,
        })
    }

    /// The image ID: its config digest.
    pub fn id(&self) -> &Digest {
        &self.manifest.config.digest
    }

    /// Every blob the image needs, layers first, then config and manifest.
    pub fn blobs(&self) -> Vec<BlobRef> {
        let manifest = &self.manifest;
        manifest
            .layers
            .iter()
            .chain([&manifest.config, &self.descriptor])
            .map(BlobRef::from)
            .collect()
    }
}

/// A multi-platform image to export: an index in the store and each platform's image.
#[derive(Debug, Clone)]
pub struct IndexSource {
    pub descriptor: Descriptor,
    pub platforms: Vec<ExportSource>,
    pub names: Vec<String>,
}

impl IndexSource {
    /// The index `digest` with every manifest it lists (each must be in the store), or `None`
    /// when `digest` is a single-platform manifest.
    pub fn from_store(
        store: &Store,
        digest: &Digest,
        names: Vec<String>,
    ) -> Result<Option<IndexSource>, ExportError> {
        let invalid = |reason: String| ExportError::InvalidImage {
            digest: digest.clone(),
            reason,
        };
        let bytes = store.read_blob(digest)?;
        let (kind, parsed) = Manifest::parse(&bytes, None).map_err(|e| invalid(e.to_string()))?;
        let Manifest::Index(index) = parsed else {
            return Ok(None);
        };
        let mut platforms = Vec::new();
        for d in &index.manifests {
            if !store.has_blob(&d.digest) {
                return Err(invalid(format!(
                    "its manifest {} is not in the store",
                    d.digest
                )));
            }
            let mut image = ExportSource::from_manifest(store, &d.digest, Vec::new())?;
            // The index's word on the platform (it may carry a variant the config lacks).
            if d.platform.is_some() {
                image.descriptor.platform = d.platform.clone();
            }
            platforms.push(image);
        }
        Ok(Some(IndexSource {
            descriptor: Descriptor::new(kind.media_type(), digest.clone(), bytes.len() as u64),
            platforms,
            names,
        }))
    }
}
