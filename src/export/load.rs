//! Reading image archives into the store: OCI image layouts in a tar (`docker buildx -o
//! type=oci`, `skopeo copy … oci-archive:`) and docker-archives (`docker save`, old and new).
//!
//! The archive is read once, front to back (so stdin works): every regular file goes straight
//! into the store through its ingest, never into a directory, so entry names cannot reach the
//! file system at all; names are still checked, and an archive with `..`, absolute names, or
//! devices is refused. A `blobs/sha256/<hex>` entry must hash to its name (the ingest checks it
//! before the blob becomes visible); every other file is hashed on the way in and only used if
//! a manifest names it. After the pass the manifests are checked against what arrived: sizes
//! must equal the descriptors, docker-archive layers must have the diffIDs of their config.
//! Blobs of a refused archive stay unreferenced and go with the next `kiln prune`.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Component, Path};

use crate::oci::manifest::{ImageConfig, ImageIndex, ImageManifest, Manifest};
use crate::oci::{media, Compression, Descriptor, DiffId, Digest, DigestingReader, Reference};
use crate::store::{self, BlobInfo, Store, StoreError};

/// JSON documents (`index.json`, `manifest.json`, manifests, configs) are read into memory;
/// anything larger than this is not a real one.
const MAX_JSON: u64 = 16 * 1024 * 1024;
/// Symlinks in a docker-archive point at other layer files; chains longer than this are loops.
const MAX_LINK_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
    #[error("refusing archive entry {name:?}: {reason}")]
    UnsafeEntry { name: String, reason: &'static str },
    #[error("archive entry {name}: {source}")]
    Blob {
        name: String,
        #[source]
        source: StoreError,
    },
    #[error(
        "{name} in the archive is {size} bytes, more than the {limit} a JSON document may have"
    )]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("{name} in the archive is not valid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("the archive has no {what} ({name}) that its manifest names")]
    Missing { what: &'static str, name: String },
    #[error("{name} in the archive is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "layer {name} in the archive has diffID {actual}, but the image config says {expected}"
    )]
    DiffIdMismatch {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("not an image archive: it has neither index.json (OCI) nor manifest.json (Docker)")]
    NotAnArchive,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One image that was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// The image ID (config digest).
    pub id: Digest,
    /// What the tags point at (a manifest or an index).
    pub target: Digest,
    /// Full references it was tagged with in the store; empty when the archive named none.
    pub names: Vec<String>,
}

/// What the single pass over the archive found.
#[derive(Default)]
struct Contents {
    /// Regular files, by normalised name.
    files: HashMap<String, BlobInfo>,
    /// Symbolic and hard links, by normalised name → normalised target.
    links: HashMap<String, String>,
    index_json: Option<Vec<u8>>,
    manifest_json: Option<Vec<u8>>,
}

/// Loads every image of the archive read from `reader` into `store` and tags it.
pub fn load_archive(store: &Store, reader: impl Read) -> Result<Vec<LoadedImage>, LoadError> {
    let contents = read_entries(store, reader)?;
    let loader = Loader { store, contents };
    let docker = match &loader.contents.manifest_json {
        Some(bytes) => Some(parse_json::<Vec<DockerEntry>>("manifest.json", bytes)?),
        None => None,
    };
    let mut loaded = match &loader.contents.index_json {
        Some(bytes) => loader.load_oci(bytes)?,
        None => match &docker {
            Some(entries) => entries
                .iter()
                .map(|e| loader.load_docker_entry(e))
                .collect::<Result<Vec<_>, _>>()?,
            None => return Err(LoadError::NotAnArchive),
        },
    };
    // A docker-archive that is also an OCI layout (docker 25+, kiln): its RepoTags may name
    // images the index did not.
    if loader.contents.index_json.is_some() {
        if let Some(entries) = &docker {
            for entry in entries {
                let config = normalize(&entry.config).unwrap_or_default();
                let Some(id) = loader.resolve(&config).map(|b| b.digest.clone()) else {
                    continue;
                };
                if let Some(image) = loaded.iter_mut().find(|l| l.id == id) {
                    let target = store_descriptor(store, &image.target)?;
                    for name in repo_tags(entry)? {
                        if !image.names.contains(&name) {
                            store.tag(&name, &target)?;
                            image.names.push(name);
                        }
                    }
                }
            }
        }
    }
    Ok(loaded)
}

