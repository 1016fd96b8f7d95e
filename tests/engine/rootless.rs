//! Rootless kiln: `kiln build` and `kiln run` as ordinary users (made here, as CI runs the tests
//! as root), in the user namespace kiln enters itself: with subordinate ID ranges through
//! newuidmap/newgidmap, and with the single-ID fallback of a user that has none.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use crate::support::busybox::{fixtures, ok, registry_with_busybox, run, Registry};

/// A user with subordinate ID ranges.
const RANGED: &str = "kilnrootless";
/// A (system) user without any, for the single-ID fallback.
const SINGLE: &str = "kilnsingle";

/// useradd/usermod lock /etc/passwd: one test at a time sets users up.
static USERS: Mutex<()> = Mutex::new(());

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn subid_ranges(file: &str, name: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}:")))
        .filter_map(|r| {
            let (start, count) = r.split_once(':')?;
            let (start, count): (u64, u64) = (start.parse().ok()?, count.parse().ok()?);
            Some(format!("{start}-{}", start + count - 1))
        })
        .collect()
}

/// Makes `name` (with a home) if missing; gives it the test's subordinate ranges, or takes all
/// of its ranges away.
fn ensure_user(name: &str, ranged: bool) {
    let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
    crate::support::busybox::require_tool_on_path("newuidmap", "uidmap");
    crate::support::busybox::require_tool_on_path("runuser", "util-linux");
    if !user_exists(name) {
        let mut cmd = Command::new("useradd");
        cmd.arg("--create-home");
        if !ranged {
            // System users get no subordinate ranges from login.defs.
            cmd.arg("--system");
        }
        run(cmd.arg(name));
    }
    if ranged {
        if subid_ranges("/etc/subuid", name).is_empty()
            || subid_ranges("/etc/subgid", name).is_empty()
        {
            run(Command::new("usermod").args([
                "--add-subuids",
                "200000-265535",
                "--add-subgids",
                "200000-265535",
                name,
            ]));
        }
    } else {
        for (file, flag) in [
            ("/etc/subuid", "--del-subuids"),
            ("/etc/subgid", "--del-subgids"),
        ] {
            for r in subid_ranges(file, name) {
                run(Command::new("usermod").args([flag, &r, name]));
            }
        }
    }
}

/// A work directory the user owns, with a copy of fixture `app` as `ctx`, and a kiln binary it
/// can execute.
struct Workspace {
    dir: tempfile::TempDir,
    user: &'static str,
    kiln: PathBuf,
}

impl Workspace {
    fn new(user: &'static str, app: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        run(Command::new("cp")
            .arg("-a")
            .arg(fixtures().join(app))
            .arg(dir.path().join("ctx")));
        let built = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
        let reachable = Command::new("runuser")
            .args(["-u", user, "--", "test", "-x"])
            .arg(&built)
            .status()
            .is_ok_and(|s| s.success());
        let kiln = if reachable {
            built
        } else {
            let copy = dir.path().join("kiln");
            std::fs::copy(&built, &copy).unwrap();
            copy
        };
        run(Command::new("chown")
            .args(["-R", &format!("{user}:")])
            .arg(dir.path()));
        Workspace { dir, user, kiln }
    }

    fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `kiln ARGS` as the user, with the state root in the workspace.
    fn kiln(&self, reg: &Registry, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.kiln_in(&self.root(), reg, args, env)
    }

    /// `kiln ARGS` as the user, with state root `root`.
    fn kiln_in(&self, root: &Path, reg: &Registry, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", self.user, "--"])
            .arg(&self.kiln)
            .arg(args[0])
            .arg("--root")
            .arg(root);
        if args[0] == "build" {
            cmd.args(["--registry-mirror", reg.addr.as_str()]);
        }
        cmd.args(&args[1..])
            .current_dir(self.dir.path())
            .env("DOCKER_CONFIG", self.dir.path().join("no-docker-config"))
            .env_remove("KILN_CONFIG")
            .env_remove("KILN_ROOT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run kiln as the user")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether `dir` belongs to `uid` (the state root stays the user's, not a subordinate ID's).
fn owned_by(dir: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).is_ok_and(|m| m.uid() == uid)
}

