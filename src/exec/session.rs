//! One build's state: the plan, the stage board, the step counter, and what the build learns as
//! it goes (the step keys it looked up, cache hits not unpacked yet, when each layer was made).
//! It lives for one `Builder::build` call; nothing of it outlives the build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::cache::RecordSource;
use crate::dockerfile::instructions::{Command, SecurityMode};
use crate::dockerfile::Dockerfile;
use crate::export::build_time;
use crate::graph::{plan, Plan, PlanOptions};
use crate::oci::manifest::ImageConfig;
use crate::oci::{Digest, LayerBlob, Platform};
use crate::registry::pull::Puller;
use crate::snapshot::ChainId;

use super::base::{unpack_blob, ImageState, LayerState};
use super::build::{BuildRequest, Builder};
use super::commit::LayerSettings;
use super::error::BuildError;
use super::stage::StageResult;
use super::stages::StageBoard;

/// A cached layer on an image whose snapshot does not exist yet, and where its blob comes from
/// when it is not in the store (an imported `--cache-from` record).
#[derive(Debug, Clone)]
pub struct LazyLayer {
    pub parent: Option<ChainId>,
    pub layer: LayerBlob,
    pub source: Option<RecordSource>,
}

pub(super) struct BuildSession<'b> {
    pub builder: &'b Builder,
    pub req: &'b BuildRequest,
    /// The builder's puller reporting to the request's reporter, when it has its own.
    own_puller: Option<Puller>,
    pub settings: LayerSettings,
    pub plan: Plan,
    pub board: StageBoard<StageResult>,
    /// Steps numbered across stages, as `[stage n/total]`.
    steps: AtomicUsize,
    pub total_steps: usize,
    /// This build's time (RFC 3339), for history entries and the image.
    pub created: String,
    /// Where steps keep their scratch files (under the state root, so renames stay on one
    /// filesystem).
    pub scratch_dir: PathBuf,
    /// Every step key this build looked up, with its stage, for `--cache-to`.
    step_keys: Mutex<Vec<(usize, Digest)>>,
    /// Cache-hit layers not unpacked yet: a snapshot is made only when a later step that
    /// runs needs the root filesystem (see `materialize`).
    lazy_layers: Mutex<BTreeMap<ChainId, LazyLayer>>,
    /// When each layer this build made or reused was first made (layer digest → RFC 3339).
    layer_times: Mutex<BTreeMap<Digest, String>>,
    /// Build args some ARG consumed, for the "not consumed" warning.
    used_args: Mutex<BTreeSet<String>>,
    /// One lock per image reference this build resolves: stages side by side on the same base
    /// pulled and unpacked it twice at once (python:3.11-slim: two 0.5 s pulls and two 1.2-1.5 s
    /// unpacks of the same layers); the second now waits and finds it done.
    base_locks: Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Mutex<bool>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other step of any kiln process uses at the same time.
