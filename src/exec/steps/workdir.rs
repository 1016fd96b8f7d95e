//! WORKDIR: a config change that also creates the directory (owned by USER) in a layer of its
//! own when it is not `/`, as BuildKit does.

use crate::dockerfile::Instruction;
use crate::graph::StepMaterial;

use super::super::error::BuildError;
use super::super::file_step::workdir_step;
use super::super::metadata;
use super::super::session::BuildSession;
use super::super::stage::{StageState, StepInfo};

impl BuildSession<'_> {
    pub(super) async fn workdir(
        &self,
        stage: &mut StageState,
        instr: &Instruction,
        step: &StepInfo,
    ) -> Result<Option<bool>, BuildError> {
        metadata::apply(&mut stage.image.config, &mut stage.meta, &instr.command)?;
        let dir = stage.workdir();
        let line = format!("WORKDIR {dir}");
        if dir == "/" {
            stage.push_history(&self.created, line, true);
            return Ok(None);
        }
        self.step_started(step);
        let user = stage.user();
        let material = StepMaterial::workdir(&stage.key, &dir, &user);
        let cached = self
            .layer_step(stage, step, material, line, async |parent| {
                let prefix = format!("#{}", step.id);
                let sink = self.layer_sink(&prefix);
                // The directory is made at the cleaned path (`/a/../b` makes only `/b`).
                let clean = metadata::clean_abs(&dir);
                workdir_step(&sink, parent.as_ref(), &clean, &user, &self.scratch_dir)
            })
            .await?;
        Ok(Some(cached))
    }
}
