//! `kiln pull REF [--platform os/arch[/variant]] [-q]`.

use std::process::ExitCode;

use anyhow::Context as _;

use super::registry_opts::{runtime, RegistryOpts};
use super::render::{command_reporter, ProgressMode};
use crate::oci::{Platform, Reference};
use crate::registry::pull::PullOptions;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct StoreOpts {
    /// State root (default: $KILN_ROOT, /var/lib/kiln for root, else $XDG_DATA_HOME/kiln)
    #[arg(long = "root", value_name = "DIR", global = true)]
    pub root: Option<std::path::PathBuf>,
}

impl StoreOpts {
    pub fn open(&self) -> anyhow::Result<Store> {
        let root = match &self.root {
            Some(r) => r.clone(),
            None => Store::default_root()?,
        };
        Store::open(&root).with_context(|| format!("opening the store at {}", root.display()))
    }
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Image reference (`python:3.12-slim`, `ghcr.io/org/app:tag`, `name@sha256:…`)
    reference: String,
    /// Platform to pull from a multi-platform image (default: this machine's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Progress output
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Print nothing but the image ID
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryOpts,
    #[command(flatten)]
    store: StoreOpts,
}

pub fn run(args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?.normalized(),
        None => Platform::host(),
    };
    let rep = command_reporter(args.quiet, args.progress);
    let puller = args.registry.puller(args.store.open()?, rep)?;
    let options = PullOptions {
        platform,
        ..PullOptions::default()
    };
    let image = runtime()?.block_on(puller.pull(&reference, &options))?;
    // The image ID (config digest) is the one piece of data, so it goes to stdout.
    println!("{}", image.config.digest);
    Ok(ExitCode::SUCCESS)
}
