//! Config-only instructions (ENV, ARG, LABEL, EXPOSE, CMD, ENTRYPOINT, USER, VOLUME, SHELL,
//! ONBUILD, …): they change the image config and its history, never the filesystem. Later
//! steps see ENV/USER/WORKDIR/SHELL through their own key fields, so LABEL, EXPOSE, CMD, …
//! never bust them (see `graph::material`).

use crate::dockerfile::{Command, Instruction};

use super::super::error::BuildError;
use super::super::history::created_by;
use super::super::metadata;
use super::super::session::BuildSession;
use super::super::stage::StageState;

impl BuildSession<'_> {
    pub(super) fn config_only(
        &self,
        stage: &mut StageState,
        instr: &Instruction,
    ) -> Result<(), BuildError> {
        let workdir = stage.workdir();
        match &instr.command {
            Command::Arg { .. } => {
                stage.push_history(&self.created, created_by(instr, None, &workdir), true);
            }
            // Stored for images built on this one; no history entry, as BuildKit.
            Command::Onbuild(_) => {
                metadata::apply(&mut stage.image.config, &mut stage.meta, &instr.command)?;
            }
            other => {
                let shell = metadata::current_shell(&stage.image.config);
                metadata::apply(&mut stage.image.config, &mut stage.meta, other)?;
                let cmd_args = match other {
                    Command::Cmd(l) | Command::Entrypoint(l) => {
                        Some(metadata::command_args(l, &shell))
                    }
                    _ => None,
                };
                let line = created_by(instr, cmd_args.as_deref(), &workdir);
                stage.push_history(&self.created, line, true);
            }
        }
        Ok(())
    }
}
