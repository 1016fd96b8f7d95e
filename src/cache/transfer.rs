//! Moving cache records between machines. An exported cache is an OCI image manifest whose
//! config (media type [`media::KILN_CACHE_CONFIG`]) lists the records (step key → index of a
//! layer, or none in a record an older kiln wrote for a step that changed nothing) and whose layers are the layer blobs those
//! records point at, unchanged. The same manifest goes to a registry (`--cache-to
//! type=registry`) or into an OCI image layout directory (`type=local`), so registries and CI
//! cache actions store it like any image, and blobs shared with images are stored once.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Cache, CacheError, CacheRecord, RecordSource};
use crate::oci::manifest::{Descriptor, ImageManifest};
use crate::oci::{media, BlobRef, DiffId, Digest, LayerBlob};
use crate::store::Store;

/// The annotation on an exported cache's layer descriptor that carries the layer's DiffID.
const DIFF_ID_ANNOTATION: &str = "io.kiln.diff-id";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// The key scheme the records were made with; others are ignored on import.
    pub scheme: String,
    pub records: Vec<ExportedRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRecord {
    pub key: Digest,
    /// Index into the manifest's layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// When the step first ran, so both machines give the same image ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// A cache ready to write anywhere: config bytes, manifest bytes, and the layers to ship.
#[derive(Debug, Clone)]
pub struct CacheExport {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub layers: Vec<Descriptor>,
}

impl CacheExport {
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }
    pub fn config_descriptor(&self) -> Descriptor {
        Descriptor::of(media::KILN_CACHE_CONFIG, &self.config)
    }
}

/// The records of `keys` (in order, duplicates dropped, unknown keys skipped) as an export.
pub fn build_export(cache: &Cache, keys: &[Digest]) -> CacheExport {
    let mut records = Vec::new();
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for key in keys {
        if !seen.insert(key.clone()) {
            continue;
        }
        let Some(record) = cache.get(key) else {
            continue;
        };
        let layer =
            record.layer.map(
                |l| match layers.iter().position(|d| d.digest == l.blob.digest) {
                    Some(i) => i,
                    None => {
                        let mut d = Descriptor::from(l.blob);
                        d.annotations = Some(
                            [(DIFF_ID_ANNOTATION.to_string(), l.diff_id.0.to_string())]
                                .into_iter()
                                .collect(),
                        );
                        layers.push(d);
                        layers.len() - 1
                    }
                },
            );
        records.push(ExportedRecord {
            key: key.clone(),
            layer,
            created: record.created.clone(),
        });
    }
    let config = serde_json::to_vec(&CacheConfig {
        scheme: crate::graph::KEY_SCHEME.to_string(),
        records,
    })
    .unwrap_or_default();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: Some(media::KILN_CACHE_CONFIG.into()),
        config: Descriptor::of(media::KILN_CACHE_CONFIG, &config),
        layers: layers.clone(),
        subject: None,
        annotations: None,
        extra: Default::default(),
    };
    CacheExport {
        manifest: serde_json::to_vec(&manifest).unwrap_or_default(),
        config,
        layers,
    }
}

/// Reads a cache manifest and its config into records whose layers are fetched from `source`
/// when a build first needs them. Records of another key scheme are dropped.
pub fn records_from(
    manifest: &[u8],
    config: &[u8],
    source: &RecordSource,
) -> Result<Vec<(Digest, CacheRecord)>, String> {
    let manifest: ImageManifest =
        serde_json::from_slice(manifest).map_err(|e| format!("not a cache manifest: {e}"))?;
    if manifest.config.media_type != media::KILN_CACHE_CONFIG {
        return Err(format!(
            "not a kiln cache: its config is {:?}, not {}",
            manifest.config.media_type,
            media::KILN_CACHE_CONFIG
        ));
    }
    if Digest::of(config) != manifest.config.digest {
        return Err("the cache config does not match its digest".into());
    }
    let config: CacheConfig =
        serde_json::from_slice(config).map_err(|e| format!("unreadable cache config: {e}"))?;
    if config.scheme != crate::graph::KEY_SCHEME {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for r in config.records {
        let layer = match r.layer {
            None => None,
            Some(i) => {
                let d = manifest
                    .layers
                    .get(i)
                    .ok_or_else(|| format!("record {} points past the layers", r.key))?;
                let diff_id = d
                    .annotation(DIFF_ID_ANNOTATION)
                    .and_then(|s| s.parse::<Digest>().ok())
                    .ok_or_else(|| format!("layer {} has no diffID annotation", d.digest))?;
                Some(LayerBlob {
                    blob: BlobRef::from(d),
                    diff_id: DiffId(diff_id),
                })
            }
        };
        out.push((
            r.key,
            CacheRecord {
                layer,
                source: Some(source.clone()),
                created: r.created,
            },
        ));
    }
    Ok(out)
}

/// Puts imported records into the local cache, keeping local records that already work.
pub fn import_records(
    cache: &Cache,
    records: &[(Digest, CacheRecord)],
) -> Result<usize, CacheError> {
    let mut n = 0;
    for (key, record) in records {
        if cache.get(key).is_some_and(|r| r.source.is_none()) {
            continue;
        }
        cache.put(key, record)?;
        n += 1;
    }
    Ok(n)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io(crate::oci::IoError { op, path, source })
}

/// Writes `bytes` at `path` through a temp file, fsync and rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err("create in", dir))?;
    tmp.write_all(bytes).map_err(io_err("write", path))?;
    tmp.as_file().sync_all().map_err(io_err("fsync", path))?;
    tmp.persist(path)
        .map_err(|e| io_err("rename into", path)(e.error))?;
    Ok(())
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm())
        .join(digest.hex())
}

