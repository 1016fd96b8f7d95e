//! Blob references: the media type, digest and size that kiln's own records (cache records,
//! layers of an image being built, blobs to push or fetch) carry of a blob, and a layer's blob
//! with the DiffID of its tar. The manifests' [`Descriptor`] carries more (annotations,
//! platform, …); the conversions below are the one place the two meet.

use serde::{Deserialize, Serialize};

use super::digest::{DiffId, Digest};
use super::manifest::Descriptor;

/// A blob: what it is, its digest and its size. Serialised with these (snake_case) field names,
/// which the build cache's `cache-v1` records have always used; a manifest writes the same
/// three fields as a [`Descriptor`] (`mediaType`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl BlobRef {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> BlobRef {
        BlobRef {
            media_type: media_type.into(),
            digest,
            size,
        }
    }

    /// The manifest descriptor of this blob (nothing but the three fields).
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type.clone(), self.digest.clone(), self.size)
    }
}

impl From<&Descriptor> for BlobRef {
    fn from(d: &Descriptor) -> BlobRef {
        BlobRef::new(d.media_type.clone(), d.digest.clone(), d.size)
    }
}

impl From<BlobRef> for Descriptor {
    fn from(b: BlobRef) -> Descriptor {
        Descriptor::new(b.media_type, b.digest, b.size)
    }
}

/// A filesystem layer: its (usually compressed) blob and the DiffID of the tar inside. The
/// blob's fields are flattened, so the JSON is `{media_type, digest, size, diff_id}` as in
/// `cache-v1` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    #[serde(flatten)]
    pub blob: BlobRef,
    pub diff_id: DiffId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;

    #[test]
    fn descriptors_keep_the_three_fields() {
        let blob = BlobRef::new(media::OCI_LAYER_GZIP, Digest::of(b"x"), 1);
        let d = blob.descriptor();
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"mediaType": media::OCI_LAYER_GZIP, "digest": Digest::of(b"x"), "size": 1})
        );
        assert_eq!(BlobRef::from(&d), blob);
        assert_eq!(Descriptor::from(blob.clone()), d);
    }

    #[test]
    fn a_layer_serialises_flat() {
        let layer = LayerBlob {
            blob: BlobRef::new(media::OCI_LAYER_ZSTD, Digest::of(b"blob"), 4),
            diff_id: DiffId(Digest::of(b"tar")),
        };
        let json = serde_json::to_value(&layer).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "media_type": media::OCI_LAYER_ZSTD,
                "digest": Digest::of(b"blob"),
                "size": 4,
                "diff_id": Digest::of(b"tar"),
            })
        );
        assert_eq!(serde_json::from_value::<LayerBlob>(json).unwrap(), layer);
    }
}
