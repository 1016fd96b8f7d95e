//! `--cache-to type=registry`: the cache manifest and its layers pushed to a registry.

use anyhow::Context as _;

use crate::cache::transfer::CacheExport;
use crate::exec::build::Builder;
use crate::oci::{media, Reference};
use crate::registry::push::{ManifestPush, PushOptions, Pusher};

/// Pushes `export` as `reference`. Layers the registry has are skipped, layers another of its
/// repositories holds (the base image's, an imported cache's) are mounted, and only the rest
/// is uploaded; a layer that is neither in the store nor in the registry is an error.
pub async fn push_cache(
    builder: &Builder,
    export: &CacheExport,
    reference: &Reference,
) -> anyhow::Result<()> {
    // The pusher uploads from the store: the config is the one blob only the export has.
    builder
        .store
        .write_blob(&export.config)
        .context("writing the cache config into the store")?;
    // Its config and layers are the blobs, as for any image manifest.
    // Layers a build left uncompressed in the store leave it as gzip, as an image push does;
    // those copies are untagged until the push ends, so prune waits for it as for a build.
    let _lock = crate::exec::prune::BuildsLock::shared(builder.store.root())?;
    let bytes = crate::exec::compress::gzip_layers_for_push(&builder.store, &export.manifest)?;
    let manifest = ManifestPush::from_image_manifest(bytes, media::OCI_MANIFEST)
        .map_err(anyhow::Error::msg)?;
    let pusher = Pusher {
        config: builder.puller.config.clone(),
        credentials: builder.puller.credentials.clone(),
        store: builder.store.clone(),
        reporter: builder.reporter.clone(),
    };
    let report = pusher
        .push(
            &manifest,
            std::slice::from_ref(reference),
            &PushOptions::default(),
        )
        .await
        .with_context(|| format!("exporting the cache to {reference}"))?;
    builder.reporter.report(crate::progress::Event::Status {
        message: format!(
            "exported cache to {reference} ({} layers, {} uploaded, {})",
            export.layers.len(),
            crate::cli::render::human_bytes(report.uploaded_bytes()),
            report.digest
        ),
    });
    Ok(())
}
