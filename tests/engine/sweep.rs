//! A build killed with SIGKILL in the middle of a RUN leaves its container, overlay mounts and
//! scratch behind (nothing can clean up after SIGKILL); the next build clears them, and the
//! store stays valid throughout.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::busybox::{kiln, ok, registry_with_busybox};

fn mounts_under(root: &Path) -> Vec<String> {
    let root = fs::canonicalize(root).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root.to_string_lossy().to_string()))
        .collect()
}

#[test]
fn the_next_build_clears_what_a_killed_build_left() {
    let reg = registry_with_busybox();
    let root = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nRUN touch /started-marker && sleep 60\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "--root"])
        .arg(root.path())
        .args([
            "--registry-mirror",
            &reg.addr,
            "--progress",
            "plain",
            "-t",
            "slow",
        ])
        .arg(ctx.path())
        .env("DOCKER_CONFIG", root.path().join("no-docker-config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the RUN's container is up (its rootfs is mounted).
    let deadline = Instant::now() + Duration::from_secs(60);
    while mounts_under(root.path()).is_empty() {
        assert!(Instant::now() < deadline, "the RUN never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500)); // let the runtime start the container
    child.kill().unwrap(); // SIGKILL: no cleanup can run.
    child.wait().unwrap();
    assert!(
        !mounts_under(root.path()).is_empty(),
        "expected leftovers after SIGKILL"
    );

    // The store is valid, and the next build sweeps the leftovers.
    ok(&kiln(root.path(), &reg, &["images"]));
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nRUN echo quick > /q\n",
    )
    .unwrap();
    let ctx_path = ctx.path().to_string_lossy().to_string();
    ok(&kiln(
        root.path(),
        &reg,
        &["build", "--progress", "plain", "-t", "quick", &ctx_path],
    ));
    assert_eq!(mounts_under(root.path()), Vec::<String>::new());
    let leftovers: Vec<_> = ["tmp", "bundles"]
        .iter()
        .flat_map(|d| fs::read_dir(root.path().join(d)).into_iter().flatten())
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // No container process of the killed build is still running.
    let sleeping = Command::new("pgrep")
        .args(["-f", "sleep 60"])
        .output()
        .unwrap();
    assert!(
        sleeping.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&sleeping.stdout)
    );
}
