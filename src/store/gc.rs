//! Garbage collection: mark from every `index.json` entry (and caller-given roots) through
//! manifests and indexes, sweep `blobs/sha256/`, and clear stale ingest files.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::error::{Result, StoreError};
use super::Store;
use crate::oci::Descriptor;
use crate::oci::{media, Digest};

/// Media types whose blobs reference other blobs.
const GRAPH_MEDIA_TYPES: &[&str] = &[
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::DOCKER_MANIFEST,
    media::OCI_ARTIFACT_MANIFEST,
];

/// Blobs of an unrecognised media type this small are sniffed for manifest-shaped JSON.
const SNIFF_LIMIT: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Blobs modified more recently than this are kept even if unreachable: another process
    /// may have just committed them and not tagged their manifest yet.
    pub grace: Duration,
    /// Unlocked resumable downloads older than this are removed.
    pub partial_max_age: Duration,
    /// More roots besides `index.json` (for example blobs the build cache references).
    pub extra_roots: Vec<Digest>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(60 * 60),
            partial_max_age: Duration::from_secs(24 * 60 * 60),
            extra_roots: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs reachable from the roots (including ones referenced but absent).
    pub reachable: usize,
    pub removed_blobs: Vec<Digest>,
    pub removed_bytes: u64,
    /// Unreachable blobs kept because they are younger than the grace period.
    pub kept_recent: usize,
    pub removed_ingest_files: usize,
}

impl Store {
    /// Collects garbage under the exclusive lock (tags, ingest set-up and other GCs wait).
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let _lock = self.lock_exclusive()?;
        let index = self.read_index()?;
        let mut reachable: HashSet<Digest> = HashSet::new();
        let mut stack: Vec<(Digest, Option<String>)> = index
            .manifests
            .iter()
            .map(|d| (d.digest.clone(), Some(d.media_type.clone())))
            .chain(options.extra_roots.iter().map(|d| (d.clone(), None)))
            .collect();
        while let Some((digest, media_type)) = stack.pop() {
            if !reachable.insert(digest.clone()) {
                continue;
            }
            for child in self.children(&digest, media_type.as_deref())? {
                if !reachable.contains(&child.digest) {
                    stack.push((child.digest, Some(child.media_type)));
                }
            }
        }

        let mut report = GcReport {
            reachable: reachable.len(),
            ..GcReport::default()
        };
        let dir = self.blobs_dir();
        let now = SystemTime::now();
        for entry in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
            let entry = entry.map_err(StoreError::io("list", dir))?;
            let name = entry.file_name();
            // Only names that are digests are blobs; leave anything else alone.
            let Ok(digest) =
                format!("{}:{}", Digest::ALGORITHM, name.to_string_lossy()).parse::<Digest>()
            else {
                continue;
            };
            if reachable.contains(&digest) {
                continue;
            }
            let path = entry.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("stat", &path)(e)),
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < options.grace {
                report.kept_recent += 1;
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.removed_bytes += meta.len();
                    self.forget_blob_sources(&digest);
                    report.removed_blobs.push(digest);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove blob", &path)(e)),
            }
        }
        if !report.removed_blobs.is_empty() {
            super::fsutil::sync_dir(dir)?;
        }
        report.removed_blobs.sort();
        report.removed_ingest_files = self.clean_ingest(Some(options.partial_max_age))?;
        Ok(report)
    }

    /// The descriptors a manifest or index blob refers to (`manifests[]`, `config`,
    /// `layers[]`, `blobs[]`, `subject`). Layers and configs have none; an absent blob has none.
    fn children(&self, digest: &Digest, media_type: Option<&str>) -> Result<Vec<Descriptor>> {
        let known_graph = media_type.is_some_and(|m| GRAPH_MEDIA_TYPES.contains(&m));
        if !known_graph {
            // Unknown or absent media type: only small blobs may be manifests.
            let recognised_leaf = media_type.is_some_and(|m| !m.ends_with("+json"));
            if recognised_leaf {
                return Ok(Vec::new());
            }
            match self.blob_size(digest) {
                Ok(size) if size <= SNIFF_LIMIT => {}
                Ok(_) | Err(StoreError::BlobNotFound(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let bytes = match self.read_blob(digest) {
            Ok(b) => b,
            Err(StoreError::BlobNotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let json = match serde_json::from_slice::<Value>(&bytes) {
            Ok(json) => json,
            Err(source) if known_graph => {
                return Err(StoreError::Json {
                    path: self.blob_path(digest),
                    source,
                })
            }
            Err(_) => return Ok(Vec::new()),
        };
        Ok(referenced_descriptors(&json))
    }
}

/// Descriptors referenced by a manifest/index JSON document. Entries that are not descriptors
/// (or carry a digest kiln does not support) are skipped rather than failing the whole GC.
fn referenced_descriptors(json: &Value) -> Vec<Descriptor> {
    let mut out = Vec::new();
    let mut take = |v: &Value| {
        if let Ok(d) = serde_json::from_value::<Descriptor>(v.clone()) {
            out.push(d);
        }
    };
    for list in ["manifests", "layers", "blobs"] {
        if let Some(items) = json.get(list).and_then(Value::as_array) {
            items.iter().for_each(&mut take);
        }
    }
    for single in ["config", "subject"] {
        if let Some(v) = json.get(single) {
            take(v);
        }
    }
    out
}
