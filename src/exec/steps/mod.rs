//! Dispatching one expanded instruction, one module per instruction family: RUN, COPY/ADD,
//! WORKDIR (which may make a layer), and the config-only rest.

mod config;
mod copy;
mod run;
mod workdir;

use crate::dockerfile::{Command, Instruction};

use super::error::BuildError;
use super::session::BuildSession;
use super::stage::{StageState, StepInfo};

impl BuildSession<'_> {
    /// Runs one expanded instruction; `Some(cached)` when it was a step to report as done.
    pub(super) async fn dispatch(
        &self,
        stage: &mut StageState,
        instr: &Instruction,
        step: &StepInfo,
    ) -> Result<Option<bool>, BuildError> {
        match &instr.command {
            Command::Run(run) => self.run(stage, run, step).await.map(Some),
            Command::Copy(_) | Command::Add(_) => self.copy(stage, instr, step).await.map(Some),
            Command::Workdir { .. } => self.workdir(stage, instr, step).await,
            Command::From(_) => Ok(None),
            _ => self.config_only(stage, instr).map(|()| None),
        }
    }
}
