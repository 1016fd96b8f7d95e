//! The cache protocol every step that can make a layer follows, written once: look the step's
//! key up (and say why it missed), on a miss materialize the parent snapshot, make the layer,
//! record it; either way put the layer and the history entry on the image and move the stage's
//! key on.

use crate::cache::CacheRecord;
use crate::export::build_time;
use crate::graph::{explain_miss, StepMaterial};
use crate::oci::{Digest, LayerBlob};
use crate::progress::Event;
use crate::snapshot::ChainId;

use super::base::{ImageState, LayerState};
use super::error::BuildError;
use super::session::{cached_layer, BuildSession, LazyLayer};
use super::stage::{StageState, StepInfo};

impl BuildSession<'_> {
    /// Runs one layer step through the cache. `make` gets the parent snapshot (already
    /// materialized) and returns the layer it made (every layer step makes one, if only an
    /// empty one, as BuildKit's). Returns whether the step was cached.
    pub async fn layer_step(
        &self,
        stage: &mut StageState,
        step: &StepInfo,
        material: StepMaterial,
        created_by: String,
        make: impl AsyncFnOnce(Option<ChainId>) -> Result<LayerState, BuildError>,
    ) -> Result<bool, BuildError> {
        // SOURCE_DATE_EPOCH clamps the times in every layer written: a layer made without it
        // (or with another) is not this step's.
        let material = match self.settings.source_date_epoch {
            Some(epoch) => material.field("source_date_epoch", epoch.to_string()),
            None => material,
        };
        // Another build of this process making the same step now: wait, then hit its record.
        let _in_flight = self.builder.steps_in_flight.lock(&material.key()).await;
        let (key, cached) = self
            .check_cache(stage.index, &material, step, &mut stage.image)
            .await?;
        if !cached {
            let parent = stage.image.top_chain().cloned();
            self.materialize(parent.as_ref()).await?;
            let layer = make(parent).await?;
            self.record(&key, &layer)?;
            stage.image.layers.push(layer);
        }
        stage.push_history(&self.created, created_by, false);
        stage.key = key;
        Ok(cached)
    }

    /// Whether `stage` is built without the cache (`--no-cache`, `--no-cache-filter`), and why.
    fn cache_refused(&self, stage: usize) -> Option<&'static str> {
        let stage_name = self.req.dockerfile.stages[stage].name.as_deref();
        let filtered = self
            .req
            .no_cache_filter
            .iter()
            .any(|f| Some(f.as_str()) == stage_name || *f == stage.to_string());
        if self.req.no_cache {
            Some("--no-cache")
        } else if filtered {
            Some("--no-cache-filter names this stage")
        } else {
            None
        }
    }

    /// The step's key and whether it hit. On a miss, reports why (against what the same step
    /// was built from last time); either way remembers what it is built from now.
    async fn check_cache(
        &self,
        stage: usize,
        material: &StepMaterial,
        step: &StepInfo,
        image: &mut ImageState,
    ) -> Result<(Digest, bool), BuildError> {
        let key = material.key();
        let refused = self.cache_refused(stage);
        let hit = refused.is_none() && self.try_cache(&key, image).await?;
        let cache = &self.builder.cache;
        if !hit {
            let reasons = match refused {
                Some(why) => vec![why.to_string()],
                None => {
                    let previous: Option<StepMaterial> = cache.previous_step(&step.location);
                    explain_miss(previous.as_ref(), material, self.explain_detail())
                }
            };
            self.reporter().report(Event::CacheMiss {
                id: step.id.clone(),
                reasons,
            });
        }
        cache.remember_step(&step.location, material)?;
        self.note_step_key(stage, &key);
        Ok((key, hit))
    }

    /// How many changed paths a miss explanation lists.
    pub fn explain_detail(&self) -> usize {
        if self.req.explain_cache {
            20
        } else {
            3
        }
    }

    /// On a cache hit, puts the cached layer on the image; `true` when hit. The layer's
    /// snapshot is made later, and only if a step that runs needs it.
    async fn try_cache(&self, key: &Digest, image: &mut ImageState) -> Result<bool, BuildError> {
        let b = self.builder;
        let Some(record) = b.cache.get(key) else {
            return Ok(false);
        };
        // A record without a layer is an older kiln's "changed nothing": the step runs again
        // and makes the (empty) layer BuildKit has there.
        let Some(layer) = record.layer else {
            return Ok(false);
        };
        if let Some(t) = &record.created {
            self.note_layer_time(&layer.blob.digest, t);
        }
        let parent = image.top_chain().cloned();
        let chain = ChainId::of(parent.as_ref(), &layer.diff_id);
        if !b.snapshots.exists(&chain) {
            if !b.store.has_blob(&layer.blob.digest) && record.source.is_none() {
                // A local record whose blob was pruned: the step must run again.
                return Ok(false);
            }
            self.note_lazy(
                chain.clone(),
                LazyLayer {
                    parent,
                    layer: layer.clone(),
                    source: record.source.clone(),
                },
            );
        }
        image.layers.push(layer_state(layer, chain));
        Ok(true)
    }

    fn record(&self, key: &Digest, layer: &LayerState) -> Result<(), BuildError> {
        let record = CacheRecord {
            layer: Some(cached_layer(layer)),
            source: None,
            created: Some(build_time(None)),
        };
        if let (Some(l), Some(t)) = (&record.layer, &record.created) {
            self.note_layer_time(&l.blob.digest, t);
        }
        Ok(self.builder.cache.put(key, &record)?)
    }
}

fn layer_state(layer: LayerBlob, chain: ChainId) -> LayerState {
    LayerState {
        layer: layer.blob,
        diff_id: layer.diff_id,
        chain,
    }
}
