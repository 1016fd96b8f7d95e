//! COPY, ADD and WORKDIR: file operations kiln does itself on the merged view of a writable
//! snapshot (mounted, never followed out of its root), committed like a RUN.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::context::copy::{copy_into_root, hash_sources, ChmodSpec, ContentLog, CopyRequest};
use crate::context::hashcache::FileHashCache;
use crate::context::ignore::PatternMatcher;
use crate::dockerfile::{Command, Dockerfile, Instruction};
use crate::sandbox::{resolve_user_from, Root};
use crate::snapshot::{ChainId, Snapshotter};
use crate::store::Store;

use super::add_archive::unpack_archive;
use super::base::LayerState;
use super::commit::{commit_active, LayerSettings, LayerSink};
use super::error::BuildError;
use super::mounts::MountGuard;

pub struct FileStepContext<'a> {
    pub store: &'a Store,
    pub snapshots: &'a Snapshotter,
    pub context_dir: &'a Path,
    pub ignore: Option<&'a PatternMatcher>,
    pub dockerfile: &'a Dockerfile,
    /// Built stages and the top snapshot of each.
    pub stage_roots: BTreeMap<usize, Option<ChainId>>,
    /// ADD's URL sources, downloaded.
    pub url_files: Vec<UrlFile>,
    /// Images named by `COPY --from=<image>`, resolved and unpacked.
    pub image_roots: BTreeMap<String, Option<ChainId>>,
    pub scratch_dir: &'a Path,
    pub settings: &'a LayerSettings,
    pub timer: crate::progress::PhaseTimer<'a>,
    pub escape: char,
    /// The files the previous build of this COPY wrote on the same parent, to seed the new
    /// one with (see `seed`).
    pub copy_donor: Option<super::seed::Donor>,
}

/// A file ADD downloaded: the directory holding it, its name, its digest.
#[derive(Debug, Clone)]
pub struct UrlFile {
    pub dir: std::path::PathBuf,
    pub name: String,
    pub digest: crate::oci::Digest,
}

pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Downloads ADD's URL sources into `dir`, checking `--checksum` (`sha256:…`).
pub async fn download_urls(
    sources: &[String],
    checksum: Option<&str>,
    dir: &Path,
) -> Result<Vec<UrlFile>, BuildError> {
    use std::io::Write as _;
    let mut out = Vec::new();
    let client = reqwest::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(BuildError::HttpClient)?;
    for (i, url) in sources.iter().filter(|s| is_url(s)).enumerate() {
        let fail = |source| BuildError::Download {
            url: url.clone(),
            source,
        };
        let mut resp = client.get(url).send().await.map_err(fail)?;
        if !resp.status().is_success() {
            return Err(BuildError::DownloadStatus {
                url: url.clone(),
                status: resp.status().as_u16(),
            });
        }
        // The name comes from the URL as written (not where it redirected), as BuildKit.
        let name = reqwest::Url::parse(url)
            .ok()
            .as_ref()
            .and_then(|u| u.path_segments())
            .and_then(|mut s| s.next_back().map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .unwrap_or_else(|| "__unnamed__".to_string());
        let sub = dir.join(format!("url-{i}"));
        std::fs::create_dir_all(&sub).map_err(BuildError::io("create", &sub))?;
        let path = sub.join(&name);
        let file = std::fs::File::create(&path).map_err(BuildError::io("create", &path))?;
        let mut w = crate::oci::DigestingWriter::new(file);
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            w.write_all(&chunk)
                .map_err(BuildError::io("write", &path))?;
        }
        let (digest, _, _) = w.finish();
        if let Some(expected) = checksum {
            if expected != digest.to_string() {
                return Err(BuildError::ChecksumMismatch {
                    url: url.clone(),
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(BuildError::io("chmod", &path))?;
        out.push(UrlFile {
            dir: sub,
            name,
            digest,
        });
    }
    Ok(out)
}

/// A COPY/ADD ready to run: its cache material and what it needs.
pub struct PreparedCopy {
    /// The step's cache-key fields (see `cache::key`).
    pub material: BTreeMap<String, String>,
    /// Each selected context path and what lands for it, to explain a miss.
    pub files: Vec<(String, String)>,
    sources: Vec<String>,
    heredocs: Vec<(String, String)>,
    dest: String,
    pub from: Option<Option<ChainId>>,
    chown: Option<String>,
    chmod: Option<String>,
    parents: bool,
    excludes: Vec<String>,
    is_add: bool,
}

fn unique_dir(base: &Path, prefix: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    base.join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

/// Reads the COPY/ADD and computes its cache material (sources' content hash included).
pub fn prepare_copy(
    ctx: &FileStepContext<'_>,
    instr: &Instruction,
    workdir: &str,
    hashes: &FileHashCache,
) -> Result<PreparedCopy, BuildError> {
    let (files, from, chown, chmod, parents, excludes, is_add) = match &instr.command {
        Command::Copy(c) => (
            &c.files,
            c.from.clone(),
            c.chown.clone(),
            c.chmod.clone(),
            c.parents,
            c.exclude.clone(),
            false,
        ),
        Command::Add(a) => (
            &a.files,
            None,
            a.chown.clone(),
            a.chmod.clone(),
            false,
            a.exclude.clone(),
            true,
        ),
        _ => return Err(BuildError::NotAFileStep(instr.original.clone())),
    };
    if let Some(git) = files
        .sources
        .iter()
        .find(|s| s.starts_with("git@") || s.starts_with("git://") || s.ends_with(".git"))
    {
        if is_add {
            return Err(BuildError::GitSourceUnsupported(git.clone()));
        }
    }
    // URL sources were downloaded by the caller; the rest come from the context or --from.
    let local_sources: Vec<String> = files
        .sources
        .iter()
        .filter(|s| !(is_add && is_url(s)))
        .cloned()
        .collect();
    let from_root = match &from {
        None => None,
        // An image (or a named context naming one) was resolved into `image_roots`.
        Some(f) if ctx.image_roots.contains_key(f) => ctx.image_roots.get(f).cloned(),
        Some(f) => match crate::graph::stage_ref(ctx.dockerfile, f) {
            Some(i) => Some(
                ctx.stage_roots
                    .get(&i)
                    .cloned()
                    .ok_or_else(|| BuildError::FromNotReady(f.clone()))?,
            ),
            None => Some(
                ctx.image_roots
                    .get(f)
                    .cloned()
                    .ok_or_else(|| BuildError::FromNotReady(f.clone()))?,
            ),
        },
    };
    let heredocs: Vec<(String, String)> = files
        .contents
        .iter()
        .map(|c| (c.path.clone(), c.data.clone()))
        .collect();
    let mut files_seen = Vec::new();
    let content = if local_sources.is_empty() {
        crate::oci::Digest::of(b"")
    } else {
        match &from_root {
            None => hash_sources(
                &CopyRequest {
                    source_root: ctx.context_dir,
                    ignore: ctx.ignore,
                    sources: local_sources.iter().map(Into::into).collect(),
                    dest: files.dest.clone(),
                    workdir: workdir.to_string(),
                    dest_root: ctx.context_dir,
                    chown: None,
                    chmod: None,
                    parents,
                    excludes: excludes.clone(),
                    source_date_epoch: ctx.settings.source_date_epoch,
                    preserve_owner: false,
                    seeded: None,
                    contents: None,
                },
                hashes,
            )
            .map(|d| {
                files_seen = d.entries;
                d.digest
            })?,
            // A stage's content is identified by its snapshot chain.
            Some(chain) => crate::oci::Digest::of(format!("{chain:?}").as_bytes()),
        }
    };
    let material = copy_material(
        ctx,
        &CopyFields {
            is_add,
            files,
            heredocs: &heredocs,
            workdir,
            chown: chown.as_deref(),
            chmod: chmod.as_deref(),
            parents,
            excludes: &excludes,
            content: &content,
        },
    );
    Ok(PreparedCopy {
        material,
        files: files_seen,
        sources: local_sources,
        heredocs,
        dest: files.dest.clone(),
        from: from_root,
        chown,
        chmod,
        parents,
        excludes,
        is_add,
    })
}

/// What a COPY/ADD's key is made of besides its parent.
struct CopyFields<'a> {
    is_add: bool,
    files: &'a crate::dockerfile::instructions::SourcesAndDest,
    heredocs: &'a [(String, String)],
    workdir: &'a str,
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
    parents: bool,
    excludes: &'a [String],
    content: &'a crate::oci::Digest,
}

/// The step's cache-key fields (see `graph::material`): sources, destination, flags, the
/// content digest of exactly the selected files, and the downloaded URLs' digests.
fn copy_material(ctx: &FileStepContext<'_>, f: &CopyFields<'_>) -> BTreeMap<String, String> {
    let json = |v: serde_json::Value| v.to_string();
    [
        ("add", f.is_add.to_string()),
        ("sources", json(serde_json::json!(f.files.sources))),
        ("heredocs", json(serde_json::json!(f.heredocs))),
        ("dest", f.files.dest.clone()),
        ("workdir", f.workdir.to_string()),
        ("chown", f.chown.unwrap_or_default().to_string()),
        ("chmod", f.chmod.unwrap_or_default().to_string()),
        ("parents", f.parents.to_string()),
        ("excludes", json(serde_json::json!(f.excludes))),
        ("content", f.content.to_string()),
        (
            "urls",
            json(serde_json::json!(ctx
                .url_files
                .iter()
                .map(|u| u.digest.to_string())
                .collect::<Vec<_>>())),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `user[:group]` → ids, names looked up in the root; a lone uid also gives the gid.
fn resolve_chown(root: &Path, chown: &str) -> Result<(u32, u32), BuildError> {
    let root = Root::open(root)?;
    let read = |p: &str| {
        root.read(p, 10 << 20)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).to_string())
    };
    let (user, group) = match chown.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (chown, None),
    };
    let passwd = read("/etc/passwd");
    let groups = read("/etc/group");
    let uid = match user.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            resolve_user_from(user, passwd.as_deref(), groups.as_deref())
                .map_err(|e| BuildError::Chown {
                    spec: chown.to_string(),
                    source: Box::new(e),
                })?
                .uid
        }
    };
    let gid = match group {
        None => match user.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                resolve_user_from(user, passwd.as_deref(), groups.as_deref())
                    .map_err(|e| BuildError::Chown {
                        spec: chown.to_string(),
                        source: Box::new(e),
                    })?
                    .gid
            }
        },
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                resolve_user_from(&format!("0:{g}"), passwd.as_deref(), groups.as_deref())
                    .map_err(|e| BuildError::Chown {
                        spec: chown.to_string(),
                        source: Box::new(e),
                    })?
                    .gid
            }
        },
    };
    Ok((uid, gid))
}