pub(super) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl<'b> BuildSession<'b> {
    /// Pulls for this build (their progress goes where its steps' does).
    pub fn puller(&self) -> &Puller {
        self.own_puller.as_ref().unwrap_or(&self.builder.puller)
    }

    /// Where a step's layer goes, its phases timed as `<prefix> <phase>`.
    pub fn layer_sink<'a>(&'a self, prefix: &'a str) -> super::commit::LayerSink<'a> {
        super::commit::LayerSink {
            store: &self.builder.store,
            snapshots: &self.builder.snapshots,
            settings: &self.settings,
            timer: crate::progress::PhaseTimer {
                reporter: self.reporter(),
                prefix,
            },
        }
    }

    /// The image `reference` for `platform`, pulled (`--pull`) and unpacked at most once per
    /// build however many stages and steps name it at the same time.
    pub async fn resolve_image(
        &self,
        reference: &str,
        platform: &crate::oci::Platform,
    ) -> Result<(crate::oci::Reference, super::base::ImageState), BuildError> {
        let lock = lock(&self.base_locks)
            .entry(format!("{reference} {platform}"))
            .or_default()
            .clone();
        let mut resolved = lock.lock().await;
        // Once resolved in this build, --pull has done its job: the store has it now.
        let pull = self.req.pull && !*resolved;
        let out = super::base::resolve_image(
            self.puller(),
            &self.builder.snapshots,
            reference,
            platform,
            pull,
        )
        .await?;
        *resolved = true;
        Ok(out)
    }

    /// Where this build's step events go.
    pub fn reporter(&self) -> &dyn crate::progress::Reporter {
        match &self.req.reporter {
            Some(r) => &**r,
            None => &*self.builder.reporter,
        }
    }

    pub fn new(builder: &'b Builder, req: &'b BuildRequest) -> Result<Self, BuildError> {
        let plan = plan(
            &req.dockerfile,
            &PlanOptions {
                build_args: &req.build_args,
                target: req.target.as_deref(),
                target_platform: &req.platform,
                build_platform: &Platform::host(),
                named_contexts: &req.named_contexts,
            },
        )?;
        if !req.allow_insecure {
            refuse_insecure_runs(&req.dockerfile, &plan.order)?;
        }
        let source_date_epoch = req
            .build_args
            .get("SOURCE_DATE_EPOCH")
            .and_then(|v| v.parse::<i64>().ok())
            .or(req.layer.source_date_epoch);
        let total_steps = plan
            .order
            .iter()
            .map(|i| req.dockerfile.stages[*i].instructions.len() + 1)
            .sum();
        let scratch_dir = builder.state_root.join("tmp");
        std::fs::create_dir_all(&scratch_dir).map_err(BuildError::io("create", &scratch_dir))?;
        let width = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let own_puller = req.reporter.as_ref().map(|r| Puller {
            config: builder.puller.config.clone(),
            credentials: builder.puller.credentials.clone(),
            store: builder.puller.store.clone(),
            reporter: r.clone(),
        });
        Ok(BuildSession {
            builder,
            req,
            own_puller,
            settings: LayerSettings {
                source_date_epoch,
                ..req.layer
            },
            board: StageBoard::new(width, &plan.order),
            used_args: Mutex::new(plan.global_args.iter().map(|(k, _)| k.clone()).collect()),
            base_locks: Mutex::new(BTreeMap::new()),
            plan,
            steps: AtomicUsize::new(0),
            total_steps,
            created: build_time(source_date_epoch),
            scratch_dir,
            step_keys: Mutex::default(),
            lazy_layers: Mutex::default(),
            layer_times: Mutex::default(),
        })
    }

    /// The next step's number.
    pub fn next_step(&self) -> usize {
        self.steps.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn note_used_args(&self, names: impl IntoIterator<Item = String>) {
        lock(&self.used_args).extend(names);
    }

    pub fn used_args(&self) -> BTreeSet<String> {
        lock(&self.used_args).clone()
    }

    pub fn note_step_key(&self, stage: usize, key: &Digest) {
        lock(&self.step_keys).push((stage, key.clone()));
    }

    pub fn step_keys(&self) -> Vec<(usize, Digest)> {
        lock(&self.step_keys).clone()
    }

    pub fn note_lazy(&self, chain: ChainId, layer: LazyLayer) {
        lock(&self.lazy_layers).insert(chain, layer);
    }

    pub fn lazy(&self, chain: &ChainId) -> Option<LazyLayer> {
        lock(&self.lazy_layers).get(chain).cloned()
    }

    pub fn note_layer_time(&self, digest: &Digest, time: &str) {
        lock(&self.layer_times)
            .entry(digest.clone())
            .or_insert_with(|| time.to_string());
    }

    /// Makes sure the snapshot `chain` exists, unpacking the cache-hit layers below it that
    /// were left lazy (fetching their blobs first when an imported cache names them).
    pub async fn materialize(&self, chain: Option<&ChainId>) -> Result<(), BuildError> {
        let b = self.builder;
        let mut missing = Vec::new();
        let mut at = chain.cloned();
        while let Some(c) = at {
            if b.snapshots.exists(&c) {
                break;
            }
            let lazy = self
                .lazy(&c)
                .ok_or_else(|| BuildError::SnapshotMissing(c.clone()))?;
            at = lazy.parent.clone();
            missing.push(lazy);
        }
        for lazy in missing.into_iter().rev() {
            if !b.store.has_blob(&lazy.layer.blob.digest) {
                self.fetch_imported_layer(&lazy.layer, lazy.source.as_ref())
                    .await
                    .map_err(|e| BuildError::CachedLayerFetch {
                        digest: lazy.layer.blob.digest.clone(),
                        source: Box::new(e),
                    })?;
            }
            unpack_blob(
                &b.store,
                &b.snapshots,
                lazy.parent.as_ref(),
                &lazy.layer.diff_id,
                &lazy.layer.blob.digest,
                &lazy.layer.blob.media_type,
            )?;
        }
        Ok(())
    }

    /// Brings an imported (`--cache-from`) record's layer into the store.
    pub async fn fetch_imported_layer(
        &self,
        layer: &LayerBlob,
        source: Option<&RecordSource>,
    ) -> Result<(), BuildError> {
        match source {
            None => Err(BuildError::BlobNotInStore),
            Some(RecordSource::Directory(dir)) => Ok(crate::cache::transfer::fetch_from_dir(
                &self.builder.store,
                dir,
                layer,
            )?),
            Some(RecordSource::Registry(repo)) => {
                let reference = crate::oci::Reference::parse(repo)?;
                self.puller()
                    .fetch_blob(&reference, &layer.blob, "cached layer")
                    .await?;
                Ok(())
            }
        }
    }

    /// The image's layers whose blobs are not in the store and that an imported cache in
    /// `keep_in` (a registry) holds; every other missing layer is downloaded now (not
    /// unpacked: nothing runs on it).
    pub async fn remote_layers(
        &self,
        image: &ImageState,
        keep_in: Option<&str>,
    ) -> Result<Vec<(Digest, RecordSource)>, BuildError> {
        let mut remote = Vec::new();
        for layer in &image.layers {
            if self.builder.store.has_blob(&layer.layer.digest) {
                continue;
            }
            let source = self.lazy(&layer.chain).and_then(|l| l.source);
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
                source => self
                    .fetch_imported_layer(&cached_layer(layer), source.as_ref())
                    .await
                    .map_err(|e| BuildError::LayerNotInStore {
                        digest: layer.layer.digest.clone(),
                        source: Box::new(e),
                    })?,
            }
        }
        Ok(remote)
    }

    /// History times as BuildKit's exporter sets them: an entry of this build that made a layer
    /// gets the time the layer was first made, a metadata entry the time of the layer before
    /// it (or, before any new layer, the first new layer's), and the image the last of them. A
    /// fully cached rebuild thus gives the same image ID.
    pub fn settle_history_times(&self, config: &mut ImageConfig, layers: &[LayerState]) {
        let build = self.created.as_str();
        let times = lock(&self.layer_times);
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
}

/// A layer of an image as the cache records it.
pub(super) fn cached_layer(layer: &LayerState) -> LayerBlob {
    LayerBlob {
        blob: layer.layer.clone(),
        diff_id: layer.diff_id.clone(),
    }
}

/// `RUN --security=insecure` in a stage the build needs fails the build before anything runs
/// when it lacks the entitlement (the RUN step checks again, for ONBUILD triggers).
fn refuse_insecure_runs(dockerfile: &Dockerfile, order: &[usize]) -> Result<(), BuildError> {
    for instr in order
        .iter()
        .flat_map(|i| &dockerfile.stages[*i].instructions)
    {
        if let Command::Run(run) = &instr.command {
            if run.security == Some(SecurityMode::Insecure) {
                return Err(BuildError::InsecureNotAllowed.in_step(&instr.original, &instr.span));
            }
        }
    }
    Ok(())
}