fn read_entries(store: &Store, reader: impl Read) -> Result<Contents, LoadError> {
    let mut archive = tar::Archive::new(reader);
    let mut contents = Contents::default();
    for entry in archive.entries().map_err(LoadError::Read)? {
        let mut entry = entry.map_err(LoadError::Read)?;
        let raw = entry.path().map_err(LoadError::Read)?.into_owned();
        let shown = raw.display().to_string();
        let name = normalize(&shown).ok_or_else(|| LoadError::UnsafeEntry {
            name: shown.clone(),
            reason: "absolute, or climbs out with ..",
        })?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory | tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(LoadError::Read)?
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                // Symlinks are relative to their directory, hard links to the archive root.
                let joined = if kind == tar::EntryType::Symlink && !target.starts_with('/') {
                    match name.rsplit_once('/') {
                        Some((dir, _)) => format!("{dir}/{target}"),
                        None => target.clone(),
                    }
                } else {
                    target.clone()
                };
                let target = resolve_dots(&joined).ok_or_else(|| LoadError::UnsafeEntry {
                    name: format!("{shown} -> {target}"),
                    reason: "a link that points outside the archive",
                })?;
                contents.links.insert(name, target);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(LoadError::Read)?;
                match name.as_str() {
                    "index.json" => contents.index_json = Some(read_json(&name, size, entry)?),
                    "manifest.json" => {
                        contents.manifest_json = Some(read_json(&name, size, entry)?)
                    }
                    "oci-layout" | "repositories" => {}
                    _ => {
                        let info = ingest_entry(store, &name, size, &mut entry)?;
                        contents.files.insert(name, info);
                    }
                }
            }
            _ => {
                return Err(LoadError::UnsafeEntry {
                    name: shown,
                    reason: "image archives hold only files, directories and links",
                })
            }
        }
    }
    Ok(contents)
}

