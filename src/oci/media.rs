//! Media types of the OCI image spec and Docker's image formats, and the compression a layer
//! media type implies.

use std::fmt;

// OCI image spec.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDISTRIBUTABLE: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// The empty JSON object `{}` used as config of artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

// Docker image manifest v2, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Uncompressed Docker layer (containerd and BuildKit write it; the Docker spec does not name it).
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// zstd Docker layer (containerd's `MediaTypeDockerSchema2LayerZstd`).
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// A layer to be fetched from its `urls` (Windows base layers).
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN_UNCOMPRESSED: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar";
pub const DOCKER_PLUGIN_CONFIG: &str = "application/vnd.docker.plugin.v1+json";

// Docker image manifest v2, schema 1 (legacy; kiln only recognises it to refuse it clearly).
pub const DOCKER_SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for fetching a manifest: every kind kiln can read, indexes first; schema
/// 1 last, only so that kiln can refuse it clearly instead of getting a 404.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, \
application/vnd.docker.distribution.manifest.v1+json;q=0.5";

// OCI artifact manifest (image-spec 1.1 release candidates; removed from the final spec).
pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";

// kiln's own.
/// The config of an exported build cache (see `cache::transfer`); also its `artifactType`.
pub const KILN_CACHE_CONFIG: &str = "application/vnd.kiln.cache.config.v1+json";

/// Whether `media_type` is an image index or Docker manifest list.
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// Whether `media_type` is a single-platform image manifest (OCI or Docker schema 2).
pub fn is_manifest(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// Whether `media_type` is an image config.
pub fn is_config(media_type: &str) -> bool {
    matches!(media_type, OCI_CONFIG | DOCKER_CONFIG)
}

/// Whether `media_type` is a Docker schema 1 manifest.
pub fn is_schema1(media_type: &str) -> bool {
    matches!(
        media_type,
        DOCKER_SCHEMA1_MANIFEST | DOCKER_SCHEMA1_SIGNED_MANIFEST
    )
}

/// Whether `media_type` is a filesystem layer kiln can apply (known compression).
pub fn is_layer(media_type: &str) -> bool {
    Compression::from_media_type(media_type).is_some()
}

/// Whether the layer must not be pushed to other registries (OCI nondistributable, Docker
/// foreign layers).
pub fn is_nondistributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// How a layer blob is compressed. The choice changes the blob's bytes (and so its digest), never
/// its DiffID, which is the digest of the uncompressed tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Guesses the compression from the first bytes of a blob (gzip and zstd magic numbers);
    /// anything else is taken to be a plain tar.
    pub fn sniff(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression of a layer media type, or `None` when it is not a layer type kiln knows
    /// (for example an encrypted `+encrypted` layer or a non-layer blob). Besides the named
    /// constants, OCI layer types with a `+gzip` / `+zstd` suffix are recognised.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        Some(match media_type {
            OCI_LAYER
            | OCI_LAYER_NONDISTRIBUTABLE
            | DOCKER_LAYER
            | DOCKER_LAYER_FOREIGN_UNCOMPRESSED => Compression::None,
            OCI_LAYER_GZIP
            | OCI_LAYER_NONDISTRIBUTABLE_GZIP
            | DOCKER_LAYER_GZIP
            | DOCKER_LAYER_FOREIGN => Compression::Gzip,
            OCI_LAYER_ZSTD | OCI_LAYER_NONDISTRIBUTABLE_ZSTD | DOCKER_LAYER_ZSTD => {
                Compression::Zstd
            }
            other => {
                let base = other.strip_prefix("application/vnd.oci.image.layer.")?;
                match base.rsplit_once('+') {
                    None if base.ends_with(".tar") => Compression::None,
                    Some((tar, "gzip")) if tar.ends_with(".tar") => Compression::Gzip,
                    Some((tar, "zstd")) if tar.ends_with(".tar") => Compression::Zstd,
                    _ => return None,
                }
            }
        })
    }

    /// The layer media type kiln writes for this compression: OCI or Docker schema 2.
    pub fn layer_media_type(self, oci: bool) -> &'static str {
        match (self, oci) {
            (Compression::None, true) => OCI_LAYER,
            (Compression::Gzip, true) => OCI_LAYER_GZIP,
            (Compression::Zstd, true) => OCI_LAYER_ZSTD,
            (Compression::None, false) => DOCKER_LAYER,
            (Compression::Gzip, false) => DOCKER_LAYER_GZIP,
            (Compression::Zstd, false) => DOCKER_LAYER_ZSTD,
        }
    }

    /// The name used in `--output compression=` and in file extensions.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_of_layer_types() {
        for (mt, c) in [
            (OCI_LAYER, Some(Compression::None)),
            (OCI_LAYER_GZIP, Some(Compression::Gzip)),
            (OCI_LAYER_ZSTD, Some(Compression::Zstd)),
            (OCI_LAYER_NONDISTRIBUTABLE, Some(Compression::None)),
            (OCI_LAYER_NONDISTRIBUTABLE_GZIP, Some(Compression::Gzip)),
            (OCI_LAYER_NONDISTRIBUTABLE_ZSTD, Some(Compression::Zstd)),
            (DOCKER_LAYER, Some(Compression::None)),
            (DOCKER_LAYER_GZIP, Some(Compression::Gzip)),
            (DOCKER_LAYER_ZSTD, Some(Compression::Zstd)),
            (DOCKER_LAYER_FOREIGN, Some(Compression::Gzip)),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                None,
            ),
            (OCI_CONFIG, None),
            (DOCKER_MANIFEST, None),
            ("application/octet-stream", None),
            ("", None),
        ] {
            assert_eq!(Compression::from_media_type(mt), c, "{mt}");
            assert_eq!(is_layer(mt), c.is_some(), "{mt}");
        }
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            for oci in [true, false] {
                assert_eq!(
                    Compression::from_media_type(c.layer_media_type(oci)),
                    Some(c)
                );
            }
        }
    }

    #[test]
    fn sniffs_magic_numbers() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/\0\0\0"), Compression::None);
        assert_eq!(Compression::sniff(b""), Compression::None);
    }

    #[test]
    fn classification() {
        assert!(is_index(OCI_INDEX) && is_index(DOCKER_MANIFEST_LIST) && !is_index(OCI_MANIFEST));
        assert!(is_manifest(DOCKER_MANIFEST) && is_manifest(OCI_MANIFEST));
        assert!(is_config(DOCKER_CONFIG) && is_config(OCI_CONFIG) && !is_config(OCI_EMPTY));
        assert!(is_schema1(DOCKER_SCHEMA1_SIGNED_MANIFEST) && is_schema1(DOCKER_SCHEMA1_MANIFEST));
        assert!(is_nondistributable(DOCKER_LAYER_FOREIGN));
        assert!(is_nondistributable(OCI_LAYER_NONDISTRIBUTABLE_GZIP));
        assert!(!is_nondistributable(OCI_LAYER_GZIP));
        assert_eq!(Compression::Zstd.to_string(), "zstd");
    }

    #[test]
    fn manifest_accept_lists_every_manifest_type() {
        let accepted: Vec<&str> = MANIFEST_ACCEPT
            .split(", ")
            .map(|t| t.split(';').next().unwrap_or_default())
            .collect();
        assert_eq!(
            accepted,
            [
                OCI_INDEX,
                DOCKER_MANIFEST_LIST,
                OCI_MANIFEST,
                DOCKER_MANIFEST,
                DOCKER_SCHEMA1_SIGNED_MANIFEST,
                DOCKER_SCHEMA1_MANIFEST
            ]
        );
    }
}
