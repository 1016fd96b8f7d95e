//! `kiln build` and `kiln run`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::build_args::{parse_secret, BuildArgs, SecretSource};
use super::pull::StoreOpts;
use super::registry_opts::{runtime, RegistryOpts};
use super::render::{reporter, ProgressMode};
use crate::cache::Cache;
use crate::context::ignore::{load_ignore_patterns, PatternMatcher};
use crate::diag::{Diagnostic, Severity, SourceFile};
use crate::dockerfile::parse_dockerfile;
use crate::exec::base::resolve_image;
use crate::exec::build::{BuildRequest, Builder};
use crate::exec::commit::LayerSettings;
use crate::exec::run_step::Secret;
use crate::exec::BuildError;
use crate::oci::{Compression, Platform};
use crate::progress::Reporter;
use crate::registry::pull::Puller;
use crate::sandbox::{resolve_user_from, NetworkMode, RunSpec, Stream};
use crate::snapshot::Snapshotter;
use crate::store::Store;

pub(super) fn open_builder(
    store: Store,
    registry: &RegistryOpts,
    reporter: Arc<dyn Reporter>,
    runtime_path: Option<&Path>,
) -> anyhow::Result<Builder> {
    let root = store.root().to_path_buf();
    let snapshots =
        Snapshotter::new(root.join("snapshots")).context("opening the snapshot directory")?;
    let cache = Cache::open(&root, store.clone())?;
    let (snapshots, sandbox, notice) = super::isolation::engine(&root, snapshots, runtime_path)?;
    if let Some(notice) = notice {
        eprintln!("{notice}");
    }
    let puller = Puller {
        config: registry.load()?,
        credentials: registry.credentials(),
        store: store.clone(),
        reporter: reporter.clone(),
    };
    Ok(Builder {
        store,
        puller,
        snapshots,
        cache,
        sandbox,
        reporter,
        state_root: root,
        context_hashes: Default::default(),
        steps_in_flight: Default::default(),
    })
}

