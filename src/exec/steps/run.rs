//! RUN: the command in the sandbox over a writable snapshot of the stage, with its `--mount`s
//! (from the context, a cache, a secret, a tmpfs, another stage or an image), then the snapshot
//! committed as a layer.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::dockerfile::instructions::mount::NetworkMode as RunNetwork;
use crate::dockerfile::instructions::{Run, SecurityMode};
use crate::graph::{FromRef, RunInputs, StepMaterial};
use crate::progress::Event;
use crate::sandbox::{resolve_user_from, NetworkMode, RunSpec, Security};
use crate::snapshot::ChainId;

use super::super::base::LayerState;
use super::super::commit::commit_active;
use super::super::error::BuildError;
use super::super::history::run_created_by;
use super::super::metadata;
use super::super::mounts::MountGuard;
use super::super::run_step::{
    prepare_mounts, read_from_lowers, run_args, run_in_snapshot, RunContext,
};
use super::super::session::{unique, BuildSession};
use super::super::stage::{StageState, StepInfo};

/// What a RUN executes, resolved against the stage before the cache is asked.
struct RunCommand<'a> {
    run: &'a Run,
    stage: usize,
    step_id: &'a str,
    args: Vec<String>,
    env: Vec<String>,
    workdir: String,
    user: String,
    network: NetworkMode,
    security: Security,
}

