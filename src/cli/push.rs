//! `kiln push REF [DEST]`, and the push after `kiln build --push`.

use std::process::ExitCode;

use super::pull::StoreOpts;
use super::registry_opts::{runtime, RegistryOpts};
use super::render::{command_reporter, ProgressMode};
use crate::cache::RecordSource;
use crate::oci::Digest;
use crate::oci::Reference;
use crate::progress::Event;
use crate::registry::pull::Puller;
use crate::registry::push::{ManifestPush, PushOptions, PushReport, Pusher};

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Image in the store (`app:1`, `127.0.0.1:5000/team/app:1`)
    reference: String,
    /// Where to push it, if not to REF itself (`registry/repository[:tag]`)
    destination: Option<String>,
    /// Progress output
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Print nothing but the digest
    #[arg(short, long)]
    quiet: bool,
    /// How layers the store holds uncompressed are pushed: gzip, or as they are. Without it,
    /// as the build that tagged the image chose: as they are after `kiln build --compression
    /// uncompressed`, else gzip. Compressed layers are always pushed as they are
    #[arg(long, value_enum)]
    compression: Option<PushCompression>,
    /// Registry options (`--registry-mirror` does not apply: pushes go to the registry itself)
    #[command(flatten)]
    registry: RegistryOpts,
    #[command(flatten)]
    store: StoreOpts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushCompression {
    Gzip,
    Uncompressed,
}

/// Whether `kiln push` gzips the uncompressed layers of the tag `descriptor`: as asked, else
/// as the build recorded on the tag (`export::keeps_uncompressed`).
fn gzip_on_push(asked: Option<PushCompression>, descriptor: &crate::oci::Descriptor) -> bool {
    match asked {
        Some(c) => c == PushCompression::Gzip,
        None => !crate::export::keeps_uncompressed(descriptor),
    }
}

pub fn run(args: PushArgs) -> anyhow::Result<ExitCode> {
    let source = Reference::parse(&args.reference)?;
    let destination = match &args.destination {
        Some(d) => Reference::parse(d)?,
        None => source.clone(),
    };
    let rep = command_reporter(args.quiet, args.progress);
    let pusher = Pusher {
        config: args.registry.load()?,
        credentials: args.registry.credentials(),
        store: args.store.open()?,
        reporter: rep,
    };
    let tag = source.to_string();
    let descriptor = pusher
        .store
        .resolve(&tag)?
        .ok_or_else(|| anyhow::anyhow!("no image {tag} in the store (see `kiln images`)"))?;
    // The gzip copies are untagged blobs until the push ends: prune waits for it as for a build.
    let _lock = crate::exec::prune::BuildsLock::shared(pusher.store.root())?;
    // A build keeps its layers uncompressed in the store; they leave it compressed, unless
    // uncompressed layers were asked for.
    let digest = if gzip_on_push(args.compression, &descriptor) {
        crate::exec::compress::gzip_for_push(&pusher.store, &descriptor.digest)?
    } else {
        descriptor.digest.clone()
    };
    let image = ManifestPush::from_store(&pusher.store, &digest, &descriptor.media_type)
        .map_err(|reason| anyhow::anyhow!("cannot push {tag}: {reason}"))?;
    let report = runtime()?.block_on(pusher.push(
        &image,
        std::slice::from_ref(&destination),
        &PushOptions::default(),
    ))?;
    // The manifest digest is the one piece of data, so it goes to stdout.
    println!("{}", report.digest);
    Ok(ExitCode::SUCCESS)
}

/// Pushes the image a build made (its manifest in the store) to every name
/// (`kiln build --push`). Layers in `remote` are not in the store: they live in an imported
/// registry cache of the same registry, and are mounted from there. With `gzip_uncompressed`,
/// uncompressed layers are pushed as gzip (the build left compression to the push).
pub async fn push_built(
    puller: &Puller,
    manifest_digest: &Digest,
    names: &[String],
    remote: &[(Digest, RecordSource)],
    gzip_uncompressed: bool,
) -> anyhow::Result<PushReport> {
    if names.is_empty() {
        anyhow::bail!("--push needs a name to push to: add -t REGISTRY/REPOSITORY[:TAG]");
    }
    let destinations = names
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let pusher = Pusher {
        config: puller.config.clone(),
        credentials: puller.credentials.clone(),
        store: puller.store.clone(),
        reporter: puller.reporter.clone(),
    };
    // The gzip copies are untagged blobs until the push ends: prune waits for it as for a build.
    let _lock = crate::exec::prune::BuildsLock::shared(pusher.store.root())?;
    let digest = if gzip_uncompressed {
        crate::exec::compress::gzip_for_push(&pusher.store, manifest_digest)?
    } else {
        manifest_digest.clone()
    };
    let mut manifest =
        ManifestPush::from_store(&pusher.store, &digest, crate::oci::media::OCI_MANIFEST)
            .map_err(anyhow::Error::msg)?;
    for (digest, source) in remote {
        if let RecordSource::Registry(r) = source {
            if let Ok(r) = Reference::parse(r) {
                manifest.add_mount_source(digest, r.repository());
            }
        }
    }
    let report = pusher
        .push(&manifest, &destinations, &PushOptions::default())
        .await?;
    for r in &report.repositories {
        for reference in &r.references {
            let sep = if reference.starts_with("sha256:") {
                "@"
            } else {
                ":"
            };
            pusher.reporter.report(Event::Status {
                message: format!("pushed {}{sep}{reference} ({})", r.name, report.digest),
            });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Descriptor, Digest};

    #[test]
    fn a_push_gzips_unless_the_tag_or_the_flag_says_uncompressed() {
        let plain = Descriptor::new(crate::oci::media::OCI_MANIFEST, Digest::of(b"m"), 1);
        let mut kept = plain.clone();
        kept.set_annotation(crate::export::ANNOTATION_PUSH_COMPRESSION, "uncompressed");
        assert!(gzip_on_push(None, &plain));
        assert!(!gzip_on_push(None, &kept));
        assert!(gzip_on_push(Some(PushCompression::Gzip), &kept));
        assert!(!gzip_on_push(Some(PushCompression::Uncompressed), &plain));
    }
}
