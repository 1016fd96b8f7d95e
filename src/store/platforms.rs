//! Which manifest a pull of a tag chose for each platform. A pull points the tag at one
//! platform's manifest, so pulling `busybox` for arm64 moves the tag off the amd64 image that
//! an earlier pull left; a multi-platform build pulls its base once per platform. These
//! records let the next build find each platform's image in the store again without asking
//! the registry (and offline).
//!
//! `<root>/pulled-platforms-v1/<sha256 of the tag>/<os_arch[_variant]>` holds the manifest's
//! descriptor as JSON, replaced atomically. Records are hints, not GC roots: one whose blobs
//! were collected is ignored, and `untag` forgets a tag's records.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::error::{Result, StoreError};
use super::{Descriptor, Store, StoredImage};
use crate::oci::{Digest, Platform};

/// Directory name under the state root; the version changes if the format does.
const DIR: &str = "pulled-platforms-v1";

impl Store {
    fn platform_records_dir(&self, tag: &str) -> PathBuf {
        self.root().join(DIR).join(Digest::of(tag.as_bytes()).hex())
    }

    fn platform_record_path(&self, tag: &str, platform: &Platform) -> PathBuf {
        let name = platform.normalized().to_string().replace('/', "_");
        self.platform_records_dir(tag).join(name)
    }

    /// Remembers that a pull of `tag` for `platform` stored the manifest `descriptor`.
    pub fn record_pulled_platform(
        &self,
        tag: &str,
        platform: &Platform,
        descriptor: &Descriptor,
    ) -> Result<()> {
        let path = self.platform_record_path(tag, platform);
        let dir = self.platform_records_dir(tag);
        super::fsutil::create_dir_all(&dir)?;
        let bytes = serde_json::to_vec(descriptor).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        // One writer per temporary name: several kiln processes may pull at once.
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            Digest::of(&bytes).hex()
        ));
        super::fsutil::replace_file(&path, &tmp, &bytes)
    }

    /// The image a pull of `tag` for `platform` stored, if the store still holds its manifest,
    /// config and layers.
    pub fn pulled_platform(&self, tag: &str, platform: &Platform) -> Result<Option<StoredImage>> {
        let path = self.platform_record_path(tag, platform);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        let Ok(descriptor) = serde_json::from_slice::<Descriptor>(&bytes) else {
            return Ok(None); // a damaged hint is no hint
        };
        if !self.has_blob(&descriptor.digest) {
            return Ok(None);
        }
        let Ok(image) = self.image_at(tag, descriptor, platform) else {
            return Ok(None);
        };
        let complete = self.has_blob(&image.config_digest)
            && image
                .manifest
                .layers
                .iter()
                .all(|l| self.has_blob(&l.digest));
        Ok(complete.then_some(image))
    }

    /// Forgets every platform record of `tag` (it was untagged).
    pub(crate) fn forget_pulled_platforms(&self, tag: &str) {
        let _ = fs::remove_dir_all(self.platform_records_dir(tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_find_each_platform_until_the_blobs_or_the_tag_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let config =
            br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_info = store.write_blob(config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::media::OCI_MANIFEST,
            "config": {"mediaType": crate::oci::media::OCI_CONFIG,
                       "digest": config_info.digest.to_string(), "size": config_info.size},
            "layers": [],
        }))
        .unwrap();
        let info = store.write_blob(&manifest).unwrap();
        let d = Descriptor::new(crate::oci::media::OCI_MANIFEST, info.digest, info.size);
        let tag = "docker.io/library/busybox:latest";
        assert!(store.pulled_platform(tag, &arm64).unwrap().is_none());
        store.record_pulled_platform(tag, &arm64, &d).unwrap();
        let found = store.pulled_platform(tag, &arm64).unwrap().unwrap();
        assert_eq!(found.config.architecture, "arm64");
        assert!(store.pulled_platform(tag, &amd64).unwrap().is_none());
        store.forget_pulled_platforms(tag);
        assert!(store.pulled_platform(tag, &arm64).unwrap().is_none());
        // A record whose manifest is gone is ignored.
        store.record_pulled_platform(tag, &arm64, &d).unwrap();
        fs::remove_file(store.blob_path(&d.digest)).unwrap();
        assert!(store.pulled_platform(tag, &arm64).unwrap().is_none());
    }
}
