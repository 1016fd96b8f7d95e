//! `kiln images`, `kiln inspect`, `kiln rmi`, `kiln prune`: the local store seen as images.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::pull::StoreOpts;
use super::render::human_bytes;
use crate::oci::{Platform, Reference};
use crate::store::{Store, StoredImage};

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Print JSON instead of a table
    #[arg(long, value_parser = ["table", "json"], default_value = "table")]
    format: String,
    #[command(flatten)]
    store: StoreOpts,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image reference as pulled or tagged
    reference: String,
    /// The platform to show of a multi-platform image (default: this machine's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    #[command(flatten)]
    store: StoreOpts,
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Image references to untag
    #[arg(required = true)]
    references: Vec<String>,
    #[command(flatten)]
    store: StoreOpts,
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// Image to tag: a reference, an image ID (prefix), or a manifest digest in the store
    source: String,
    /// The new name
    target: String,
    #[command(flatten)]
    store: StoreOpts,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Remove all build cache (records and snapshots), not only what is stale
    #[arg(short, long)]
    all: bool,
    /// Keep at most this much (e.g. 10GB, 512MiB), dropping least recently used cache first
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
    /// `until=DURATION` (e.g. 48h, 7d): remove cache not used for that long (repeatable)
    #[arg(long = "filter", value_name = "until=DURATION")]
    filters: Vec<String>,
    /// Keep unreferenced blobs younger than this many seconds (a concurrent pull may not have
    /// tagged them yet)
    #[arg(long)]
    grace_seconds: Option<u64>,
    #[command(flatten)]
    store: StoreOpts,
}

/// The store tag for what the user typed: `python:3.12` → `docker.io/library/python:3.12`.
fn tag_for(input: &str) -> anyhow::Result<String> {
    Ok(Reference::parse(input)?.to_string())
}

/// The image `input` names: a tag (`busybox`, `ghcr.io/o/app:1`), else an image ID or a unique
/// prefix of one (`sha256:3f2c…`, `3f2c…`). The flag says whether it was found by its tag.
pub fn find_image(store: &Store, input: &str) -> anyhow::Result<(StoredImage, bool)> {
    if let Ok(reference) = Reference::parse(input) {
        if let Some(image) = store.image(&reference.to_string(), &Platform::host())? {
            return Ok((image, true));
        }
    }
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        // An image ID, or the ID a multi-platform build printed (its index digest).
        let mut matches: Vec<Listed> = list_images(store)?
            .into_iter()
            .filter(|l| l.id.hex().starts_with(hex) || l.image.id().hex().starts_with(hex))
            .collect();
        matches.dedup_by(|a, b| a.id == b.id);
        match matches.len() {
            1 => return Ok((matches.remove(0).image, false)),
            0 => {}
            _ => anyhow::bail!("image ID prefix {input} is ambiguous: give more digits"),
        }
    }
    anyhow::bail!("no such image: {input} (see `kiln images`)")
}

/// One row of `kiln images`: a tag and the image it names; for an index (a multi-platform
/// image), the host's platform (else the first the store holds) with every platform listed.
struct Listed {
    image: StoredImage,
    /// The image ID; for an index, the index digest (as buildx prints it).
    id: crate::oci::Digest,
    size: u64,
    platforms: Vec<String>,
}

fn list_images(store: &Store) -> anyhow::Result<Vec<Listed>> {
    let host = Platform::host();
    let mut out = Vec::new();
    for (tag, descriptor) in store.list_tags()? {
        if !crate::oci::media::is_index(&descriptor.media_type) {
            if let Some(image) = store.image(&tag, &host)? {
                out.push(Listed {
                    id: image.id().clone(),
                    size: image.size(),
                    platforms: vec![image.config.platform().to_string()],
                    image,
                });
            }
            continue;
        }
        let bytes = store.read_blob(&descriptor.digest)?;
        let index: crate::oci::manifest::ImageIndex = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the index tagged {tag}"))?;
        let mut images = Vec::new();
        for d in index.manifests.iter().filter(|d| store.has_blob(&d.digest)) {
            let image = store.image_at(&tag, d.clone(), &host)?;
            let platform = d
                .platform
                .clone()
                .unwrap_or_else(|| image.config.platform());
            images.push((platform, image));
        }
        let size = images.iter().map(|(_, i)| i.size()).sum();
        let platforms = images.iter().map(|(p, _)| p.to_string()).collect();
        let chosen = host.best_match(images.iter().map(|(p, _)| p)).unwrap_or(0);
        if chosen < images.len() {
            let mut image = images.swap_remove(chosen).1;
            // What the tag points at: the index.
            image.target = descriptor.clone();
            out.push(Listed {
                image,
                id: descriptor.digest.clone(),
                size,
                platforms,
            });
        }
    }
    Ok(out)
}

