//! The final image: config and manifest written into the store and tagged ([`export_image`]),
//! and the ways out of the store: OCI and Docker archives ([`archive`]), the root filesystem as
//! a directory or a tar ([`local`]), and archives read back in ([`load`]).

pub mod archive;
pub mod load;
pub mod local;
pub mod source;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::oci::manifest::ImageConfig;
use crate::oci::{media, BlobRef, Digest};
use crate::store::{Descriptor, Store, StoreError};

pub use archive::{write_archive, write_index_archive, ArchiveFormat};
pub use load::{load_archive, LoadError, LoadedImage};
pub use local::{write_rootfs_dir, write_rootfs_tar};
pub use source::{ExportSource, IndexSource};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot serialise the image {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("image {digest} cannot be exported: {reason}")]
    InvalidImage { digest: Digest, reason: String },
    #[error("blob {expected} changed while it was exported (read {actual}): the store is damaged")]
    BlobChanged { expected: Digest, actual: Digest },
    #[error("writing the archive: {0}")]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Io(#[from] crate::oci::IoError),
    #[error("unpacking layer {digest}: {source}")]
    Layer {
        digest: Digest,
        #[source]
        source: crate::layer::LayerError,
    },
    #[error("layer {digest} unpacked to diffID {actual}, but the config says {expected}")]
    DiffIdMismatch {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
}

impl ExportError {
    pub(crate) fn io(
        op: &'static str,
        path: impl AsRef<std::path::Path>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| ExportError::Io(crate::oci::IoError { op, path, source })
    }
}

/// A layer blob of the image being exported: `oci`'s blob reference, under the name the build
/// uses.

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// OCI media types (default) or Docker schema 2 ones.
    pub oci_media_types: bool,
    pub tags: Vec<String>,
    /// The layers were asked to be uncompressed (`--compression uncompressed`): the tags
    /// record it ([`ANNOTATION_PUSH_COMPRESSION`]) so that a later push keeps them so.
    pub keep_uncompressed: bool,
}

/// An annotation on a tag's descriptor in `index.json`: `uncompressed` when the build that
/// tagged it was asked for uncompressed layers, which a push then leaves as they are; absent
/// when the build left compression to the push (the default: a push gzips them, see
/// `exec::compress`). It lives and goes with the tag, so a later build of the same name,
/// `untag` and garbage collection (which keeps what tags name) treat it as the tag.
pub const ANNOTATION_PUSH_COMPRESSION: &str = "dev.kiln.push.compression";

/// Whether the tag `descriptor` (from the store's index) records that its layers are to be
/// pushed uncompressed.
pub fn keeps_uncompressed(descriptor: &Descriptor) -> bool {
    descriptor.annotation(ANNOTATION_PUSH_COMPRESSION) == Some("uncompressed")
}

