//! `kiln build`, and what `kiln run` and `kiln bake` share with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use super::build_args::{parse_secret, BuildArgs, SecretSource};
use super::build_context::BuildContext;
use super::cache_opts::CacheSpec;
use super::output::OutputSpec;
use super::registry_opts::{runtime, RegistryOpts};
use super::render::reporter;
use crate::cache::Cache;
use crate::context::ignore::{load_ignore_patterns, PatternMatcher};
use crate::diag::{Diagnostic, Severity, SourceFile};
use crate::dockerfile::parse_dockerfile;
use crate::exec::build::{BuildOutcome, BuildRequest, Builder};
use crate::exec::commit::LayerSettings;
use crate::exec::run_step::Secret;
use crate::exec::BuildError;
use crate::oci::{Compression, Platform};
use crate::progress::Reporter;
use crate::registry::pull::Puller;
use crate::registry::push::PushReport;
use crate::sandbox::NetworkMode;
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
    let context = BuildContext::open(&args.context, args.file.as_deref())?;
    let source = context.dockerfile.load()?;
    let dockerfile = match parse_dockerfile(&source) {
        Ok(df) => df,
        Err(err) => {
            eprintln!("error: {}", err.render(&source));
            return Ok(ExitCode::FAILURE);
        }
    };
    let ignore = ignore_matcher(&context.dir, context.dockerfile.path())?;
    let secrets = secrets_from(&args.secrets)?;
    let platforms = parse_platforms(args.platform.as_deref())?;
    if platforms.len() > 1 {
        // Before anything is built, as for any bad -o.
        super::output::check_multi_platform(&output, platforms.len())?;
    }
    let (compression, gzip_on_push) = layer_compression(&args);
    let mode = args.progress_mode();
    let rep: Arc<dyn Reporter> = match mode {
        Some(m) => Arc::from(reporter(m)),
        None => Arc::from(super::render::quiet_reporter()),
    };
    let names = image_names(&args.tags, &output)?;
    // Only the image output tags the store (as buildx): archives and trees carry the names.
    let tags = if output.tags_store() {
        names.clone()
    } else {
        Vec::new()
    };
    let cache_from = parse_cache_specs(&args.cache_from, false)?;
    let cache_to = parse_cache_specs(&args.cache_to, true)?;
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
        context_dir: context.dir.clone(),
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
            keep_uncompressed: compression == Compression::None && !gzip_on_push,
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
        container: args.container_options()?,
        side_by_side: None,
    };
    let keep_uncompressed = template.layer.keep_uncompressed;
    let requests = template.for_platforms(&platforms);
    let rt = runtime()?;
    let interrupted = stop_steps_on_ctrl_c(&rt, &builder.state_root);
    rt.block_on(super::cache_opts::import_caches(&builder, &cache_from));
    let built = if multi {
        builder.build_platforms(
            rt.handle(),
            requests,
            &crate::export::ExportOptions {
                oci_media_types: args.oci_mediatypes,
                tags,
                keep_uncompressed,
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
        Err(_) if interrupted.load(Ordering::SeqCst) => {
            eprintln!("error: {}", BuildError::Interrupted);
            return Ok(ExitCode::from(130));
        }
        Err(err) => {
            eprintln!("error: {}", render_build_error(&err, &source));
            return Ok(ExitCode::FAILURE);
        }
    };
    let delivery = Delivery {
        output,
        names,
        push,
        gzip_on_push,
        cache_to,
        multi_platform: multi,
    };
    deliver(&rt, &builder, &args, &delivery, &outcome, mode.is_some())?;
    if delivery.output.writes_stdout() {
        // stdout carries the archive: nothing else may go there.
        eprintln!("{}", outcome.id);
    } else {
        println!("{}", outcome.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a built image goes, besides the store.
struct Delivery {
    output: OutputSpec,
    names: Vec<String>,
    push: bool,
    gzip_on_push: bool,
    cache_to: Vec<CacheSpec>,
    multi_platform: bool,
}

/// Everything after a successful build: warnings, the push, cache exports, the `-o` outputs,
/// the auto-prune, `--iidfile` and `--metadata-file`, and the closing lines.
fn deliver(
    rt: &tokio::runtime::Runtime,
    builder: &Builder,
    args: &BuildArgs,
    delivery: &Delivery,
    outcome: &BuildOutcome,
    show: bool,
) -> anyhow::Result<()> {
    for w in &outcome.warnings {
        eprintln!("{w}");
    }
    let pushed = if delivery.push {
        Some(rt.block_on(super::push::push_built(
            &builder.puller,
            &outcome.manifest_digest,
            &delivery.names,
            &outcome.remote_layers,
            delivery.gzip_on_push,
        ))?)
    } else {
        None
    };
    rt.block_on(super::cache_opts::export_caches(
        builder,
        &delivery.cache_to,
        outcome,
    ))?;
    // Before any auto-prune: an image the store does not tag is only safe until then.
    super::output::export_build(
        &builder.store,
        &outcome.manifest_digest,
        &delivery.output,
        delivery.names.clone(),
        delivery.gzip_on_push,
    )?;
    auto_prune(builder, show)?;
    if let Some(path) = &args.iidfile {
        std::fs::write(path, outcome.id.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        write_metadata_file(
            path,
            outcome,
            pushed.as_ref(),
            &delivery.names,
            delivery.multi_platform,
        )?;
    }
    if show {
        report_names(outcome, delivery.output.tags_store());
    }
    Ok(())
}

/// The context's `.dockerignore` rules (`<Dockerfile>.dockerignore` first), if it has any.
pub(super) fn ignore_matcher(
    context_dir: &Path,
    dockerfile: Option<&Path>,
) -> anyhow::Result<Option<PatternMatcher>> {
    let (patterns, _) = load_ignore_patterns(context_dir, dockerfile)?;
    Ok(if patterns.is_empty() {
        None
    } else {
        Some(PatternMatcher::new(&patterns)?)
    })
}

/// `--secret id=…,src=…|env=…` options, by id.
pub(super) fn secrets_from(specs: &[String]) -> anyhow::Result<BTreeMap<String, Secret>> {
    let mut secrets = BTreeMap::new();
    for spec in specs {
        let (id, src) = parse_secret(spec)?;
        secrets.insert(
            id,
            match src {
                SecretSource::File(p) => Secret::File(p),
                SecretSource::Env(v) => Secret::Env(v),
            },
        );
    }
    Ok(secrets)
}

/// The compression layers are written with, and whether a push gzips uncompressed ones:
/// without a choice, layers stay uncompressed until they are pushed (see `exec::compress`).
fn layer_compression(args: &BuildArgs) -> (Compression, bool) {
    match (args.compression.as_deref(), args.compression_level) {
        (None, None) => (Compression::None, true),
        (Some("zstd"), _) => (Compression::Zstd, false),
        (Some("uncompressed"), _) => (Compression::None, false),
        _ => (Compression::Gzip, false),
    }
}

/// The full names of `-t` tags and of the outputs' `name=`s, each once, in that order.
fn image_names(tags: &[String], output: &OutputSpec) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for t in tags {
        names.push(crate::oci::Reference::parse(t)?.to_string());
    }
    for n in &output.names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    Ok(names)
}

fn parse_cache_specs(specs: &[String], export: bool) -> anyhow::Result<Vec<CacheSpec>> {
    specs
        .iter()
        .map(|s| super::cache_opts::parse_cache_spec(s, export))
        .collect()
}

/// On Ctrl-C, the running steps' runtimes are killed (the sandbox then deletes their
/// containers), the steps fail, and the normal error path unmounts and cleans up, so the store
/// stays valid. The flag says whether that happened.
pub(super) fn stop_steps_on_ctrl_c(
    rt: &tokio::runtime::Runtime,
    state_root: &Path,
) -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let bundles = state_root.join("bundles");
    rt.spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
            kill_own_containers(&bundles);
            signal_children(rustix::process::Signal::KILL);
        }
    });
    interrupted
}

