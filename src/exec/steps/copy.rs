//! COPY and ADD: sources from the context, another stage, an image or a URL, resolved and
//! hashed before the cache is asked, then copied onto a writable snapshot of the stage (seeded
//! with what the same step wrote last time, see `seed`).

use std::collections::BTreeMap;

use crate::dockerfile::{Command, Instruction};
use crate::graph::{FromRef, StepMaterial};
use crate::snapshot::ChainId;

use super::super::error::BuildError;
use super::super::file_step::{
    download_urls, execute_copy, is_url, prepare_copy, FileStepContext, UrlFile,
};
use super::super::history::created_by;
use super::super::seed::Donor;
use super::super::session::{unique, BuildSession};
use super::super::stage::{StageState, StepInfo};

impl BuildSession<'_> {
    pub(super) async fn copy(
        &self,
        stage: &mut StageState,
        instr: &Instruction,
        step: &StepInfo,
    ) -> Result<bool, BuildError> {
        self.step_started(step);
        let b = self.builder;
        // `COPY --from=<named context directory>` is a copy from another build context.
        let (context_dir, ignore, source_instr) = match self.named_dir(instr) {
            Some(dir) => (dir, None, without_from(instr)),
            None => (
                self.req.context_dir.clone(),
                self.req.ignore.as_ref(),
                instr.clone(),
            ),
        };
        let (stage_roots, image_roots) = self.copy_from_roots(stage.index, &source_instr).await?;
        let url_dir = self.scratch_dir.join(unique("add-url"));
        let url_files = match self.add_urls(instr, &url_dir).await {
            Ok(files) => files,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&url_dir);
                return Err(e);
            }
        };
        let timing_prefix = format!("#{}", step.id);
        let fctx = FileStepContext {
            url_files,
            image_roots,
            store: &b.store,
            snapshots: &b.snapshots,
            context_dir: &context_dir,
            ignore,
            dockerfile: &self.req.dockerfile,
            stage_roots,
            scratch_dir: &self.scratch_dir,
            settings: &self.settings,
            timer: crate::progress::PhaseTimer {
                reporter: self.reporter(),
                prefix: &timing_prefix,
            },
            escape: self.plan.escape,
            copy_donor: Donor::find(
                &b.state_root,
                &b.snapshots,
                &step.location,
                stage.image.top_chain(),
            ),
        };
        let workdir = stage.workdir();
        let hashes = b.context_hashes(&context_dir);
        let mut prepared = prepare_copy(&fctx, &source_instr, &workdir, &hashes)?;
        let material = StepMaterial::copy(
            &stage.key,
            // The copy itself needs neither: no second copy of one entry per file.
            std::mem::take(&mut prepared.material),
            std::mem::take(&mut prepared.files),
        );
        let line = created_by(instr, None, &workdir);
        let cached = self
            .layer_step(stage, step, material, line, async |parent| {
                if let Some(from) = &prepared.from {
                    self.materialize(from.as_ref()).await?;
                }
                let done = execute_copy(&fctx, &prepared, &workdir, parent.as_ref(), &hashes)?;
                let files = done.contents.unwrap_or_default();
                Donor::remember(
                    &b.state_root,
                    &step.location,
                    &done.layer.chain,
                    parent.as_ref(),
                    files,
                );
                Ok(done.layer)
            })
            .await;
        let _ = std::fs::remove_dir_all(&url_dir);
        cached
    }

    /// `COPY --from`: the top snapshot of the stage it names (waiting until that stage is
    /// built), or of the image, pulled and unpacked like a base.
    #[allow(clippy::type_complexity)]
    async fn copy_from_roots(
        &self,
        stage: usize,
        instr: &Instruction,
    ) -> Result<
        (
            BTreeMap<usize, Option<ChainId>>,
            BTreeMap<String, Option<ChainId>>,
        ),
        BuildError,
    > {
        let mut stage_roots = BTreeMap::new();
        let mut image_roots = BTreeMap::new();
        let Command::Copy(c) = &instr.command else {
            return Ok((stage_roots, image_roots));
        };
        let Some(from) = &c.from else {
            return Ok((stage_roots, image_roots));
        };
        match self.plan.resolve_from(&self.req.dockerfile, from) {
            FromRef::Stage(i) => {
                let built = self.board.wait(stage, i, from)?;
                stage_roots.insert(i, built.image.top_chain().cloned());
            }
            FromRef::Image(reference) => {
                let (_, image) = self.resolve_image(&reference, &self.req.platform).await?;
                image_roots.insert(from.clone(), image.top_chain().cloned());
            }
            FromRef::Dir(_) => return Err(BuildError::FromNotReady(from.clone())),
        }
        Ok((stage_roots, image_roots))
    }

    /// The directory of the named context a `COPY --from` names, if it names one.
    fn named_dir(&self, instr: &Instruction) -> Option<std::path::PathBuf> {
        let Command::Copy(c) = &instr.command else {
            return None;
        };
        match self
            .plan
            .resolve_from(&self.req.dockerfile, c.from.as_deref()?)
        {
            FromRef::Dir(dir) => Some(dir),
            _ => None,
        }
    }

    /// ADD's URL sources, downloaded into `dir` (checked against `--checksum`).
    async fn add_urls(
        &self,
        instr: &Instruction,
        dir: &std::path::Path,
    ) -> Result<Vec<UrlFile>, BuildError> {
        match &instr.command {
            Command::Add(a) if a.files.sources.iter().any(|s| is_url(s)) => {
                download_urls(&a.files.sources, a.checksum.as_deref(), dir).await
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// The COPY without its `--from`: a copy from a named context's directory reads it as the
/// build context.
fn without_from(instr: &Instruction) -> Instruction {
    let mut plain = instr.clone();
    if let Command::Copy(c) = &mut plain.command {
        c.from = None;
    }
    plain
}
