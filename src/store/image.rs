//! Reading a tagged image back: tag → manifest (choosing a platform from an index) → config.

use crate::oci::manifest::{ImageConfig, ImageManifest, Manifest};
use crate::oci::{Digest, Platform};

use super::error::{Result, StoreError};
use super::{Descriptor, Store};

/// A tagged image as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub tag: String,
    /// What the tag points at (a manifest, or an index the manifest was chosen from).
    pub target: Descriptor,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfig,
}

impl StoredImage {
    /// The image ID, as Docker shows it: the config digest.
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }

    /// Compressed size of config and layers.
    pub fn size(&self) -> u64 {
        self.manifest.config.size + self.manifest.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

impl Store {
    /// Reads the image tagged `tag`; from an index, the manifest for `platform`.
    pub fn image(&self, tag: &str, platform: &Platform) -> Result<Option<StoredImage>> {
        let Some(target) = self.resolve(tag)? else {
            return Ok(None);
        };
        self.image_at(tag, target, platform).map(Some)
    }

    /// The image `target` (a manifest, or an index to choose `platform` from) describes,
    /// reported under the name `tag`: for a descriptor already in hand (a pull's), which a
    /// concurrent pull of another platform may have moved the tag away from.
    pub fn image_at(
        &self,
        tag: &str,
        target: Descriptor,
        platform: &Platform,
    ) -> Result<StoredImage> {
        let mut digest = target.digest.clone();
        // An index may point at another index; a short chain is all that is legitimate.
        for _ in 0..4 {
            let bytes = self.read_blob(&digest)?;
            let invalid = |reason: String| StoreError::InvalidLayout {
                path: self.blob_path(&digest),
                reason,
            };
            let (_, manifest) =
                Manifest::parse(&bytes, None).map_err(|e| invalid(e.to_string()))?;
            match manifest {
                Manifest::Index(index) => {
                    let chosen = index.select(platform).ok_or_else(|| {
                        invalid(format!(
                            "the index tagged {tag} has no manifest for {platform}"
                        ))
                    })?;
                    digest = chosen.digest.clone();
                }
                Manifest::Image(manifest) => {
                    let config_digest = manifest.config.digest.clone();
                    let config_bytes = self.read_blob(&config_digest)?;
                    let config: ImageConfig =
                        serde_json::from_slice(&config_bytes).map_err(|source| {
                            StoreError::Json {
                                path: self.blob_path(&config_digest),
                                source,
                            }
                        })?;
                    return Ok(StoredImage {
                        tag: tag.to_string(),
                        target,
                        manifest_digest: digest,
                        manifest: *manifest,
                        config_digest,
                        config,
                    });
                }
            }
        }
        Err(StoreError::InvalidLayout {
            path: self.blob_path(&digest),
            reason: format!("the indexes tagged {tag} nest too deeply"),
        })
    }
}