fn uid_of(user: &str) -> u32 {
    let out = run(Command::new("id").args(["-u", user]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn rootless_busybox_app_builds_and_runs() {
    ensure_user(RANGED, true);
    let reg = registry_with_busybox();
    let ws = Workspace::new(RANGED, "busybox");
    let ctx = ws.ctx();
    let out = ws.kiln(
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "app:1",
            ctx.to_str().unwrap(),
        ],
        &[],
    );
    let id = ok(&out);
    assert!(id.starts_with("sha256:"), "{id}");
    assert!(
        !stderr(&out).contains("maps only one ID"),
        "a user with ranges got the fallback: {}",
        stderr(&out)
    );
    assert!(owned_by(&ws.root(), uid_of(RANGED)));
    assert_eq!(ok(&ws.kiln(&reg, &["run", "app:1"], &[])), "hello world");
    // USER 1000:1000 is a subordinate ID, mapped.
    assert_eq!(
        ok(&ws.kiln(&reg, &["run", "app:1", "id", "-u"], &[])),
        "1000"
    );
    assert_eq!(
        ok(&ws.kiln(&reg, &["run", "app:1", "cat", "/work/built.txt"], &[])),
        "built by kiln"
    );
    // Commands without the engine read the same state root from outside the namespace.
    let images = ok(&ws.kiln(&reg, &["images"], &[]));
    assert!(images.contains("app"), "{images}");
    // A failing command's exit code comes through both processes.
    let failed = ws.kiln(&reg, &["run", "app:1", "sh", "-c", "exit 7"], &[]);
    assert_eq!(failed.status.code(), Some(7), "{}", stderr(&failed));
    // Push and pull as the user, outside the namespace, on the same state root.
    let pushed = format!("{}/team/app:1", reg.addr);
    ok(&ws.kiln(&reg, &["push", "app:1", &pushed], &[]));
    ok(&ws.kiln(&reg, &["rmi", "app:1"], &[]));
    ok(&ws.kiln(&reg, &["pull", &pushed], &[]));
    assert_eq!(ok(&ws.kiln(&reg, &["run", &pushed], &[])), "hello world");
    ok(&ws.kiln(&reg, &["prune"], &[]));
}

/// Builds the workspace's context rootless and as root with SOURCE_DATE_EPOCH=0 and `--no-cache`;
/// returns both image IDs and the root state dir (holding the image tagged `same:1`).
fn build_both(ws: &Workspace, reg: &Registry) -> (String, String, tempfile::TempDir) {
    let ctx = ws.ctx();
    let args = [
        "build",
        "--progress=plain",
        "--no-cache",
        "-t",
        "same:1",
        ctx.to_str().unwrap(),
    ];
    let rootless = ok(&ws.kiln(reg, &args, &[("SOURCE_DATE_EPOCH", "0")]));
    let root_state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("build")
        .arg("--root")
        .arg(root_state.path())
        .args(["--registry-mirror", reg.addr.as_str()])
        .args(&args[1..])
        .env("SOURCE_DATE_EPOCH", "0")
        .env("DOCKER_CONFIG", root_state.path().join("no-docker-config"))
        .env_remove("KILN_CONFIG");
    let root = ok(&cmd.output().unwrap());
    assert!(rootless.starts_with("sha256:"), "{rootless}");
    (rootless, root, root_state)
}

#[test]
fn rootless_and_root_builds_give_the_same_image_id() {
    ensure_user(RANGED, true);
    let reg = registry_with_busybox();
    let ws = Workspace::new(RANGED, "busybox");
    let (rootless, root, _state) = build_both(&ws, &reg);
    assert_eq!(rootless, root);
}

#[test]
fn rootless_opaque_directories_and_whiteouts_match_root() {
    ensure_user(RANGED, true);
    let reg = registry_with_busybox();
    let ws = Workspace::new(RANGED, "busybox");
    // A directory of an earlier layer deleted and made again is opaque; a deleted file is a
    // whiteout. In the user namespace overlayfs keeps both marks in user.overlay.* xattrs.
    std::fs::write(
        ws.ctx().join("Dockerfile"),
        "FROM busybox:latest\n\
         RUN mkdir -p /d/sub && touch /d/a /d/sub/c /gone\n\
         RUN rm -rf /d /gone && mkdir /d && touch /d/b\n\
         COPY files/ /d/\n\
         RUN ls -A /d > /listing\n\
         CMD [\"sh\", \"-c\", \"cat /listing; ls -A /d; test ! -e /gone && echo gone\"]\n",
    )
    .unwrap();
    let (rootless, root, _state) = build_both(&ws, &reg);
    assert_eq!(rootless, root);
    assert_eq!(
        ok(&ws.kiln(&reg, &["run", "same:1"], &[])),
        "b\none.txt\ntwo.txt\nb\none.txt\ntwo.txt\ngone"
    );
}

#[test]
fn single_id_fallback_builds_and_warns_once() {
    ensure_user(SINGLE, false);
    let reg = registry_with_busybox();
    let ws = Workspace::new(SINGLE, "busybox");
    let ctx = ws.ctx();
    // Only root exists in the namespace: no USER 1000.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:latest\nWORKDIR /work\nCOPY files/ ./\nRUN echo single > s.txt && id -u > who.txt\nCMD [\"cat\", \"/work/s.txt\", \"/work/who.txt\"]\n",
    )
    .unwrap();
    let out = ws.kiln(
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "one:1",
            ctx.to_str().unwrap(),
        ],
        &[],
    );
    ok(&out);
    let log = stderr(&out);
    assert_eq!(log.matches("maps only one ID").count(), 1, "{log}");
    assert!(log.contains("COPY --chown"), "{log}");
    assert_eq!(ok(&ws.kiln(&reg, &["run", "one:1"], &[])), "single\n0");
}

