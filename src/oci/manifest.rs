//! Serde types for image manifests, indexes (Docker manifest lists), descriptors and the image
//! config, in the JSON shape registries and Docker write.
//!
//! Every object keeps the fields kiln does not know in an `extra` map, so reading and writing a
//! document loses nothing. `null` and a missing field mean the same (Go writes `null` for empty
//! slices and maps) and both read as "absent"; an absent field is not written back. Never
//! re-serialise a document to compute its digest: digests are of the bytes as received.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::digest::{DiffId, Digest};
use super::media;
use super::platform::Platform;

/// Fields kiln does not model, kept verbatim.
pub type Extra = serde_json::Map<String, Value>;
/// OCI annotations.
pub type Annotations = BTreeMap<String, String>;

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's `strslice.StrSlice`: a JSON array of strings, or a single string meaning a
/// one-element array; `null` is absent.
fn str_slice<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

/// The OCI annotation naming an image layout's `index.json` entry; skopeo's `oci:<dir>:<name>`
/// looks it up.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor: what a blob is, its digest and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// Embedded content, base64 (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
            data: None,
            extra: Extra::new(),
        }
    }

    /// The descriptor of `bytes` as a blob of `media_type`.
    pub fn of(media_type: impl Into<String>, bytes: &[u8]) -> Descriptor {
        Descriptor::new(media_type, Digest::of(bytes), bytes.len() as u64)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    pub fn set_annotation(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.annotations
            .get_or_insert_with(Annotations::new)
            .insert(key.into(), value.into());
    }

    /// The tag an image layout's `index.json` entry carries (`org.opencontainers.image.ref.name`).
    pub fn ref_name(&self) -> Option<&str> {
        self.annotation(ANNOTATION_REF_NAME)
    }
}

/// A single-platform image manifest (OCI image manifest or Docker schema 2 manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An image index (OCI) or manifest list (Docker): one manifest per platform, plus attestations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageIndex {
    /// The manifest to run on `platform`: the exact match, else the best compatible fallback
    /// (containerd's rules, see [`Platform::best_match`]). Entries without a platform (and
    /// BuildKit's `unknown/unknown` attestations) never match.
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        let with_platform: Vec<(&Descriptor, &Platform)> = self
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| (d, p)))
            .collect();
        let best = platform.best_match(with_platform.iter().map(|(_, p)| *p))?;
        with_platform.get(best).map(|(d, _)| *d)
    }
}

/// The image config (`application/vnd.oci.image.config.v1+json` or Docker's
/// `application/vnd.docker.container.image.v1+json`), with Docker's field names. Unlike
/// oci-spec's type it keeps Healthcheck, OnBuild, Shell, ArgsEscaped and unknown fields
/// (`container_config`, `docker_version`, …).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 time, kept as written (Go writes nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub architecture: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<History>>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageConfig {
    /// The platform the image is for, from `os`, `architecture`, `variant`, `os.version` and
    /// `os.features`.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
            extra: Extra::new(),
        }
    }
}

