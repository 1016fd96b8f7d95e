//! Chroot isolation on the host, as root: no namespaces, no mounts, directory snapshots. Its
//! images must be the very images the oci isolation makes (same image ID with
//! `SOURCE_DATE_EPOCH=0`), whiteouts, opaque directories and `COPY --from` included.

use std::path::Path;
use std::process::Output;

use crate::support::busybox::{
    fixtures, kiln_command, ok, registry_with_busybox, require_root, Registry,
};

fn kiln_with(root: &Path, reg: &Registry, isolation: &str, args: &[&str]) -> Output {
    let isolation = format!("--isolation={isolation}");
    let mut full = vec![args[0], isolation.as_str()];
    if args[0] == "build" {
        full.push("--progress=plain");
    }
    full.extend(&args[1..]);
    kiln_command(root, &reg.addr, &full)
        .env("SOURCE_DATE_EPOCH", "0")
        .env_remove("KILN_ISOLATION")
        .output()
        .expect("run kiln")
}

/// Builds `dockerfile` (no other context files) under chroot isolation in a fresh state root;
/// the output and its stderr.
fn chroot_build(reg: &Registry, dockerfile: &str) -> (Output, String) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = kiln_with(
        state.path(),
        reg,
        "chroot",
        &["build", ctx.path().to_str().unwrap()],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, log)
}

/// A context with the busybox fixture's files and `dockerfile`.
fn busybox_files_context(dockerfile: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::create_dir(ctx.path().join("files")).unwrap();
    for f in ["one.txt", "two.txt"] {
        std::fs::copy(
            fixtures().join("busybox/files").join(f),
            ctx.path().join("files").join(f),
        )
        .unwrap();
    }
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    ctx
}

const CHANGES: &str = "FROM busybox:latest AS tools\n\
     RUN mkdir -p /opt/tool && echo tool > /opt/tool/t.txt\n\
     FROM busybox:latest\n\
     RUN mkdir -p /d/sub && touch /d/a /d/sub/c /gone && echo keep > /etc/kept\n\
     RUN rm -rf /d /gone && mkdir /d && touch /d/b && chmod 0700 /etc/kept\n\
     COPY files/ /d/\n\
     COPY --from=tools /opt/tool /opt/tool\n\
     RUN ls -A /d > /listing && ln -s /d/b /link && ln /etc/kept /etc/kept-link && echo app:x:1234:1234::/home/app:/bin/sh >> /etc/passwd && echo app:x:1234: >> /etc/group\n\
     USER app\n\
     WORKDIR /home/app/w\n\
     RUN echo mine > mine.txt && ln mine.txt linked.txt\n\
     CMD [\"sh\", \"-c\", \"cat /listing /opt/tool/t.txt; test ! -e /gone && echo gone; stat -c '%a %U' /etc/kept mine.txt\"]\n";

