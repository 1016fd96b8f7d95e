//! `kiln bake`: every target of a compose or bake file built in one process, side by side on
//! one `Builder` (one store, cache and context hashing), each target's progress tagged with
//! its name.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;

use super::build::{
    ignore_matcher, open_builder, push_registry, render_build_error, secrets_from,
    stop_steps_on_ctrl_c,
};
use super::cache_opts::{parse_cache_spec, CacheLocation, CacheSpec};
use super::output::OutputSpec;
use super::pull::StoreOpts;
use super::registry_opts::{runtime, RegistryOpts};
use super::render::{reporter, ProgressMode};
use crate::bake::{BuildUnit, LoadOptions};
use crate::diag::SourceFile;
use crate::dockerfile::parse_dockerfile;
use crate::exec::build::{BuildOutcome, BuildRequest};
use crate::exec::commit::LayerSettings;
use crate::exec::BuildError;
use crate::layer::Compression;
use crate::oci::{Platform, Reference};
use crate::progress::{Reporter, Tagged};
use crate::sandbox::NetworkMode;

#[derive(Debug, clap::Args)]
pub struct BakeArgs {
    /// Compose or bake file (repeatable, merged in order; default: compose.yaml, compose.yml,
    /// docker-compose.yml, docker-compose.yaml, docker-bake.json, docker-bake.hcl,
    /// docker-bake.override.json, docker-bake.override.hcl, every one present)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Override a target's attribute: `TARGET.KEY=VALUE`, TARGET may be a glob (`*.platform=linux/amd64`,
    /// `app.args.FOO=bar`, `app.tags=x`); repeatable
    #[arg(long = "set", value_name = "TARGET.KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the resolved targets as JSON (buildx's --print) and build nothing
    #[arg(long)]
    pub print: bool,
    /// Push every image to its registry (same as --set *.output=type=registry)
    #[arg(long)]
    pub push: bool,
    /// Load the images into the local store (they always are; accepted for buildx compatibility)
    #[arg(long)]
    pub load: bool,
    /// Build at most N targets at once (default: all)
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,
    /// Do not use the build cache for any target
    #[arg(long)]
    pub no_cache: bool,
    /// Always pull base images
    #[arg(long)]
    pub pull: bool,
    /// Grant an entitlement to every target, as `kiln build --allow` (`security.insecure`).
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_delimiter = ',',
          value_parser = ["security.insecure", "network.host"])]
    pub allow: Vec<String>,
    /// Progress output
    #[arg(long, value_parser = ["auto", "plain", "tty", "quiet"], default_value = "auto")]
    pub progress: String,
    /// OCI runtime to run RUN steps with (default: crun, else runc, on PATH)
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Targets or groups to build (default: the `default` group, or every compose service)
    pub targets: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryOpts,
    #[command(flatten)]
    pub store: StoreOpts,
}

/// One unit ready to build, and what happens after.
struct Job {
    /// Names it for the user: `web` or `web,worker`.
    label: String,
    targets: Vec<String>,
    source: SourceFile,
    names: Vec<String>,
    output: OutputSpec,
    push: bool,
    cache_from: Vec<CacheSpec>,
    cache_to: Vec<CacheSpec>,
}