/// The defaults for running a container from the image (Docker's `container.Config` subset).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `"80/tcp": {}`.
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(
        rename = "Cmd",
        default,
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub cmd: Option<Vec<String>>,
    /// `"/data": {}`.
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
    #[serde(
        rename = "ArgsEscaped",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub args_escaped: Option<bool>,
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<Healthcheck>,
    #[serde(rename = "OnBuild", default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(
        rename = "Shell",
        default,
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub shell: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `HEALTHCHECK` as stored in the image; durations are Go `time.Duration` nanoseconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args…]` or `["CMD-SHELL", command]`; empty inherits.
    #[serde(rename = "Test", default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(rename = "Interval", default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(rename = "Timeout", default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(
        rename = "StartPeriod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub start_period: Option<i64>,
    #[serde(
        rename = "StartInterval",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub start_interval: Option<i64>,
    #[serde(rename = "Retries", default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The config's `rootfs`: the layers' diffIDs, bottom first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default = "layers_type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<DiffId>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn layers_type() -> String {
    "layers".to_string()
}

impl Default for RootFs {
    fn default() -> RootFs {
        RootFs {
            kind: layers_type(),
            diff_ids: Vec::new(),
            extra: Extra::new(),
        }
    }
}

/// One `history` entry; `empty_layer` entries have no layer in `rootfs`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// What kind of manifest document a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    OciIndex,
    OciManifest,
    DockerManifestList,
    DockerManifest,
    /// Docker schema 1 (`signed` when it carries JWS signatures); kiln does not pull these.
    DockerSchema1 {
        signed: bool,
    },
}

impl ManifestKind {
    pub fn from_media_type(media_type: &str) -> Option<ManifestKind> {
        Some(match media_type {
            media::OCI_INDEX => ManifestKind::OciIndex,
            media::OCI_MANIFEST => ManifestKind::OciManifest,
            media::DOCKER_MANIFEST_LIST => ManifestKind::DockerManifestList,
            media::DOCKER_MANIFEST => ManifestKind::DockerManifest,
            media::DOCKER_SCHEMA1_MANIFEST => ManifestKind::DockerSchema1 { signed: false },
            media::DOCKER_SCHEMA1_SIGNED_MANIFEST => ManifestKind::DockerSchema1 { signed: true },
            _ => return None,
        })
    }

    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::OciIndex => media::OCI_INDEX,
            ManifestKind::OciManifest => media::OCI_MANIFEST,
            ManifestKind::DockerManifestList => media::DOCKER_MANIFEST_LIST,
            ManifestKind::DockerManifest => media::DOCKER_MANIFEST,
            ManifestKind::DockerSchema1 { signed: false } => media::DOCKER_SCHEMA1_MANIFEST,
            ManifestKind::DockerSchema1 { signed: true } => media::DOCKER_SCHEMA1_SIGNED_MANIFEST,
        }
    }

    /// Whether this is a list of manifests rather than an image.
    pub fn is_index(self) -> bool {
        matches!(
            self,
            ManifestKind::OciIndex | ManifestKind::DockerManifestList
        )
    }
}

/// Why a manifest document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("cannot tell what kind of manifest this is: no mediaType, and neither `manifests` nor `config`/`layers`")]
    Unrecognized,
    #[error("manifest declares mediaType {media_type:?} but has the fields of {shape}")]
    MediaTypeMismatch {
        media_type: String,
        shape: &'static str,
    },
    #[error("Docker schema 1 manifests are not supported (deprecated since Docker 1.10); push the image again with a current client")]
    Schema1,
}

/// Works out what kind of manifest `bytes` is: from its `mediaType` field, else from its shape
/// (`schemaVersion: 1` → schema 1; `manifests` → OCI index; `config`/`layers` → OCI manifest),
/// else from the `Content-Type` the registry sent. A `mediaType` that contradicts the shape
/// is an error, as in containerd (`validateMediaType`).
pub fn sniff_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<ManifestKind, ManifestError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<Value>,
        #[serde(default)]
        manifests: Option<IgnoredAny>,
        #[serde(default)]
        config: Option<IgnoredAny>,
        #[serde(default)]
        layers: Option<IgnoredAny>,
        #[serde(rename = "fsLayers", default)]
        fs_layers: Option<IgnoredAny>,
        #[serde(default)]
        signatures: Option<IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
    let has_manifests = probe.manifests.is_some();
    let has_image_fields = probe.config.is_some() || probe.layers.is_some();
    let schema1 = probe.schema_version.as_ref().and_then(Value::as_u64) == Some(1)
        || probe.fs_layers.is_some();

    if let Some(mt) = probe.media_type.as_deref().filter(|mt| !mt.is_empty()) {
        let kind = ManifestKind::from_media_type(mt)
            .ok_or_else(|| ManifestError::UnsupportedMediaType(mt.to_string()))?;
        let shape = if kind.is_index() && has_image_fields {
            Some("an image manifest (config/layers)")
        } else if matches!(
            kind,
            ManifestKind::OciManifest | ManifestKind::DockerManifest
        ) && has_manifests
        {
            Some("an index (manifests)")
        } else {
            None
        };
        if let Some(shape) = shape {
            return Err(ManifestError::MediaTypeMismatch {
                media_type: mt.to_string(),
                shape,
            });
        }
        return Ok(kind);
    }
    if schema1 {
        return Ok(ManifestKind::DockerSchema1 {
            signed: probe.signatures.is_some(),
        });
    }
    match (has_manifests, has_image_fields) {
        (true, false) => return Ok(ManifestKind::OciIndex),
        (false, true) => return Ok(ManifestKind::OciManifest),
        (true, true) => {
            return Err(ManifestError::MediaTypeMismatch {
                media_type: String::new(),
                shape: "both an index and an image manifest",
            })
        }
        (false, false) => {}
    }
    let content_type = content_type
        .map(|ct| ct.split(';').next().unwrap_or_default().trim())
        .filter(|ct| !ct.is_empty());
    match content_type {
        Some(ct) => ManifestKind::from_media_type(ct)
            .ok_or_else(|| ManifestError::UnsupportedMediaType(ct.to_string())),
        None => Err(ManifestError::Unrecognized),
    }
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    Index(Box<ImageIndex>),
    Image(Box<ImageManifest>),
}

impl Manifest {
    /// Sniffs and parses `bytes` (see [`sniff_manifest`]); schema 1 is refused.
    pub fn parse(
        bytes: &[u8],
        content_type: Option<&str>,
    ) -> Result<(ManifestKind, Manifest), ManifestError> {
        let kind = sniff_manifest(bytes, content_type)?;
        let manifest = match kind {
            ManifestKind::DockerSchema1 { .. } => return Err(ManifestError::Schema1),
            ManifestKind::OciIndex | ManifestKind::DockerManifestList => Manifest::Index(Box::new(
                serde_json::from_slice(bytes).map_err(ManifestError::Json)?,
            )),
            ManifestKind::OciManifest | ManifestKind::DockerManifest => Manifest::Image(Box::new(
                serde_json::from_slice(bytes).map_err(ManifestError::Json)?,
            )),
        };
        Ok((kind, manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Docker Hub manifest list in the shape `python:3.12-slim` had (schema 2 list).
    const PYTHON_MANIFEST_LIST: &str = r#"{
   "manifests": [
      {
         "digest": "sha256:1c8cb3c2c8d6a5e8a7e0b7d7f4a4e9c7f0c3b0f8f5b0f9e8a1c2b3d4e5f60718",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "amd64",
            "os": "linux"
         },
         "size": 1370
      },
      {
         "digest": "sha256:2c8cb3c2c8d6a5e8a7e0b7d7f4a4e9c7f0c3b0f8f5b0f9e8a1c2b3d4e5f60718",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "arm",
            "os": "linux",
            "variant": "v5"
         },
         "size": 1370
      },
      {
         "digest": "sha256:3c8cb3c2c8d6a5e8a7e0b7d7f4a4e9c7f0c3b0f8f5b0f9e8a1c2b3d4e5f60718",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "arm",
            "os": "linux",
            "variant": "v7"
         },
         "size": 1370
      },
      {
         "digest": "sha256:4c8cb3c2c8d6a5e8a7e0b7d7f4a4e9c7f0c3b0f8f5b0f9e8a1c2b3d4e5f60718",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "arm64",
            "os": "linux",
            "variant": "v8"
         },
         "size": 1370
      },
      {
         "digest": "sha256:5c8cb3c2c8d6a5e8a7e0b7d7f4a4e9c7f0c3b0f8f5b0f9e8a1c2b3d4e5f60718",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "386",
            "os": "linux"
         },
         "size": 1370
      },
      {
         "digest": "sha256:6c8cb3c2c8d6a5e8a7e0b7d7f4a4e9c7f0c3b0f8f5b0f9e8a1c2b3d4e5f60718",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "ppc64le",
            "os": "linux"
         },
         "size": 1370
      },
      {
         "digest": "sha256:7c8cb3c2c8d6a5e8a7e0b7d7f4a4e9c7f0c3b0f8f5b0f9e8a1c2b3d4e5f60718",
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "platform": {
            "architecture": "s390x",
            "os": "linux"
         },
         "size": 1370
      }
   ],
   "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
   "schemaVersion": 2
}"#;

    /// An OCI index as BuildKit pushes official images now: per-platform manifests plus
    /// attestation manifests on `unknown/unknown`, and a Windows entry with `os.version`.
    const OCI_INDEX_SAMPLE: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:aa11111111111111111111111111111111111111111111111111111111111111",
      "size": 2298,
      "annotations": {
        "com.docker.official-images.bashbrew.arch": "amd64",
        "org.opencontainers.image.base.name": "debian:bookworm-slim",
        "org.opencontainers.image.created": "2024-06-13T01:23:45Z",
        "org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
        "org.opencontainers.image.source": "https://github.com/docker-library/python.git",
        "org.opencontainers.image.url": "https://hub.docker.com/_/python",
        "org.opencontainers.image.version": "3.12.4-slim-bookworm"
      },
      "platform": {
        "architecture": "amd64",
        "os": "linux"
      }
    },
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:bb22222222222222222222222222222222222222222222222222222222222222",
      "size": 840,
      "annotations": {
        "com.docker.official-images.bashbrew.arch": "amd64",
        "vnd.docker.reference.digest": "sha256:aa11111111111111111111111111111111111111111111111111111111111111",
        "vnd.docker.reference.type": "attestation-manifest"
      },
      "platform": {
        "architecture": "unknown",
        "os": "unknown"
      }
    },
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:cc33333333333333333333333333333333333333333333333333333333333333",
      "size": 2298,
      "platform": {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8"
      }
    },
    {
      "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
      "digest": "sha256:dd44444444444444444444444444444444444444444444444444444444444444",
      "size": 3401,
      "platform": {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.20348.2527"
      },
      "urls": []
    }
  ],
  "annotations": {
    "org.opencontainers.image.ref.name": "3.12-slim"
  },
  "someFutureField": {"x": 1}
}"#;

    /// A Docker schema 2 image manifest with a foreign (Windows) layer.
    const DOCKER_MANIFEST_SAMPLE: &str = r#"{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 7023,
      "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"
   },
   "layers": [
      {
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 32654,
         "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f"
      },
      {
         "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
         "size": 16724,
         "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b",
         "urls": ["https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"]
      }
   ]
}"#;

    /// A Docker-built image config: Healthcheck, OnBuild, Shell, nulls where Go writes them, and
    /// the legacy `container_config` / `docker_version` / `container` fields.
    const CONFIG_SAMPLE: &str = r##"{
  "architecture": "amd64",
  "config": {
    "Hostname": "",
    "Domainname": "",
    "User": "app",
    "AttachStdin": false,
    "AttachStdout": false,
    "AttachStderr": false,
    "ExposedPorts": {"8000/tcp": {}},
    "Tty": false,
    "OpenStdin": false,
    "StdinOnce": false,
    "Env": [
      "PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "LANG=C.UTF-8",
      "PYTHON_VERSION=3.12.4"
    ],
    "Cmd": ["gunicorn", "app:app"],
    "Healthcheck": {
      "Test": ["CMD-SHELL", "curl -f http://localhost:8000/ || exit 1"],
      "Interval": 30000000000,
      "Timeout": 5000000000,
      "StartPeriod": 10000000000,
      "StartInterval": 2000000000,
      "Retries": 3
    },
    "ArgsEscaped": true,
    "Image": "sha256:0c1b7d1e4a9b9e9d9a1a5c3d1b3f6e7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e",
    "Volumes": {"/data": {}},
    "WorkingDir": "/app",
    "Entrypoint": null,
    "OnBuild": ["COPY . /app/src", "RUN pip install -r /app/src/requirements.txt"],
    "Labels": {"maintainer": "someone@example.com"},
    "StopSignal": "SIGINT",
    "Shell": ["/bin/bash", "-o", "pipefail", "-c"]
  },
  "container": "4b3e7c1f0a2d",
  "container_config": {
    "Hostname": "4b3e7c1f0a2d",
    "Cmd": ["/bin/sh", "-c", "#(nop) ", "SHELL [/bin/bash -o pipefail -c]"],
    "Env": null,
    "OnBuild": null,
    "Labels": {}
  },
  "created": "2024-06-13T01:23:45.123456789Z",
  "docker_version": "24.0.7",
  "history": [
    {
      "created": "2024-06-12T00:00:00Z",
      "created_by": "/bin/sh -c #(nop) ADD file:5f0b9e7c... in / "
    },
    {
      "created": "2024-06-12T00:00:01Z",
      "created_by": "/bin/sh -c #(nop)  CMD [\"bash\"]",
      "empty_layer": true
    },
    {
      "created": "2024-06-13T01:23:44Z",
      "created_by": "COPY . /app # buildkit",
      "comment": "buildkit.dockerfile.v0"
    },
    {
      "created": "2024-06-13T01:23:45.123456789Z",
      "created_by": "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://localhost:8000/ || exit 1\"] \"30s\" \"5s\" \"10s\" \"2s\" '\\x03'}",
      "comment": "buildkit.dockerfile.v0",
      "author": "someone",
      "empty_layer": true
    }
  ],
  "os": "linux",
  "rootfs": {
    "type": "layers",
    "diff_ids": [
      "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
      "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"
    ]
  }
}"##;

    /// Removes `null` members recursively: null and absent mean the same to kiln.
    fn strip_nulls(v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, strip_nulls(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
            other => other,
        }
    }

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(json: &str) -> T {
        let parsed: T = serde_json::from_str(json).unwrap();
        let original: Value = serde_json::from_str(json).unwrap();
        let again = serde_json::to_value(&parsed).unwrap();
        // Unknown fields are kept verbatim (nulls included); known ones drop their nulls.
        assert_eq!(strip_nulls(again), strip_nulls(original));
        parsed
    }

    #[test]
    fn docker_manifest_list_round_trips_and_selects() {
        let list: ImageIndex = round_trip(PYTHON_MANIFEST_LIST);
        assert_eq!(list.manifests.len(), 7);
        assert_eq!(
            sniff_manifest(PYTHON_MANIFEST_LIST.as_bytes(), None).unwrap(),
            ManifestKind::DockerManifestList
        );
        let pick = |p: &str| {
            list.select(&p.parse().unwrap())
                .map(|d| d.digest.hex()[..2].to_string())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("1c"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("4c"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("3c"));
        assert_eq!(pick("linux/arm/v6").as_deref(), Some("2c"));
        assert_eq!(pick("linux/s390x").as_deref(), Some("7c"));
        assert_eq!(pick("linux/riscv64"), None);
        assert_eq!(pick("windows/amd64"), None);
    }

    #[test]
    fn oci_index_round_trips_with_unknown_fields() {
        let index: ImageIndex = round_trip(OCI_INDEX_SAMPLE);
        assert_eq!(index.extra["someFutureField"], serde_json::json!({"x": 1}));
        assert_eq!(
            index.manifests[1].annotation("vnd.docker.reference.type"),
            Some("attestation-manifest")
        );
        assert_eq!(index.manifests[3].urls.as_deref(), Some(&[][..]));
        let win = index.manifests[3].platform.as_ref().unwrap();
        assert_eq!(win.os_version.as_deref(), Some("10.0.20348.2527"));
        let amd64 = index.select(&"linux/amd64".parse().unwrap()).unwrap();
        assert_eq!(amd64.size, 2298);
        assert!(amd64.digest.hex().starts_with("aa1"));
        let (kind, parsed) = Manifest::parse(OCI_INDEX_SAMPLE.as_bytes(), None).unwrap();
        assert_eq!(kind, ManifestKind::OciIndex);
        assert_eq!(parsed, Manifest::Index(Box::new(index)));
    }

    #[test]
    fn docker_manifest_round_trips() {
        let m: ImageManifest = round_trip(DOCKER_MANIFEST_SAMPLE);
        assert_eq!(m.config.media_type, media::DOCKER_CONFIG);
        assert_eq!(m.layers.len(), 2);
        assert!(media::is_nondistributable(&m.layers[1].media_type));
        assert_eq!(m.layers[1].urls.as_ref().map(Vec::len), Some(1));
        let (kind, _) = Manifest::parse(DOCKER_MANIFEST_SAMPLE.as_bytes(), None).unwrap();
        assert_eq!(kind, ManifestKind::DockerManifest);
    }

    #[test]
    fn image_config_keeps_healthcheck_onbuild_shell_and_legacy_fields() {
        let config: ImageConfig = round_trip(CONFIG_SAMPLE);
        let c = config.config.as_ref().unwrap();
        let hc = c.healthcheck.as_ref().unwrap();
        assert_eq!(hc.interval, Some(30_000_000_000));
        assert_eq!(hc.start_interval, Some(2_000_000_000));
        assert_eq!(hc.retries, Some(3));
        assert_eq!(c.on_build.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            c.shell.as_deref(),
            Some(&["/bin/bash", "-o", "pipefail", "-c"].map(String::from)[..])
        );
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.args_escaped, Some(true));
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.extra["Hostname"], "");
        assert_eq!(config.extra["docker_version"], "24.0.7");
        assert_eq!(config.extra["container_config"]["OnBuild"], Value::Null);
        assert_eq!(config.rootfs.diff_ids.len(), 2);
        let history = config.history.as_ref().unwrap();
        assert_eq!(history.iter().filter(|h| !h.empty_layer).count(), 2);
        assert_eq!(config.platform().to_string(), "linux/amd64");
    }

    #[test]
    fn config_tolerates_nulls_missing_fields_and_string_cmd() {
        let minimal: ImageConfig = serde_json::from_str(
            r#"{"architecture":"arm64","os":"linux","variant":"v8",
                "config":{"Cmd":"bash","Env":null,"Entrypoint":null,"Volumes":null},
                "rootfs":{"type":"layers","diff_ids":null},"history":null}"#,
        )
        .unwrap();
        let c = minimal.config.as_ref().unwrap();
        assert_eq!(c.cmd, Some(vec!["bash".to_string()]));
        assert_eq!(c.env, None);
        assert!(minimal.rootfs.diff_ids.is_empty());
        assert_eq!(minimal.platform().normalized().to_string(), "linux/arm64");

        let empty: ImageConfig = serde_json::from_str(r#"{"config":null,"rootfs":null}"#).unwrap();
        assert_eq!(empty.rootfs.kind, "layers");
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            serde_json::json!({"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []}})
        );
        // A kiln-built config serialises with Docker's names.
        let built = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: Some(ContainerConfig {
                cmd: Some(vec!["python3".into()]),
                healthcheck: Some(Healthcheck {
                    test: Some(vec!["NONE".into()]),
                    ..Healthcheck::default()
                }),
                ..ContainerConfig::default()
            }),
            rootfs: RootFs {
                diff_ids: vec![DiffId(Digest::of(b""))],
                ..RootFs::default()
            },
            history: Some(vec![History {
                created_by: Some("RUN true".into()),
                empty_layer: true,
                ..History::default()
            }]),
            ..ImageConfig::default()
        };
        assert_eq!(
            serde_json::to_value(&built).unwrap(),
            serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["python3"], "Healthcheck": {"Test": ["NONE"]}},
                "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"").to_string()]},
                "history": [{"created_by": "RUN true", "empty_layer": true}]
            })
        );
    }

    #[test]
    fn descriptor_rules() {
        assert!(serde_json::from_str::<Descriptor>(
            r#"{"mediaType":"x","digest":"sha256:abc","size":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Descriptor>(&format!(
            r#"{{"mediaType":"x","digest":"{}","size":-1}}"#,
            Digest::of(b"")
        ))
        .is_err());
        let d = Descriptor::of(media::OCI_EMPTY, b"{}");
        assert_eq!(d.size, 2);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"mediaType": media::OCI_EMPTY, "digest": Digest::of(b"{}").to_string(), "size": 2})
        );
    }

    #[test]
    fn sniffing() {
        let sniff = |json: &str, ct: Option<&str>| sniff_manifest(json.as_bytes(), ct);
        let d = Digest::of(b"").to_string();
        let desc = format!(r#"{{"mediaType":"x","digest":"{d}","size":0}}"#);
        assert_eq!(
            sniff(
                &format!(r#"{{"schemaVersion":2,"config":{desc},"layers":[]}}"#),
                None
            )
            .unwrap(),
            ManifestKind::OciManifest
        );
        assert_eq!(
            sniff(r#"{"schemaVersion":2,"manifests":[]}"#, None).unwrap(),
            ManifestKind::OciIndex
        );
        let schema1 = r#"{"schemaVersion":1,"name":"library/x","tag":"latest","architecture":"amd64",
            "fsLayers":[{"blobSum":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],
            "history":[{"v1Compatibility":"{}"}],
            "signatures":[{"header":{"alg":"ES256"},"signature":"x","protected":"y"}]}"#;
        assert_eq!(
            sniff(schema1, None).unwrap(),
            ManifestKind::DockerSchema1 { signed: true }
        );
        assert!(matches!(
            Manifest::parse(schema1.as_bytes(), None),
            Err(ManifestError::Schema1)
        ));
        assert_eq!(
            sniff(r#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap(),
            ManifestKind::DockerSchema1 { signed: false }
        );
        assert!(matches!(
            sniff(
                &format!(
                    r#"{{"mediaType":"{}","manifests":[],"config":{desc}}}"#,
                    media::OCI_INDEX
                ),
                None
            ),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            sniff(r#"{"mediaType":"application/vnd.example+json"}"#, None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert_eq!(
            sniff(
                r#"{"schemaVersion":2}"#,
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8")
            )
            .unwrap(),
            ManifestKind::OciIndex
        );
        assert!(matches!(
            sniff(r#"{"schemaVersion":2}"#, None),
            Err(ManifestError::Unrecognized)
        ));
        assert!(matches!(
            sniff("not json", None),
            Err(ManifestError::Json(_))
        ));
        for kind in [
            ManifestKind::OciIndex,
            ManifestKind::OciManifest,
            ManifestKind::DockerManifestList,
            ManifestKind::DockerManifest,
            ManifestKind::DockerSchema1 { signed: true },
            ManifestKind::DockerSchema1 { signed: false },
        ] {
            assert_eq!(ManifestKind::from_media_type(kind.media_type()), Some(kind));
        }
    }
}
