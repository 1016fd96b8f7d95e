//! A COPY rebuilt after a small change writes mostly the files it wrote last time. Creating
//! thousands of files is what such a rebuild costs (inode allocation in the kernel), so the new
//! step's upper directory is first seeded with hard links to the files of the previous build
//! of the same step, on the same parent snapshot: the copy keeps a seeded file only when it is
//! byte for byte and in every attribute what it would write (`context::copy`), replaces the
//! others, and what it did not write is removed again before the layer is made. Snapshots are
//! never written in place (the copy replaces files, it does not rewrite them; later steps see
//! the snapshot read-only through overlayfs), so sharing inodes between them is safe.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::context::copy::Seeded;

const OPAQUE: &str = "trusted.overlay.opaque";

/// The snapshot the previous build of a COPY made on the same parent, and what each regular
/// file in it holds by path (empty when unknown: then files are compared byte for byte).
#[derive(Debug, Clone)]
pub struct Donor {
    pub dir: std::path::PathBuf,
    pub contents: std::collections::HashMap<String, crate::oci::Digest>,
}

/// What was seeded, to undo what the copy did not claim.
pub struct Seeding {
    pub seeded: Seeded,
    files: Vec<String>,
    dirs: Vec<String>,
}

/// Mirrors `donor`'s directories into `upper` and hard-links its regular files there.
pub fn seed(donor: &Donor, upper: &Path) -> io::Result<Seeding> {
    let mut seeding = Seeding {
        seeded: Seeded {
            contents: donor.contents.clone(),
            ..Seeded::default()
        },
        files: Vec::new(),
        dirs: Vec::new(),
    };
    walk(&donor.dir, upper, "", &mut seeding)?;
    Ok(seeding)
}

fn walk(donor: &Path, upper: &Path, rel: &str, seeding: &mut Seeding) -> io::Result<()> {
    for entry in fs::read_dir(donor.join(rel))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = entry.metadata()?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let dir = upper.join(&child);
            fs::create_dir(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            std::os::unix::fs::chown(&dir, Some(meta.uid()), Some(meta.gid()))?;
            // A directory the copy made over a file of the parent is opaque; keep it so.
            let mut flag = [0u8; 1];
            if rustix::fs::lgetxattr(donor.join(&child), OPAQUE, &mut flag).is_ok_and(|n| n == 1)
                && flag == *b"y"
            {
                rustix::fs::lsetxattr(&dir, OPAQUE, b"y", rustix::fs::XattrFlags::empty())?;
            }
            seeding.dirs.push(child.clone());
            walk(donor, upper, &child, seeding)?;
        } else if ft.is_file() {
            fs::hard_link(donor.join(&child), upper.join(&child))?;
            seeding.seeded.inodes.insert(meta.ino());
            seeding.files.push(child);
        }
        // Symlinks and whiteouts are cheap or rare: the copy makes them as usual.
    }
    Ok(())
}

/// Removes from `upper` the seeded files and (then empty) directories the copy did not claim,
/// giving the directories around them their times back: the layer is what a copy without
/// seeding would have made.
pub fn unseed(upper: &Path, seeding: &Seeding) -> io::Result<()> {
    let claimed = seeding
        .seeded
        .claimed
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut touched_parents = std::collections::BTreeMap::new();
    let mut remember_parent = |rel: &str| {
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p).to_string();
        touched_parents.entry(parent.clone()).or_insert_with(|| {
            fs::symlink_metadata(upper.join(&parent))
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec()))
        });
    };
    let mut removed = Vec::new();
    for file in &seeding.files {
        if !claimed.contains(file) {
            remember_parent(file);
            removed.push(upper.join(file));
        }
    }
    // Deepest first, so a directory whose seeded subtree is all gone goes too.
    let mut dirs: Vec<&String> = seeding
        .dirs
        .iter()
        .filter(|d| !claimed.contains(*d))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for path in &removed {
        fs::remove_file(path)?;
    }
    for dir in dirs {
        let path = upper.join(dir);
        let empty = fs::read_dir(&path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if empty {
            remember_parent(dir);
            fs::remove_dir(&path)?;
        }
    }
    for (parent, times) in touched_parents {
        let (Some((secs, nanos)), Ok(dir)) = (times, fs::File::open(upper.join(&parent))) else {
            continue;
        };
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs.max(0) as u64, nanos as u32);
        let _ = dir.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t));
    }
    Ok(())
}
