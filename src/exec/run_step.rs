//! RUN: the command in the sandbox over a writable snapshot, with its `--mount`s, then the
//! snapshot committed as a layer.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::dockerfile::instructions::mount::{Mount, MountType, Sharing};
use crate::dockerfile::instructions::{CommandLine, Run};
use crate::sandbox::{ExtraMount, ExtraMountKind, NetworkMode, RunSpec, Sandbox, Stream};
use crate::snapshot::{ChainId, Snapshotter};

use super::cache_mount::{cache_dir_name, cache_seed, seed_cache};
use super::error::BuildError;

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    File(PathBuf),
    Env(String),
}

impl Secret {
    fn read(&self, id: &str) -> Result<Vec<u8>, BuildError> {
        match self {
            Secret::File(p) => std::fs::read(p).map_err(BuildError::io("read secret file", p)),
            Secret::Env(var) => {
                std::env::var(var)
                    .map(String::into_bytes)
                    .map_err(|_| BuildError::SecretEnvUnset {
                        id: id.to_string(),
                        var: var.clone(),
                    })
            }
        }
    }
}

/// The command line a RUN executes, heredocs included, as BuildKit builds it.
pub fn run_args(cmd: &CommandLine, shell: &[String]) -> Vec<String> {
    if !cmd.shell_form {
        return cmd.args.clone();
    }
    let line = cmd.args.join(" ");
    let mut args = shell.to_vec();
    match cmd.files.as_slice() {
        [] => args.push(line),
        // `RUN <<EOF` alone: the body is the script.
        [only]
            if line.trim() == format!("<<{}", only.name)
                || line.trim() == format!("<<-{}", only.name) =>
        {
            args.push(only.data.clone())
        }
        files => {
            // Anything else is handed to the shell with its here-documents.
            let mut script = line;
            script.push('\n');
            for f in files {
                script.push_str(&f.data);
                script.push_str(&f.name);
                script.push('\n');
            }
            args.push(script);
        }
    }
    args
}

/// Everything a RUN needs besides the instruction.
pub struct RunContext<'a> {
    pub sandbox: &'a Sandbox,
    pub snapshots: &'a Snapshotter,
    pub context_dir: &'a Path,
    pub cache_mounts_dir: &'a Path,
    pub scratch_dir: &'a Path,
    pub secrets: &'a BTreeMap<String, Secret>,
    pub default_network: NetworkMode,
    /// Roots of earlier stages/images by name, for `--mount=from=`.
    pub from_roots: &'a BTreeMap<String, PathBuf>,
    /// What identifies each of those roots' content (a chain ID), for cache mounts from them.
    pub from_ids: &'a BTreeMap<String, String>,
}

/// Files and directories the runtime creates as mount points and that must not end up in the
/// layer when the image did not have them.
fn stub_paths(mounts: &[ExtraMount]) -> Vec<String> {
    let mut out = vec!["/etc/hosts".to_string(), "/etc/resolv.conf".to_string()];
    out.extend(mounts.iter().map(|m| m.target.clone()));
    out
}

fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, crate::layer::overlay::opaque_xattr(), &mut buf), Ok(n) if n > 0)
}

/// Does `path` exist in the stack of `lowers` (top first), honouring whiteouts?
fn exists_in_lowers(lowers: &[PathBuf], path: &str) -> bool {
    let rel = path.trim_start_matches('/');
    for lower in lowers {
        let p = lower.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt as _;
                use std::os::unix::fs::MetadataExt as _;
                // An overlay whiteout hides it from here down.
                return !(m.file_type().is_char_device() && m.rdev() == 0);
            }
            Err(_) => continue,
        }
    }
    false
}

/// Removes mount stubs the runtime left in `upper` (empty files or directories that the lower
/// layers did not have), and their empty parents likewise.
pub fn clean_stubs(upper: &Path, lowers: &[PathBuf], mounts: &[ExtraMount]) {
    for stub in stub_paths(mounts) {
        let mut path = stub.trim_end_matches('/').to_string();
        let mut is_stub = true;
        while !path.is_empty() && path != "/" {
            let p = upper.join(path.trim_start_matches('/'));
            let below = exists_in_lowers(lowers, &path);
            let removed = match std::fs::symlink_metadata(&p) {
                Ok(m) if is_stub && !below && m.is_file() && m.len() == 0 => {
                    std::fs::remove_file(&p).is_ok()
                }
                // A directory the runtime only created or copied up to hold the stub (its
                // timestamps changed, nothing else): overlay shows the lower one again.
                Ok(m) if m.is_dir() && !is_opaque(&p) => std::fs::remove_dir(&p).is_ok(),
                _ => false,
            };
            is_stub = false;
            if !removed {
                break;
            }
            path = match path.rfind('/') {
                Some(0) | None => String::new(),
                Some(i) => path[..i].to_string(),
            };
        }
    }
}