/// `descriptor` as the tags of an export with `options` point at it.
fn tag_descriptor(descriptor: &Descriptor, options: &ExportOptions) -> Descriptor {
    let mut tagged = descriptor.clone();
    if options.keep_uncompressed {
        tagged.set_annotation(ANNOTATION_PUSH_COMPRESSION, "uncompressed");
    }
    tagged
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportedImage {
    /// The config digest: the image ID.
    pub id: Digest,
    pub manifest: Descriptor,
}

/// Writes `config` and a manifest over `layers` into the store and points every tag at it.
pub fn export_image(
    store: &Store,
    config: &ImageConfig,
    layers: &[BlobRef],
    options: &ExportOptions,
) -> Result<ExportedImage, ExportError> {
    let config_bytes = serde_json::to_vec(config).map_err(|source| ExportError::Json {
        what: "config",
        source,
    })?;
    let config_info = store.write_blob(&config_bytes)?;
    let (manifest_type, config_type) = if options.oci_media_types {
        (media::OCI_MANIFEST, media::OCI_CONFIG)
    } else {
        (media::DOCKER_MANIFEST, media::DOCKER_CONFIG)
    };
    let layer_docs: Vec<crate::oci::Descriptor> = layers
        .iter()
        .map(|l| {
            let mut d = l.descriptor();
            if !options.oci_media_types {
                d.media_type = docker_layer_type(&d.media_type).to_string();
            }
            d
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {
            "mediaType": config_type,
            "digest": config_info.digest.to_string(),
            "size": config_info.size,
        },
        "layers": layer_docs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|source| ExportError::Json {
        what: "manifest",
        source,
    })?;
    let manifest_info = store.write_blob(&manifest_bytes)?;
    let mut descriptor = Descriptor::new(manifest_type, manifest_info.digest, manifest_info.size);
    descriptor.platform = Some(crate::oci::Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        variant: config.variant.clone(),
        ..Default::default()
    });
    let tagged = tag_descriptor(&descriptor, options);
    for tag in &options.tags {
        store.tag(tag, &tagged)?;
    }
    Ok(ExportedImage {
        id: config_info.digest,
        manifest: descriptor,
    })
}

/// Writes an image index (OCI, or a Docker manifest list without `oci_media_types`) over
/// `manifests` (each with its `platform`) into the store and points every tag at it.
pub fn export_index(
    store: &Store,
    manifests: &[Descriptor],
    options: &ExportOptions,
) -> Result<Descriptor, ExportError> {
    let media_type = if options.oci_media_types {
        media::OCI_INDEX
    } else {
        media::DOCKER_MANIFEST_LIST
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).map_err(|source| ExportError::Json {
        what: "index",
        source,
    })?;
    let info = store.write_blob(&bytes)?;
    let descriptor = Descriptor::new(media_type, info.digest, info.size);
    let tagged = tag_descriptor(&descriptor, options);
    for tag in &options.tags {
        store.tag(tag, &tagged)?;
    }
    Ok(descriptor)
}

fn docker_layer_type(oci: &str) -> &str {
    match oci {
        media::OCI_LAYER_GZIP => media::DOCKER_LAYER_GZIP,
        media::OCI_LAYER => media::DOCKER_LAYER,
        media::OCI_LAYER_ZSTD => media::DOCKER_LAYER_ZSTD,
        other => other,
    }
}

/// RFC 3339 with nanoseconds in UTC, as Go writes image times.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = if nanos == 0 {
        String::new()
    } else {
        let s = format!(".{nanos:09}");
        s.trim_end_matches('0').to_string()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now, or `SOURCE_DATE_EPOCH` when given.
pub fn build_time(source_date_epoch: Option<i64>) -> String {
    match source_date_epoch {
        Some(s) => rfc3339(s, 0),
        None => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            rfc3339(now.as_secs() as i64, now.subsec_nanos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest's bytes decide the image's digest: they are what kiln has always written
    /// (keys sorted, layer descriptors with exactly the three fields).
    #[test]
    fn manifest_bytes_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = ImageConfig::default();
        let layer = BlobRef::new(media::OCI_LAYER_ZSTD, Digest::of(b"layer"), 5);
        for (oci, layer_type, manifest_type, config_type) in [
            (
                true,
                media::OCI_LAYER_ZSTD,
                media::OCI_MANIFEST,
                media::OCI_CONFIG,
            ),
            (
                false,
                media::DOCKER_LAYER_ZSTD,
                media::DOCKER_MANIFEST,
                media::DOCKER_CONFIG,
            ),
        ] {
            let options = ExportOptions {
                oci_media_types: oci,
                tags: Vec::new(),
                keep_uncompressed: false,
            };
            let exported =
                export_image(&store, &config, std::slice::from_ref(&layer), &options).unwrap();
            let bytes = store.read_blob(&exported.manifest.digest).unwrap();
            let config_bytes = serde_json::to_vec(&config).unwrap();
            let expected = format!(
                r#"{{"config":{{"digest":"{}","mediaType":"{config_type}","size":{}}},"layers":[{{"digest":"{}","mediaType":"{layer_type}","size":5}}],"mediaType":"{manifest_type}","schemaVersion":2}}"#,
                Digest::of(&config_bytes),
                config_bytes.len(),
                Digest::of(b"layer"),
            );
            assert_eq!(String::from_utf8(bytes).unwrap(), expected);
        }
    }

    #[test]
    fn the_tags_of_an_uncompressed_build_record_it_and_a_default_build_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = BlobRef::new(media::OCI_LAYER, Digest::of(b"layer"), 5);
        let options = |tag: &str, keep: bool| ExportOptions {
            oci_media_types: true,
            tags: vec![tag.to_string()],
            keep_uncompressed: keep,
        };
        let (one, multi) = ("docker.io/library/plain:1", "docker.io/library/multi:1");
        let tagged = |tag: &str| keeps_uncompressed(&store.resolve(tag).unwrap().unwrap());
        let image = ImageConfig::default();
        let kept = export_image(
            &store,
            &image,
            std::slice::from_ref(&layer),
            &options(one, true),
        )
        .unwrap();
        assert!(tagged(one));
        // The image itself is the same: the record is on the tag only.
        assert!(!keeps_uncompressed(&kept.manifest));
        export_index(
            &store,
            std::slice::from_ref(&kept.manifest),
            &options(multi, true),
        )
        .unwrap();
        assert!(tagged(multi));
        let again = export_image(
            &store,
            &image,
            std::slice::from_ref(&layer),
            &options(one, false),
        )
        .unwrap();
        assert_eq!(again.manifest.digest, kept.manifest.digest);
        assert!(!tagged(one));
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_868_800, 120_000_000), "2000-03-01T00:00:00.12Z");
        assert_eq!(rfc3339(1_700_000_000, 1), "2023-11-14T22:13:20.000000001Z");
    }
}
