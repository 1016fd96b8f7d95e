//! `kiln prune`: drops build cache records and snapshots, least recently used first, then the
//! blobs nothing needs any more. What a tagged image needs (its blobs and snapshots) is never
//! touched. Builds hold a shared lock on `<root>/builds.lock` while they run and prune takes it
//! exclusively, so a running build never loses a snapshot it mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cache::Cache;
use crate::oci::Platform;
use crate::snapshot::{ChainId, Snapshotter};
use crate::store::{GcOptions, Store};

use super::error::BuildError;

#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Drop every cache record and every snapshot no tagged image uses.
    pub all: bool,
    /// Drop least recently used cache until the state root holds at most this many bytes.
    pub keep_storage: Option<u64>,
    /// Drop cache not used for this long.
    pub until: Option<Duration>,
    /// Unreferenced blobs younger than this stay (default 60 s; 0 with `all`).
    pub grace: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub records_removed: usize,
    pub snapshots_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    /// Bytes the store's blobs and the snapshots take afterwards.
    pub bytes_after: u64,
}

/// The lock builds share and prune takes alone.
pub struct BuildsLock {
    _file: fs::File,
}

fn lock_file(root: &Path) -> Result<fs::File, BuildError> {
    let path = root.join("builds.lock");
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(BuildError::io("open", &path))
}

impl BuildsLock {
    /// Held by a build for as long as it runs.
    pub fn shared(root: &Path) -> Result<BuildsLock, BuildError> {
        let file = lock_file(root)?;
        file.lock_shared()
            .map_err(BuildError::io("lock", root.join("builds.lock")))?;
        Ok(BuildsLock { _file: file })
    }

    /// Held by prune; `None` when `wait` is false and a build is running.
    pub fn exclusive(root: &Path, wait: bool) -> Result<Option<BuildsLock>, BuildError> {
        let file = lock_file(root)?;
        if wait {
            file.lock()
                .map_err(BuildError::io("lock", root.join("builds.lock")))?;
        } else if file.try_lock().is_err() {
            return Ok(None);
        }
        Ok(Some(BuildsLock { _file: file }))
    }
}

/// Chains of every tagged image's layers: kept whatever the options say.
fn tagged_chains(store: &Store) -> Result<BTreeSet<ChainId>, BuildError> {
    let mut out = BTreeSet::new();
    let host = Platform::host();
    for (tag, _) in store.list_tags()? {
        let Ok(Some(image)) = store.image(&tag, &host) else {
            continue;
        };
        let mut parent: Option<ChainId> = None;
        for diff_id in &image.config.rootfs.diff_ids {
            let chain = ChainId::of(parent.as_ref(), diff_id);
            out.insert(chain.clone());
            parent = Some(chain);
        }
    }
    Ok(out)
}

fn blobs_size(store: &Store) -> u64 {
    fs::read_dir(store.blobs_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub fn prune(
    root: &Path,
    store: &Store,
    cache: &Cache,
    snapshots: &Snapshotter,
    options: &PruneOptions,
) -> Result<PruneReport, BuildError> {
    let now = SystemTime::now();
    let stale = |used: SystemTime| {
        options.all
            || options
                .until
                .is_some_and(|d| now.duration_since(used).unwrap_or_default() > d)
    };
    let keep_chains = tagged_chains(store)?;
    let snapshot_list = snapshots.list()?;
    let mut snapshot_sizes: BTreeMap<ChainId, u64> = snapshot_list
        .iter()
        .map(|s| (s.chain_id.clone(), snapshots.disk_size(&s.chain_id)))
        .collect();
    let before = blobs_size(store) + snapshot_sizes.values().sum::<u64>();
    let mut report = PruneReport::default();

    // Records: by age first, then least recently used while over the budget (a record's
    // blob counts against it only when no other record or image still uses that blob).
    let mut records = cache.records();
    let mut total = before;
    let mut kept = Vec::new();
    for (key, record, used) in records.drain(..) {
        let over = options.keep_storage.is_some_and(|budget| total > budget);
        if stale(used) || over {
            cache.remove(&key)?;
            report.records_removed += 1;
            if let Some(layer) = &record.layer {
                total = total.saturating_sub(layer.blob.size);
            }
        } else {
            kept.push(record);
        }
    }
    let roots: Vec<_> = kept
        .iter()
        .filter_map(|r| r.layer.as_ref().map(|l| l.blob.digest.clone()))
        .collect();
    let gc = store.gc(&GcOptions {
        // Only blobs of a build still running could be unreferenced and new; builds are
        // excluded by the builds lock, so a short grace is enough.
        grace: options
            .grace
            .unwrap_or(Duration::from_secs(if options.all { 0 } else { 60 })),
        extra_roots: roots,
        ..GcOptions::default()
    })?;
    report.blobs_removed = gc.removed_blobs.len();
    drop_stale_chunk_entries(root, store);
    // Hints in formats earlier versions of kiln wrote; nothing reads them any more.
    for legacy in ["gzip-chunks-v1", "copy-donors-v1"] {
        let _ = fs::remove_dir_all(root.join(legacy));
    }

    // Snapshots are unpacked copies of blobs: any not in a tagged image can go, leaves first.
    let mut candidates: Vec<(SystemTime, ChainId)> = snapshot_list
        .iter()
        .filter(|s| !keep_chains.contains(&s.chain_id))
        .map(|s| {
            (
                snapshots
                    .last_used(&s.chain_id)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                s.chain_id.clone(),
            )
        })
        .collect();
    candidates.sort();
    let mut total = blobs_size(store) + snapshot_sizes.values().sum::<u64>();
    loop {
        let mut removed_any = false;
        for (used, chain) in &candidates {
            if !snapshot_sizes.contains_key(chain) {
                continue;
            }
            let over = options.keep_storage.is_some_and(|budget| total > budget);
            if !(stale(*used) || over) {
                continue;
            }
            // A snapshot others are built on waits for them (remove refuses).
            if snapshots.remove(chain).is_ok() {
                let size = snapshot_sizes.remove(chain).unwrap_or(0);
                total = total.saturating_sub(size);
                report.snapshots_removed += 1;
                removed_any = true;
            }
        }
        if !removed_any {
            break;
        }
    }
    let _ = snapshots.cleanup_stale();
    super::seed::Donor::drop_stale(root, snapshots);
    let _ = clear_dir(&root.join("tmp"));
    report.bytes_after = blobs_size(store) + snapshot_sizes.values().sum::<u64>();
    report.bytes_freed = before.saturating_sub(report.bytes_after);
    Ok(report)
}

/// gzip chunk index entries whose blob is gone only cost a lookup; drop them with the blobs.
fn drop_stale_chunk_entries(root: &Path, store: &Store) {
    let dir = root.join(super::commit::GZIP_CHUNKS_DIR);
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let blob = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.split_whitespace().next().map(str::to_string));
        let present = blob.is_some_and(|hex| store.blobs_dir().join(hex).is_file());
        if !present {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Empties the build scratch directory (only called under the exclusive builds lock).
fn clear_dir(dir: &PathBuf) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            let _ = fs::remove_dir_all(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(())
}

/// `10GB`, `512MiB`, `2g`, `1000000` → bytes (decimal and binary units, as Docker accepts).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// `48h`, `30m`, `7d`, `90s`, `1h30m` → a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10GB"), Some(10_000_000_000));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2_000_000_000));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("1.5kb"), Some(1500));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_duration("48h"), Some(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