#[test]
fn chroot_and_oci_builds_give_the_same_image_ids() {
    require_root();
    let reg = registry_with_busybox();
    let ctx = busybox_files_context(CHANGES);
    let state = tempfile::tempdir().unwrap();
    for (name, dir) in [
        ("changes", ctx.path().to_path_buf()),
        ("busybox", fixtures().join("busybox")),
    ] {
        let dir = dir.to_str().unwrap();
        let build = ["build", "-t", name, dir];
        let oci_root = state.path().join(format!("oci-{name}"));
        let chroot_root = state.path().join(format!("chroot-{name}"));
        let oci = ok(&kiln_with(&oci_root, &reg, "oci", &build));
        let out = kiln_with(&chroot_root, &reg, "chroot", &build);
        let chroot = ok(&out);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("isolation: chroot (as asked); gives up: no namespaces"),
            "{log}"
        );
        assert!(oci.starts_with("sha256:"), "{oci}");
        assert_eq!(chroot, oci, "{name}: chroot and oci images differ");
        // Each step's root was kept for the next one; a few stay for later builds.
        let kept = std::fs::read_dir(chroot_root.join("snapshots/flat"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!((1..=3).contains(&kept), "{name}: {kept} roots kept");
    }
    let ran = ok(&kiln_with(
        &state.path().join("chroot-changes"),
        &reg,
        "chroot",
        &["run", "changes"],
    ));
    assert_eq!(
        ran, "b\none.txt\ntwo.txt\ntool\ngone\n700 root\n644 app",
        "the image as chroot isolation runs it"
    );
}

const MOUNTS: &str = "FROM busybox:latest AS tools\n\
     RUN mkdir /opt && echo from-stage > /opt/t.txt\n\
     FROM busybox:latest\n\
     RUN mkdir -p /var/cache/app && echo base > /var/cache/app/keep\n\
     RUN --mount=type=cache,target=/var/cache/app,id=chroot-test \\\n\
         echo run >> /var/cache/app/runs && wc -l < /var/cache/app/runs > /runs-seen\n\
     RUN --mount=type=cache,target=/new/cache/dir echo x > /new/cache/dir/x && echo ok > /new-ok\n\
     RUN --mount=type=secret,id=token test \"$(cat /run/secrets/token)\" = s3cr3t && echo secret-ok > /secret-check\n\
     RUN --mount=type=tmpfs,target=/scratch echo temp > /scratch/t && test ! -e /tmpfs-leak\n\
     RUN --mount=type=bind,target=/ctx,rw echo thrown-away > /ctx/files/one.txt && cat /ctx/files/two.txt > /two-copy\n\
     RUN --mount=type=bind,from=tools,source=/opt,target=/from cp /from/t.txt /t-copy\n\
     CMD [\"sh\", \"-c\", \"cat /runs-seen /secret-check /t-copy /var/cache/app/keep; ls /var/cache/app; test ! -e /new -a ! -e /run && echo clean\"]\n";

#[test]
fn run_mounts_under_chroot_give_the_oci_isolations_image() {
    require_root();
    let reg = registry_with_busybox();
    let ctx = busybox_files_context(MOUNTS);
    let state = tempfile::tempdir().unwrap();
    let secret = state.path().join("token");
    std::fs::write(&secret, "s3cr3t").unwrap();
    let secret_arg = format!("id=token,src={}", secret.display());
    let dir = ctx.path().to_str().unwrap();
    let build = ["build", "--secret", &secret_arg, "-t", "mounts", dir];
    let oci = ok(&kiln_with(&state.path().join("oci"), &reg, "oci", &build));
    let chroot_root = state.path().join("chroot");
    let chroot = ok(&kiln_with(&chroot_root, &reg, "chroot", &build));
    assert_eq!(chroot, oci, "chroot and oci images differ");
    let original = std::fs::read(fixtures().join("busybox/files/one.txt")).unwrap();
    assert_eq!(
        std::fs::read(ctx.path().join("files/one.txt")).unwrap(),
        original,
        "a rw bind's writes are thrown away"
    );
    let ran = ok(&kiln_with(&chroot_root, &reg, "chroot", &["run", "mounts"]));
    assert_eq!(ran, "1\nsecret-ok\nfrom-stage\nbase\nkeep\nclean");
    // The cache persisted: a rebuild without the layer cache sees the first run's line.
    let again = [
        "build",
        "--no-cache",
        "--secret",
        &secret_arg,
        "-t",
        "again",
        dir,
    ];
    ok(&kiln_with(&chroot_root, &reg, "chroot", &again));
    let ran = ok(&kiln_with(
        &chroot_root,
        &reg,
        "chroot",
        &["run", "again", "cat", "/runs-seen"],
    ));
    assert_eq!(ran, "2");
}

#[test]
fn chroot_isolation_refuses_network_none_naming_the_fix() {
    require_root();
    let reg = registry_with_busybox();
    let (out, log) = chroot_build(&reg, "FROM busybox:latest\nRUN --network=none true\n");
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "--network=none needs a network namespace, which chroot isolation cannot make"
        ) && log.contains("--isolation=oci"),
        "{log}"
    );
}

#[test]
fn a_symlink_the_run_puts_on_a_mounts_path_is_not_followed_on_the_host() {
    require_root();
    let reg = registry_with_busybox();
    // A host directory the RUN points a symlink at: undoing the tmpfs mount at
    // /home/app/.cache/x must not remove the host's x.
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("x"), "host file").unwrap();
    let (out, log) = chroot_build(
        &reg,
        &format!(
            "FROM busybox:latest\n\
             RUN mkdir -p /home/app/.cache && chown -R 1000:1000 /home/app\n\
             USER 1000:1000\n\
             RUN --mount=type=tmpfs,target=/home/app/.cache/x \
             mv /home/app/.cache /home/app/.c && ln -s {} /home/app/.cache\n",
            host.path().display()
        ),
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("x"))
            .ok()
            .as_deref(),
        Some("host file"),
        "the host's file was removed through the RUN's symlink: {log}"
    );
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("reached through a symlink the command made"),
        "{log}"
    );
}
