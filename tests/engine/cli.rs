//! `kiln build` invoked the way CI jobs invoke `docker build`: the context and Dockerfile on
//! stdin, and the flags a CI job passes, compared with what `docker build` does.

use std::io::Write as _;
use std::process::{Output, Stdio};

use crate::build::Scratch;
use crate::support::busybox::{config, kiln_command, ok, registry_with_busybox, Registry};

/// `kiln build ARGS` with `input` on stdin.
fn build_with_stdin(root: &std::path::Path, reg: &Registry, args: &[&str], input: &[u8]) -> Output {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    let mut child = kiln_command(root, &reg.addr, &all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln build");
    let mut stdin = child.stdin.take().expect("stdin");
    // The build may stop reading early (an error): a broken pipe is then fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().expect("wait for kiln build")
}

/// Regression: `kiln build - < Dockerfile` took the Dockerfile for a context tar and failed
/// with "failed to read entire block"; the docker CLI builds it with an empty context. A tar
/// on stdin is still the context, and `-f` names a file inside it.
#[test]
fn a_dockerfile_or_a_context_tar_on_stdin() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let dockerfile = b"FROM busybox\nRUN echo from-stdin > /marker\nLABEL via=stdin\n";
    let out = build_with_stdin(&root, &reg, &["-t", "stdin:df", "-"], dockerfile);
    ok(&out);
    let cfg = config(&root, &reg, "stdin:df");
    assert_eq!(cfg["config"]["config"]["Labels"]["via"], "stdin");

    // A context tar whose Dockerfile has another name, given with -f.
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [
        (
            "ci/build.Dockerfile",
            &b"FROM busybox\nCOPY data.txt /data.txt\nLABEL via=tar\n"[..],
        ),
        ("data.txt", &b"context file\n"[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let out = build_with_stdin(
        &root,
        &reg,
        &["-t", "stdin:tar", "-f", "ci/build.Dockerfile", "-"],
        &tar,
    );
    ok(&out);
    let cfg = config(&root, &reg, "stdin:tar");
    assert_eq!(cfg["config"]["config"]["Labels"]["via"], "tar");

    // Both from stdin cannot be: an error naming it, before anything is read.
    let out = build_with_stdin(&root, &reg, &["-f", "-", "-"], dockerfile);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdin for both"), "{err}");
}

/// Regression: `--add-host`, `--shm-size` and `--ulimit` (flags CI jobs pass to `docker
/// build`) were refused as unknown arguments; they reach every RUN as in current BuildKit
/// (BuildKit 20.10 applies only `--add-host`). `--ssh` is refused by name.
#[test]
fn add_host_shm_size_and_ulimit_reach_run() {
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\nRUN grep -w db /etc/hosts > /hosts; df -k /dev/shm | tail -n 1 > /shm; ulimit -n > /nofile\n",
    )]);
    let ctx = p.ctx();
    let ctx_arg = ctx.to_str().unwrap();
    let out = p.kiln(&[
        "build",
        "--add-host",
        "db:10.9.8.7",
        "--shm-size",
        "128m",
        "--ulimit",
        "nofile=1024:1024",
        "-t",
        "limits:1",
        ctx_arg,
    ]);
    ok(&out);
    let cat = |path: &str| p.run(&["limits:1", "cat", path]);
    assert_eq!(cat("/hosts"), "10.9.8.7\tdb");
    assert!(cat("/shm").contains("131072"), "{}", cat("/shm"));
    assert_eq!(cat("/nofile"), "1024");

    let out = p.kiln(&["build", "--ssh", "default", ctx_arg]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ssh default") && err.contains("does not forward"),
        "{err}"
    );
}

/// Regression: any `RUN --mount=type=ssh` failed ("not supported by kiln yet"), where BuildKit
/// runs an ssh mount that is not `required` with no agent when none is forwarded (as in a CI
/// job without `--ssh`), `SSH_AUTH_SOCK` naming the first one's socket. A required one fails,
/// naming the key.
#[test]
fn an_optional_ssh_mount_runs_without_an_agent() {
    let p = Scratch::new(&[
        (
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh echo \"$SSH_AUTH_SOCK\" > /sock\n",
        ),
        (
            "Dockerfile.required",
            "FROM busybox\nRUN --mount=type=ssh,id=deploy,required=true true\n",
        ),
    ]);
    let ctx = p.ctx();
    let ctx_arg = ctx.to_str().unwrap();
    let kiln = |args: &[&str]| p.kiln(args);
    ok(&kiln(&["build", "-t", "ssh:1", ctx_arg]));
    assert_eq!(
        ok(&kiln(&["run", "ssh:1", "cat", "/sock"])),
        "/run/buildkit/ssh_agent.0"
    );
    let required = ctx.join("Dockerfile.required");
    let out = kiln(&["build", "-f", required.to_str().unwrap(), ctx_arg]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no SSH key \"deploy\" forwarded") && err.contains("Dockerfile.required:2"),
        "{err}"
    );
}
