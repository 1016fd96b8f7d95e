//! `kiln build`: dispatches every stage the target needs, in order, instruction by instruction,
//! with the cache in front of every step that makes a layer, then exports the target stage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::cache::key::{explain_miss, StepMaterial};
use crate::cache::{Cache, CacheRecord, CachedLayer, RecordSource};
use crate::context::hashcache::FileHashCache;
use crate::context::ignore::PatternMatcher;
use crate::dockerfile::{Command, Dockerfile, Instruction};
use crate::export::{build_time, export_image, ExportOptions, LayerRef};
use crate::oci::manifest::{History, ImageConfig};
use crate::oci::{Digest, Platform};
use crate::progress::{Event, Reporter};
use crate::registry::pull::Puller;
use crate::sandbox::{resolve_user_from, NetworkMode, RunSpec, Sandbox};
use crate::snapshot::{ChainId, Snapshotter};
use crate::store::Store;

use super::base::{resolve_image, unpack_blob, ImageState, LayerState};
use super::commit::{commit_active, LayerSettings};
use super::error::BuildError;
use super::file_step::{execute_copy, prepare_copy, workdir_step, FileStepContext};
use super::history::{created_by, run_created_by};
use super::metadata::{self, StageMeta};
use super::run_step::{
    prepare_mounts, read_from_lowers, run_args, run_in_snapshot, RunContext, Secret,
};
use super::scope::{plan, Base, PlanOptions, StageScope};
use super::seed::Donor;
use super::stages::StageBoard;

/// Everything a build uses that outlives it.
pub struct Builder {
    pub store: Store,
    pub puller: Puller,
    pub snapshots: Snapshotter,
    pub cache: Cache,
    pub sandbox: Sandbox,
    pub reporter: Arc<dyn Reporter>,
    pub state_root: PathBuf,
    /// Content digests of context files, per context directory, saved after each build.
    pub context_hashes: std::sync::Mutex<BTreeMap<PathBuf, Arc<FileHashCache>>>,
    /// Every step key this builder looked up, with its stage, for `--cache-to`.
    pub step_keys: std::sync::Mutex<Vec<(usize, Digest)>>,
    /// Cache-hit layers not unpacked yet: a snapshot is made only when a later step that
    /// runs needs the root filesystem (see `materialize`).
    pub lazy_layers: std::sync::Mutex<BTreeMap<ChainId, LazyLayer>>,
    /// When each layer this build made or reused was first made (layer digest → RFC 3339).
    pub layer_times: std::sync::Mutex<BTreeMap<Digest, String>>,
}

/// A cached layer on an image whose snapshot does not exist yet, and where its blob comes from
/// when it is not in the store (an imported `--cache-from` record).
#[derive(Debug, Clone)]
pub struct LazyLayer {
    pub parent: Option<ChainId>,
    pub layer: CachedLayer,
    pub source: Option<RecordSource>,
}

pub struct BuildRequest {
    pub dockerfile: Dockerfile,
    pub context_dir: PathBuf,
    pub ignore: Option<PatternMatcher>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub platform: Platform,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub network: NetworkMode,
    pub secrets: BTreeMap<String, Secret>,
    pub no_cache: bool,
    /// `--no-cache-filter`: stages (by name or index) built without the cache.
    pub no_cache_filter: Vec<String>,
    /// `--explain-cache`: list more of what changed under each missed step.
    pub explain_cache: bool,
    pub pull: bool,
    pub layer: LayerSettings,
    pub oci_media_types: bool,
    /// The registry the image is pushed to (`--push`): layers that an imported cache in that
    /// registry holds but the store lacks are left there (the push mounts them) instead of
    /// being downloaded, and the image is tagged in the store only when all its blobs are here.
    pub remote_layers_in: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub id: Digest,
    pub manifest_digest: Digest,
    pub tags: Vec<String>,
    pub warnings: Vec<String>,
    /// Keys of the steps the final image is made of (`--cache-to mode=min`).
    pub cache_keys_min: Vec<Digest>,
    /// Keys of every step of every stage built (`mode=max`).
    pub cache_keys_max: Vec<Digest>,
    /// Layers of the image that are not in the store, with where they live
    /// (only with `remote_layers_in`); when not empty the image was not tagged in the store.
    pub remote_layers: Vec<(Digest, RecordSource)>,
}

/// A finished stage: its image, and its ARGs for stages built on it.
#[derive(Debug, Clone)]
struct StageResult {
    image: ImageState,
    args: Vec<(String, Option<String>)>,
    /// Identity for cache keys of steps built on this stage.
    key: Digest,
}

static STEP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        STEP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// How many changed paths a miss explanation lists.
fn explain_detail(req: &BuildRequest) -> usize {
    if req.explain_cache {
        20
    } else {
        3
    }
}

/// A step's place in the build (context, stage, position), to compare it with the same step
/// of an earlier build when it misses.
fn step_location(req: &BuildRequest, stage: usize, stage_label: &str, position: &str) -> Digest {
    let context =
        std::fs::canonicalize(&req.context_dir).unwrap_or_else(|_| req.context_dir.clone());
    Digest::of(format!("{}\0{stage}\0{stage_label}\0{position}", context.display()).as_bytes())
}