/// What RUN's `--mount`s become: sandbox mounts, extra env (secrets as env), the mounts kiln
/// made for them (kept mounted until the step ends) and the cache locks held meanwhile.
#[derive(Default)]
pub struct PreparedMounts {
    pub mounts: Vec<ExtraMount>,
    pub env: Vec<String>,
    pub guards: Vec<super::mounts::MountGuard>,
    pub locks: Vec<std::fs::File>,
    /// The first ssh mount's socket path: `SSH_AUTH_SOCK` unless the RUN's env sets it.
    pub ssh_auth_sock: Option<String>,
}

/// Turns RUN's `--mount`s into sandbox mounts.
pub fn prepare_mounts(
    run: &Run,
    ctx: &RunContext<'_>,
    workdir: &str,
    step_dir: &Path,
) -> Result<PreparedMounts, BuildError> {
    let mut out = PreparedMounts::default();
    let mut ssh = 0;
    for (i, m) in run.mounts.iter().enumerate() {
        // `filepath.Join("/", dir, target)` for a relative one, as BuildKit: the WORKDIR may be
        // written `/a/../b`.
        let target = m.target.clone().map(|t| {
            if t.starts_with('/') {
                t
            } else {
                super::metadata::clean_abs(&format!("{}/{}", workdir.trim_end_matches('/'), t))
            }
        });
        let scratch = |name: &str| step_dir.join(format!("{name}-{i}"));
        match m.typ {
            MountType::Cache => {
                let target = target.ok_or(BuildError::MountNeedsTarget("cache"))?;
                out.cache(ctx, m, target, &scratch("cache-private"))?;
            }
            MountType::Tmpfs => {
                let target = target.ok_or(BuildError::MountNeedsTarget("tmpfs"))?;
                out.mounts.push(ExtraMount {
                    target,
                    kind: ExtraMountKind::Tmpfs {
                        size: m.size,
                        mode: None,
                    },
                });
            }
            MountType::Secret => out.secret(ctx, m, target, &scratch("secret"))?,
            MountType::Bind => {
                let target = target.ok_or(BuildError::MountNeedsTarget("bind"))?;
                out.bind(ctx, m, target, &scratch("bind"))?;
            }
            // kiln forwards no SSH agent: BuildKit runs an optional ssh mount that has none
            // without it, with SSH_AUTH_SOCK still naming the first one's socket.
            MountType::Ssh if m.required => {
                return Err(BuildError::SshNotForwarded(
                    m.id.clone().unwrap_or_else(|| "default".into()),
                ))
            }
            MountType::Ssh => {
                let socket = target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh}"));
                out.ssh_auth_sock.get_or_insert(socket);
                ssh += 1;
            }
        }
    }
    Ok(out)
}

