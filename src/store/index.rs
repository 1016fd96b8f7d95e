//! Tags: the descriptors in `oci/index.json`, named by annotations.

use std::fs;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::fsutil::replace_file;
use super::Store;
use crate::oci::{media, Descriptor};

pub use crate::oci::manifest::ANNOTATION_REF_NAME;
/// containerd's annotation with the full image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// `index.json`; unknown top-level fields are preserved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ImageIndex {
    pub(crate) fn empty() -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }
}

// The OCI annotations spec grammar for `org.opencontainers.image.ref.name`:
//   ref ::= component ("/" component)*; component ::= alphanum (separator alphanum)*;
//   alphanum ::= [A-Za-z0-9]+; separator ::= [-._:@+] | "--"
static REF_NAME: LazyLock<regex::Regex> = LazyLock::new(|| {
    let component = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*";
    regex::Regex::new(&format!("^{component}(?:/{component})*$"))
        .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
});

/// Checks that `name` can be an `org.opencontainers.image.ref.name` (which full references such
/// as `docker.io/library/python:3.12-slim` or `127.0.0.1:5000/app@sha256:…` are).
pub fn validate_tag(name: &str) -> Result<()> {
    if REF_NAME.is_match(name) {
        Ok(())
    } else {
        Err(StoreError::InvalidTag {
            name: name.to_string(),
            reason: "not a valid OCI ref name (letters, digits, '/' between components, and \
                     one of - . _ : @ + or -- between alphanumerics)",
        })
    }
}

impl Store {
    pub(crate) fn read_index(&self) -> Result<ImageIndex> {
        let path = &self.paths.index;
        let bytes = fs::read(path).map_err(StoreError::io("read", path))?;
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                path: path.clone(),
                source,
            })?;
        if index.schema_version != 2 {
            return Err(StoreError::InvalidLayout {
                path: path.clone(),
                reason: format!("schemaVersion {} (expected 2)", index.schema_version),
            });
        }
        Ok(index)
    }

    /// Caller holds the exclusive lock.
    pub(crate) fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(index).map_err(|source| StoreError::Json {
            path: self.paths.index.clone(),
            source,
        })?;
        bytes.push(b'\n');
        replace_file(&self.paths.index, &self.paths.index_tmp, &bytes)
    }

    /// Read-modify-write of `index.json` under the exclusive lock.
    fn update_index<T>(&self, f: impl FnOnce(&mut ImageIndex) -> Result<T>) -> Result<T> {
        let _lock = self.lock_exclusive()?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        self.write_index(&index)?;
        Ok(out)
    }

    /// Points tag `name` (a full reference) at `descriptor`, a manifest or index already in the
    /// store, replacing what the tag pointed at before. The descriptor is stored with the
    /// ref-name and containerd annotations set to `name`.
    pub fn tag(&self, name: &str, descriptor: &Descriptor) -> Result<()> {
        validate_tag(name)?;
        let mut entry = descriptor.clone();
        entry.set_annotation(ANNOTATION_REF_NAME, name);
        entry.set_annotation(ANNOTATION_CONTAINERD_NAME, name);
        self.update_index(|index| {
            // Checked under the exclusive lock, so a concurrent GC cannot remove it meanwhile.
            if !self.has_blob(&entry.digest) {
                return Err(StoreError::BlobNotFound(entry.digest.clone()));
            }
            index.manifests.retain(|d| d.ref_name() != Some(name));
            index.manifests.push(entry);
            Ok(())
        })
    }

    /// Removes tag `name`; returns the descriptor it pointed at, if it existed. The blobs stay
    /// until the next [`Store::gc`].
    pub fn untag(&self, name: &str) -> Result<Option<Descriptor>> {
        self.forget_pulled_platforms(name);
        self.update_index(|index| {
            let pos = index
                .manifests
                .iter()
                .position(|d| d.ref_name() == Some(name));
            let removed = pos.map(|i| index.manifests.remove(i));
            index.manifests.retain(|d| d.ref_name() != Some(name));
            Ok(removed)
        })
    }

    /// The descriptor tag `name` points at.
    pub fn resolve(&self, name: &str) -> Result<Option<Descriptor>> {
        let _lock = self.lock_shared()?;
        let index = self.read_index()?;
        Ok(index
            .manifests
            .into_iter()
            .find(|d| d.ref_name() == Some(name)))
    }

    /// Every tag and its descriptor, sorted by tag.
    pub fn list_tags(&self) -> Result<Vec<(String, Descriptor)>> {
        let _lock = self.lock_shared()?;
        let index = self.read_index()?;
        let mut tags: Vec<(String, Descriptor)> = index
            .manifests
            .into_iter()
            .filter_map(|d| d.ref_name().map(|n| (n.to_string(), d.clone())))
            .collect();
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_name_grammar() {
        for ok in [
            "latest",
            "docker.io/library/python:3.12-slim",
            "127.0.0.1:5000/app/x:v1",
            "ghcr.io/o/a@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "a--b",
            "a+b",
        ] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", ":a", "a:", "a---b", "a b", "a/../b", "a..b", "ä",
        ] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn descriptor_keeps_unknown_fields() {
        let json = r#"{"mediaType":"m","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"platform":{"os":"linux","architecture":"amd64"}}"#;
        let d: Descriptor = serde_json::from_str(json).unwrap();
        assert_eq!(d.platform.as_ref().map(|p| p.os.as_str()), Some("linux"));
        let back: serde_json::Value = serde_json::to_value(&d).unwrap();
        assert_eq!(back["platform"]["os"], "linux");
    }
}