impl Builder {
    pub async fn build(&self, req: BuildRequest) -> Result<BuildOutcome, BuildError> {
        // Prune waits while builds run: snapshots a build mounts must not disappear.
        let _builds_lock = super::prune::BuildsLock::shared(&self.state_root)?;
        // Mounts, containers and scratch left by killed builds (never a live one's).
        super::sweep::sweep_stale(
            &self.state_root,
            &self.snapshots,
            Some(self.sandbox.runtime()),
        );
        let host = Platform::host();
        let plan = plan(
            &req.dockerfile,
            &PlanOptions {
                build_args: &req.build_args,
                target: req.target.as_deref(),
                target_platform: &req.platform,
                build_platform: &host,
            },
        )?;
        let source_date_epoch = req
            .build_args
            .get("SOURCE_DATE_EPOCH")
            .and_then(|v| v.parse::<i64>().ok())
            .or(req.layer.source_date_epoch);
        let settings = LayerSettings {
            source_date_epoch,
            ..req.layer
        };
        let total_steps: usize = plan
            .order
            .iter()
            .map(|i| req.dockerfile.stages[*i].instructions.len() + 1)
            .sum();
        let mut used_args: BTreeSet<String> =
            plan.global_args.iter().map(|(k, _)| k.clone()).collect();
        let created = build_time(source_date_epoch);
        let scratch_dir = self.state_root.join("tmp");
        std::fs::create_dir_all(&scratch_dir).map_err(BuildError::io("create", &scratch_dir))?;

        // Every stage on its own thread, as many at once as the machine has cores; a stage
        // waits for another only where it needs it (see `stages`). RUN blocks its thread
        // while the container runs.
        let steps = std::sync::atomic::AtomicUsize::new(0);
        let width = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let board: StageBoard<StageResult> = StageBoard::new(width, &plan.order);
        let used_by_stages = std::sync::Mutex::new(BTreeSet::new());
        let handle = tokio::runtime::Handle::current();
        let mut errors: Vec<(usize, BuildError)> = std::thread::scope(|scope| {
            let mut threads = Vec::new();
            for &index in &plan.order {
                board.take_slot();
                if board.any_failed() {
                    // Not started: the build fails anyway.
                    board.finish(index, None);
                    break;
                }
                let handle = handle.clone();
                let (req_ref, settings_ref, plan_ref, board_ref, steps_ref, created_ref) =
                    (&req, &settings, &plan, &board, &steps, &created);
                let (scratch_ref, used_ref) = (&scratch_dir, &used_by_stages);
                threads.push((
                    index,
                    scope.spawn(move || {
                        let outcome =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                handle.block_on(self.build_stage(
                                    req_ref,
                                    settings_ref,
                                    plan_ref,
                                    board_ref,
                                    index,
                                    steps_ref,
                                    total_steps,
                                    created_ref,
                                    scratch_ref,
                                ))
                            }))
                            .unwrap_or_else(|_| {
                                Err(BuildError::Invalid(
                                    "a stage's build thread panicked".into(),
                                ))
                            });
                        match outcome {
                            Ok((result, used)) => {
                                used_ref
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .extend(used);
                                board_ref.finish(index, Some(result));
                                Ok(())
                            }
                            Err(e) => {
                                board_ref.finish(index, None);
                                Err(e)
                            }
                        }
                    }),
                ));
            }
            threads
                .into_iter()
                .filter_map(|(index, t)| match t.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some((index, e)),
                    Err(_) => Some((
                        index,
                        BuildError::Invalid("a stage's build thread panicked".into()),
                    )),
                })
                .collect()
        });
        if !errors.is_empty() {
            // The stage that failed by itself, not one that failed waiting for it.
            let first = errors
                .iter()
                .position(|(i, _)| !board.failed_waiting(*i))
                .unwrap_or(0);
            return Err(errors.swap_remove(first).1);
        }
        used_args.extend(
            used_by_stages
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
        );

        let target = board
            .take(plan.target)
            .ok_or_else(|| BuildError::Invalid("the target stage was not built".into()))?;
        let mut config = target.image.config.clone();
        if !req.labels.is_empty() {
            let labels = config
                .config
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(BTreeMap::new);
            for (k, v) in &req.labels {
                labels.insert(k.clone(), v.clone());
            }
        }
        config.created = Some(created.clone());
        if source_date_epoch.is_none() {
            self.settle_history_times(&mut config, &target.image.layers, &created);
        }
        config.rootfs.kind = "layers".into();
        config.rootfs.diff_ids = target
            .image
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect();
        let layers: Vec<LayerRef> = target
            .image
            .layers
            .iter()
            .map(|l| l.layer.clone())
            .collect();
        let remote_layers = self
            .remote_layers(&target.image, req.remote_layers_in.as_deref())
            .await?;
        let exported = export_image(
            &self.store,
            &config,
            &layers,
            &ExportOptions {
                oci_media_types: req.oci_media_types,
                // A tag must never point at blobs the store does not hold.
                tags: if remote_layers.is_empty() {
                    req.tags.clone()
                } else {
                    Vec::new()
                },
            },
        )?;
        let unused = StageScope::unused_build_args(&req.build_args, &used_args);
        let mut warnings = Vec::new();
        for hashes in self
            .context_hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if let Err(e) = hashes.save() {
                warnings.push(format!("cannot save the context hash cache: {e}"));
            }
        }
        if !unused.is_empty() {
            warnings.push(format!(
                "[Warning] One or more build-args [{}] were not consumed",
                unused.join(" ")
            ));
        }
        // The target and the stages it is built FROM make the final image.
        let mut final_stages = BTreeSet::from([plan.target]);
        let mut at = plan.target;
        while let Base::Stage(parent) = &plan.stages[at].base {
            final_stages.insert(*parent);
            at = *parent;
        }
        let keys = self
            .step_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(BuildOutcome {
            id: exported.id,
            manifest_digest: exported.manifest.digest,
            tags: req.tags,
            warnings,
            cache_keys_min: keys
                .iter()
                .filter(|(s, _)| final_stages.contains(s))
                .map(|(_, k)| k.clone())
                .collect(),
            cache_keys_max: keys.into_iter().map(|(_, k)| k).collect(),
            remote_layers,
        })
    }

    /// The image's layers whose blobs are not in the store and that an imported cache in
    /// `keep_in` (a registry) holds; every other missing layer is downloaded now (not
    /// unpacked: nothing runs on it).
    async fn remote_layers(
        &self,
        image: &ImageState,
        keep_in: Option<&str>,
    ) -> Result<Vec<(Digest, RecordSource)>, BuildError> {
        let mut remote = Vec::new();
        for layer in &image.layers {
            if self.store.has_blob(&layer.layer.digest) {
                continue;
            }
            let lazy = self.lazy(&layer.chain);
            let source = lazy.as_ref().and_then(|l| l.source.clone());
            let in_push_registry = match (&source, keep_in) {
                (Some(RecordSource::Registry(r)), Some(registry)) => {
                    crate::oci::Reference::parse(r).is_ok_and(|r| r.registry() == registry)
                }
                _ => false,
            };
            match source {
                Some(source) if in_push_registry => {
                    remote.push((layer.layer.digest.clone(), source))
                }
                source => {
                    let cached = CachedLayer {
                        blob: layer.layer.clone(),
                        diff_id: layer.diff_id.clone(),
                    };
                    self.fetch_imported_layer(&cached, source.as_ref())
                        .await
                        .map_err(|e| {
                            BuildError::Invalid(format!(
                                "layer {} of the image is not in the store: {e}",
                                layer.layer.digest
                            ))
                        })?;
                }
            }
        }
        Ok(remote)
    }

    fn note_layer_time(&self, digest: &Digest, time: &str) {
        self.layer_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.clone())
            .or_insert_with(|| time.to_string());
    }

    /// History times as BuildKit's exporter sets them: an entry of this build that made a layer
    /// gets the time the layer was first made, a metadata entry the time of the layer before
    /// it (or, before any new layer, the first new layer's), and the image the last of them. A
    /// fully cached rebuild thus gives the same image ID.
    fn settle_history_times(&self, config: &mut ImageConfig, layers: &[LayerState], build: &str) {
        let times = self.layer_times.lock().unwrap_or_else(|p| p.into_inner());
        let Some(history) = config.history.as_mut() else {
            return;
        };
        let mut layer_index = 0;
        let mut layer_time: Vec<Option<String>> = Vec::new();
        for h in history.iter() {
            let time = if h.empty_layer {
                None
            } else {
                let t = layers
                    .get(layer_index)
                    .and_then(|l| times.get(&l.layer.digest).cloned());
                layer_index += 1;
                t
            };
            layer_time.push(time);
        }
        let first_new = history
            .iter()
            .zip(&layer_time)
            .find(|(h, t)| h.created.as_deref() == Some(build) && t.is_some())
            .and_then(|(_, t)| t.clone())
            // No new layer: the base image's last time, as BuildKit takes the last layer's.
            .or_else(|| {
                history
                    .iter()
                    .rev()
                    .filter(|h| h.created.as_deref() != Some(build))
                    .find_map(|h| h.created.clone())
            });
        let mut previous: Option<String> = None;
        for (h, t) in history.iter_mut().zip(layer_time) {
            let ours = h.created.as_deref() == Some(build);
            if ours {
                let settled = match (h.empty_layer, t) {
                    (false, Some(t)) => Some(t),
                    (true, _) => previous.clone().or_else(|| first_new.clone()),
                    (false, None) => None,
                };
                if let Some(settled) = settled {
                    h.created = Some(settled);
                }
            }
            if !h.empty_layer && ours {
                previous = h.created.clone();
            }
        }
        if let Some(last) = history.iter().rev().find_map(|h| h.created.clone()) {
            config.created = Some(last);
        }
    }

    fn lazy(&self, chain: &ChainId) -> Option<LazyLayer> {
        self.lazy_layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(chain)
            .cloned()
    }

    /// Makes sure the snapshot `chain` exists, unpacking the cache-hit layers below it that
    /// were left lazy (fetching their blobs first when an imported cache names them).
    async fn materialize(&self, chain: Option<&ChainId>) -> Result<(), BuildError> {
        let mut missing = Vec::new();
        let mut at = chain.cloned();
        while let Some(c) = at {
            if self.snapshots.exists(&c) {
                break;
            }
            let lazy = self.lazy(&c).ok_or_else(|| {
                BuildError::Invalid(format!("the snapshot {c} is missing from the state root"))
            })?;
            at = lazy.parent.clone();
            missing.push(lazy);
        }
        for lazy in missing.into_iter().rev() {
            if !self.store.has_blob(&lazy.layer.blob.digest) {
                self.fetch_imported_layer(&lazy.layer, lazy.source.as_ref())
                    .await
                    .map_err(|e| {
                        BuildError::Invalid(format!(
                            "cannot fetch cached layer {}: {e}",
                            lazy.layer.blob.digest
                        ))
                    })?;
            }
            unpack_blob(
                &self.store,
                &self.snapshots,
                lazy.parent.as_ref(),
                &lazy.layer.diff_id,
                &lazy.layer.blob.digest,
                &lazy.layer.blob.media_type,
            )?;
        }
        Ok(())
    }

    /// Builds one stage, waiting on `board` for the stages it needs.
    #[allow(clippy::too_many_arguments)]
    async fn build_stage(
        &self,
        req: &BuildRequest,
        settings: &LayerSettings,
        plan: &super::scope::Plan,
        board: &StageBoard<StageResult>,
        index: usize,
        steps: &std::sync::atomic::AtomicUsize,
        total_steps: usize,
        created: &str,
        scratch_dir: &Path,
    ) -> Result<(StageResult, BTreeSet<String>), BuildError> {
        let mut used_args = BTreeSet::new();
        let stage = &req.dockerfile.stages[index];
        let planned = &plan.stages[index];
        let stage_label = stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"));
        let step_no = steps.fetch_add(1, Ordering::Relaxed) + 1;
        let from_id = step_no.to_string();
        let started = Instant::now();
        self.reporter.report(Event::StepStarted {
            id: from_id.clone(),
            name: format!(
                "[{stage_label} {step_no}/{total_steps}] {}",
                stage.from.original
            ),
        });
        let (mut image, inherited_args, mut key) = match &planned.base {
            Base::Scratch => {
                let mut config = ImageConfig {
                    architecture: planned.platform.architecture.clone(),
                    os: planned.platform.os.clone(),
                    variant: planned.platform.variant.clone(),
                    ..ImageConfig::default()
                };
                config.config = Some(crate::oci::manifest::ContainerConfig {
                    working_dir: Some("/".into()),
                    ..Default::default()
                });
                (
                    ImageState {
                        config,
                        layers: Vec::new(),
                        base_id: None,
                    },
                    Vec::new(),
                    StepMaterial::new("FROM", None)
                        .field("scratch", "")
                        .field("platform", planned.platform.to_string())
                        .key(),
                )
            }
            Base::Stage(parent) => {
                let name = req.dockerfile.stages[*parent]
                    .name
                    .clone()
                    .unwrap_or_else(|| parent.to_string());
                let r = board.wait(index, *parent, &name)?;
                (r.image, r.args, r.key)
            }
            Base::Image(reference) => {
                let (resolved, image) = resolve_image(
                    &self.puller,
                    &self.snapshots,
                    reference,
                    &planned.platform,
                    req.pull,
                )
                .await
                .map_err(|e| e.in_step(&stage.from.original, &stage.from.span))?;
                let id = image
                    .base_id
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                let mut material = StepMaterial::new("FROM", None)
                    .field("id", id)
                    .field("platform", planned.platform.to_string());
                material.about.insert("image".into(), resolved.to_string());
                let location = step_location(req, index, &stage_label, "FROM");
                let previous = self.cache.previous_step(&location);
                if previous
                    .as_ref()
                    .is_some_and(|p| p.fields != material.fields)
                {
                    self.reporter.report(Event::CacheMiss {
                        id: from_id.clone(),
                        reasons: explain_miss(previous.as_ref(), &material, explain_detail(req)),
                    });
                }
                self.cache.remember_step(&location, &material)?;
                let k = material.key();
                (image, Vec::new(), k)
            }
        };
        self.reporter.report(Event::StepDone {
            id: from_id,
            cached: false,
            elapsed: started.elapsed(),
        });
        metadata::ensure_default_path(&mut image.config);
        let image_env = image
            .config
            .config
            .as_ref()
            .and_then(|c| c.env.clone())
            .unwrap_or_default();
        let mut scope = StageScope::new(plan, &image_env, &inherited_args);
        let mut meta = StageMeta::default();

        // ONBUILD triggers of the base run first, then are cleared.
        let triggers = image
            .config
            .config
            .as_mut()
            .and_then(|c| c.on_build.take())
            .unwrap_or_default();
        let mut instructions: Vec<Instruction> = Vec::new();
        for trigger in &triggers {
            let text = format!("FROM scratch\n{trigger}\n");
            let parsed =
                crate::dockerfile::parse_dockerfile(&crate::diag::SourceFile::new("ONBUILD", text))
                    .map_err(|e| {
                        BuildError::Invalid(format!(
                            "invalid ONBUILD trigger {trigger:?} in the base image: {}",
                            e.message
                        ))
                        .in_step(&stage.from.original, &stage.from.span)
                    })?;
            if let Some(mut i) = parsed
                .stages
                .into_iter()
                .next()
                .and_then(|s| s.instructions.into_iter().next())
            {
                i.span = stage.from.span;
                instructions.push(i);
            }
        }
        instructions.extend(stage.instructions.iter().cloned());

        for (position, instr) in instructions.iter().enumerate() {
            if board.cancelled(index) {
                return Err(BuildError::Invalid(format!(
                    "stage {stage_label} stopped: another stage failed"
                )));
            }
            let location = step_location(req, index, &stage_label, &position.to_string());
            let step_no = steps.fetch_add(1, Ordering::Relaxed) + 1;
            let step_id = step_no.to_string();
            let started = Instant::now();
            let expanded = scope.expand(instr)?;
            scope.apply(&expanded)?;
            if let Command::Arg { args } = &expanded.command {
                used_args.extend(args.iter().map(|a| a.key.clone()));
            }
            let name = format!(
                "[{stage_label} {step_no}/{total_steps}] {}",
                instr.original.trim()
            );
            let cached = self
                .dispatch(
                    req,
                    settings,
                    plan,
                    board,
                    index,
                    &mut image,
                    &mut scope,
                    &mut meta,
                    &mut key,
                    &expanded,
                    &location,
                    &step_id,
                    &name,
                    created,
                    scratch_dir,
                )
                .await
                .map_err(|e| e.in_step(&instr.original, &instr.span))?;
            if let Some(cached) = cached {
                self.reporter.report(Event::StepDone {
                    id: step_id,
                    cached,
                    elapsed: started.elapsed(),
                });
            }
        }
        let args = scope.args().to_vec();
        Ok((StageResult { image, args, key }, used_args))
    }

    /// Runs one expanded instruction; `Some(cached)` when it was a step to report as done.
    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &self,
        req: &BuildRequest,
        settings: &LayerSettings,
        plan: &super::scope::Plan,
        board: &StageBoard<StageResult>,
        stage: usize,
        image: &mut ImageState,
        scope: &mut StageScope,
        meta: &mut StageMeta,
        key: &mut Digest,
        instr: &Instruction,
        location: &Digest,
        step_id: &str,
        name: &str,
        created: &str,
        scratch_dir: &Path,
    ) -> Result<Option<bool>, BuildError> {
        let history = |image: &mut ImageState, line: String, empty: bool| {
            image
                .config
                .history
                .get_or_insert_with(Vec::new)
                .push(History {
                    created: Some(created.to_string()),
                    created_by: Some(line),
                    author: None,
                    comment: Some("buildkit.dockerfile.v0".into()),
                    empty_layer: empty,
                    extra: Default::default(),
                });
        };
        let workdir = image
            .config
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string());
        let user = image
            .config
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        match &instr.command {
            Command::Run(run) => {
                self.reporter.report(Event::StepStarted {
                    id: step_id.into(),
                    name: name.into(),
                });
                let stage_platform = &plan.stages[stage].platform;
                check_can_run(stage_platform)?;
                let shell = metadata::current_shell(&image.config);
                let args = run_args(&run.cmd, &shell);
                let env = scope.run_env();
                let network = match run.network {
                    Some(crate::dockerfile::instructions::mount::NetworkMode::None) => {
                        NetworkMode::None
                    }
                    Some(_) => NetworkMode::Host,
                    None => req.network,
                };
                let mount_desc: Vec<String> = run.mounts.iter().map(|m| m.raw.clone()).collect();
                let mut material = StepMaterial::new("RUN", Some(&*key))
                    .field("cmd", serde_json::to_string(&args).unwrap_or_default())
                    .env(&env)
                    .field("workdir", workdir.clone())
                    .field("user", user.clone())
                    .field("network", format!("{network:?}"));
                for (i, m) in mount_desc.iter().enumerate() {
                    material = material.field(&format!("mount:{i}"), m.clone());
                }
                let image_env = image
                    .config
                    .config
                    .as_ref()
                    .and_then(|c| c.env.clone())
                    .unwrap_or_default();
                let line = run_created_by(&args, &scope.run_arg_pairs(&image_env));
                let (step_key, cached) = self
                    .check_cache(req, stage, &material, location, step_id, image)
                    .await?;
                if !cached {
                    let parent = image.top_chain().cloned();
                    self.materialize(parent.as_ref()).await?;
                    let lowers = match &parent {
                        Some(p) => self.snapshots.lower_dirs(p)?,
                        None => Vec::new(),
                    };
                    let user_spec = resolve_user_from(
                        &user,
                        read_from_lowers(&lowers, "/etc/passwd").as_deref(),
                        read_from_lowers(&lowers, "/etc/group").as_deref(),
                    )
                    .map_err(|e| BuildError::Invalid(e.to_string()))?;
                    let step_dir = scratch_dir.join(unique("run"));
                    std::fs::create_dir_all(&step_dir)
                        .map_err(BuildError::io("create", &step_dir))?;
                    // `--mount=from=<stage|image>`: that root, mounted read-only for this step.
                    let mut from_roots = BTreeMap::new();
                    let mut from_guards = Vec::new();
                    for (i, m) in run.mounts.iter().enumerate() {
                        let Some(from) = &m.from else { continue };
                        if from_roots.contains_key(from) {
                            continue;
                        }
                        let chain = match super::scope::stage_ref(&req.dockerfile, from) {
                            Some(idx) => board.wait(stage, idx, from)?.image.top_chain().cloned(),
                            None => resolve_image(
                                &self.puller,
                                &self.snapshots,
                                from,
                                &req.platform,
                                req.pull,
                            )
                            .await?
                            .1
                            .top_chain()
                            .cloned(),
                        };
                        self.materialize(chain.as_ref()).await?;
                        let target = step_dir.join(format!("from-{i}"));
                        match chain {
                            Some(c) => {
                                let guard = super::mounts::MountGuard::mount(
                                    &self.snapshots.view(&c)?,
                                    &target,
                                )?;
                                from_roots.insert(from.clone(), guard.path().to_path_buf());
                                from_guards.push(guard);
                            }
                            None => {
                                std::fs::create_dir_all(&target)
                                    .map_err(BuildError::io("create", &target))?;
                                from_roots.insert(from.clone(), target);
                            }
                        }
                    }
                    let ctx = RunContext {
                        sandbox: &self.sandbox,
                        snapshots: &self.snapshots,
                        context_dir: &req.context_dir,
                        cache_mounts_dir: &self.state_root.join("cache-mounts"),
                        scratch_dir: &step_dir,
                        secrets: &req.secrets,
                        default_network: req.network,
                        from_roots: &from_roots,
                    };
                    let (mounts, secret_env, bind_guards, cache_locks) =
                        prepare_mounts(run, &ctx, &workdir, &step_dir)?;
                    let mut full_env = env.clone();
                    full_env.extend(secret_env);
                    let spec = RunSpec {
                        args: args.clone(),
                        env: full_env,
                        cwd: workdir.clone(),
                        user: user_spec,
                        network,
                        mounts,
                        ..RunSpec::default()
                    };
                    let active = unique("run");
                    let reporter = self.reporter.clone();
                    let id = step_id.to_string();
                    let mut on_output = |line: &str| {
                        reporter.report(Event::StepOutput {
                            id: id.clone(),
                            line: line.to_string(),
                        })
                    };
                    let result =
                        run_in_snapshot(&ctx, &active, parent.as_ref(), spec, &mut on_output);
                    for guard in bind_guards.into_iter().chain(from_guards) {
                        let _ = guard.unmount();
                    }
                    drop(cache_locks);
                    let _ = std::fs::remove_dir_all(&step_dir);
                    let (status, tail) = result?;
                    if !status.success() {
                        let _ = self.snapshots.remove_active(&active);
                        return Err(BuildError::RunFailed {
                            command: args.join(" "),
                            code: status.code(),
                            tail,
                        });
                    }
                    let layer = commit_active(
                        &self.store,
                        &self.snapshots,
                        &active,
                        parent.as_ref(),
                        settings,
                    )?;
                    self.record(&step_key, layer.as_ref())?;
                    if let Some(l) = layer {
                        image.layers.push(l);
                    }
                }
                let made_layer = self.cache.get(&step_key).and_then(|r| r.layer).is_some();
                history(image, line, !made_layer);
                *key = step_key;
                Ok(Some(cached))
            }
            Command::Copy(_) | Command::Add(_) => {
                self.reporter.report(Event::StepStarted {
                    id: step_id.into(),
                    name: name.into(),
                });
                // `COPY --from=<image>`: pull and unpack the image like a base.
                let mut image_roots = BTreeMap::new();
                if let Command::Copy(c) = &instr.command {
                    if let Some(f) = &c.from {
                        if super::scope::stage_ref(&req.dockerfile, f).is_none() {
                            let (_, from_image) = resolve_image(
                                &self.puller,
                                &self.snapshots,
                                f,
                                &req.platform,
                                req.pull,
                            )
                            .await?;
                            image_roots.insert(f.clone(), from_image.top_chain().cloned());
                        }
                    }
                }
                // `COPY --from=<stage>`: waits here until that stage is built.
                let mut stage_roots = BTreeMap::new();
                if let Command::Copy(c) = &instr.command {
                    if let Some(f) = &c.from {
                        if let Some(i) = super::scope::stage_ref(&req.dockerfile, f) {
                            let from = board.wait(stage, i, f)?;
                            stage_roots.insert(i, from.image.top_chain().cloned());
                        }
                    }
                }
                let url_dir = scratch_dir.join(unique("add-url"));
                let url_files = match &instr.command {
                    Command::Add(a)
                        if a.files.sources.iter().any(|s| super::file_step::is_url(s)) =>
                    {
                        super::file_step::download_urls(
                            &a.files.sources,
                            a.checksum.as_deref(),
                            &url_dir,
                        )
                        .await?
                    }
                    _ => Vec::new(),
                };
                let fctx = FileStepContext {
                    url_files,
                    image_roots,
                    store: &self.store,
                    snapshots: &self.snapshots,
                    context_dir: &req.context_dir,
                    ignore: req.ignore.as_ref(),
                    dockerfile: &req.dockerfile,
                    stage_roots,
                    scratch_dir,
                    settings,
                    escape: plan.escape,
                    copy_donor: Donor::find(
                        &self.state_root,
                        &self.snapshots,
                        location,
                        image.top_chain(),
                    ),
                };
                let hashes = self.context_hashes(&req.context_dir);
                let prepared = prepare_copy(&fctx, instr, &workdir, &hashes)?;
                let mut material = StepMaterial::new("COPY", Some(&*key));
                material.fields = prepared.material.clone();
                material.files = prepared.files.clone();
                let (step_key, cached) = self
                    .check_cache(req, stage, &material, location, step_id, image)
                    .await?;
                if !cached {
                    let parent = image.top_chain().cloned();
                    self.materialize(parent.as_ref()).await?;
                    if let Some(from) = &prepared.from {
                        self.materialize(from.as_ref()).await?;
                    }
                    let done = execute_copy(&fctx, &prepared, &workdir, parent.as_ref(), &hashes)?;
                    let layer = done.layer;
                    if let Some(l) = &layer {
                        let files = done.contents.unwrap_or_default();
                        Donor::remember(
                            &self.state_root,
                            location,
                            &l.chain,
                            parent.as_ref(),
                            files,
                        );
                    }
                    self.record(&step_key, layer.as_ref())?;
                    if let Some(l) = layer {
                        image.layers.push(l);
                    }
                }
                let _ = std::fs::remove_dir_all(&url_dir);
                let made_layer = self.cache.get(&step_key).and_then(|r| r.layer).is_some();
                history(image, created_by(instr, None, &workdir), !made_layer);
                *key = step_key;
                Ok(Some(cached))
            }
            Command::Workdir { .. } => {
                metadata::apply(&mut image.config, meta, &instr.command)
                    .map_err(|e| BuildError::Invalid(e.to_string()))?;
                let new_dir = image
                    .config
                    .config
                    .as_ref()
                    .and_then(|c| c.working_dir.clone())
                    .unwrap_or_else(|| "/".into());
                let mut empty = true;
                let mut step_cached = None;
                if new_dir != "/" {
                    self.reporter.report(Event::StepStarted {
                        id: step_id.into(),
                        name: name.into(),
                    });
                    let fctx_store = &self.store;
                    let material = StepMaterial::new("WORKDIR", Some(&*key))
                        .field("dir", new_dir.clone())
                        .field("user", user.clone());
                    let (step_key, cached) = self
                        .check_cache(req, stage, &material, location, step_id, image)
                        .await?;
                    if !cached {
                        self.materialize(image.top_chain()).await?;
                        let layer = workdir_step(
                            fctx_store,
                            &self.snapshots,
                            image.top_chain(),
                            &new_dir,
                            &user,
                            scratch_dir,
                            settings,
                        )?;
                        self.record(&step_key, layer.as_ref())?;
                        if let Some(l) = layer {
                            image.layers.push(l);
                        }
                    }
                    empty = self.cache.get(&step_key).and_then(|r| r.layer).is_none();
                    *key = step_key;
                    step_cached = Some(cached);
                }
                history(image, format!("WORKDIR {new_dir}"), empty);
                Ok(step_cached)
            }
            Command::Arg { .. } => {
                history(image, created_by(instr, None, &workdir), true);
                Ok(None)
            }
            Command::Onbuild(_) => {
                metadata::apply(&mut image.config, meta, &instr.command)
                    .map_err(|e| BuildError::Invalid(e.to_string()))?;
                Ok(None)
            }
            Command::From(_) => Ok(None),
            other => {
                let shell = metadata::current_shell(&image.config);
                metadata::apply(&mut image.config, meta, other)
                    .map_err(|e| BuildError::Invalid(e.to_string()))?;
                let cmd_args = match other {
                    Command::Cmd(l) | Command::Entrypoint(l) => {
                        Some(metadata::command_args(l, &shell))
                    }
                    _ => None,
                };
                history(
                    image,
                    created_by(instr, cmd_args.as_deref(), &workdir),
                    true,
                );
                // Config-only: later steps see ENV/USER/WORKDIR/SHELL through their own key
                // fields, so LABEL, EXPOSE, CMD, … never bust them (see cache::key).
                Ok(None)
            }
        }
    }

    /// The context-file digest cache for `dir`, loaded once per builder.
    fn context_hashes(&self, dir: &Path) -> Arc<FileHashCache> {
        let mut caches = self
            .context_hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        caches
            .entry(dir.to_path_buf())
            .or_insert_with(|| Arc::new(FileHashCache::load(&self.state_root, dir)))
            .clone()
    }

    /// The step's key and whether it hit. On a miss, reports why (against what the same step
    /// was built from last time); either way remembers what it is built from now.
    async fn check_cache(
        &self,
        req: &BuildRequest,
        stage: usize,
        material: &StepMaterial,
        location: &Digest,
        step_id: &str,
        image: &mut ImageState,
    ) -> Result<(Digest, bool), BuildError> {
        let key = material.key();
        let stage_name = req.dockerfile.stages[stage].name.as_deref();
        let filtered = req
            .no_cache_filter
            .iter()
            .any(|f| Some(f.as_str()) == stage_name || *f == stage.to_string());
        let hit = !(req.no_cache || filtered) && self.try_cache(&key, image).await?;
        if !hit {
            let reasons = if req.no_cache {
                vec!["--no-cache".to_string()]
            } else if filtered {
                vec!["--no-cache-filter names this stage".to_string()]
            } else {
                let previous = self.cache.previous_step(location);
                explain_miss(previous.as_ref(), material, explain_detail(req))
            };
            self.reporter.report(Event::CacheMiss {
                id: step_id.to_string(),
                reasons,
            });
        }
        self.cache.remember_step(location, material)?;
        self.step_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((stage, key.clone()));
        Ok((key, hit))
    }

    /// On a cache hit, puts the cached layer (if any) on the image; `true` when hit. The
    /// layer's snapshot is made later, and only if a step that runs needs it.
    async fn try_cache(&self, key: &Digest, image: &mut ImageState) -> Result<bool, BuildError> {
        let Some(record) = self.cache.get(key) else {
            return Ok(false);
        };
        if let Some(layer) = record.layer {
            if let Some(t) = &record.created {
                self.note_layer_time(&layer.blob.digest, t);
            }
            let parent = image.top_chain().cloned();
            let chain = ChainId::of(parent.as_ref(), &layer.diff_id);
            if !self.snapshots.exists(&chain) {
                if !self.store.has_blob(&layer.blob.digest) && record.source.is_none() {
                    // A local record whose blob was pruned: the step must run again.
                    return Ok(false);
                }
                self.lazy_layers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        chain.clone(),
                        LazyLayer {
                            parent,
                            layer: layer.clone(),
                            source: record.source.clone(),
                        },
                    );
            }
            image.layers.push(LayerState {
                layer: layer.blob,
                diff_id: layer.diff_id,
                chain,
            });
        }
        Ok(true)
    }

    /// Brings an imported (`--cache-from`) record's layer into the store.
    async fn fetch_imported_layer(
        &self,
        layer: &CachedLayer,
        source: Option<&RecordSource>,
    ) -> Result<(), String> {
        match source {
            None => Err("the blob is not in the store".into()),
            Some(RecordSource::Directory(dir)) => {
                crate::cache::transfer::fetch_from_dir(&self.store, dir, layer)
                    .map_err(|e| e.to_string())
            }
            Some(RecordSource::Registry(repo)) => {
                let reference = crate::oci::Reference::parse(repo).map_err(|e| e.to_string())?;
                self.puller
                    .fetch_blob(&reference, &layer.blob, "cached layer")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn record(&self, key: &Digest, layer: Option<&LayerState>) -> Result<(), BuildError> {
        let record = CacheRecord {
            layer: layer.map(|l| CachedLayer {
                blob: l.layer.clone(),
                diff_id: l.diff_id.clone(),
            }),
            source: None,
            created: Some(build_time(None)),
        };
        if let (Some(l), Some(t)) = (&record.layer, &record.created) {
            self.note_layer_time(&l.blob.digest, t);
        }
        Ok(self.cache.put(key, &record)?)
    }
}

/// RUN for another architecture needs binfmt_misc emulation registered on the host.
fn check_can_run(platform: &Platform) -> Result<(), BuildError> {
    let host = Platform::host();
    if platform.os == host.os && platform.architecture == host.architecture {
        return Ok(());
    }
    let qemu = match platform.architecture.as_str() {
        "arm64" => "aarch64",
        "arm" => "arm",
        "amd64" => "x86_64",
        "386" => "i386",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    let registered = std::fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains(qemu))
        })
        .unwrap_or(false);
    if registered {
        Ok(())
    } else {
        Err(BuildError::Invalid(format!(
            "cannot RUN for platform {platform} on this {host} machine: no binfmt_misc emulation for {qemu} is registered (install qemu-user-static and binfmt-support), or build for {host}"
        )))
    }
}
