//! `kiln manifest create -t REF [--push] SRC…`: merges single-platform images (or indexes),
//! built on separate runners, into one multi-platform index, like
//! `docker buildx imagetools create`. Each SRC is an image of the store or, when the store
//! has no such tag, a registry reference, pulled first (every platform of a remote index).

use std::process::ExitCode;

use anyhow::Context as _;

use super::pull::StoreOpts;
use super::registry_opts::{runtime, RegistryOpts};
use super::render::{command_reporter, ProgressMode};
use crate::export::{export_index, ExportOptions};
use crate::oci::manifest::{ImageIndex, Manifest};
use crate::oci::{media, Descriptor, Platform, Reference};
use crate::registry::pull::{PullOptions, Puller};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct ManifestArgs {
    #[command(subcommand)]
    command: ManifestCommand,
    #[command(flatten)]
    store: StoreOpts,
}

#[derive(Debug, clap::Subcommand)]
enum ManifestCommand {
    /// Merge images (each a manifest or an index) into one multi-platform index
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Name of the index (repeatable)
    #[arg(short = 't', long = "tag", required = true)]
    tags: Vec<String>,
    /// Push the index (and every image it lists) to the registry of each tag
    #[arg(long)]
    push: bool,
    /// Progress output
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Print nothing but the index digest
    #[arg(short, long)]
    quiet: bool,
    /// Images to merge: tags of the store, or registry references
    #[arg(required = true)]
    sources: Vec<String>,
    #[command(flatten)]
    registry: RegistryOpts,
}

pub fn run(args: ManifestArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ManifestCommand::Create(create_args) => create(create_args, &args.store),
    }
}

fn create(args: CreateArgs, store: &StoreOpts) -> anyhow::Result<ExitCode> {
    let rep = command_reporter(args.quiet, args.progress);
    let puller = args.registry.puller(store.open()?, rep)?;
    let rt = runtime()?;
    let mut manifests: Vec<Descriptor> = Vec::new();
    for source in &args.sources {
        let found = match local_manifests(&puller.store, source)? {
            Some(found) => found,
            None => rt
                .block_on(remote_manifests(&puller, source))
                .with_context(|| format!("reading {source}"))?,
        };
        for d in found {
            add_manifest(&mut manifests, d, source)?;
        }
    }
    let tags = args
        .tags
        .iter()
        .map(|t| Ok(Reference::parse(t)?.to_string()))
        .collect::<anyhow::Result<Vec<String>>>()?;
    // A Docker manifest list when every image is a Docker manifest, else an OCI index.
    let oci = !manifests
        .iter()
        .all(|d| d.media_type == media::DOCKER_MANIFEST);
    let index = export_index(
        &puller.store,
        &manifests,
        &ExportOptions {
            oci_media_types: oci,
            tags: tags.clone(),
            keep_uncompressed: false,
        },
    )?;
    // Pushed, the index names gzip copies of layers the store keeps uncompressed: print the
    // digest the registry holds.
    let digest = if args.push {
        rt.block_on(super::push::push_built(
            &puller,
            &index.digest,
            &tags,
            &[],
            true,
        ))?
        .digest
    } else {
        index.digest
    };
    println!("{digest}");
    Ok(ExitCode::SUCCESS)
}

/// Adds `d` unless the index has it; two different images for one platform are an error.
fn add_manifest(
    manifests: &mut Vec<Descriptor>,
    d: Descriptor,
    source: &str,
) -> anyhow::Result<()> {
    if manifests.iter().any(|m| m.digest == d.digest) {
        return Ok(());
    }
    if let Some(other) = manifests
        .iter()
        .find(|m| m.platform.is_some() && m.platform == d.platform)
    {
        anyhow::bail!(
            "{source} is another image for {}, which {} already is: merge one image per platform",
            d.platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            other.digest
        );
    }
    manifests.push(d);
    Ok(())
}

/// The manifests (with their platforms) a store tag names: one, or all an index lists;
/// `None` when the store has no such tag.
fn local_manifests(store: &Store, source: &str) -> anyhow::Result<Option<Vec<Descriptor>>> {
    let Ok(reference) = Reference::parse(source) else {
        return Ok(None);
    };
    let tag = reference.to_string();
    let Some(target) = store.resolve(&tag)? else {
        return Ok(None);
    };
    Ok(Some(manifests_of(store, &tag, target)?))
}

/// `target` as index entries: an image manifest with its platform (from its config), or the
/// entries of an index, each of which must be in the store.
fn manifests_of(store: &Store, tag: &str, target: Descriptor) -> anyhow::Result<Vec<Descriptor>> {
    let bytes = store.read_blob(&target.digest)?;
    let (_, parsed) = Manifest::parse(&bytes, None).map_err(|e| anyhow::anyhow!("{tag}: {e}"))?;
    match parsed {
        Manifest::Image(_) => {
            let image = store.image_at(tag, target.clone(), &Platform::host())?;
            let mut d = Descriptor::new(
                image.target.media_type.clone(),
                target.digest,
                bytes.len() as u64,
            );
            d.platform = Some(image.config.platform());
            Ok(vec![d])
        }
        Manifest::Index(index) => index_entries(store, tag, &index),
    }
}

fn index_entries(store: &Store, tag: &str, index: &ImageIndex) -> anyhow::Result<Vec<Descriptor>> {
    let mut out = Vec::new();
    for d in &index.manifests {
        if d.platform.is_none() {
            continue; // attestations and other entries that are no image for a platform
        }
        if !store.has_blob(&d.digest) {
            anyhow::bail!(
                "{tag} lists {} ({}), which is not in the store",
                d.digest,
                d.platform
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default()
            );
        }
        let mut entry = Descriptor::new(d.media_type.clone(), d.digest.clone(), d.size);
        entry.platform = d.platform.clone();
        out.push(entry);
    }
    Ok(out)
}

/// Pulls `source` from its registry (each platform of an index) and returns the manifests
/// the store now holds for it.
async fn remote_manifests(puller: &Puller, source: &str) -> anyhow::Result<Vec<Descriptor>> {
    let reference = Reference::parse(source)?;
    let fetched = puller.fetch_manifest(&reference).await?;
    let (kind, parsed) = Manifest::parse(&fetched.bytes, fetched.media_type.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let platforms: Vec<Platform> = match parsed {
        Manifest::Index(index) => index
            .manifests
            .iter()
            .filter_map(|d| d.platform.clone())
            .filter(|p| p.os != "unknown")
            .collect(),
        Manifest::Image(_) => vec![Platform::host()],
    };
    let mut out = Vec::new();
    for platform in platforms {
        let options = PullOptions {
            platform,
            ..PullOptions::default()
        };
        let pulled = puller.pull(&reference, &options).await?;
        let mut found = manifests_of(&puller.store, &pulled.tag, pulled.manifest)?;
        // A single manifest's platform comes from its config; an index's entry says it.
        if kind.is_index() {
            for d in &mut found {
                d.platform = Some(options.platform.clone());
            }
        }
        out.extend(found);
    }
    Ok(out)
}