/// Runs a prepared COPY/ADD on top of `parent`.
/// What a COPY made: its layer and, for a context copy that can
/// seed the next build of the step, what each regular file in it holds.
pub struct CopyDone {
    pub layer: LayerState,
    pub contents: Option<BTreeMap<String, crate::oci::Digest>>,
}

pub fn execute_copy(
    ctx: &FileStepContext<'_>,
    prepared: &PreparedCopy,
    workdir: &str,
    parent: Option<&ChainId>,
    hashes: &FileHashCache,
) -> Result<CopyDone, BuildError> {
    let key = unique_dir(Path::new(""), "copy")
        .to_string_lossy()
        .to_string();
    let mounts = ctx.snapshots.prepare(&key, parent)?;
    let work = unique_dir(ctx.scratch_dir, "copy");
    let merged = work.join("merged");
    // Seeding only where every write goes through the one tracked copy below.
    // Directory snapshots are written through their copy of the parent, not the upper dir.
    let seedable = !prepared.is_add
        && prepared.heredocs.is_empty()
        && ctx.url_files.is_empty()
        && !ctx.snapshots.copies();
    let upper = ctx.snapshots.upper_dir(&key)?;
    let contents = (seedable && prepared.from.is_none()).then(|| ContentLog::new(hashes));
    let seeding = match &ctx.copy_donor {
        Some(donor) if seedable => match super::seed::seed(donor, &upper) {
            Ok(s) => Some(s),
            Err(_) => {
                // A half-seeded upper would leak into the layer: start from empty again.
                empty_dir(&upper)?;
                None
            }
        },
        _ => None,
    };
    let result = (|| -> Result<(), BuildError> {
        let guard = MountGuard::mount(&mounts, &merged)?;
        let from_guard = mount_from(ctx, prepared, &work)?;
        let source_root = match (&prepared.from, &from_guard) {
            (Some(_), Some(g)) => g.path().to_path_buf(),
            (Some(_), None) => work.join("from"),
            (None, _) => ctx.context_dir.to_path_buf(),
        };
        let target = CopyTarget {
            ctx,
            prepared,
            workdir,
            dest_root: guard.path(),
            chown: match &prepared.chown {
                Some(c) => Some(resolve_chown(guard.path(), c)?),
                None => None,
            },
            chmod: match &prepared.chmod {
                Some(c) => Some(ChmodSpec::parse(c)?),
                None => None,
            },
        };
        let (sources, dir_dest) = target.unpack_archives(&work)?;
        if !sources.is_empty() {
            let request = target.request(&source_root, sources);
            copy_into_root(&CopyRequest {
                // A wildcard narrowed to its matches still copies into a directory.
                dest: if dir_dest && !request.dest.ends_with('/') {
                    format!("{}/", request.dest)
                } else {
                    request.dest.clone()
                },
                ignore: if prepared.from.is_none() {
                    ctx.ignore
                } else {
                    None
                },
                parents: prepared.parents,
                excludes: prepared.excludes.clone(),
                preserve_owner: prepared.from.is_some(),
                seeded: seeding.as_ref().map(|s| &s.seeded),
                contents: contents.as_ref(),
                ..request
            })?;
        }
        for url in &ctx.url_files {
            copy_into_root(&target.request(&url.dir, vec![url.name.clone().into()]))?;
        }
        target.write_heredocs(&work)?;
        if let Some(g) = from_guard {
            g.unmount()?;
        }
        guard.unmount()?;
        if let Some(seeding) = &seeding {
            super::seed::unseed(&upper, seeding).map_err(BuildError::io("unseed", &upper))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = result {
        let _ = ctx.snapshots.remove_active(&key);
        return Err(e);
    }
    Ok(CopyDone {
        layer: commit_active(
            &LayerSink {
                store: ctx.store,
                snapshots: ctx.snapshots,
                settings: ctx.settings,
                timer: ctx.timer,
            },
            &key,
            parent,
        )?,
        contents: contents.map(ContentLog::into_written),
    })
}

/// The root a `--from` names, mounted read-only at `work/from` (an empty directory for a
/// root without layers); `None` for a context copy.
fn mount_from(
    ctx: &FileStepContext<'_>,
    prepared: &PreparedCopy,
    work: &Path,
) -> Result<Option<MountGuard>, BuildError> {
    let at = work.join("from");
    match &prepared.from {
        Some(Some(chain)) => Ok(Some(MountGuard::mount(&ctx.snapshots.view(chain)?, &at)?)),
        Some(None) => {
            std::fs::create_dir_all(&at).map_err(BuildError::io("create", &at))?;
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Where one COPY/ADD writes, and what every copy of it shares.
struct CopyTarget<'a> {
    ctx: &'a FileStepContext<'a>,
    prepared: &'a PreparedCopy,
    workdir: &'a str,
    dest_root: &'a Path,
    chown: Option<(u32, u32)>,
    chmod: Option<ChmodSpec>,
}

impl<'a> CopyTarget<'a> {
    /// A copy of `sources` under `source_root` to the destination, with --chown/--chmod.
    fn request(&self, source_root: &'a Path, sources: Vec<OsString>) -> CopyRequest<'a> {
        CopyRequest {
            source_root,
            ignore: None,
            sources,
            dest: self.prepared.dest.clone(),
            workdir: self.workdir.to_string(),
            dest_root: self.dest_root,
            chown: self.chown,
            chmod: self.chmod.clone(),
            parents: false,
            excludes: Vec::new(),
            source_date_epoch: self.ctx.settings.source_date_epoch,
            preserve_owner: false,
            seeded: None,
            contents: None,
        }
    }

    /// ADD unpacks local tar archives (plain, gzip, bzip2, xz, zstd) into the destination,
    /// each match of a wildcard too, as BuildKit does; returns the sources left to copy as they
    /// are, and whether the destination must then be taken as a directory (a wildcard source
    /// was narrowed to the matches that are no archive).
    fn unpack_archives(&self, work: &Path) -> Result<(Vec<OsString>, bool), BuildError> {
        let prepared = self.prepared;
        if !prepared.is_add {
            return Ok((prepared.sources.iter().map(Into::into).collect(), false));
        }
        let mut plain = Vec::new();
        let mut narrowed = false;
        let mut archives = 0;
        for src in &prepared.sources {
            let matches = crate::context::copy::expand_sources(&CopyRequest {
                ignore: self.ctx.ignore,
                ..self.request(self.ctx.context_dir, vec![src.into()])
            })?;
            let mut left = Vec::new();
            let mut any = false;
            for (named, real) in matches {
                let path = self.ctx.context_dir.join(OsStr::from_bytes(&real));
                let unpacked = work.join(format!("archive-{archives}"));
                archives += 1;
                if !path.is_file() || !unpack_archive(&path, &unpacked)? {
                    left.push(crate::context::copy::literal_source(&named));
                    continue;
                }
                let dest = if prepared.dest.ends_with('/') {
                    prepared.dest.clone()
                } else {
                    format!("{}/", prepared.dest)
                };
                copy_into_root(&CopyRequest {
                    dest,
                    // BuildKit applies --chown to an unpacked archive's entries but not
                    // --chmod: they keep the archive's modes.
                    chmod: None,
                    preserve_owner: self.chown.is_none(),
                    ..self.request(&unpacked, vec!["/".into()])
                })?;
                any = true;
            }
            if any && has_glob(src) {
                // The matches that are no archive, by name.
                narrowed = true;
                plain.extend(left);
            } else if !left.is_empty() {
                plain.push(src.into());
            }
        }
        Ok((plain, narrowed))
    }

    /// `COPY <<EOF`: each heredoc written as a 0644 file, then copied like a context file.
    fn write_heredocs(&self, work: &Path) -> Result<(), BuildError> {
        use std::os::unix::fs::PermissionsExt as _;
        if self.prepared.heredocs.is_empty() {
            return Ok(());
        }
        let docs = work.join("heredocs");
        std::fs::create_dir_all(&docs).map_err(BuildError::io("create", &docs))?;
        let mut names = Vec::new();
        for (name, data) in &self.prepared.heredocs {
            let p = docs.join(name);
            std::fs::write(&p, data).map_err(BuildError::io("write", &p))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                .map_err(BuildError::io("chmod", &p))?;
            names.push(name.into());
        }
        copy_into_root(&self.request(&docs, names))?;
        Ok(())
    }
}

/// WORKDIR: creates the directory (and missing parents) owned by the current user, resolved as
/// `--chown` is.
pub fn workdir_step(
    sink: &LayerSink<'_>,
    parent: Option<&ChainId>,
    dir: &str,
    user: &str,
    scratch_dir: &Path,
) -> Result<LayerState, BuildError> {
    let snapshots = sink.snapshots;
    let key = unique_dir(Path::new(""), "workdir")
        .to_string_lossy()
        .to_string();
    let mounts = snapshots.prepare(&key, parent)?;
    let work = unique_dir(scratch_dir, "workdir");
    let result = (|| -> Result<(), BuildError> {
        let guard = MountGuard::mount(&mounts, &work)?;
        // BuildKit makes it `llb.Mkdir(WithUser(user))`: the user is resolved as for COPY
        // --chown (a lone uid is also the gid, not the passwd entry's group), and an unknown
        // user silently gives 0:0.
        let (uid, gid) = resolve_chown(guard.path(), user).unwrap_or((0, 0));
        let root = Root::open(guard.path())?;
        root.mkdir_all(dir, uid, gid)?;
        drop(root);
        guard.unmount()
    })();
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = result {
        let _ = snapshots.remove_active(&key);
        return Err(e);
    }
    commit_active(sink, &key, parent)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Removes everything inside `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> Result<(), BuildError> {
    for entry in std::fs::read_dir(dir).map_err(BuildError::io("list", dir))? {
        let path = entry.map_err(BuildError::io("list", dir))?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(BuildError::io("remove", &path))?;
    }
    Ok(())
}