pub fn run(args: BakeArgs) -> anyhow::Result<ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let plan = crate::bake::load(&LoadOptions {
        files: &args.files,
        dir: Path::new("."),
        env: &env,
        overrides: &args.set,
        targets: &args.targets,
    })?;
    for note in &plan.notes {
        eprintln!("{note}");
    }
    if args.print {
        use std::io::Write as _;
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&plan.print())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let units = plan.units();
    if units.is_empty() {
        anyhow::bail!("nothing to build: no target has a build section");
    }
    let mode = match args.progress.as_str() {
        "plain" => Some(ProgressMode::Plain),
        "tty" => Some(ProgressMode::Tty),
        "quiet" => None,
        _ => Some(ProgressMode::Auto),
    };
    let base: Arc<dyn Reporter> = match mode {
        Some(m) => Arc::from(reporter(m)),
        None => Arc::from(super::render::quiet_reporter()),
    };
    let mut jobs = Vec::new();
    let mut requests = Vec::new();
    for unit in &units {
        let (job, request) = prepare(unit, &args, &base)?;
        jobs.push(job);
        requests.push(request);
    }
    for unit in units.iter().filter(|u| u.names.len() > 1) {
        eprintln!(
            "{}: the same build, built once and tagged for each",
            unit.names.join(", ")
        );
    }
    let store = args.store.open()?;
    let builder = open_builder(store, &args.registry, base, args.runtime.as_deref())?;
    let rt = runtime()?;
    let interrupted = stop_steps_on_ctrl_c(&rt, &builder.state_root);
    for job in &jobs {
        rt.block_on(super::cache_opts::import_caches(&builder, &job.cache_from));
    }
    let limit = args.parallel.unwrap_or(jobs.len()).max(1);
    let permits = tokio::sync::Semaphore::new(limit);
    // Each build on its own thread: `Builder::build` blocks its thread while stages run.
    let outcomes: Vec<Result<BuildOutcome, BuildError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .into_iter()
            .map(|reqs| {
                let (rt, builder, permits) = (&rt, &builder, &permits);
                scope.spawn(move || {
                    let _permit = rt.block_on(permits.acquire());
                    build_target(rt, builder, reqs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BuildError::StagePanicked)))
            .collect()
    });
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("error: {}", BuildError::Interrupted);
        return Ok(ExitCode::from(130));
    }
    let mut failed = Vec::new();
    let mut built = Vec::new();
    for (job, outcome) in jobs.iter().zip(outcomes) {
        match outcome {
            Ok(o) => match finish(&rt, &builder, job, &o, mode.is_some()) {
                Ok(()) => built.push((job, o)),
                Err(e) => {
                    eprintln!("error: [{}] {e:#}", job.label);
                    failed.push(job.label.clone());
                }
            },
            Err(err) => {
                eprintln!(
                    "error: [{}] {}",
                    job.label,
                    render_build_error(&err, &job.source)
                );
                failed.push(job.label.clone());
            }
        }
    }
    for (job, outcome) in &built {
        for t in &job.targets {
            println!("{t} {}", outcome.id);
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "error: {} of {} builds failed: {}",
            failed.len(),
            jobs.len(),
            failed.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Warnings, push, cache export and the output of one finished build.
/// One target: a single-platform build, or its platforms side by side into an index.
fn build_target(
    rt: &tokio::runtime::Runtime,
    builder: &crate::exec::build::Builder,
    mut requests: Vec<BuildRequest>,
) -> Result<BuildOutcome, BuildError> {
    if requests.len() <= 1 {
        let request = requests.pop().ok_or(BuildError::TargetNotBuilt)?;
        return rt.block_on(builder.build(request));
    }
    let index = crate::export::ExportOptions {
        oci_media_types: true,
        tags: requests.first().map(|r| r.tags.clone()).unwrap_or_default(),
        keep_uncompressed: false,
    };
    builder.build_platforms(rt.handle(), requests, &index)
}

fn finish(
    rt: &tokio::runtime::Runtime,
    builder: &crate::exec::build::Builder,
    job: &Job,
    outcome: &BuildOutcome,
    show: bool,
) -> anyhow::Result<()> {
    for w in &outcome.warnings {
        eprintln!("[{}] {w}", job.label);
    }
    if job.push {
        rt.block_on(super::push::push_built(
            &builder.puller,
            &outcome.manifest_digest,
            &job.names,
            &outcome.remote_layers,
            true,
        ))?;
    }
    rt.block_on(super::cache_opts::export_caches(
        builder,
        &job.cache_to,
        outcome,
    ))?;
    super::output::export_build(
        &builder.store,
        &outcome.manifest_digest,
        &job.output,
        job.names.clone(),
        true,
    )?;
    if show {
        for t in &outcome.tags {
            eprintln!("[{}] naming to {t} done", job.label);
        }
    }
    Ok(())
}

/// Reads the unit's Dockerfile and context rules and makes its build request.
fn prepare(
    unit: &BuildUnit,
    args: &BakeArgs,
    base: &Arc<dyn Reporter>,
) -> anyhow::Result<(Job, Vec<BuildRequest>)> {
    let t = &unit.target;
    let label = unit.names.join(",");
    let what = || format!("target {label}");
    let context_dir = PathBuf::from(&t.context);
    if !context_dir.is_dir() {
        anyhow::bail!("{}: build context {} is not a directory", what(), t.context);
    }
    let dockerfile_path = t.dockerfile_path();
    let source = match (&t.dockerfile_inline, &dockerfile_path) {
        (Some(text), _) => SourceFile::new(format!("{label} (dockerfile-inline)"), text.clone()),
        (None, Some(path)) => super::read_dockerfile(path).with_context(what)?,
        (None, None) => anyhow::bail!("{}: no Dockerfile", what()),
    };
    let dockerfile = parse_dockerfile(&source)
        .map_err(|e| anyhow::anyhow!("{}: {}", what(), e.render(&source)))?;
    let ignore = ignore_matcher(&context_dir, dockerfile_path.as_deref())?;
    let secrets = secrets_from(&t.secret).with_context(what)?;
    let platforms = match t.platforms.as_slice() {
        [] => vec![Platform::host()],
        many => super::build::parse_platforms(Some(&many.join(","))).with_context(what)?,
    };
    let output = super::output::parse_outputs(&t.output, std::io::stdout().is_terminal())
        .with_context(what)?;
    if platforms.len() > 1 {
        super::output::check_multi_platform(&output, platforms.len()).with_context(what)?;
    }
    let push = args.push || output.push;
    let mut names = Vec::new();
    for tag in &t.tags {
        names.push(
            Reference::parse(tag)
                .with_context(|| format!("{}: invalid tag {tag:?}", what()))?
                .to_string(),
        );
    }
    for n in &output.names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    if push && names.is_empty() {
        anyhow::bail!("{}: --push needs a name to push to: add tags", what());
    }
    let cache_from = t
        .cache_from
        .iter()
        .map(|s| parse_cache_spec(s, false).with_context(what))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to = t
        .cache_to
        .iter()
        .map(|s| parse_cache_spec(s, true).with_context(what))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to_dir = cache_to
        .iter()
        .any(|c| matches!(c.location, CacheLocation::Local(_)));
    let network = match t.network.as_deref() {
        None | Some("default" | "host") => NetworkMode::Host,
        Some("none") => NetworkMode::None,
        Some(other) => anyhow::bail!(
            "{}: network {other:?}: kiln knows default, host and none",
            what()
        ),
    };
    let specs: Vec<String> = t.contexts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let named_contexts =
        super::build_args::named_contexts(&specs, &std::env::current_dir()?).with_context(what)?;
    let request = BuildRequest {
        dockerfile,
        context_dir,
        named_contexts,
        ignore,
        build_args: t.args.clone(),
        target: t.target.clone(),
        platform: Platform::host(),
        tags: if output.tags_store() {
            names.clone()
        } else {
            Vec::new()
        },
        labels: t.labels.clone(),
        network,
        secrets,
        no_cache: args.no_cache || t.no_cache == Some(true),
        no_cache_filter: Vec::new(),
        explain_cache: false,
        pull: args.pull || t.pull == Some(true),
        allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
        container: container_options(t).with_context(what)?,
        layer: LayerSettings {
            // Compressed when pushed (see `exec::compress`).
            compression: Compression::None,
            level: None,
            keep_uncompressed: false,
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.parse().ok()),
        },
        oci_media_types: true,
        remote_layers_in: if push && !cache_to_dir {
            push_registry(&names)
        } else {
            None
        },
        reporter: Some(Arc::new(Tagged::new(label.clone(), base.clone()))),
        side_by_side: None,
    };
    let job = Job {
        label,
        targets: unit.names.clone(),
        source,
        names,
        output,
        push,
        cache_from,
        cache_to,
    };
    Ok((job, request.for_platforms(&platforms)))
}

/// A target's `extra-hosts`, `shm-size` and `ulimits`, read as `--add-host`, `--shm-size` and
/// `--ulimit` are.
fn container_options(
    t: &crate::bake::Target,
) -> anyhow::Result<crate::exec::build::ContainerOptions> {
    let hosts: Vec<String> = t
        .extra_hosts
        .iter()
        .map(|(host, ip)| format!("{host}={ip}"))
        .collect();
    super::build_args::parse_container_options(
        hosts.iter().map(String::as_str),
        t.shm_size.as_deref(),
        &t.ulimits,
    )
}