/// Prunes the build cache down to the config's `[gc] keep-storage`, if it sets one; skipped
/// (not waited for) while other builds run.
fn auto_prune(builder: &Builder, show: bool) -> anyhow::Result<()> {
    let Some(budget) = &builder.puller.config.gc.keep_storage else {
        return Ok(());
    };
    let keep = crate::exec::prune::parse_size(budget).with_context(|| {
        format!("invalid [gc] keep-storage {budget:?} in the config: use e.g. 20GB")
    })?;
    let options = crate::exec::prune::PruneOptions {
        keep_storage: Some(keep),
        ..Default::default()
    };
    let report = super::images::prune_store(&builder.store, &options, false)?;
    if report.records_removed + report.snapshots_removed > 0 && show {
        eprintln!(
            "auto-prune: freed {} of build cache to stay under keep-storage {budget}",
            super::render::human_bytes(report.bytes_freed)
        );
    }
    Ok(())
}

/// `--metadata-file`, as buildx writes it. With a push, the digest is the one the registry
/// holds: the store's manifest names uncompressed layers, the pushed one their gzip copies.
fn write_metadata_file(
    path: &Path,
    outcome: &BuildOutcome,
    pushed: Option<&PushReport>,
    names: &[String],
    multi_platform: bool,
) -> anyhow::Result<()> {
    let digest = pushed
        .map(|p| p.digest.clone())
        .unwrap_or_else(|| outcome.manifest_digest.clone());
    let mut doc = serde_json::json!({
        "containerimage.digest": digest.to_string(),
        "image.name": names.join(","),
    });
    // An index has no config: buildx writes the config digest for one platform only.
    if !multi_platform {
        doc["containerimage.config.digest"] = outcome.id.to_string().into();
    }
    std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The closing lines of a build: the names given, and what the store did not get.
fn report_names(outcome: &BuildOutcome, tags_store: bool) {
    for t in &outcome.tags {
        eprintln!("naming to {t} done");
    }
    if !outcome.remote_layers.is_empty() && tags_store {
        eprintln!(
            "not tagged in the local store: {} layer(s) of the image were only pushed from \
             the registry cache, never downloaded (`kiln pull` fetches the image)",
            outcome.remote_layers.len()
        );
    }
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
