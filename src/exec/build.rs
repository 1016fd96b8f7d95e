//! `kiln build`: plans the build, builds every stage the target needs side by side (see
//! `stage`, `steps`), then exports the target stage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cache::{Cache, RecordSource};
use crate::context::hashcache::FileHashCache;
use crate::context::ignore::PatternMatcher;
use crate::dockerfile::Dockerfile;
use crate::export::{export_image, ExportOptions};
use crate::graph::{Base, StageScope};
use crate::oci::{BlobRef, Digest, Platform};
use crate::progress::Reporter;
use crate::registry::pull::Puller;
use crate::sandbox::{NetworkMode, Sandbox};
use crate::snapshot::Snapshotter;
use crate::store::Store;

use super::commit::LayerSettings;
use super::error::BuildError;
use super::run_step::Secret;
use super::session::BuildSession;
use super::stage::StageResult;

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
    pub context_hashes: Mutex<BTreeMap<PathBuf, Arc<FileHashCache>>>,
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
    /// `--build-context NAME=…`: directories and images that replace what `FROM`,
    /// `COPY --from` and `RUN --mount from=` of that name would read.
    pub named_contexts: BTreeMap<String, crate::graph::NamedContext>,
    /// `--allow security.insecure`: `RUN --security=insecure` may run unconfined.
    pub allow_insecure: bool,
    /// Where this build's step events go instead of the builder's reporter (`kiln bake` tags
    /// each target's events with its name); pulls still report to the builder's.
    pub reporter: Option<Arc<dyn Reporter>>,
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

impl Builder {
    pub async fn build(&self, req: BuildRequest) -> Result<BuildOutcome, BuildError> {
        // Prune waits while builds run: snapshots a build mounts must not disappear.
        let _builds_lock = super::prune::BuildsLock::shared(&self.state_root)?;
        // Mounts, containers and scratch left by killed builds (never a live one's).
        super::sweep::sweep_stale(&self.state_root, &self.snapshots, self.sandbox.runtime());
        let session = BuildSession::new(self, &req)?;
        session.build_stages()?;
        let target = session
            .board
            .take(session.plan.target)
            .ok_or(BuildError::TargetNotBuilt)?;
        let remote_layers = session
            .remote_layers(&target.image, req.remote_layers_in.as_deref())
            .await?;
        let exported = export_image(
            &self.store,
            &session.final_config(&target),
            &target
                .image
                .layers
                .iter()
                .map(|l| l.layer.clone())
                .collect::<Vec<BlobRef>>(),
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
        let warnings = self.finish_warnings(&req, &session.used_args());
        let (cache_keys_min, cache_keys_max) = session.cache_keys();
        Ok(BuildOutcome {
            id: exported.id,
            manifest_digest: exported.manifest.digest,
            tags: req.tags.clone(),
            warnings,
            cache_keys_min,
            cache_keys_max,
            remote_layers,
        })
    }

    /// Saves the context hash caches; warns about them and about unused build args.
    fn finish_warnings(&self, req: &BuildRequest, used_args: &BTreeSet<String>) -> Vec<String> {
        let mut warnings = Vec::new();
        let caches = self
            .context_hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for hashes in caches.values() {
            if let Err(e) = hashes.save() {
                warnings.push(format!("cannot save the context hash cache: {e}"));
            }
        }
        let unused = StageScope::unused_build_args(&req.build_args, used_args);
        if !unused.is_empty() {
            warnings.push(format!(
                "[Warning] One or more build-args [{}] were not consumed",
                unused.join(" ")
            ));
        }
        warnings
    }

    /// The context-file digest cache for `dir`, loaded once per builder.
    pub(super) fn context_hashes(&self, dir: &Path) -> Arc<FileHashCache> {
        let mut caches = self
            .context_hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        caches
            .entry(dir.to_path_buf())
            .or_insert_with(|| Arc::new(FileHashCache::load(&self.state_root, dir)))
            .clone()
    }
}

impl BuildSession<'_> {
    /// Every stage on its own thread, as many at once as the machine has cores; a stage
    /// waits for another only where it needs it (see `stages`). RUN blocks its thread while
    /// the container runs.
    fn build_stages(&self) -> Result<(), BuildError> {
        let handle = tokio::runtime::Handle::current();
        let mut errors: Vec<(usize, BuildError)> = std::thread::scope(|scope| {
            let mut threads = Vec::new();
            for &index in &self.plan.order {
                self.board.take_slot();
                if self.board.any_failed() {
                    // Not started: the build fails anyway.
                    self.board.finish(index, None);
                    break;
                }
                let handle = handle.clone();
                threads.push((
                    index,
                    scope.spawn(move || {
                        let outcome =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                handle.block_on(self.build_stage(index))
                            }))
                            .unwrap_or(Err(BuildError::StagePanicked));
                        match outcome {
                            Ok(result) => {
                                self.board.finish(index, Some(result));
                                Ok(())
                            }
                            Err(e) => {
                                self.board.finish(index, None);
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
                    Err(_) => Some((index, BuildError::StagePanicked)),
                })
                .collect()
        });
        if !errors.is_empty() {
            // The stage that failed by itself, not one that failed waiting for it.
            let first = errors
                .iter()
                .position(|(i, _)| !self.board.failed_waiting(*i))
                .unwrap_or(0);
            return Err(errors.swap_remove(first).1);
        }
        Ok(())
    }

    /// The target's config with `--label`s, the build time, settled history times and its
    /// layers' diff IDs.
    fn final_config(&self, target: &StageResult) -> crate::oci::manifest::ImageConfig {
        let mut config = target.image.config.clone();
        if !self.req.labels.is_empty() {
            let labels = config
                .config
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(BTreeMap::new);
            for (k, v) in &self.req.labels {
                labels.insert(k.clone(), v.clone());
            }
        }
        config.created = Some(self.created.clone());
        if self.settings.source_date_epoch.is_none() {
            self.settle_history_times(&mut config, &target.image.layers);
        }
        config.rootfs.kind = "layers".into();
        config.rootfs.diff_ids = target
            .image
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect();
        config
    }

    /// Keys of the steps the final image is made of (the target and the stages it is built
    /// FROM: `--cache-to mode=min`) and of every step built (`mode=max`).
    fn cache_keys(&self) -> (Vec<Digest>, Vec<Digest>) {
        let mut final_stages = BTreeSet::from([self.plan.target]);
        let mut at = self.plan.target;
        while let Base::Stage(parent) = &self.plan.stages[at].base {
            final_stages.insert(*parent);
            at = *parent;
        }
        let keys = self.step_keys();
        let min = keys
            .iter()
            .filter(|(s, _)| final_stages.contains(s))
            .map(|(_, k)| k.clone())
            .collect();
        (min, keys.into_iter().map(|(_, k)| k).collect())
    }
}
