//! RUN `--mount=type=cache`: which directory under the state root a cache mount is, as
//! BuildKit keys caches (id, the mkdir that uid/gid/mode make, the root `from=` starts from),
//! and seeding a `from=` cache with that root's source.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::dockerfile::instructions::Mount;

use super::error::BuildError;
use super::run_step::RunContext;

/// A cache id as one directory name under `cache-mounts/`. An id made only of safe characters
/// is its own name. Any other id (`/root/.cache/pip`, `..`) keeps its safe characters for
/// reading, plus a hash of the whole id. So ids that differ only in replaced characters (`a/b`,
/// `a_b`) stay two caches, and no id names `.`, `..` or anything outside `cache-mounts/`:
/// `id=..` once mounted the whole state root into the step.
fn sanitize_id(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == id && !id.is_empty() && id != "." && id != ".." {
        return safe;
    }
    let hash = crate::oci::Digest::of(id.as_bytes());
    format!("{safe}+{}", &hash.hex()[..16])
}

/// The directory of a cache mount. BuildKit keys a cache by its id and, when `uid`, `gid` or
/// `mode` is given, by the directory it starts from (a mkdir with those, defaults 0, 0, 0755):
/// `id=x,uid=1000` and `id=x` are two caches, `id=x,uid=0` and `id=x,mode=0755` one.
pub(super) fn cache_dir_name(id: &str, m: &Mount) -> String {
    let name = sanitize_id(id);
    if m.uid.is_none() && m.gid.is_none() && m.mode.is_none() {
        return name;
    }
    // A hashed name's `+` is followed by hex digits, never by `uid`.
    format!(
        "{name}+uid{}-gid{}-mode{:o}",
        m.uid.unwrap_or(0),
        m.gid.unwrap_or(0),
        m.mode.unwrap_or(0o755)
    )
}

/// Where a cache mount `from=<stage|image>` starts from: its `source` in that root, and what
/// names that start (the root's content and the source path).
pub(super) struct CacheSeed {
    source: PathBuf,
    pub id: String,
}

/// BuildKit makes a cache mount with `from` a cache of its own per content of that root (keyed
/// by the ref it starts from), first holding what the root has at `source`.
pub(super) fn cache_seed(
    ctx: &RunContext<'_>,
    m: &Mount,
    from: &str,
) -> Result<CacheSeed, BuildError> {
    let root = ctx
        .from_roots
        .get(from)
        .ok_or_else(|| BuildError::FromNotReady(from.to_string()))?;
    let content = ctx.from_ids.get(from).map_or("", String::as_str);
    let source = m.source.as_deref().unwrap_or("/");
    let real = crate::context::rootpath::resolve(root, source)
        .map_err(crate::context::copy::CopyError::from)?;
    let path = root.join(std::ffi::OsStr::from_bytes(&real));
    if !path.is_dir() {
        return Err(BuildError::MountSourceMissing(source.to_string()));
    }
    let digest = crate::oci::Digest::of(&[content.as_bytes(), b"\0", &real].concat());
    Ok(CacheSeed {
        source: path,
        id: digest.hex().chars().take(16).collect(),
    })
}

/// Makes the cache directory `dir` a copy of the seed's source (owners, modes, links kept),
/// made beside it and renamed into place, so a half copy is never taken for the cache.
pub(super) fn seed_cache(seed: &CacheSeed, dir: &Path, scratch: &Path) -> Result<(), BuildError> {
    let parent = dir.parent().unwrap_or(scratch);
    std::fs::create_dir_all(parent).map_err(BuildError::io("create cache mount", parent))?;
    let tmp = parent.join(format!(
        ".seeding-{}-{}",
        std::process::id(),
        dir.file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy())
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(BuildError::io("create cache mount", &tmp))?;
    crate::context::copy::copy_into_root(&crate::context::copy::CopyRequest {
        source_root: &seed.source,
        ignore: None,
        sources: vec!["/".into()],
        dest: "/".into(),
        workdir: "/".into(),
        dest_root: &tmp,
        chown: None,
        chmod: None,
        parents: false,
        excludes: Vec::new(),
        source_date_epoch: None,
        preserve_owner: true,
        seeded: None,
        contents: None,
    })?;
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(&seed.source).map_err(BuildError::io("stat", &seed.source))?;
    std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))
        .map_err(BuildError::io("chown cache mount", &tmp))?;
    std::fs::set_permissions(&tmp, meta.permissions())
        .map_err(BuildError::io("chmod cache mount", &tmp))?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another build seeded it meanwhile: theirs is as good.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(BuildError::io("create cache mount", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize_id;

    #[test]
    fn cache_ids_are_one_directory_name_each() {
        assert_eq!(sanitize_id("pip-cache_1.0"), "pip-cache_1.0");
        for id in ["", ".", "..", "../..", "/", "a/../../b"] {
            let name = sanitize_id(id);
            assert!(
                !name.contains('/') && name != "." && name != ".." && !name.is_empty(),
                "{id:?} gives {name:?}"
            );
        }
        assert_ne!(sanitize_id("a/b"), sanitize_id("a_b"));
        assert_ne!(sanitize_id("a/b"), sanitize_id("a:b"));
        assert_eq!(
            sanitize_id("/root/.cache/pip"),
            sanitize_id("/root/.cache/pip")
        );
    }
}
