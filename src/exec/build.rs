//! `kiln build`: plans the build, builds every stage the target needs side by side (see
//! `stage`, `steps`), then exports the target stage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cache::{Cache, RecordSource};
use crate::context::hashcache::FileHashCache;
use crate::context::ignore::PatternMatcher;
use crate::dockerfile::Dockerfile;
use crate::export::{export_image, export_index, ExportOptions};
use crate::graph::{Base, StageScope};
use crate::oci::{BlobRef, Descriptor, Digest, Platform};
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
    /// Steps being made now, by cache key: the platforms of a multi-platform build (or bake
    /// targets) that reach the same step wait for the one making it and take it from the
    /// cache, instead of making it again side by side.
    pub steps_in_flight: StepsInFlight,
}

/// One lock per cache key being made in this process.
#[derive(Default)]
pub struct StepsInFlight(Mutex<BTreeMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

impl StepsInFlight {
    /// The lock of `key`, held while the step is looked up, made and recorded.
    pub async fn lock(&self, key: &Digest) -> StepGuard<'_> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        StepGuard {
            owner: self,
            key: key.clone(),
            _guard: guard,
        }
    }
}

/// Releases a key's lock, and forgets the key once no one else waits for it.
pub struct StepGuard<'a> {
    owner: &'a StepsInFlight,
    key: Digest,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.0.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and the guard's own; more means someone waits.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            map.remove(&self.key);
        }
    }
}

#[derive(Clone)]
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
    /// `--add-host`, `--shm-size`, `--ulimit`: what every RUN's container gets.
    pub container: ContainerOptions,
    /// Where this build's step events go instead of the builder's reporter (`kiln bake` tags
    /// each target's events with its name); pulls still report to the builder's.
    pub reporter: Option<Arc<dyn Reporter>>,
    /// Set when this build is one platform of a multi-platform build (see
    /// [`Builder::build_platforms`]).
    pub side_by_side: Option<SideBySide>,
}

/// The settings of every RUN's container that the command line gives (`docker build
/// --add-host`, `--shm-size`, `--ulimit`); they are part of each RUN's cache key, as they are of
/// BuildKit's exec op.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerOptions {
    /// Extra `/etc/hosts` lines: host name and address.
    pub extra_hosts: Vec<(String, String)>,
    /// The size of `/dev/shm` in bytes.
    pub shm_size: Option<u64>,
    pub ulimits: Vec<crate::sandbox::Ulimit>,
}

impl ContainerOptions {
    /// How they read in a cache key; empty when none is set, so keys stay as they were.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .extra_hosts
            .iter()
            .map(|(name, addr)| format!("add-host={name}:{addr}"))
            .collect();
        if let Some(size) = self.shm_size {
            parts.push(format!("shm-size={size}"));
        }
        parts.extend(
            self.ulimits
                .iter()
                .map(|u| format!("ulimit={}", u.describe())),
        );
        parts.join(",")
    }
}