impl BuildSession<'_> {
    pub(super) async fn run(
        &self,
        stage: &mut StageState,
        run: &Run,
        step: &StepInfo,
    ) -> Result<bool, BuildError> {
        self.step_started(step);
        crate::sandbox::emulation::check_can_run(&self.plan.stages[stage.index].platform)?;
        let security = run_security(run, self.req.allow_insecure)?;
        let shell = metadata::current_shell(&stage.image.config);
        let command = RunCommand {
            run,
            stage: stage.index,
            step_id: &step.id,
            args: run_args(&run.cmd, &shell),
            env: stage.scope.run_env(),
            workdir: stage.workdir(),
            user: stage.user(),
            network: match run.network {
                Some(RunNetwork::None) => NetworkMode::None,
                Some(_) => NetworkMode::Host,
                None => self.req.network,
            },
            security,
        };
        let mounts: Vec<String> = run.mounts.iter().map(|m| m.raw.clone()).collect();
        let material = StepMaterial::run(
            &stage.key,
            &RunInputs {
                args: &command.args,
                env: &command.env,
                workdir: &command.workdir,
                user: &command.user,
                network: &format!("{:?}", command.network),
                mounts: &mounts,
                insecure: security == Security::Insecure,
                container: &self.req.container.describe(),
            },
        );
        let line = run_created_by(&command.args, &stage.scope.run_arg_pairs());
        self.layer_step(stage, step, material, line, async |parent| {
            self.execute_run(&command, parent).await
        })
        .await
    }

    /// Runs the command on a fresh snapshot over `parent` and commits what it changed.
    async fn execute_run(
        &self,
        command: &RunCommand<'_>,
        parent: Option<ChainId>,
    ) -> Result<LayerState, BuildError> {
        let b = self.builder;
        let lowers = match &parent {
            Some(p) => b.snapshots.lower_dirs(p)?,
            None => Vec::new(),
        };
        let user = resolve_user_from(
            &command.user,
            read_from_lowers(&lowers, "/etc/passwd").as_deref(),
            read_from_lowers(&lowers, "/etc/group").as_deref(),
        )?;
        let step_dir = self.scratch_dir.join(unique("run"));
        std::fs::create_dir_all(&step_dir).map_err(BuildError::io("create", &step_dir))?;
        let (from_roots, from_ids, from_guards) = self.mount_from_roots(command, &step_dir).await?;
        let ctx = RunContext {
            sandbox: &b.sandbox,
            snapshots: &b.snapshots,
            context_dir: &self.req.context_dir,
            cache_mounts_dir: &b.state_root.join("cache-mounts"),
            scratch_dir: &step_dir,
            secrets: &self.req.secrets,
            default_network: self.req.network,
            from_roots: &from_roots,
            from_ids: &from_ids,
        };
        let prepared = prepare_mounts(command.run, &ctx, &command.workdir, &step_dir)?;
        let mut env: Vec<String> = command.env.iter().cloned().chain(prepared.env).collect();
        if let Some(sock) = &prepared.ssh_auth_sock {
            if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                env.push(format!("SSH_AUTH_SOCK={sock}"));
            }
        }
        let spec = RunSpec {
            args: command.args.clone(),
            env,
            cwd: command.workdir.clone(),
            user,
            network: command.network,
            mounts: prepared.mounts,
            security: command.security,
            extra_hosts: self.req.container.extra_hosts.clone(),
            shm_size: self.req.container.shm_size,
            ulimits: self.req.container.ulimits.clone(),
            ..RunSpec::default()
        };
        let active = unique("run");
        let mut on_output = |line: &str| {
            self.reporter().report(Event::StepOutput {
                id: command.step_id.to_string(),
                line: line.to_string(),
            })
        };
        let prefix = format!("#{}", command.step_id);
        let sink = self.layer_sink(&prefix);
        let result = sink.timer.time("run", || {
            run_in_snapshot(&ctx, &active, parent.as_ref(), spec, &mut on_output)
        });
        for guard in prepared.guards.into_iter().chain(from_guards) {
            let _ = guard.unmount();
        }
        drop(prepared.locks);
        let _ = std::fs::remove_dir_all(&step_dir);
        let (status, tail) = result?;
        if !status.success() {
            let _ = b.snapshots.remove_active(&active);
            return Err(BuildError::RunFailed {
                command: command.args.join(" "),
                code: status.code(),
                tail,
            });
        }
        commit_active(&sink, &active, parent.as_ref())
    }

    /// `--mount=from=<stage|image>`: each root, mounted read-only under `step_dir` for this
    /// step (an empty directory for a root without layers), and what identifies its content
    /// (its chain ID; a named context's path). Waits for a stage that is not built yet.
    async fn mount_from_roots(
        &self,
        command: &RunCommand<'_>,
        step_dir: &std::path::Path,
    ) -> Result<FromRoots, BuildError> {
        let b = self.builder;
        let mut roots = BTreeMap::new();
        let mut ids = BTreeMap::new();
        let mut guards = Vec::new();
        for (i, m) in command.run.mounts.iter().enumerate() {
            let Some(from) = &m.from else { continue };
            if roots.contains_key(from) {
                continue;
            }
            let chain = match self.plan.resolve_from(&self.req.dockerfile, from) {
                FromRef::Stage(idx) => self
                    .board
                    .wait(command.stage, idx, from)?
                    .image
                    .top_chain()
                    .cloned(),
                // A named context's directory is bound as it is.
                FromRef::Dir(dir) => {
                    ids.insert(from.clone(), format!("dir:{}", dir.display()));
                    roots.insert(from.clone(), dir);
                    continue;
                }
                FromRef::Image(reference) => self
                    .resolve_image(&reference, &self.req.platform)
                    .await?
                    .1
                    .top_chain()
                    .cloned(),
            };
            self.materialize(chain.as_ref()).await?;
            ids.insert(
                from.clone(),
                chain
                    .as_ref()
                    .map_or("empty".to_string(), |c| c.to_string()),
            );
            let target = step_dir.join(format!("from-{i}"));
            match chain {
                Some(c) => {
                    let guard = MountGuard::mount(&b.snapshots.view(&c)?, &target)?;
                    roots.insert(from.clone(), guard.path().to_path_buf());
                    guards.push(guard);
                }
                None => {
                    std::fs::create_dir_all(&target).map_err(BuildError::io("create", &target))?;
                    roots.insert(from.clone(), target);
                }
            }
        }
        Ok((roots, ids, guards))
    }
}

/// The roots `--mount=from=` reads, by name; what identifies each one's content; the mounts
/// held for them.
type FromRoots = (
    BTreeMap<String, PathBuf>,
    BTreeMap<String, String>,
    Vec<MountGuard>,
);

/// How the RUN is confined: `--security=insecure` only with the `security.insecure`
/// entitlement (`kiln build --allow security.insecure`), as BuildKit has it.
fn run_security(run: &Run, allow_insecure: bool) -> Result<Security, BuildError> {
    match run.security {
        Some(SecurityMode::Insecure) if allow_insecure => Ok(Security::Insecure),
        Some(SecurityMode::Insecure) => Err(BuildError::InsecureNotAllowed),
        Some(SecurityMode::Sandbox) | None => Ok(Security::Sandbox),
    }
}
