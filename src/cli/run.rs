//! `kiln run`: one command in a container of a stored image, as `docker run --rm` does.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::build::open_builder;
use super::pull::StoreOpts;
use super::registry_opts::{runtime, RegistryOpts};
use super::render::{reporter, ProgressMode};
use crate::exec::base::resolve_image;
use crate::oci::Platform;
use crate::progress::Reporter;
use crate::sandbox::{resolve_user_from, NetworkMode, RunSpec, Stream};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the container's writable layer afterwards (always done; accepted for Docker compatibility)
    #[arg(long)]
    rm: bool,
    /// Environment variable K=V (repeatable)
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Network: host (default) or none
    #[arg(long, value_parser = ["host", "none", "default"], default_value = "host")]
    network: String,
    /// Override the image's entrypoint
    #[arg(long)]
    entrypoint: Option<String>,
    /// Run as this user
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// OCI runtime (default: crun, else runc)
    #[arg(long)]
    runtime: Option<std::path::PathBuf>,
    /// The platform to run (os/arch[/variant]) from a multi-platform image; another
    /// architecture runs through qemu-user-static (binfmt_misc)
    #[arg(long)]
    platform: Option<String>,
    /// Image reference from the store
    image: String,
    /// Command and arguments (replace the image's CMD)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    #[command(flatten)]
    registry: RegistryOpts,
    #[command(flatten)]
    store: StoreOpts,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let rep: Arc<dyn Reporter> = Arc::from(reporter(ProgressMode::Plain));
    let builder = open_builder(store, &args.registry, rep, args.runtime.as_deref())?;
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)
            .with_context(|| format!("invalid --platform {p:?}"))?
            .normalized(),
        None => Platform::host(),
    };
    crate::sandbox::emulation::check_can_run(&platform)?;
    let rt = runtime()?;
    let (_, image) = rt
        .block_on(resolve_image(
            &builder.puller,
            &builder.snapshots,
            &args.image,
            &platform,
            false,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = image.config.config.clone().unwrap_or_default();
    let entrypoint = match &args.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => cfg.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = if !args.command.is_empty() {
        args.command.clone()
    } else if args.entrypoint.is_some() {
        Vec::new()
    } else {
        cfg.cmd.clone().unwrap_or_default()
    };
    let mut argv = entrypoint;
    argv.extend(cmd);
    if argv.is_empty() {
        anyhow::bail!("no command specified: the image has no ENTRYPOINT or CMD");
    }
    let mut env = cfg.env.clone().unwrap_or_default();
    for e in &args.env {
        let (k, _) = e.split_once('=').unwrap_or((e.as_str(), ""));
        let value = if e.contains('=') {
            e.clone()
        } else {
            format!("{k}={}", std::env::var(k).unwrap_or_default())
        };
        env.retain(|x| x.split_once('=').map(|(n, _)| n) != Some(k));
        env.push(value);
    }
    let lowers = match image.top_chain() {
        Some(c) => builder.snapshots.lower_dirs(c)?,
        None => Vec::new(),
    };
    let user = args.user.clone().or(cfg.user.clone()).unwrap_or_default();
    let user_spec = resolve_user_from(
        &user,
        crate::exec::run_step::read_from_lowers(&lowers, "/etc/passwd").as_deref(),
        crate::exec::run_step::read_from_lowers(&lowers, "/etc/group").as_deref(),
    )?;
    let key = format!("run-{}", std::process::id());
    let rootfs = builder.snapshots.prepare(&key, image.top_chain())?;
    let spec = RunSpec {
        rootfs,
        args: argv,
        env,
        cwd: args
            .workdir
            .clone()
            .or(cfg.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: user_spec,
        hostname: "kiln".into(),
        network: if args.network == "none" {
            NetworkMode::None
        } else {
            NetworkMode::Host
        },
        ..RunSpec::default()
    };
    let mut out = |stream: Stream, bytes: &[u8]| {
        let _ = match stream {
            Stream::Stdout => std::io::stdout()
                .write_all(bytes)
                .and_then(|_| std::io::stdout().flush()),
            Stream::Stderr => std::io::stderr().write_all(bytes),
        };
    };
    let status = builder.sandbox.run(&spec, &mut out);
    let _ = builder.snapshots.remove_active(&key);
    let status = status?;
    Ok(ExitCode::from(u8::try_from(status.code()).unwrap_or(1)))
}
