//! One stage: its base (`FROM`), the base's ONBUILD triggers, then its instructions in order,
//! each expanded in the stage's scope and dispatched (see `steps`).

use std::time::Instant;

use crate::dockerfile::{Command, Instruction};
use crate::graph::{explain_miss, Base, StageScope, StepMaterial};
use crate::oci::manifest::{ContainerConfig, History, ImageConfig};
use crate::oci::Digest;
use crate::progress::Event;

use super::base::ImageState;
use super::error::BuildError;
use super::metadata::{self, StageMeta};
use super::session::BuildSession;

/// A finished stage: its image, and its ARGs for stages built on it.
#[derive(Debug, Clone)]
pub struct StageResult {
    pub image: ImageState,
    pub args: Vec<(String, Option<String>)>,
    /// Identity for cache keys of steps built on this stage.
    pub key: Digest,
}

/// A stage while it is dispatched.
pub(super) struct StageState {
    pub index: usize,
    pub image: ImageState,
    pub scope: StageScope,
    pub meta: StageMeta,
    /// The key of the last step that touched the filesystem (first: the base's).
    pub key: Digest,
}

impl StageState {
    pub fn workdir(&self) -> String {
        self.image
            .config
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string())
    }

    pub fn user(&self) -> String {
        self.image
            .config
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default()
    }

    pub fn push_history(&mut self, created: &str, line: String, empty: bool) {
        self.image
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
    }
}

/// One step of a stage, as progress and the cache name it.
pub(super) struct StepInfo {
    /// The step's place in the build (context, stage, position), to compare it with the same
    /// step of an earlier build when it misses.
    pub location: Digest,
    pub id: String,
    /// `[stage n/total] INSTRUCTION`.
    pub name: String,
}