/// `--cache-to type=local,dest=DIR`: an OCI image layout holding the cache manifest (tagged
/// `latest`), its config and its layers. Blobs already there are kept; `index.json` is
/// replaced last, so a reader sees the old cache or the new one, never half of one.
pub fn export_to_dir(store: &Store, export: &CacheExport, dir: &Path) -> Result<(), CacheError> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    for layer in &export.layers {
        let target = blob_path(dir, &layer.digest);
        if target.exists() {
            continue;
        }
        let src = store.blob_path(&layer.digest);
        let mut input = fs::File::open(&src).map_err(io_err("open", &src))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&blobs).map_err(io_err("create in", &blobs))?;
        io::copy(&mut input, &mut tmp).map_err(io_err("copy", &src))?;
        tmp.as_file().sync_all().map_err(io_err("fsync", &target))?;
        tmp.persist(&target)
            .map_err(|e| io_err("rename into", &target)(e.error))?;
    }
    write_atomic(&blob_path(dir, &Digest::of(&export.config)), &export.config)?;
    let manifest_digest = export.manifest_digest();
    write_atomic(&blob_path(dir, &manifest_digest), &export.manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [{
            "mediaType": media::OCI_MANIFEST,
            "artifactType": media::KILN_CACHE_CONFIG,
            "digest": manifest_digest.to_string(),
            "size": export.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    write_atomic(
        &dir.join("index.json"),
        &serde_json::to_vec_pretty(&index).unwrap_or_default(),
    )
}

/// `--cache-from type=local,src=DIR`: the records of the layout's cache manifest.
pub fn import_from_dir(dir: &Path) -> Result<Vec<(Digest, CacheRecord)>, String> {
    let index_path = dir.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &fs::read(&index_path).map_err(|e| format!("cannot read {}: {e}", index_path.display()))?,
    )
    .map_err(|e| format!("{} is not an OCI index: {e}", index_path.display()))?;
    let manifest_digest: Digest = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|d| d["artifactType"] == media::KILN_CACHE_CONFIG)
                .or(m.first())
        })
        .and_then(|d| d["digest"].as_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{} lists no cache manifest", index_path.display()))?;
    let read = |d: &Digest| -> Result<Vec<u8>, String> {
        let p = blob_path(dir, d);
        let bytes = fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if &Digest::of(&bytes) != d {
            return Err(format!("{} does not match its digest", p.display()));
        }
        Ok(bytes)
    };
    let manifest = read(&manifest_digest)?;
    let parsed: ImageManifest =
        serde_json::from_slice(&manifest).map_err(|e| format!("not a cache manifest: {e}"))?;
    let config = read(&parsed.config.digest)?;
    records_from(
        &manifest,
        &config,
        &RecordSource::Directory(dir.to_path_buf()),
    )
}

/// Copies one blob of a cache directory into the store (digest and size checked by the store).
pub fn fetch_from_dir(store: &Store, dir: &Path, layer: &LayerBlob) -> Result<(), CacheError> {
    let blob = &layer.blob;
    let src = blob_path(dir, &blob.digest);
    let mut input = fs::File::open(&src).map_err(io_err("open", &src))?;
    let mut ingest = store
        .ingest(Some(&blob.digest), Some(blob.size))
        .map_err(|e| io_err("store", &src)(io::Error::other(e.to_string())))?;
    io::copy(&mut input, &mut ingest).map_err(io_err("copy", &src))?;
    ingest
        .commit()
        .map_err(|e| io_err("store", &src)(io::Error::other(e.to_string())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_round_trips_through_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let store = Store::open(&root).unwrap();
        let cache = Cache::open(&root, store.clone()).unwrap();
        let blob = store.write_blob(b"a layer").unwrap();
        let layer = LayerBlob {
            blob: BlobRef::new(media::OCI_LAYER_GZIP, blob.digest.clone(), blob.size),
            diff_id: DiffId(Digest::of(b"tar")),
        };
        let (k1, k2, k3) = (Digest::of(b"1"), Digest::of(b"2"), Digest::of(b"3"));
        cache
            .put(
                &k1,
                &CacheRecord {
                    layer: Some(layer.clone()),
                    source: None,
                    created: None,
                },
            )
            .unwrap();
        cache
            .put(
                &k2,
                &CacheRecord {
                    layer: None,
                    source: None,
                    created: None,
                },
            )
            .unwrap();
        let export = build_export(&cache, &[k1.clone(), k2.clone(), k3, k1.clone()]);
        assert_eq!(export.layers.len(), 1);
        let dir = d.path().join("cache");
        export_to_dir(&store, &export, &dir).unwrap();
        // Exporting again over the same directory is fine.
        export_to_dir(&store, &export, &dir).unwrap();

        let records = import_from_dir(&dir).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, k1);
        assert_eq!(records[0].1.layer.as_ref(), Some(&layer));
        assert_eq!(records[1].1.layer, None);

        // A fresh root gets the records; the layer comes over when fetched.
        let root2 = d.path().join("root2");
        let store2 = Store::open(&root2).unwrap();
        let cache2 = Cache::open(&root2, store2.clone()).unwrap();
        assert_eq!(import_records(&cache2, &records).unwrap(), 2);
        let got = cache2.get(&k1).unwrap();
        assert!(!store2.has_blob(&layer.blob.digest));
        fetch_from_dir(&store2, &dir, got.layer.as_ref().unwrap()).unwrap();
        assert!(store2.has_blob(&layer.blob.digest));

        // A tampered config is refused.
        let cfg = blob_path(&dir, &Digest::of(&export.config));
        fs::write(&cfg, b"{}").unwrap();
        assert!(import_from_dir(&dir).is_err());
    }
}