/// Unmounts a test's overlay whatever way the test ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn rootless_state_root_refusing_overlay_falls_back_to_directory_snapshots() {
    ensure_user(RANGED, true);
    let reg = registry_with_busybox();
    let ws = Workspace::new(RANGED, "busybox");
    // overlayfs is no upper filesystem for another overlay: a state root on one is refused.
    let base = ws.dir.path().join("ovl");
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let merged = base.join("m");
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            base.join("l").display(),
            base.join("u").display(),
            base.join("w").display()
        ))
        .arg(&merged));
    let _unmount = Unmount(merged.clone());
    run(Command::new("chown").arg(format!("{RANGED}:")).arg(&merged));
    let ctx = ws.ctx();
    let out = ws.kiln_in(
        &merged.join("state"),
        &reg,
        &["build", "-t", "fallback:1", ctx.to_str().unwrap()],
        &[],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    // It says why and what it does instead, once.
    assert_eq!(
        log.matches("overlayfs cannot be mounted in kiln's user namespace")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("falling back to directory snapshots"), "{log}");
    let ran = ok(&ws.kiln_in(&merged.join("state"), &reg, &["run", "fallback:1"], &[]));
    assert_eq!(
        ran, "hello world",
        "the image built on directory snapshots runs"
    );
}

#[test]
fn an_ordinary_user_asking_for_oci_or_chroot_isolation_gets_the_cause_and_fix() {
    ensure_user(RANGED, true);
    let reg = registry_with_busybox();
    let ws = Workspace::new(RANGED, "busybox");
    let ctx = ws.ctx();
    for (mode, says) in [
        ("oci", "--isolation=oci needs root with CAP_SYS_ADMIN"),
        ("chroot", "--isolation=chroot needs root (CAP_SYS_CHROOT"),
    ] {
        let flag = format!("--isolation={mode}");
        let out = ws.kiln(&reg, &["build", &flag, ctx.to_str().unwrap()], &[]);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{log}");
        assert!(
            log.contains(says) && log.contains("--isolation=rootless"),
            "{log}"
        );
    }
}
