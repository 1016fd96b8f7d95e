//! Directory snapshots without copying the parent every step: a step's root, once it is
//! exactly its parent plus the step's layer, is kept as `flat/<chain-id hex>` and the next step
//! on that chain takes it (one rename) instead of copying the layers again. Only a few are
//! kept; any is just a cache, rebuilt from the layer directories when missing.

use std::fs;
use std::path::{Path, PathBuf};

use super::ChainId;

/// How many kept roots stay; the least recently kept go first.
const KEEP: usize = 3;

fn dir(root: &Path) -> PathBuf {
    root.join("flat")
}

fn path(root: &Path, chain: &ChainId) -> PathBuf {
    dir(root).join(chain.0.hex())
}

/// Moves the kept root of `chain` to `dest` (which must not exist); false when there is none
/// (or another step took it first).
pub fn take(root: &Path, chain: &ChainId, dest: &Path) -> bool {
    fs::rename(path(root, chain), dest).is_ok()
}

/// Keeps `rootfs` as the root of `chain` (dropping it if one is kept already), then trims.
pub fn keep(root: &Path, chain: &ChainId, rootfs: &Path, scratch: &Path) {
    let dest = path(root, chain);
    let kept = fs::create_dir_all(dir(root)).is_ok() && fs::rename(rootfs, &dest).is_ok();
    if !kept {
        let _ = fs::remove_dir_all(rootfs);
        return;
    }
    trim(root, scratch);
}

/// Forgets the kept root of `chain` (its snapshot is being removed).
pub fn forget(root: &Path, chain: &ChainId, scratch: &Path) {
    discard(&path(root, chain), scratch);
}

/// Moves `p` out of sight in one rename (to `scratch`, a path that must not exist), then
/// deletes it.
fn discard(p: &Path, scratch: &Path) {
    if fs::rename(p, scratch).is_ok() {
        let _ = fs::remove_dir_all(scratch);
    }
}

fn trim(root: &Path, scratch: &Path) {
    let Ok(entries) = fs::read_dir(dir(root)) else {
        return;
    };
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if kept.len() <= KEEP {
        return;
    }
    kept.sort();
    for (_, p) in &kept[..kept.len() - KEEP] {
        discard(p, scratch);
    }
}