impl PreparedMounts {
    /// `type=cache`: a directory under the state root kept across builds. `locked` waits for
    /// other builds using it; `private` takes a fresh, throwaway directory (`private_dir`)
    /// when another build holds it; `shared` just shares it.
    fn cache(
        &mut self,
        ctx: &RunContext<'_>,
        m: &Mount,
        target: String,
        private_dir: &Path,
    ) -> Result<(), BuildError> {
        // BuildKit's default id is the target as written, cleaned: `target=cache` in two
        // WORKDIRs is one cache, as are `cache` and `./cache/`.
        let id = m.id.clone().unwrap_or_else(|| {
            crate::context::go_path_clean(m.target.as_deref().unwrap_or(&target))
        });
        let from = match &m.from {
            Some(name) => Some(cache_seed(ctx, m, name)?),
            None => None,
        };
        let name = match &from {
            Some(seed) => format!("{}+from-{}", cache_dir_name(&id, m), seed.id),
            None => cache_dir_name(&id, m),
        };
        let dir = ctx.cache_mounts_dir.join(&name);
        if let Some(seed) = from.as_ref().filter(|_| !dir.exists()) {
            seed_cache(seed, &dir, ctx.scratch_dir)?;
        } else if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(BuildError::io("create cache mount", &dir))?;
            use std::os::unix::fs::PermissionsExt as _;
            let mode = m.mode.unwrap_or(0o755);
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                .map_err(BuildError::io("chmod cache mount", &dir))?;
            std::os::unix::fs::chown(&dir, Some(m.uid.unwrap_or(0)), Some(m.gid.unwrap_or(0)))
                .map_err(BuildError::io("chown cache mount", &dir))?;
        }
        let lock_path = dir.with_file_name(format!("{name}.lock"));
        // Chroot isolation moves the directory into the root: one RUN at a time may have it.
        let sharing = match m.sharing {
            Some(Sharing::Private) => Some(Sharing::Private),
            _ if ctx.sandbox.runtime().is_none() => Some(Sharing::Locked),
            other => other,
        };
        let dir = match sharing {
            Some(Sharing::Locked) | Some(Sharing::Private) => {
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(BuildError::io("open", &lock_path))?;
                if sharing == Some(Sharing::Locked) {
                    lock.lock().map_err(BuildError::io("lock", &lock_path))?;
                    self.locks.push(lock);
                    dir
                } else if lock.try_lock().is_ok() {
                    self.locks.push(lock);
                    dir
                } else {
                    std::fs::create_dir_all(private_dir)
                        .map_err(BuildError::io("create", private_dir))?;
                    private_dir.to_path_buf()
                }
            }
            _ => dir,
        };
        self.mounts.push(ExtraMount {
            target,
            kind: ExtraMountKind::Cache {
                source: dir,
                readonly: m.read_only,
            },
        });
        Ok(())
    }

    /// `type=secret`: the value as a file (mode, uid, gid as given; `/run/secrets/<id>` by
    /// default) written to `file` and bound read-only, and/or as an env variable (`env=`).
    fn secret(
        &mut self,
        ctx: &RunContext<'_>,
        m: &Mount,
        target: Option<String>,
        file: &Path,
    ) -> Result<(), BuildError> {
        let id =
            m.id.clone()
                .or_else(|| {
                    target
                        .as_ref()
                        .and_then(|t| t.rsplit('/').next().map(str::to_string))
                })
                .ok_or(BuildError::MountNeedsTarget("secret"))?;
        let Some(secret) = ctx.secrets.get(&id) else {
            if m.required {
                return Err(BuildError::SecretRequired(id));
            }
            return Ok(());
        };
        let value = secret.read(&id)?;
        if let Some(var) = &m.env {
            self.env
                .push(format!("{var}={}", String::from_utf8_lossy(&value)));
            if m.target.is_none() {
                return Ok(());
            }
        }
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(m.mode.unwrap_or(0o400))
                .open(file)
                .map_err(BuildError::io("write secret", file))?;
            f.write_all(&value)
                .map_err(BuildError::io("write secret", file))?;
        }
        std::os::unix::fs::chown(file, Some(m.uid.unwrap_or(0)), Some(m.gid.unwrap_or(0)))
            .map_err(BuildError::io("chown secret", file))?;
        self.mounts.push(ExtraMount {
            target: target.unwrap_or_else(|| format!("/run/secrets/{id}")),
            kind: ExtraMountKind::Bind {
                source: file.to_path_buf(),
                readonly: true,
            },
        });
        Ok(())
    }

    /// `type=bind`: a path of the context, another stage or an image. A `rw` bind takes
    /// writes that are thrown away afterwards: a directory gets a throwaway overlay on top
    /// (under `scratch`), a file a throwaway copy.
    fn bind(
        &mut self,
        ctx: &RunContext<'_>,
        m: &Mount,
        target: String,
        scratch: &Path,
    ) -> Result<(), BuildError> {
        let root = match &m.from {
            Some(from) => ctx
                .from_roots
                .get(from)
                .cloned()
                .ok_or_else(|| BuildError::FromNotReady(from.clone()))?,
            None => ctx.context_dir.to_path_buf(),
        };
        // Absolute for the runtime (the context may be given relative to the working
        // directory), and symlinks on the way resolved inside the root, as BuildKit does: a
        // mount never leads to a host path outside it.
        let root = std::path::absolute(&root).map_err(BuildError::io("resolve", &root))?;
        let real = crate::context::rootpath::resolve(&root, m.source.as_deref().unwrap_or("/"))
            .map_err(crate::context::copy::CopyError::from)?;
        let source = root.join(std::ffi::OsStr::from_bytes(&real));
        if std::fs::symlink_metadata(&source).is_err() {
            return Err(BuildError::MountSourceMissing(
                m.source.clone().unwrap_or_else(|| "/".into()),
            ));
        }
        // Chroot isolation copies a bind into the root: writes are thrown away with it.
        let source = if m.read_only || ctx.sandbox.runtime().is_none() {
            source
        } else if source.is_dir() {
            for d in ["upper", "work", "merged"] {
                std::fs::create_dir_all(scratch.join(d))
                    .map_err(BuildError::io("create", scratch.join(d)))?;
            }
            let overlay = crate::snapshot::overlay_mount(vec![
                format!("lowerdir={}", source.display()),
                format!("upperdir={}", scratch.join("upper").display()),
                format!("workdir={}", scratch.join("work").display()),
            ]);
            let guard = super::mounts::MountGuard::mount(&[overlay], &scratch.join("merged"))?;
            let merged = guard.path().to_path_buf();
            self.guards.push(guard);
            merged
        } else {
            let copy = scratch.with_extension("file");
            std::fs::copy(&source, &copy).map_err(BuildError::io("copy", &source))?;
            copy
        };
        self.mounts.push(ExtraMount {
            target,
            kind: ExtraMountKind::Bind {
                source,
                readonly: m.read_only,
            },
        });
        Ok(())
    }
}

