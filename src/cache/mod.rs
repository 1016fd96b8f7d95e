//! The build cache: a step's cache key → what the step produced (its layer). Records live in `<root>/cache-v1/<key hex>.json`, written atomically; a
//! record is only trusted while its layer blob is still in the store.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod transfer;

use crate::oci::{Digest, LayerBlob};
use crate::store::Store;

/// Bump when the record format or key derivation changes: old records are then ignored.
pub const CACHE_DIR: &str = "cache-v1";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Io(#[from] crate::oci::IoError),
}

/// The layer a cached step produced: `oci`'s layer type, under the name the build uses. Its
/// JSON (`media_type`, `digest`, `size`, `diff_id`) is the `cache-v1` record's.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// `None`: written by an older kiln for a step that changed nothing (it made no layer);
    /// read as a miss, since every layer step now makes one, empty or not, as BuildKit's.
    pub layer: Option<LayerBlob>,
    /// Imported with `--cache-from`: where the layer blob is fetched from when a build first
    /// needs it (until then it need not be in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RecordSource>,
    /// When the step first ran (RFC 3339): the layer's history time in every image that
    /// reuses it, so a fully cached rebuild gives the same image ID (as BuildKit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// Where an imported record's layer lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordSource {
    /// An OCI layout written by `--cache-to type=local`.
    Directory(PathBuf),
    /// A repository (`registry/name`) a `--cache-to type=registry` pushed to.
    Registry(String),
}

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    store: Store,
}

impl Cache {
    pub fn open(root: &Path, store: Store) -> Result<Cache, CacheError> {
        let dir = root.join(CACHE_DIR);
        fs::create_dir_all(&dir).map_err(|source| {
            CacheError::Io(crate::oci::IoError {
                op: "create",
                path: dir.clone(),
                source,
            })
        })?;
        Ok(Cache { dir, store })
    }

