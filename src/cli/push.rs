//! `kiln push REF [DEST]`, and the push after `kiln build --push`.

use std::process::ExitCode;
use std::sync::Arc;

use super::pull::StoreOpts;
use super::registry_opts::{runtime, RegistryOpts};
use super::render::{reporter, ProgressMode};
use crate::oci::Reference;
use crate::progress::{Event, Reporter};
use crate::registry::pull::Puller;
use crate::registry::push::{PushOptions, PushReport, Pusher};

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
    /// Registry options (`--registry-mirror` does not apply: pushes go to the registry itself)
    #[command(flatten)]
    registry: RegistryOpts,
    #[command(flatten)]
    store: StoreOpts,
}

pub fn run(args: PushArgs) -> anyhow::Result<ExitCode> {
    let source = Reference::parse(&args.reference)?;
    let destination = match &args.destination {
        Some(d) => Reference::parse(d)?,
        None => source.clone(),
    };
    let rep: Arc<dyn Reporter> = if args.quiet {
        Arc::new(crate::progress::NullReporter)
    } else {
        Arc::from(reporter(args.progress))
    };
    let pusher = Pusher {
        config: args.registry.load()?,
        credentials: args.registry.credentials(),
        store: args.store.open()?,
        reporter: rep,
    };
    let report = runtime()?.block_on(pusher.push_image(
        &source.to_string(),
        std::slice::from_ref(&destination),
        &PushOptions::default(),
    ))?;
    // The manifest digest is the one piece of data, so it goes to stdout.
    println!("{}", report.digest);
    Ok(ExitCode::SUCCESS)
}

/// Pushes the image a build tagged to every one of its tags (`kiln build --push`).
pub async fn push_tags(puller: &Puller, tags: &[String]) -> anyhow::Result<PushReport> {
    let Some(first) = tags.first() else {
        anyhow::bail!("--push needs a name to push to: add -t REGISTRY/REPOSITORY[:TAG]");
    };
    let destinations = tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let pusher = Pusher {
        config: puller.config.clone(),
        credentials: puller.credentials.clone(),
        store: puller.store.clone(),
        reporter: puller.reporter.clone(),
    };
    let report = pusher
        .push_image(first, &destinations, &PushOptions::default())
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