/// How one platform's build reports next to the others: its step names start with the
/// platform (`[linux/arm64 2/5] RUN …`, as buildx names them) and its step ids come from a
/// counter all the platforms share, so that no two steps of the build have the same id.
#[derive(Debug, Clone)]
pub struct SideBySide {
    pub label: String,
    pub step_ids: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when another platform failed: this one starts no further step (the build fails
    /// anyway).
    pub abort: Arc<std::sync::atomic::AtomicBool>,
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
    /// The descriptor of what `manifest_digest` names: an image manifest with its platform,
    /// or the index of a multi-platform build.
    pub manifest: Descriptor,
}

impl BuildRequest {
    /// One request per platform, like this one but for that platform; with more than one,
    /// each reports side by side with the others (see [`SideBySide`]).
    pub fn for_platforms(self, platforms: &[Platform]) -> Vec<BuildRequest> {
        let step_ids = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let several = platforms.len() > 1;
        platforms
            .iter()
            .map(|platform| BuildRequest {
                platform: platform.clone(),
                side_by_side: several.then(|| SideBySide {
                    label: platform.to_string(),
                    step_ids: step_ids.clone(),
                    abort: abort.clone(),
                }),
                ..self.clone()
            })
            .collect()
    }
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
                keep_uncompressed: req.layer.keep_uncompressed,
            },
        )?;
        let warnings = self.finish_warnings(&req, &session.used_args());
        let (cache_keys_min, cache_keys_max) = session.cache_keys();
        Ok(BuildOutcome {
            id: exported.id,
            manifest_digest: exported.manifest.digest.clone(),
            tags: req.tags.clone(),
            warnings,
            cache_keys_min,
            cache_keys_max,
            remote_layers,
            manifest: exported.manifest,
        })
    }

    /// Builds one request per platform side by side (each on its own thread, sharing the
    /// store, the cache and the context hashes), then writes an index over their manifests,
    /// tagged with `tags`. The outcome's ID and manifest digest are the index's digest, as
    /// buildx prints it; the requests' own tags are ignored (only the index is tagged).
    pub fn build_platforms(
        &self,
        handle: &tokio::runtime::Handle,
        requests: Vec<BuildRequest>,
        index: &ExportOptions,
    ) -> Result<BuildOutcome, BuildError> {
        let outcomes = self.build_each(handle, requests)?;
        let remote_layers: Vec<(Digest, RecordSource)> = outcomes
            .iter()
            .flat_map(|o| o.remote_layers.iter().cloned())
            .collect();
        let manifests: Vec<Descriptor> = outcomes.iter().map(|o| o.manifest.clone()).collect();
        let descriptor = export_index(
            &self.store,
            &manifests,
            &ExportOptions {
                oci_media_types: index.oci_media_types,
                // A tag must never point at blobs the store does not hold.
                tags: if remote_layers.is_empty() {
                    index.tags.clone()
                } else {
                    Vec::new()
                },
                keep_uncompressed: index.keep_uncompressed,
            },
        )?;
        let mut warnings: Vec<String> = Vec::new();
        let (mut min, mut max) = (Vec::new(), Vec::new());
        for o in outcomes {
            for w in o.warnings {
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
            min.extend(o.cache_keys_min);
            max.extend(o.cache_keys_max);
        }
        Ok(BuildOutcome {
            id: descriptor.digest.clone(),
            manifest_digest: descriptor.digest.clone(),
            tags: index.tags.clone(),
            warnings,
            cache_keys_min: min,
            cache_keys_max: max,
            remote_layers,
            manifest: descriptor,
        })
    }

    /// Each request on its own thread; when one fails, the others stop at their next step,
    /// and the error is the one that failed first.
    fn build_each(
        &self,
        handle: &tokio::runtime::Handle,
        requests: Vec<BuildRequest>,
    ) -> Result<Vec<BuildOutcome>, BuildError> {
        let platforms: Vec<String> = requests.iter().map(|r| r.platform.to_string()).collect();
        // The platform that failed first: the others stop at their next step because of it.
        let first_failed: Mutex<Option<usize>> = Mutex::new(None);
        let results: Vec<Result<BuildOutcome, BuildError>> = std::thread::scope(|scope| {
            let threads: Vec<_> = requests
                .into_iter()
                .enumerate()
                .map(|(i, mut req)| {
                    req.tags.clear();
                    let abort = req.side_by_side.as_ref().map(|s| s.abort.clone());
                    let first_failed = &first_failed;
                    scope.spawn(move || {
                        let result = handle.block_on(self.build(req));
                        if result.is_err() {
                            first_failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(i);
                            if let Some(a) = abort {
                                a.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                        result
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or(Err(BuildError::StagePanicked)))
                .collect()
        });
        let first = first_failed.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        for (i, (platform, result)) in platforms.into_iter().zip(results).enumerate() {
            match result {
                Ok(o) => outcomes.push(o),
                Err(e) => failures.push((i, platform, e)),
            }
        }
        if failures.is_empty() {
            return Ok(outcomes);
        }
        let at = failures
            .iter()
            .position(|(i, _, _)| Some(*i) == first)
            .unwrap_or(0);
        let (_, platform, e) = failures.swap_remove(at);
        Err(BuildError::ForPlatform {
            platform,
            source: Box::new(e),
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
                if self.board.any_failed() || self.other_platform_failed() {
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
        super::metadata::omit_empty(&mut config);
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