/// "5 minutes ago" from an RFC 3339 time; the raw text when it cannot be read.
fn ago(created: Option<&str>) -> String {
    let Some(created) = created else {
        return "N/A".into();
    };
    let Some(then) = parse_rfc3339_seconds(created) else {
        return created.to_string();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let secs = (now - then).max(0);
    let (n, unit) = match secs {
        s if s < 60 => return "Less than a minute ago".into(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 86_400 * 30 => (s / 86_400, "day"),
        s if s < 86_400 * 365 => (s / (86_400 * 30), "month"),
        s => (s / (86_400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn parse_rfc3339_seconds(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = s.get(19..)?;
    let tz = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match tz {
        "Z" | "z" => 0,
        _ => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let hh = tz.get(1..3)?.parse::<i64>().ok()?;
            let mm = tz.get(4..6)?.parse::<i64>().ok()?;
            sign * (hh * 3600 + mm * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

pub fn images(args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let images = list_images(&store)?;
    let mut out = std::io::stdout().lock();
    if args.format == "json" {
        let list: Vec<_> = images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "reference": i.image.tag,
                    "id": i.id.to_string(),
                    "digest": i.image.target.digest.to_string(),
                    "created": i.image.config.created,
                    "size": i.size,
                    "platforms": i.platforms,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = images
        .iter()
        .map(|i| {
            [
                i.image.tag.clone(),
                i.id.short().to_string(),
                ago(i.image.config.created.as_deref()),
                human_bytes(i.size),
                i.platforms.join(","),
            ]
        })
        .collect();
    let header = ["REFERENCE", "IMAGE ID", "CREATED", "SIZE", "PLATFORM"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}   {:w1$}   {:w2$}   {:w3$}   {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let tag = tag_for(&args.reference)?;
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)
            .with_context(|| format!("invalid --platform {p:?}"))?
            .normalized(),
        None => Platform::host(),
    };
    let Some(image) = store.image(&tag, &platform)? else {
        anyhow::bail!(
            "no such image: {tag} (see `kiln images`, or `kiln pull {}`)",
            args.reference
        );
    };
    let doc = serde_json::json!({
        "reference": image.tag,
        "id": image.id().to_string(),
        "digest": image.manifest_digest.to_string(),
        "descriptor": image.target,
        "manifest": image.manifest,
        "config": image.config,
    });
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&doc)?
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn rmi(args: RmiArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let mut code = ExitCode::SUCCESS;
    for input in &args.references {
        let tag = tag_for(input)?;
        match store
            .untag(&tag)
            .with_context(|| format!("removing {tag}"))?
        {
            Some(_) => eprintln!("Untagged: {tag}"),
            None => {
                eprintln!("error: no such image: {tag}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

pub fn tag(args: TagArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let target = tag_for(&args.target)?;
    let descriptor = match manifest_in_store(&store, &args.source)? {
        Some(d) => d,
        None => find_image(&store, &args.source)?.0.target,
    };
    store
        .tag(&target, &descriptor)
        .with_context(|| format!("tagging {target}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `sha256:<manifest digest>` of a manifest or index in the store (also an untagged one, as
/// `kiln load` reports for archives that name nothing).
fn manifest_in_store(
    store: &Store,
    input: &str,
) -> anyhow::Result<Option<crate::store::Descriptor>> {
    let Ok(digest) = input.parse::<crate::oci::Digest>() else {
        return Ok(None);
    };
    if !store.has_blob(&digest) {
        return Ok(None);
    }
    let bytes = store.read_blob(&digest)?;
    match crate::oci::Manifest::parse(&bytes, None) {
        Ok((kind, _)) => Ok(Some(crate::store::Descriptor::new(
            kind.media_type(),
            digest,
            bytes.len() as u64,
        ))),
        // A config digest (image ID): found through the tags instead.
        Err(_) => Ok(None),
    }
}

pub fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    use crate::exec::prune::{parse_duration, parse_size, PruneOptions};
    let store = args.store.open()?;
    let mut options = PruneOptions {
        all: args.all,
        grace: args.grace_seconds.map(Duration::from_secs),
        ..PruneOptions::default()
    };
    if let Some(size) = &args.keep_storage {
        options.keep_storage = Some(parse_size(size).with_context(|| {
            format!("invalid --keep-storage {size:?}: use a size like 10GB or 512MiB")
        })?);
    }
    for filter in &args.filters {
        match filter.split_once('=') {
            Some(("until", d)) => {
                options.until = Some(parse_duration(d).with_context(|| {
                    format!("invalid duration in --filter {filter:?}: use e.g. 48h, 30m, 7d")
                })?)
            }
            _ => anyhow::bail!("unsupported --filter {filter:?}: kiln knows until=DURATION"),
        }
    }
    let report = prune_store(&store, &options, true)?;
    eprintln!(
        "Removed {} cache records, {} snapshots, {} blobs",
        report.records_removed, report.snapshots_removed, report.blobs_removed
    );
    eprintln!(
        "Total reclaimed space: {} ({} left)",
        human_bytes(report.bytes_freed),
        human_bytes(report.bytes_after)
    );
    Ok(ExitCode::SUCCESS)
}

/// Prunes the state root of `store` under the builds lock; `None` when `wait` is false and a
/// build is running.
pub fn prune_store(
    store: &Store,
    options: &crate::exec::prune::PruneOptions,
    wait: bool,
) -> anyhow::Result<crate::exec::prune::PruneReport> {
    use crate::exec::prune::BuildsLock;
    let root = store.root().to_path_buf();
    let Some(_lock) = BuildsLock::exclusive(&root, false)? else {
        if !wait {
            return Ok(Default::default());
        }
        eprintln!("waiting for running builds to finish…");
        let _lock = BuildsLock::exclusive(&root, true)?;
        return prune_locked(store, options, &root).map_err(Into::into);
    };
    prune_locked(store, options, &root).map_err(Into::into)
}

fn prune_locked(
    store: &Store,
    options: &crate::exec::prune::PruneOptions,
    root: &std::path::Path,
) -> Result<crate::exec::prune::PruneReport, crate::exec::error::BuildError> {
    let cache = crate::cache::Cache::open(root, store.clone())?;
    let snapshots = crate::snapshot::Snapshotter::new(root.join("snapshots"))?;
    crate::exec::prune::prune(root, store, &cache, &snapshots, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_seconds("2000-03-01T00:00:00.123456789Z"),
            Some(951_868_800)
        );
        assert_eq!(
            parse_rfc3339_seconds("2000-03-01T01:00:00+01:00"),
            Some(951_868_800)
        );
        assert_eq!(parse_rfc3339_seconds("garbage"), None);
    }
}