/// Runs `spec` on a fresh writable snapshot over `parent`; returns the active key, the exit
/// status and the tail of the output.
pub fn run_in_snapshot(
    ctx: &RunContext<'_>,
    key: &str,
    parent: Option<&ChainId>,
    mut spec: RunSpec,
    on_output: &mut dyn FnMut(&str),
) -> Result<(crate::sandbox::ExitStatus, Vec<String>), BuildError> {
    spec.rootfs = ctx.snapshots.prepare(key, parent)?;
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut pending = String::new();
    let mut output = |_: Stream, bytes: &[u8]| {
        pending.push_str(&String::from_utf8_lossy(bytes));
        while let Some(nl) = pending.find('\n') {
            let line: String = pending.drain(..=nl).collect();
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            on_output(&line);
            tail.push_back(line);
            if tail.len() > 10 {
                tail.pop_front();
            }
        }
    };
    let status = ctx.sandbox.run(&spec, &mut output);
    if !pending.is_empty() {
        on_output(&pending);
        tail.push_back(pending.clone());
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = ctx.snapshots.remove_active(key);
            return Err(e.into());
        }
    };
    let mount_points: Vec<PathBuf> = crate::snapshot::RUNTIME_MOUNT_POINTS
        .iter()
        .map(PathBuf::from)
        .collect();
    let run_mounts: Vec<PathBuf> = spec
        .mounts
        .iter()
        .map(|m| PathBuf::from(m.target.trim_start_matches('/')))
        .collect();
    let mount_points = crate::snapshot::MountPoints {
        runtime: &mount_points,
        run: &run_mounts,
    };
    if let Err(e) = ctx.snapshots.settle(key, mount_points) {
        let _ = ctx.snapshots.remove_active(key);
        return Err(e.into());
    }
    if let Ok(upper) = ctx.snapshots.upper_dir(key) {
        let lowers = match parent {
            Some(p) => ctx.snapshots.lower_dirs(p).unwrap_or_default(),
            None => Vec::new(),
        };
        clean_stubs(&upper, &lowers, &spec.mounts);
    }
    Ok((status, tail.into_iter().collect()))
}

/// Reads `/etc/passwd` and `/etc/group` from a stack of lower dirs (top first).
pub fn read_from_lowers(lowers: &[PathBuf], path: &str) -> Option<String> {
    let rel = path.trim_start_matches('/');
    for lower in lowers {
        let p = lower.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => return std::fs::read_to_string(&p).ok(),
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::instructions::InlineFile;

    fn line(args: &[&str], shell_form: bool, files: Vec<InlineFile>) -> CommandLine {
        CommandLine {
            args: args.iter().map(|s| s.to_string()).collect(),
            shell_form,
            files,
        }
    }

    #[test]
    fn run_args_shell_exec_and_heredocs() {
        let sh = vec!["/bin/sh".to_string(), "-c".to_string()];
        assert_eq!(
            run_args(&line(&["echo", "hi"], true, vec![]), &sh),
            vec!["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(
            run_args(&line(&["/bin/true"], false, vec![]), &sh),
            vec!["/bin/true"]
        );
        let f = InlineFile {
            name: "EOT".into(),
            data: "echo a\necho b\n".into(),
            chomp: false,
            expand: true,
        };
        assert_eq!(
            run_args(&line(&["<<EOT"], true, vec![f.clone()]), &sh),
            vec!["/bin/sh", "-c", "echo a\necho b\n"]
        );
        assert_eq!(
            run_args(&line(&["<<EOT", "sh", "-e"], true, vec![f]), &sh),
            vec!["/bin/sh", "-c", "<<EOT sh -e\necho a\necho b\nEOT\n"]
        );
    }

    #[test]
    fn stubs_are_removed_only_when_new_and_empty() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/hosts"), "x").unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("run/secrets")).unwrap();
        std::fs::write(upper.join("etc/hosts"), "").unwrap();
        std::fs::write(upper.join("etc/resolv.conf"), "").unwrap();
        std::fs::write(upper.join("run/secrets/token"), "").unwrap();
        let mounts = vec![ExtraMount {
            target: "/run/secrets/token".into(),
            kind: ExtraMountKind::Tmpfs {
                size: None,
                mode: None,
            },
        }];
        clean_stubs(&upper, &[lower], &mounts);
        assert!(upper.join("etc/hosts").exists(), "existed below: kept");
        assert!(!upper.join("etc/resolv.conf").exists());
        assert!(
            !upper.join("run").exists(),
            "empty parents created for the stub go too"
        );
    }
}