/// Renders a build error: the Dockerfile line with a caret for step failures.
pub(super) fn render_build_error(err: &BuildError, source: &SourceFile) -> String {
    match err {
        BuildError::ForPlatform {
            platform,
            source: inner,
        } => {
            format!("[{platform}] {}", render_build_error(inner, source))
        }
        BuildError::Step {
            span,
            source: inner,
            ..
        } => {
            let mut out = Diagnostic {
                severity: Severity::Error,
                message: inner.to_string(),
                span: Some(*span),
            }
            .render(source);
            if let BuildError::RunFailed { tail, .. } = inner.as_ref() {
                if !tail.is_empty() {
                    out.push_str("\n  last output:\n");
                    for line in tail {
                        out.push_str("    ");
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            out
        }
        other => other.to_string(),
    }
}

/// A context given as a tar on stdin, unpacked (safely) into a temporary directory.
fn context_from_stdin() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir().context("creating a directory for the context")?;
    let stdin = std::io::stdin();
    let mut reader = std::io::BufReader::new(stdin);
    let prefix = std::io::BufRead::fill_buf(&mut reader)?.to_vec();
    let compression = Compression::sniff(&prefix);
    crate::layer::extract_layer(
        reader,
        compression,
        dir.path(),
        &crate::layer::ExtractOptions::apply(),
    )
    .context("reading the build context tar from stdin")?;
    Ok(dir)
}

/// The one registry every name is pushed to, if they share one: imported cache layers that
/// live there need not be downloaded for the push.
pub(super) fn push_registry(names: &[String]) -> Option<String> {
    let registries: BTreeSet<String> = names
        .iter()
        .filter_map(|n| crate::oci::Reference::parse(n).ok())
        .map(|r| r.registry().to_string())
        .collect();
    (registries.len() == 1)
        .then(|| registries.into_iter().next())
        .flatten()
}

/// `--platform linux/amd64,linux/arm64` (none: the host's), normalised, each once.
pub(super) fn parse_platforms(spec: Option<&str>) -> anyhow::Result<Vec<Platform>> {
    let Some(spec) = spec else {
        return Ok(vec![Platform::host()]);
    };
    let mut platforms: Vec<Platform> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = Platform::parse(part)
            .with_context(|| format!("invalid --platform {part:?}"))?
            .normalized();
        if !platforms.contains(&p) {
            platforms.push(p);
        }
    }
    if platforms.is_empty() {
        anyhow::bail!("--platform {spec:?} names no platform: give os/arch[/variant],…");
    }
    Ok(platforms)
}

pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    // Checked before anything is built, so a bad -o costs nothing.
    let output = super::output::parse_outputs(&args.outputs, std::io::stdout().is_terminal())?;
    // `--push` is `-o type=registry` (or `type=image,push=true`) as in buildx.
    let push = args.push || output.push;
    let mut _stdin_context = None;
    let context_dir: PathBuf = if args.context == "-" {
        let dir = context_from_stdin()?;
        let p = dir.path().to_path_buf();
        _stdin_context = Some(dir);
        p
    } else {
        let p = PathBuf::from(&args.context);
        if !p.is_dir() {
            anyhow::bail!(
                "unable to prepare context: path {:?} not found",
                args.context
            );
        }
        p
    };
    let dockerfile_path = match &args.file {
        Some(f) if f.as_os_str() == "-" => f.clone(),
        Some(f) => f.clone(),
        None => context_dir.join("Dockerfile"),
    };
    let source = super::read_dockerfile(&dockerfile_path)?;
    let dockerfile = match parse_dockerfile(&source) {
        Ok(df) => df,
        Err(err) => {
            eprintln!("error: {}", err.render(&source));
            return Ok(ExitCode::FAILURE);
        }
    };
    let df_for_ignore = (dockerfile_path.as_os_str() != "-").then_some(dockerfile_path.as_path());
    let (patterns, _) = load_ignore_patterns(&context_dir, df_for_ignore)?;
    let ignore = if patterns.is_empty() {
        None
    } else {
        Some(PatternMatcher::new(&patterns)?)
    };
    let mut secrets = std::collections::BTreeMap::new();
    for spec in &args.secrets {
        let (id, src) = parse_secret(spec)?;
        secrets.insert(
            id,
            match src {
                SecretSource::File(p) => Secret::File(p),
                SecretSource::Env(v) => Secret::Env(v),
            },
        );
    }
    let platforms = parse_platforms(args.platform.as_deref())?;
    if platforms.len() > 1 {
        // Before anything is built, as for any bad -o.
        super::output::check_multi_platform(&output, platforms.len())?;
    }
    // Without a choice, layers are compressed when pushed (see `exec::compress`).
    let (compression, gzip_on_push) = match (args.compression.as_deref(), args.compression_level) {
        (None, None) => (Compression::None, true),
        (Some("zstd"), _) => (Compression::Zstd, false),
        (Some("uncompressed"), _) => (Compression::None, false),
        _ => (Compression::Gzip, false),
    };
    let mode = args.progress_mode();
    let rep: Arc<dyn Reporter> = match mode {
        Some(m) => Arc::from(reporter(m)),
        None => Arc::from(super::render::quiet_reporter()),
    };
    let mut names = Vec::new();
    for t in &args.tags {
        names.push(crate::oci::Reference::parse(t)?.to_string());
    }
    for n in &output.names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    // Only the image output tags the store (as buildx): archives and trees carry the names.
    let tags = if output.tags_store() {
        names.clone()
    } else {
        Vec::new()
    };
    let cache_from = args
        .cache_from
        .iter()
        .map(|s| super::cache_opts::parse_cache_spec(s, false))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|s| super::cache_opts::parse_cache_spec(s, true))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to_dir = cache_to
        .iter()
        .any(|c| matches!(c.location, super::cache_opts::CacheLocation::Local(_)));
    if push && names.is_empty() {
        anyhow::bail!("--push needs a name to push to: add -t REGISTRY/REPOSITORY[:TAG]");
    }
    let named_contexts =
        super::build_args::named_contexts(&args.build_contexts, &std::env::current_dir()?)?;
    let store = args.store.open()?;
    let builder = open_builder(store, &args.registry, rep, args.runtime.as_deref())?;
    let multi = platforms.len() > 1;
    let template = BuildRequest {
        dockerfile,
        context_dir,
        named_contexts,
        ignore,
        build_args: args.build_arg_map(),
        target: args.target.clone(),
        platform: Platform::host(),
        tags: tags.clone(),
        labels: args.label_map()?,
        network: if args.network == "none" {
            NetworkMode::None
        } else {
            NetworkMode::Host
        },
        secrets,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter.clone(),
        explain_cache: args.explain_cache,
        pull: args.pull,
        layer: LayerSettings {
            compression,
            level: args.compression_level,
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.parse().ok()),
        },
        oci_media_types: args.oci_mediatypes,
        reporter: None,
        // A push-only build may leave layers an imported cache holds in the registry pushed
        // to; not when a cache goes to a directory, which needs every layer's bytes here.
        remote_layers_in: if push && !cache_to_dir {
            push_registry(&names)
        } else {
            None
        },
        allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
        side_by_side: None,
    };
    let requests = template.for_platforms(&platforms);
    let rt = runtime()?;
    // Ctrl-C: the running step's runtime is killed (the sandbox then deletes its container), the
    // step fails, and the normal error path unmounts and cleans up; the store stays valid.
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = interrupted.clone();
    let bundles = builder.state_root.join("bundles");
    rt.spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            kill_own_containers(&bundles);
            signal_children(rustix::process::Signal::KILL);
        }
    });
    rt.block_on(super::cache_opts::import_caches(&builder, &cache_from));
    let built = if multi {
        builder.build_platforms(
            rt.handle(),
            requests,
            &crate::export::ExportOptions {
                oci_media_types: args.oci_mediatypes,
                tags,
            },
        )
    } else {
        let request = requests
            .into_iter()
            .next()
            .context("no platform to build")?;
        rt.block_on(builder.build(request))
    };
    let outcome = match built {
        Ok(o) => o,
        Err(_) if interrupted.load(std::sync::atomic::Ordering::SeqCst) => {
            eprintln!("error: {}", BuildError::Interrupted);
            return Ok(ExitCode::from(130));
        }
        Err(err) => {
            eprintln!("error: {}", render_build_error(&err, &source));
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in &outcome.warnings {
        eprintln!("{w}");
    }
    let pushed = if push {
        Some(rt.block_on(super::push::push_built(
            &builder.puller,
            &outcome.manifest_digest,
            &names,
            &outcome.remote_layers,
            gzip_on_push,
        ))?)
    } else {
        None
    };
    rt.block_on(super::cache_opts::export_caches(
        &builder, &cache_to, &outcome,
    ))?;
    // Before any auto-prune: an image the store does not tag is only safe until then.
    super::output::export_build(
        &builder.store,
        &outcome.manifest_digest,
        &output,
        names.clone(),
    )?;
    if let Some(budget) = &builder.puller.config.gc.keep_storage {
        let keep = crate::exec::prune::parse_size(budget).with_context(|| {
            format!("invalid [gc] keep-storage {budget:?} in the config: use e.g. 20GB")
        })?;
        let options = crate::exec::prune::PruneOptions {
            keep_storage: Some(keep),
            ..Default::default()
        };
        // Skipped (not waited for) while other builds run.
        let report = super::images::prune_store(&builder.store, &options, false)?;
        if report.records_removed + report.snapshots_removed > 0 && mode.is_some() {
            eprintln!(
                "auto-prune: freed {} of build cache to stay under keep-storage {budget}",
                super::render::human_bytes(report.bytes_freed)
            );
        }
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, outcome.id.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        // With --push, the digest the registry holds, as buildx records it: the store's
        // manifest names uncompressed layers, the pushed one their gzip copies.
        let digest = pushed
            .as_ref()
            .map(|p| p.digest.clone())
            .unwrap_or_else(|| outcome.manifest_digest.clone());
        let mut doc = serde_json::json!({
            "containerimage.digest": digest.to_string(),
            "image.name": names.join(","),
        });
        // An index has no config: buildx writes the config digest for one platform only.
        if !multi {
            doc["containerimage.config.digest"] = outcome.id.to_string().into();
        }
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if mode.is_some() {
        for t in &outcome.tags {
            eprintln!("naming to {t} done");
        }
        if !outcome.remote_layers.is_empty() && output.tags_store() {
            eprintln!(
                "not tagged in the local store: {} layer(s) of the image were only pushed from \
                 the registry cache, never downloaded (`kiln pull` fetches the image)",
                outcome.remote_layers.len()
            );
        }
    }
    if output.writes_stdout() {
        // stdout carries the archive: nothing else may go there.
        eprintln!("{}", outcome.id);
    } else {
        println!("{}", outcome.id);
    }
    Ok(ExitCode::SUCCESS)
}

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
    runtime: Option<PathBuf>,
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

/// Sends `signal` to this process's child processes (the OCI runtime of a running step).
pub(super) fn signal_children(signal: rustix::process::Signal) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }
}

/// Kills the init process of every container this process started (their bundles are named
/// `kiln-<our pid>-…` and hold the runtime's pid file); the whole PID namespace goes with it.
pub(super) fn kill_own_containers(bundles: &Path) {
    let prefix = format!("kiln-{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir(bundles) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let pid = std::fs::read_to_string(e.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}