    fn path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", key.hex()))
    }

    /// The record for `key`, if any and still usable. Unreadable records count as misses.
    pub fn get(&self, key: &Digest) -> Option<CacheRecord> {
        let path = self.path(key);
        let file = fs::File::open(&path).ok()?;
        let record: CacheRecord = serde_json::from_reader(std::io::BufReader::new(&file)).ok()?;
        if let Some(layer) = &record.layer {
            if record.source.is_none() && !self.store.has_blob(&layer.blob.digest) {
                return None;
            }
        }
        // The record's mtime is its last use: `prune` drops the least recently used first.
        let _ = file.set_modified(std::time::SystemTime::now());
        Some(record)
    }

    fn step_path(&self, location: &Digest) -> PathBuf {
        self.dir
            .join("steps")
            .join(format!("{}.json", location.hex()))
    }

    /// What the step at `location` (a Dockerfile position in a context) was last built from.
    pub fn previous_step<M: serde::de::DeserializeOwned>(&self, location: &Digest) -> Option<M> {
        let bytes = fs::read(self.step_path(location)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Remembers what the step at `location` was built from, for explaining a later miss.
    pub fn remember_step<M: serde::Serialize>(
        &self,
        location: &Digest,
        material: &M,
    ) -> Result<(), CacheError> {
        let path = self.step_path(location);
        let dir = self.dir.join("steps");
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| {
                CacheError::Io(crate::oci::IoError {
                    op,
                    path: p,
                    source,
                })
            }
        };
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let bytes = serde_json::to_vec(material).unwrap_or_default();
        if fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io("create in", &dir))?;
        tmp.write_all(&bytes).map_err(io("write", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| io("rename into", &path)(e.error))?;
        Ok(())
    }

    pub fn put(&self, key: &Digest, record: &CacheRecord) -> Result<(), CacheError> {
        let path = self.path(key);
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", key.hex(), std::process::id()));
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| {
                CacheError::Io(crate::oci::IoError {
                    op,
                    path: p,
                    source,
                })
            }
        };
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename into", &path))?;
        Ok(())
    }

    /// Every record with its last use (the record file's mtime), least recently used first.
    pub fn records(&self) -> Vec<(Digest, CacheRecord, std::time::SystemTime)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let key: Digest = format!("sha256:{}", name.strip_suffix(".json")?)
                    .parse()
                    .ok()?;
                let used = e.metadata().ok()?.modified().ok()?;
                let record = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((key, record, used))
            })
            .collect();
        out.sort_by_key(|(_, _, used)| *used);
        out
    }

    /// Drops the record for `key` (a missing record is fine).
    pub fn remove(&self, key: &Digest) -> Result<(), CacheError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CacheError::Io(crate::oci::IoError {
                op: "remove",
                path,
                source,
            })),
        }
    }

    /// Layer digests the cache refers to, to keep them through `prune`.
    pub fn referenced_blobs(&self) -> Vec<Digest> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<CacheRecord>(&b).ok())
            .filter_map(|r| r.layer.map(|l| l.blob.digest))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{media, BlobRef, DiffId};

    /// A record as kiln has written it since `cache-v1` began; it must keep loading, and a new
    /// record must keep being written in this shape.
    #[test]
    fn a_record_in_the_cache_v1_shape_loads() {
        let old = r#"{"layer":{"media_type":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","size":11,"diff_id":"sha256:486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7"},"source":{"Registry":"127.0.0.1:5000/team/cache"},"created":"2026-11-02T10:00:00Z"}"#;
        let record: CacheRecord = serde_json::from_str(old).unwrap();
        assert_eq!(
            record,
            CacheRecord {
                layer: Some(LayerBlob {
                    blob: BlobRef::new(media::OCI_LAYER_GZIP, Digest::of(b"hello"), 11),
                    diff_id: DiffId(Digest::of(b"world")),
                }),
                source: Some(RecordSource::Registry("127.0.0.1:5000/team/cache".into())),
                created: Some("2026-11-02T10:00:00Z".into()),
            }
        );
        assert_eq!(serde_json::to_string(&record).unwrap(), old);
        let empty: CacheRecord = serde_json::from_str(r#"{"layer":null}"#).unwrap();
        assert_eq!(empty.layer, None);
    }

    #[test]
    fn records_round_trip_and_need_their_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root")).unwrap();
        let cache = Cache::open(&dir.path().join("root"), store.clone()).unwrap();
        let key = Digest::of(b"step");
        assert_eq!(cache.get(&key), None);
        cache
            .put(
                &key,
                &CacheRecord {
                    layer: None,
                    source: None,
                    created: None,
                },
            )
            .unwrap();
        assert_eq!(
            cache.get(&key),
            Some(CacheRecord {
                layer: None,
                source: None,
                created: None,
            })
        );
        let blob = store.write_blob(b"layer bytes").unwrap();
        let layer = LayerBlob {
            blob: BlobRef::new(media::OCI_LAYER_GZIP, blob.digest.clone(), blob.size),
            diff_id: DiffId(Digest::of(b"tar")),
        };
        let key2 = Digest::of(b"step2");
        cache
            .put(
                &key2,
                &CacheRecord {
                    layer: Some(layer.clone()),
                    source: None,
                    created: None,
                },
            )
            .unwrap();
        assert_eq!(cache.get(&key2).unwrap().layer, Some(layer.clone()));
        assert_eq!(cache.referenced_blobs(), vec![blob.digest.clone()]);
        // A record whose blob is gone is a miss.
        let missing = Digest::of(b"nothing");
        let key3 = Digest::of(b"step3");
        cache
            .put(
                &key3,
                &CacheRecord {
                    layer: Some(LayerBlob {
                        blob: BlobRef {
                            digest: missing,
                            ..layer.blob
                        },
                        diff_id: layer.diff_id,
                    }),
                    source: None,
                    created: None,
                },
            )
            .unwrap();
        assert_eq!(cache.get(&key3), None);
    }
}