/// `a/./b//c` → `a/b/c`; `None` for absolute names and any `..`.
fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A link target inside the archive: `a/../b` → `b`; `None` if it climbs above the root or is
/// absolute.
fn resolve_dots(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn read_json(name: &str, size: u64, entry: impl Read) -> Result<Vec<u8>, LoadError> {
    if size > MAX_JSON {
        return Err(LoadError::TooLarge {
            name: name.to_string(),
            size,
            limit: MAX_JSON,
        });
    }
    let mut buf = Vec::new();
    entry
        .take(size)
        .read_to_end(&mut buf)
        .map_err(LoadError::Read)?;
    Ok(buf)
}

/// Streams one file into the store: verified against its name when it is `blobs/sha256/<hex>`,
/// and never longer than its header says.
fn ingest_entry(
    store: &Store,
    name: &str,
    size: u64,
    entry: &mut impl Read,
) -> Result<BlobInfo, LoadError> {
    let expected = name
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
    let blob_err = |source| LoadError::Blob {
        name: name.to_string(),
        source,
    };
    if let Some(d) = &expected {
        if store.freshen(d).map_err(blob_err)? {
            // Already stored (verified when it was): skip the bytes.
            io::copy(&mut entry.take(size), &mut io::sink()).map_err(LoadError::Read)?;
            return Ok(BlobInfo {
                digest: d.clone(),
                size: store.blob_size(d).map_err(blob_err)?,
            });
        }
    }
    let mut ingest = store
        .ingest(expected.as_ref(), Some(size))
        .map_err(blob_err)?;
    io::copy(&mut entry.take(size), &mut ingest).map_err(LoadError::Read)?;
    ingest.commit().map_err(blob_err)
}

fn parse_json<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, LoadError> {
    serde_json::from_slice(bytes).map_err(|e| LoadError::Invalid {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// A `manifest.json` entry of a docker-archive.
#[derive(Debug, serde::Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn repo_tags(entry: &DockerEntry) -> Result<Vec<String>, LoadError> {
    entry
        .repo_tags
        .iter()
        .flatten()
        .map(|t| {
            Reference::parse(t)
                .map(|r| r.to_string())
                .map_err(|e| LoadError::Invalid {
                    name: "manifest.json".into(),
                    reason: format!("RepoTags entry {t:?}: {e}"),
                })
        })
        .collect()
}

/// The store's form of a descriptor for tagging a blob already there.
fn store_descriptor(store: &Store, digest: &Digest) -> Result<store::Descriptor, LoadError> {
    let bytes = store.read_blob(digest)?;
    let media_type = match Manifest::parse(&bytes, None) {
        Ok((kind, _)) => kind.media_type().to_string(),
        Err(e) => {
            return Err(LoadError::Invalid {
                name: digest.to_string(),
                reason: e.to_string(),
            })
        }
    };
    Ok(store::Descriptor::new(
        media_type,
        digest.clone(),
        bytes.len() as u64,
    ))
}

struct Loader<'a> {
    store: &'a Store,
    contents: Contents,
}

impl Loader<'_> {
    /// The file at `name`, following links.
    fn resolve(&self, name: &str) -> Option<&BlobInfo> {
        let mut name = name.to_string();
        for _ in 0..MAX_LINK_DEPTH {
            if let Some(info) = self.contents.files.get(&name) {
                return Some(info);
            }
            name = self.contents.links.get(&name)?.clone();
        }
        None
    }

    /// The blob a descriptor names: from the archive, with the descriptor's size.
    fn blob(&self, d: &Descriptor, what: &'static str) -> Result<BlobInfo, LoadError> {
        let name = super::archive::blob_path(&d.digest);
        let info = self.resolve(&name).ok_or_else(|| LoadError::Missing {
            what,
            name: name.clone(),
        })?;
        if info.digest != d.digest {
            // Reached through a link whose target holds other content.
            return Err(LoadError::Blob {
                name,
                source: StoreError::DigestMismatch {
                    expected: d.digest.clone(),
                    actual: info.digest.clone(),
                    size: info.size,
                },
            });
        }
        if info.size != d.size {
            return Err(LoadError::SizeMismatch {
                name,
                expected: d.size,
                actual: info.size,
            });
        }
        Ok(info.clone())
    }

    fn read_small(&self, info: &BlobInfo, name: &str) -> Result<Vec<u8>, LoadError> {
        if info.size > MAX_JSON {
            return Err(LoadError::TooLarge {
                name: name.to_string(),
                size: info.size,
                limit: MAX_JSON,
            });
        }
        Ok(self.store.read_blob(&info.digest)?)
    }

    fn load_oci(&self, index_bytes: &[u8]) -> Result<Vec<LoadedImage>, LoadError> {
        let index: ImageIndex = parse_json("index.json", index_bytes)?;
        // Entries naming the same manifest are one image with several names; order is kept.
        let mut images: Vec<(Descriptor, Vec<String>)> = Vec::new();
        for d in &index.manifests {
            let pos = match images.iter().position(|(i, _)| i.digest == d.digest) {
                Some(pos) => pos,
                None => {
                    images.push((d.clone(), Vec::new()));
                    images.len() - 1
                }
            };
            if let Some(name) = oci_name(d) {
                if !images[pos].1.contains(&name) {
                    images[pos].1.push(name);
                }
            }
        }
        let mut out = Vec::new();
        for (d, names) in images {
            let digest = d.digest.clone();
            let id = self.check_manifest(&d, 0)?;
            let mut target = store::Descriptor::new(d.media_type.clone(), digest.clone(), d.size);
            target.platform = d.platform.clone();
            for name in &names {
                self.store.tag(name, &target)?;
            }
            out.push(LoadedImage {
                id,
                target: digest,
                names,
            });
        }
        Ok(out)
    }

    /// Checks that a manifest (or, for an index, at least one manifest under it) arrived whole;
    /// returns the image ID (of the host's platform for an index).
    fn check_manifest(&self, d: &Descriptor, depth: usize) -> Result<Digest, LoadError> {
        let name = super::archive::blob_path(&d.digest);
        if depth > 4 {
            return Err(LoadError::Invalid {
                name,
                reason: "indexes nest too deeply".into(),
            });
        }
        let info = self.blob(d, "manifest")?;
        let bytes = self.read_small(&info, &name)?;
        let (_, manifest) = Manifest::parse(&bytes, None).map_err(|e| LoadError::Invalid {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        match manifest {
            Manifest::Image(m) => self.check_image(&m),
            Manifest::Index(index) => {
                // Archives of multi-platform images often carry one platform's blobs only.
                let mut first_err = None;
                let host = crate::oci::Platform::host();
                let mut ids = Vec::new();
                for child in &index.manifests {
                    match self.check_manifest(child, depth + 1) {
                        Ok(id) => ids.push((child, id)),
                        Err(LoadError::Missing { .. }) => {}
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
                let chosen = ids
                    .iter()
                    .find(|(c, _)| c.platform.as_ref().is_some_and(|p| host.matches(p)))
                    .or(ids.first())
                    .map(|(_, id)| id.clone());
                chosen.ok_or(LoadError::Missing {
                    what: "manifest for any platform",
                    name,
                })
            }
        }
    }

    fn check_image(&self, m: &ImageManifest) -> Result<Digest, LoadError> {
        let config = self.blob(&m.config, "config")?;
        for layer in &m.layers {
            // Foreign layers are fetched from their URLs and need not be in archives.
            if layer.urls.is_some() && !self.store.has_blob(&layer.digest) {
                continue;
            }
            self.blob(layer, "layer")?;
        }
        Ok(config.digest)
    }

    /// A docker-archive image: the config and layer files by path, a schema 2 manifest made for
    /// them, the layers' diffIDs checked against the config.
    fn load_docker_entry(&self, entry: &DockerEntry) -> Result<LoadedImage, LoadError> {
        let find = |path: &str, what: &'static str| {
            normalize(path)
                .and_then(|n| self.resolve(&n))
                .cloned()
                .ok_or_else(|| LoadError::Missing {
                    what,
                    name: path.to_string(),
                })
        };
        let config_info = find(&entry.config, "config")?;
        let config_bytes = self.read_small(&config_info, &entry.config)?;
        let config: ImageConfig = parse_json(&entry.config, &config_bytes)?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(LoadError::Invalid {
                name: "manifest.json".into(),
                reason: format!(
                    "{} layers for a config with {} diffIDs",
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let info = find(path, "layer")?;
            let compression = self.check_diff_id(&info, path, diff_id)?;
            layers.push(Descriptor::new(
                compression.layer_media_type(false),
                info.digest,
                info.size,
            ));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": Descriptor::new(media::DOCKER_CONFIG, config_info.digest.clone(), config_info.size),
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| LoadError::Invalid {
            name: "manifest.json".into(),
            reason: e.to_string(),
        })?;
        let written = self.store.write_blob(&bytes)?;
        let mut target =
            store::Descriptor::new(media::DOCKER_MANIFEST, written.digest, written.size);
        if !config.os.is_empty() && !config.architecture.is_empty() {
            target.platform = Some(config.platform());
        }
        let names = repo_tags(entry)?;
        for name in &names {
            self.store.tag(name, &target)?;
        }
        Ok(LoadedImage {
            id: config_info.digest,
            target: target.digest,
            names,
        })
    }

    /// Hashes the uncompressed layer and compares it with the config's diffID.
    fn check_diff_id(
        &self,
        info: &BlobInfo,
        name: &str,
        expected: &DiffId,
    ) -> Result<Compression, LoadError> {
        let path = self.store.blob_path(&info.digest);
        let mut reader = io::BufReader::new(self.store.open_blob(&info.digest)?);
        let prefix = io::BufRead::fill_buf(&mut reader)
            .map_err(StoreError::io("read", &path))?
            .to_vec();
        let compression = Compression::sniff(&prefix);
        let actual = match compression {
            Compression::None => info.digest.clone(),
            Compression::Gzip => hash_all(flate2::read::MultiGzDecoder::new(reader), &path)?,
            Compression::Zstd => hash_all(
                zstd::stream::read::Decoder::new(reader).map_err(StoreError::io("read", &path))?,
                &path,
            )?,
        };
        if actual != expected.0 {
            return Err(LoadError::DiffIdMismatch {
                name: name.to_string(),
                expected: expected.0.clone(),
                actual,
            });
        }
        Ok(compression)
    }
}

fn hash_all(reader: impl Read, path: &Path) -> Result<Digest, LoadError> {
    let mut r = DigestingReader::new(reader);
    io::copy(&mut r, &mut io::sink()).map_err(StoreError::io("decompress", path))?;
    Ok(r.finish().0)
}

/// The full reference an `index.json` entry names: containerd's annotation, else a ref name that
/// is a whole reference (`app:1`, `ghcr.io/o/app:1`; a bare tag like `latest` names nothing).
fn oci_name(d: &Descriptor) -> Option<String> {
    if let Some(name) = d.annotation(store::ANNOTATION_CONTAINERD_NAME) {
        if let Ok(r) = Reference::parse(name) {
            return Some(r.to_string());
        }
    }
    let ref_name = d.annotation(store::ANNOTATION_REF_NAME)?;
    if !ref_name.contains(['/', ':']) {
        return None;
    }
    Reference::parse(ref_name).ok().map(|r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("../etc/passwd"), None);
        assert_eq!(normalize("blobs/../../x"), None);
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("."), None);
        assert_eq!(
            resolve_dots("b/../a/layer.tar").as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(resolve_dots("b/../../etc/passwd"), None);
        assert_eq!(resolve_dots("/etc/passwd"), None);
    }

    #[test]
    fn index_entry_names() {
        let d = |annotations: &[(&str, &str)]| {
            let mut d = Descriptor::new(media::OCI_MANIFEST, Digest::of(b""), 0);
            d.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            d
        };
        assert_eq!(
            oci_name(&d(&[
                (store::ANNOTATION_REF_NAME, "latest"),
                (
                    store::ANNOTATION_CONTAINERD_NAME,
                    "docker.io/library/app:latest"
                )
            ])),
            Some("docker.io/library/app:latest".into())
        );
        assert_eq!(
            oci_name(&d(&[(store::ANNOTATION_REF_NAME, "latest")])),
            None
        );
        assert_eq!(
            oci_name(&d(&[(store::ANNOTATION_REF_NAME, "app:1")])),
            Some("docker.io/library/app:1".into())
        );
    }
}