impl BuildSession<'_> {
    fn stage_label(&self, index: usize) -> String {
        self.req.dockerfile.stages[index]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"))
    }

    fn step_location(&self, stage: usize, position: &str) -> Digest {
        let context = std::fs::canonicalize(&self.req.context_dir)
            .unwrap_or_else(|_| self.req.context_dir.clone());
        let label = self.stage_label(stage);
        // Per platform: a multi-platform build's platforms each explain against their own
        // last build of the step.
        let platform = &self.plan.stages[stage].platform;
        Digest::of(
            format!(
                "{}\0{stage}\0{label}\0{position}\0{platform}",
                context.display()
            )
            .as_bytes(),
        )
    }

    fn step_info(&self, stage: usize, position: &str, text: &str) -> StepInfo {
        let no = self.next_step();
        let (id, label) = match &self.req.side_by_side {
            // `[linux/arm64 2/5]`, `[linux/arm64 build 1/5]`, as buildx names them.
            Some(s) => (
                (s.step_ids
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1)
                .to_string(),
                match &self.req.dockerfile.stages[stage].name {
                    Some(name) => format!("{} {name}", s.label),
                    None => s.label.clone(),
                },
            ),
            None => (no.to_string(), self.stage_label(stage)),
        };
        StepInfo {
            location: self.step_location(stage, position),
            id,
            name: format!("[{label} {no}/{}] {}", self.total_steps, text.trim()),
        }
    }

    /// Whether another platform of this multi-platform build failed.
    pub fn other_platform_failed(&self) -> bool {
        self.req
            .side_by_side
            .as_ref()
            .is_some_and(|s| s.abort.load(std::sync::atomic::Ordering::SeqCst))
    }

    pub fn step_started(&self, step: &StepInfo) {
        self.reporter().report(Event::StepStarted {
            id: step.id.clone(),
            name: step.name.clone(),
        });
    }

    /// Builds one stage, waiting on the board for the stages it needs.
    pub async fn build_stage(&self, index: usize) -> Result<StageResult, BuildError> {
        let stage = &self.req.dockerfile.stages[index];
        let from = self.step_info(index, "FROM", &stage.from.original);
        let started = Instant::now();
        self.step_started(&from);
        let (mut image, inherited_args, key) = self
            .stage_base(index, &from)
            .await
            .map_err(|e| e.in_step(&stage.from.original, &stage.from.span))?;
        self.reporter().report(Event::StepDone {
            id: from.id,
            cached: false,
            elapsed: started.elapsed(),
        });
        metadata::ensure_default_path(&mut image.config);
        let triggers = onbuild_triggers(&mut image.config, &stage.from)?;
        let scope = StageScope::new(&self.plan, &image_env(&image), &inherited_args);
        let mut state = StageState {
            index,
            image,
            scope,
            meta: StageMeta::default(),
            key,
        };
        let instructions = triggers.iter().chain(&stage.instructions);
        for (position, instr) in instructions.enumerate() {
            if self.board.cancelled(index) || self.other_platform_failed() {
                return Err(BuildError::StageStopped(self.stage_label(index)));
            }
            self.build_step(&mut state, position, instr)
                .await
                .map_err(|e| e.in_step(&instr.original, &instr.span))?;
        }
        Ok(StageResult {
            image: state.image,
            args: state.scope.args().to_vec(),
            key: state.key,
        })
    }

    async fn build_step(
        &self,
        state: &mut StageState,
        position: usize,
        instr: &Instruction,
    ) -> Result<(), BuildError> {
        let step = self.step_info(state.index, &position.to_string(), &instr.original);
        let started = Instant::now();
        let expanded = state.scope.expand(instr)?;
        state.scope.apply(&expanded)?;
        if let Command::Arg { args } = &expanded.command {
            self.note_used_args(args.iter().map(|a| a.key.clone()));
        }
        if let Some(cached) = self.dispatch(state, &expanded, &step).await? {
            self.reporter().report(Event::StepDone {
                id: step.id,
                cached,
                elapsed: started.elapsed(),
            });
        }
        Ok(())
    }

    /// The image a stage starts from, the ARGs it inherits, and the key its first step builds
    /// on.
    async fn stage_base(
        &self,
        index: usize,
        from: &StepInfo,
    ) -> Result<(ImageState, Vec<(String, Option<String>)>, Digest), BuildError> {
        let planned = &self.plan.stages[index];
        match &planned.base {
            Base::Scratch => {
                let config = ImageConfig {
                    architecture: planned.platform.architecture.clone(),
                    os: planned.platform.os.clone(),
                    variant: planned.platform.variant.clone(),
                    config: Some(ContainerConfig {
                        working_dir: Some("/".into()),
                        ..Default::default()
                    }),
                    ..ImageConfig::default()
                };
                let image = ImageState {
                    config,
                    layers: Vec::new(),
                    base_id: None,
                };
                let key = StepMaterial::scratch(&planned.platform).key();
                Ok((image, Vec::new(), key))
            }
            Base::Stage(parent) => {
                let name = self.req.dockerfile.stages[*parent]
                    .name
                    .clone()
                    .unwrap_or_else(|| parent.to_string());
                let r = self.board.wait(index, *parent, &name)?;
                Ok((r.image, r.args, r.key))
            }
            Base::Image(reference) => {
                let b = self.builder;
                let (resolved, image) = self.resolve_image(reference, &planned.platform).await?;
                let id = image
                    .base_id
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                let material = StepMaterial::image(&id, &planned.platform, &resolved.to_string());
                let previous: Option<StepMaterial> = b.cache.previous_step(&from.location);
                if previous
                    .as_ref()
                    .is_some_and(|p| p.fields != material.fields)
                {
                    self.reporter().report(Event::CacheMiss {
                        id: from.id.clone(),
                        reasons: explain_miss(previous.as_ref(), &material, self.explain_detail()),
                    });
                }
                b.cache.remember_step(&from.location, &material)?;
                Ok((image, Vec::new(), material.key()))
            }
        }
    }
}

fn image_env(image: &ImageState) -> Vec<String> {
    image
        .config
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
}

/// The base's ONBUILD triggers as instructions (placed at the FROM line), cleared from the
/// config: they run first in the stage and are not inherited further.
fn onbuild_triggers(
    config: &mut ImageConfig,
    from: &Instruction,
) -> Result<Vec<Instruction>, BuildError> {
    let triggers = config
        .config
        .as_mut()
        .and_then(|c| c.on_build.take())
        .unwrap_or_default();
    let mut instructions = Vec::new();
    for trigger in &triggers {
        let text = format!("FROM scratch\n{trigger}\n");
        let parsed =
            crate::dockerfile::parse_dockerfile(&crate::diag::SourceFile::new("ONBUILD", text))
                .map_err(|e| {
                    BuildError::OnbuildTrigger {
                        trigger: trigger.clone(),
                        message: e.message,
                    }
                    .in_step(&from.original, &from.span)
                })?;
        if let Some(mut i) = parsed
            .stages
            .into_iter()
            .next()
            .and_then(|s| s.instructions.into_iter().next())
        {
            i.span = from.span;
            instructions.push(i);
        }
    }
    Ok(instructions)
}
