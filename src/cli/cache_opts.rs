//! `--cache-from` / `--cache-to`: parsing BuildKit's `type=...,key=value` syntax, importing
//! records before a build and exporting them after it.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::cache::transfer::{
    build_export, export_to_dir, import_from_dir, import_records, records_from,
};
use crate::cache::RecordSource;
use crate::exec::build::{BuildOutcome, Builder};
use crate::oci::manifest::ImageManifest;
use crate::oci::{media, Reference};
use crate::progress::Event;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    Registry(Reference),
    Local(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Only the steps of the final image.
    Min,
    /// Every step of every stage built.
    Max,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    pub location: CacheLocation,
    pub mode: CacheMode,
}

/// `type=registry,ref=REF[,mode=min|max]`, `type=local,dest=DIR` / `src=DIR`, or a bare
/// reference (what `docker build --cache-from REF` means).
pub fn parse_cache_spec(spec: &str, exporting: bool) -> anyhow::Result<CacheSpec> {
    if !spec.contains('=') {
        return Ok(CacheSpec {
            location: CacheLocation::Registry(Reference::parse(spec)?),
            mode: CacheMode::Min,
        });
    }
    let mut kind = None;
    let mut reference = None;
    let mut dir = None;
    let mut mode = CacheMode::Min;
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').with_context(|| {
            format!("invalid cache option {part:?} in {spec:?}: want key=value")
        })?;
        match k.trim() {
            "type" => kind = Some(v.trim().to_string()),
            "ref" => reference = Some(v.trim().to_string()),
            "dest" if exporting => dir = Some(PathBuf::from(v.trim())),
            "src" if !exporting => dir = Some(PathBuf::from(v.trim())),
            "mode" => {
                mode = match v.trim() {
                    "min" => CacheMode::Min,
                    "max" => CacheMode::Max,
                    other => bail!("invalid cache mode {other:?} in {spec:?}: use min or max"),
                }
            }
            // Accepted for BuildKit compatibility; kiln exports layers as they are stored.
            "compression" | "compression-level" | "force-compression" | "oci-mediatypes"
            | "image-manifest" | "ignore-error" => {}
            other => bail!("unknown cache option {other:?} in {spec:?}"),
        }
    }
    let location = match kind.as_deref() {
        Some("registry") | None => {
            CacheLocation::Registry(Reference::parse(reference.as_deref().with_context(
                || format!("{spec:?}: type=registry needs ref=REGISTRY/NAME:TAG"),
            )?)?)
        }
        Some("local") => CacheLocation::Local(dir.with_context(|| {
            format!(
                "{spec:?}: type=local needs {}=DIR",
                if exporting { "dest" } else { "src" }
            )
        })?),
        Some(other) => bail!("unsupported cache type {other:?} in {spec:?}: use registry or local"),
    };
    Ok(CacheSpec { location, mode })
}

/// Imports every `--cache-from`; a cache that cannot be read is a warning, not a failure.
pub async fn import_caches(builder: &Builder, specs: &[CacheSpec]) {
    for spec in specs {
        let result = match &spec.location {
            CacheLocation::Local(dir) => import_from_dir(dir).map_err(anyhow::Error::msg),
            CacheLocation::Registry(reference) => import_registry(builder, reference).await,
        };
        let what = match &spec.location {
            CacheLocation::Local(d) => d.display().to_string(),
            CacheLocation::Registry(r) => r.to_string(),
        };
        match result.and_then(|records| Ok(import_records(&builder.cache, &records)?)) {
            Ok(n) => builder.reporter.report(Event::Status {
                message: format!("importing cache from {what}: {n} records"),
            }),
            Err(e) => builder.reporter.report(Event::Warning {
                message: format!("cannot import cache from {what}: {e:#}; building without it"),
            }),
        }
    }
}

async fn import_registry(
    builder: &Builder,
    reference: &Reference,
) -> anyhow::Result<Vec<(crate::oci::Digest, crate::cache::CacheRecord)>> {
    let manifest = builder.puller.fetch_manifest(reference).await?;
    let parsed: ImageManifest = serde_json::from_slice(&manifest.bytes)
        .with_context(|| format!("{reference} is not an image manifest"))?;
    if parsed.config.media_type != media::KILN_CACHE_CONFIG {
        bail!(
            "{reference} is not a kiln cache (its config is {:?})",
            parsed.config.media_type
        );
    }
    builder
        .puller
        .fetch_blob(
            reference,
            &crate::oci::BlobRef::from(&parsed.config),
            "cache config",
        )
        .await?;
    let config = builder.store.read_blob(&parsed.config.digest)?;
    // A later push to this registry mounts these layers from the cache repository instead
    // of downloading and uploading them.
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    for layer in &parsed.layers {
        builder
            .store
            .record_blob_source(&layer.digest, &repository)?;
    }
    let source = RecordSource::Registry(reference.to_string());
    records_from(&manifest.bytes, &config, &source).map_err(anyhow::Error::msg)
}

/// Exports the build's records to every `--cache-to`.
pub async fn export_caches(
    builder: &Builder,
    specs: &[CacheSpec],
    outcome: &BuildOutcome,
) -> anyhow::Result<()> {
    for spec in specs {
        let keys = match spec.mode {
            CacheMode::Min => &outcome.cache_keys_min,
            CacheMode::Max => &outcome.cache_keys_max,
        };
        let export = build_export(&builder.cache, keys);
        match &spec.location {
            CacheLocation::Local(dir) => {
                export_to_dir(&builder.store, &export, dir)
                    .with_context(|| format!("exporting the cache to {}", dir.display()))?;
                builder.reporter.report(Event::Status {
                    message: format!(
                        "exported cache to {} ({} layers)",
                        dir.display(),
                        export.layers.len()
                    ),
                });
            }
            CacheLocation::Registry(reference) => {
                super::push_cache::push_cache(builder, &export, reference).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_cache_specs() {
        let s = parse_cache_spec(
            "type=registry,ref=127.0.0.1:5000/app/cache:main,mode=max",
            true,
        )
        .unwrap();
        assert_eq!(s.mode, CacheMode::Max);
        assert!(
            matches!(s.location, CacheLocation::Registry(r) if r.to_string() == "127.0.0.1:5000/app/cache:main")
        );
        let s = parse_cache_spec("type=local,dest=/tmp/c", true).unwrap();
        assert_eq!(s.location, CacheLocation::Local("/tmp/c".into()));
        assert_eq!(s.mode, CacheMode::Min);
        assert!(parse_cache_spec("type=local,src=/tmp/c", true).is_err());
        assert!(parse_cache_spec("type=local,src=/tmp/c", false).is_ok());
        assert!(parse_cache_spec("ghcr.io/acme/app:cache", false).is_ok());
        assert!(parse_cache_spec("type=gha", false).is_err());
        assert!(parse_cache_spec("type=registry,ref=x,mode=all", true).is_err());
    }
}
