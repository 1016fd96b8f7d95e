//! `kiln build` and `kiln run` end to end, as root: a real registry (docker-registry) holding a
//! busybox base image made from Debian's busybox-static with umoci, RUN steps in crun/runc, and
//! the results read back with umoci (independently of kiln) and run with `kiln run`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::busybox::{
    config, fixtures, kiln, ok, registry_with_busybox, run, unpack, Registry,
};

#[test]
fn busybox_app_builds_runs_and_caches() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = fixtures().join("busybox");
    let out = kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "app:1",
            ctx.to_str().unwrap(),
        ],
    );
    let id = ok(&out);
    assert!(id.starts_with("sha256:"), "{id}");
    let cfg = config(&root, &reg, "app:1");
    let c = &cfg["config"]["config"];
    assert_eq!(c["WorkingDir"], "/work");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Cmd"], serde_json::json!(["sh", "-c", "echo $GREETING"]));
    assert!(c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "GREETING=hello world"));
    let rootfs = unpack(&root, "docker.io/library/app:1", &work.path().join("b"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("work/one.txt")).unwrap(),
        "one\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("work/built.txt")).unwrap(),
        "built by kiln\n"
    );
    // No mount stubs or sandbox files leak into layers.
    assert!(
        !rootfs.join("etc/resolv.conf").exists(),
        "resolv.conf stub leaked into the image"
    );
    assert_eq!(ok(&kiln(&root, &reg, &["run", "app:1"])), "hello world");
    assert_eq!(
        ok(&kiln(&root, &reg, &["run", "app:1", "id", "-u"])),
        "1000"
    );

    // A rebuild is fully cached and gives the same layers.
    let again = kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "app:1",
            ctx.to_str().unwrap(),
        ],
    );
    ok(&again);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(log.contains("CACHED"), "{log}");
    let cfg2 = config(&root, &reg, "app:1");
    assert_eq!(cfg["config"]["rootfs"], cfg2["config"]["rootfs"]);
}

#[test]
fn multistage_target_scratch_and_heredocs() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ms = fixtures().join("multistage");
    let out = kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "--build-arg",
            "VERSION=2.5",
            "-t",
            "ms:1",
            ms.to_str().unwrap(),
        ],
    );
    ok(&out);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("this stage is not needed"),
        "unused stage ran"
    );
    assert_eq!(ok(&kiln(&root, &reg, &["run", "ms:1"])), "alpha\nbeta");
    let cfg = config(&root, &reg, "ms:1");
    assert_eq!(
        cfg["config"]["config"]["Labels"]["org.opencontainers.image.version"],
        "2.5"
    );
    let rootfs = unpack(&root, "docker.io/library/ms:1", &work.path().join("m"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(rootfs.join("usr/local/bin/run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert!(!rootfs.join("never").exists());

    let sc = fixtures().join("scratch");
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "sc:1",
            sc.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        ok(&kiln(&root, &reg, &["run", "sc:1"])),
        "hello from scratch"
    );

    let hd = fixtures().join("heredoc");
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "hd:1",
            hd.to_str().unwrap(),
        ],
    ));
    assert_eq!(ok(&kiln(&root, &reg, &["run", "hd:1"])), "hello kiln");
    let rootfs = unpack(&root, "docker.io/library/hd:1", &work.path().join("h"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/one.txt")).unwrap(),
        "first line\nsecond\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/raw.txt")).unwrap(),
        "literal $NAME\n"
    );
}

#[test]
fn cache_secret_and_tmpfs_mounts_stay_out_of_the_image() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let secret = work.path().join("token");
    std::fs::write(&secret, "s3cr3t").unwrap();
    let ctx = fixtures().join("mounts");
    let secret_arg = format!("id=token,src={}", secret.display());
    let out = kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "--secret",
            &secret_arg,
            "-t",
            "mnt:1",
            ctx.to_str().unwrap(),
        ],
    );
    ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cr3t"));
    assert_eq!(ok(&kiln(&root, &reg, &["run", "mnt:1"])), "secret-ok");
    let rootfs = unpack(&root, "docker.io/library/mnt:1", &work.path().join("u"));
    assert!(!rootfs.join("run/secrets/token").exists() && !rootfs.join("cache/runs").exists());
    // The secret is in no blob of the store.
    for entry in std::fs::read_dir(root.join("oci/blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "(zcat -f {0} 2>/dev/null || cat {0}) | grep -c s3cr3t",
                path.display()
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "secret found in {}",
            path.display()
        );
    }
    // The cache mount persists across builds.
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "--no-cache",
            "--secret",
            &secret_arg,
            "-t",
            "mnt:2",
            ctx.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        ok(&kiln(&root, &reg, &["run", "mnt:2", "cat", "/runs-seen"])),
        "2"
    );
}

#[test]
fn failures_name_the_dockerfile_line() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let cases = [
        (
            "FROM busybox\nRUN echo before && exit 7\n",
            "Dockerfile:2:1",
            "exit code: 7",
        ),
        (
            "FROM busybox\nCOPY missing.txt /x\n",
            "Dockerfile:2:1",
            "not found",
        ),
        (
            "FROM busybox\nCOPY --from=nope /a /b\n",
            "Dockerfile:2:1",
            "nope",
        ),
        (
            "FROM 127.0.0.1:1/none/such:1\n",
            "Dockerfile:1:1",
            "127.0.0.1:1",
        ),
    ];
    for (text, at, what) in cases {
        std::fs::write(ctx.join("Dockerfile"), text).unwrap();
        let out = kiln(
            &root,
            &reg,
            &["build", "--progress=plain", ctx.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(at) && err.contains(what) && !err.contains("panicked"),
            "{text}\n{err}"
        );
    }
    // Nothing is left mounted.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(root.to_str().unwrap()),
        "mounts left behind"
    );
}

#[test]
fn add_unpacks_archives_and_copy_from_an_image() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(ctx.join("payload/dir")).unwrap();
    std::fs::write(ctx.join("payload/dir/inner.txt"), "inside the archive\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &str, mode| {
            std::fs::set_permissions(ctx.join(p), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set("payload/dir", 0o755);
        set("payload/dir/inner.txt", 0o644);
    }
    run(Command::new("tar")
        .arg("-czf")
        .arg(ctx.join("app.tar.gz"))
        .arg("-C")
        .arg(ctx.join("payload"))
        .arg("dir"));
    run(Command::new("tar")
        .arg("-cJf")
        .arg(ctx.join("app.tar.xz"))
        .arg("-C")
        .arg(ctx.join("payload"))
        .arg("dir"));
    std::fs::write(ctx.join("plain.txt"), "plain\n").unwrap();
    // Context files belong to root in the image whoever owns them here.
    std::os::unix::fs::chown(ctx.join("plain.txt"), Some(4321), Some(4321)).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nADD app.tar.gz /gz/\nADD app.tar.xz /xz\nADD plain.txt /plain.txt\nCOPY --from={}/library/busybox:latest /bin/busybox /bin/busybox\nADD --chown=1234:5678 --chmod=600 app.tar.gz /owned/\n",
            reg.addr
        ),
    )
    .unwrap();
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "add:1",
            ctx.to_str().unwrap(),
        ],
    ));
    let rootfs = unpack(&root, "docker.io/library/add:1", &work.path().join("a"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("gz/dir/inner.txt")).unwrap(),
        "inside the archive\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("xz/dir/inner.txt")).unwrap(),
        "inside the archive\n"
    );
    use std::os::unix::fs::MetadataExt as _;
    let plain = std::fs::metadata(rootfs.join("plain.txt")).unwrap();
    assert_eq!((plain.uid(), plain.gid()), (0, 0));
    assert!(rootfs.join("bin/busybox").is_file());
    // As current BuildKit: --chown applies to an archive's entries, --chmod does not.
    for (path, mode) in [("owned/dir", 0o755), ("owned/dir/inner.txt", 0o644)] {
        let m = std::fs::symlink_metadata(rootfs.join(path)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (1234, 5678, mode),
            "{path}"
        );
    }
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = fixtures().join("multistage");
    let mut ids = Vec::new();
    for i in 0..2 {
        let root = work.path().join(format!("root{i}"));
        let out = kiln(
            &root,
            &reg,
            &[
                "build",
                "--progress=plain",
                "--no-cache",
                "--build-arg",
                "SOURCE_DATE_EPOCH=1700000000",
                "-t",
                "repro:1",
                ctx.to_str().unwrap(),
            ],
        );
        ids.push(ok(&out));
        let cfg = config(&root, &reg, "repro:1");
        assert_eq!(cfg["config"]["created"], "2023-11-14T22:13:20Z");
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(ids[0], ids[1], "two builds of the same inputs differ");
}

#[test]
fn run_for_a_foreign_platform_without_emulation_is_a_clear_error() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM --platform=linux/s390x scratch\nRUN true\n",
    )
    .unwrap();
    // No handler at all, whatever this machine has registered.
    let binfmt = work.path().join("binfmt");
    std::fs::create_dir_all(&binfmt).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "--root"])
        .arg(work.path().join("root"))
        .args(["--registry-mirror", &reg.addr, "--progress=plain"])
        .arg(&ctx)
        .env("KILN_BINFMT_DIR", &binfmt)
        .env("DOCKER_CONFIG", work.path().join("no-docker-config"))
        .env_remove("KILN_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("linux/s390x")
            && err.contains("binfmt_misc")
            && err.contains("qemu-s390x")
            && err.contains("Dockerfile:2:1"),
        "{err}"
    );
}

#[test]
fn run_mounts_from_another_stage_and_the_context() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("input.txt"), "from the context\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox AS builder\nRUN mkdir /out && echo built > /out/artifact\n\nFROM busybox\nRUN --mount=type=bind,from=builder,source=/out,target=/in cat /in/artifact > /copied\nRUN --mount=type=bind,source=input.txt,target=/tmp/input.txt cp /tmp/input.txt /ctx.txt\nRUN --mount=type=bind,target=/src,rw touch /src/written && echo rw > /rw-ok\n",
    )
    .unwrap();
    let root = work.path().join("root");
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "mnt-from:1",
            ctx.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        ok(&kiln(
            &root,
            &reg,
            &["run", "mnt-from:1", "cat", "/copied", "/ctx.txt"]
        )),
        "built\nfrom the context"
    );
    let rootfs = unpack(
        &root,
        "docker.io/library/mnt-from:1",
        &work.path().join("u"),
    );
    assert!(
        !rootfs.join("in").exists() && !rootfs.join("tmp/input.txt").exists(),
        "mount points leaked"
    );
    assert!(rootfs.join("rw-ok").exists());
    assert!(
        !ctx.join("written").exists(),
        "a rw bind wrote into the build context"
    );
}

/// Serves `body` for any GET on 127.0.0.1, for ADD <url>.
fn serve_once_per_request(body: &'static [u8]) -> String {
    use std::io::{Read as _, Write as _};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = conn.write_all(body);
        }
    });
    addr
}

#[test]
fn add_downloads_urls_and_checks_their_checksum() {
    let reg = registry_with_busybox();
    let http = serve_once_per_request(b"downloaded content\n");
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let digest = kiln::oci::Digest::of(b"downloaded content\n");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nADD http://{http}/files/tool.txt /opt/\nADD --checksum={digest} http://{http}/x/y.txt /named.txt\n"),
    )
    .unwrap();
    let root = work.path().join("root");
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "url:1",
            ctx.to_str().unwrap(),
        ],
    ));
    let rootfs = unpack(&root, "docker.io/library/url:1", &work.path().join("u"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("opt/tool.txt")).unwrap(),
        "downloaded content\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("named.txt")).unwrap(),
        "downloaded content\n"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(rootfs.join("named.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let bad = kiln::oci::Digest::of(b"something else");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nADD --checksum={bad} http://{http}/x /x\n"),
    )
    .unwrap();
    let out = kiln(
        &root,
        &reg,
        &["build", "--progress=plain", ctx.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("digest mismatch") && err.contains("Dockerfile:2:1"),
        "{err}"
    );
}

#[test]
fn ctrl_c_during_a_run_cleans_up_and_leaves_a_valid_store() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo started && sleep 60\n",
    )
    .unwrap();
    let root = work.path().join("root");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "build",
            "--progress=plain",
            "--registry-mirror",
            &reg.addr,
            "--root",
        ])
        .arg(&root)
        .arg(&ctx)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the RUN is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = std::fs::read_dir(root.join("bundles"))
            .map(|d| d.count() > 0)
            .unwrap_or(false);
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "the RUN never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the build did not stop promptly"
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(root.to_str().unwrap()),
        "mounts left behind"
    );
    assert_eq!(std::fs::read_dir(root.join("bundles")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(root.join("snapshots/active"))
            .unwrap()
            .count(),
        0
    );
    ok(&kiln(&root, &reg, &["images"]));
}

#[test]
fn independent_stages_build_side_by_side() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox AS a\nRUN sleep 3 && echo a > /a\nFROM busybox AS b\nRUN sleep 3 && echo b > /b\nFROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
    )
    .unwrap();
    let root = work.path().join("root");
    // Pull the base first so only the RUNs are timed.
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "--target",
            "a",
            ctx.to_str().unwrap(),
        ],
    ));
    let started = Instant::now();
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "--no-cache",
            "-t",
            "par:1",
            ctx.to_str().unwrap(),
        ],
    ));
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(5500),
        "stages a and b ran one after the other ({elapsed:?})"
    );
    assert_eq!(
        ok(&kiln(&root, &reg, &["run", "par:1", "cat", "/a", "/b"])),
        "a\nb"
    );
}

#[test]
fn locked_cache_mounts_serialise_parallel_stages() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let step = |name: &str| {
        format!("RUN --mount=type=cache,id=kiln-locked-test,target=/c,sharing=locked echo {name}-start >> /c/log && sleep 1 && echo {name}-end >> /c/log && touch /{name}\n")
    };
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox AS a\n{}FROM busybox AS b\n{}FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\nRUN --mount=type=cache,id=kiln-locked-test,target=/c,sharing=locked cp /c/log /log\n",
            step("a"),
            step("b")
        ),
    )
    .unwrap();
    let root = work.path().join("root");
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "locked:1",
            ctx.to_str().unwrap(),
        ],
    ));
    let log = ok(&kiln(&root, &reg, &["run", "locked:1", "cat", "/log"]));
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines[0].ends_with("-start")
            && lines[1].ends_with("-end")
            && lines[0][..1] == lines[1][..1],
        "interleaved: {log}"
    );
}

#[test]
fn zstd_layers_build_and_run() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello zstd\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY hello.txt /hello.txt\nRUN cp /hello.txt /copied.txt\n",
    )
    .unwrap();
    let ctx_arg = ctx.to_str().unwrap();
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "--compression",
            "zstd",
            "-t",
            "zst:1",
            ctx_arg,
        ],
    ));
    let manifest: serde_json::Value =
        serde_json::from_str(&ok(&kiln(&root, &reg, &["inspect", "zst:1"]))).unwrap();
    let layers = manifest["manifest"]["layers"].as_array().unwrap();
    let zstd = layers
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd")
        .count();
    assert_eq!(zstd, 2, "{manifest}");
    // The last layer decodes with the reference zstd decoder into a tar holding the RUN's file
    // (umoci cannot read zstd layers), and the image runs.
    let last = layers.last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = root
        .join("oci/blobs/sha256")
        .join(last.trim_start_matches("sha256:"));
    let tar = zstd::decode_all(std::fs::File::open(blob).unwrap()).unwrap();
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "copied.txt"), "{names:?}");
    let out = ok(&kiln(
        &root,
        &reg,
        &["run", "--rm", "zst:1", "cat", "/copied.txt"],
    ));
    assert_eq!(out.trim_end(), "hello zstd");
}

#[test]
fn a_stage_runs_its_own_steps_while_the_stage_it_copies_from_builds() {
    // The final stage needs the builder only at its COPY: its first RUN must not wait.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox AS builder\nRUN sleep 3 && date +%s > /finished\n\
         FROM busybox\nRUN date +%s > /started\nCOPY --from=builder /finished /finished\n",
    )]);
    p.build("overlap:1");
    let times = p.run(&["overlap:1", "cat", "/started", "/finished"]);
    let t: Vec<u64> = times.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert!(
        t[0] + 2 <= t[1],
        "the final stage's RUN waited for the builder (started {}, builder finished {})",
        t[0],
        t[1]
    );
}

/// `fixtures/apps/kitchen` as BuildKit (Moby 20.10, `benches/compare-docker.sh`) builds it: the
/// config a user sees and the files its instructions made, owners as numbers.
const KITCHEN_CONFIG: &str = r#"{"User":"svc:svc","ExposedPorts":{"8080/tcp":{},"9090/udp":{}},"Env":["PATH=/srv/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","APP_HOME=/srv/app","LEGACY=value with spaces"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hello"],"Volumes":{"/data":{}},"WorkingDir":"/srv/app","Labels":{"org.example.a":"1","org.example.b":"two words"},"StopSignal":"SIGTERM","Healthcheck":{"Test":["CMD-SHELL","wget -q -O- http://localhost:8080/ || exit 1"],"Interval":30000000000,"Timeout":3000000000},"Shell":["/bin/sh","-eu","-c"],"OnBuild":["RUN echo onbuild"]}"#;
const KITCHEN_TREE: &str = "\
data d 755 1001:1001
data/home f 644 1001:1001 9
etc/app d 755 0:0
etc/app/app.conf f 640 0:0 10
links d 755 0:0
links/abs l 0:0 /etc/hostname
links/rel l 0:0 target
links/target f 644 0:0 2
opt d 755 0:0
opt/inner d 700 123:456
opt/inner/one.txt f 644 123:456 4
opt/plain d 755 0:0
opt/plain/plain.txt f 644 0:0 6
opt/two.txt f 644 123:456 4
srv d 755 0:0
srv/app d 755 0:0
srv/app/src d 755 1000:1000
srv/app/src/conf-link l 1000:1000 ../conf
srv/app/src/entry.py l 1000:1000 main.py
srv/app/src/main.py f 644 1000:1000 12
srv/app/src/pkg d 755 1000:1000
srv/app/src/pkg/__init__.py f 644 1000:1000 1
srv/app/src/pkg/keep.pyc f 644 1000:1000 4
srv/app/src/pkg/sub d 755 1000:1000
srv/app/src/pkg/sub/mod.py f 600 1000:1000 2
srv/app/src/run.sh f 755 1000:1000 19
";

/// `path type mode uid:gid size` (symlinks: `path l uid:gid target`) for everything under `dirs`.
fn tree_listing(rootfs: &Path, dirs: &[&str]) -> String {
    use std::os::unix::fs::MetadataExt;
    fn walk(rootfs: &Path, rel: &str, out: &mut Vec<String>) {
        let path = rootfs.join(rel);
        let m = std::fs::symlink_metadata(&path).unwrap();
        let owner = format!("{}:{}", m.uid(), m.gid());
        let mode = m.mode() & 0o7777;
        if m.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            out.push(format!("{rel} l {owner} {}", target.display()));
        } else if m.is_dir() {
            out.push(format!("{rel} d {mode:o} {owner}"));
            for e in std::fs::read_dir(&path).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().to_string();
                walk(rootfs, &format!("{rel}/{name}"), out);
            }
        } else {
            out.push(format!("{rel} f {mode:o} {owner} {}", m.len()));
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        walk(rootfs, d, &mut out);
    }
    out.sort();
    out.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn kitchen_fixture_gives_what_buildkit_gave() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("kitchen");
    // A copy with the modes the fixture means (git keeps only the executable bit).
    run(Command::new("cp")
        .arg("-a")
        .arg(fixtures().join("kitchen"))
        .arg(&ctx));
    use std::os::unix::fs::PermissionsExt;
    let set_mode = |rel: &str, mode: u32| {
        std::fs::set_permissions(ctx.join(rel), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for (rel, mode) in [
        ("src", 0o755),
        ("src/pkg", 0o755),
        ("src/pkg/sub", 0o755),
        ("src/main.py", 0o644),
        ("src/pkg/__init__.py", 0o644),
        ("src/pkg/keep.pyc", 0o644),
        ("src/pkg/sub/mod.py", 0o600),
        ("src/run.sh", 0o755),
        ("conf/app.conf", 0o644),
        ("link-dir", 0o755),
        ("link-dir/target", 0o644),
        ("plain.txt", 0o644),
    ] {
        set_mode(rel, mode);
    }
    let root = work.path().join("root");
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "kitchen:1",
            ctx.to_str().unwrap(),
        ],
    ));
    let cfg = config(&root, &reg, "kitchen:1");
    let c = &cfg["config"]["config"];
    let fields = [
        "User",
        "ExposedPorts",
        "Env",
        "Entrypoint",
        "Cmd",
        "Volumes",
        "WorkingDir",
        "Labels",
        "StopSignal",
        "Healthcheck",
        "Shell",
        "OnBuild",
    ];
    let got: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|f| (f.to_string(), c[*f].clone()))
        .collect();
    let want: serde_json::Value = serde_json::from_str(KITCHEN_CONFIG).unwrap();
    assert_eq!(serde_json::Value::Object(got), want);
    let rootfs = unpack(&root, "docker.io/library/kitchen:1", &work.path().join("k"));
    let listing = tree_listing(&rootfs, &["data", "etc/app", "links", "opt", "srv"]);
    // /data/id's length depends on the busybox build; its text is checked instead.
    let listing: String = listing
        .lines()
        .filter(|l| !l.starts_with("data/id "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(listing, KITCHEN_TREE);
    let id = std::fs::read_to_string(rootfs.join("data/id")).unwrap();
    assert!(id.starts_with("uid=1001(svc) gid=1001(svc)"), "{id}");
}

/// A build context written from `files` (path, contents) in a temporary directory, with a
/// state root beside it and the test registry: what most small build tests start from.
pub(crate) struct Scratch {
    reg: Registry,
    work: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new(files: &[(&str, &str)]) -> Scratch {
        let s = Scratch {
            reg: registry_with_busybox(),
            work: tempfile::tempdir().unwrap(),
        };
        for (path, text) in files {
            s.write(path, text);
        }
        s
    }

    pub(crate) fn ctx(&self) -> PathBuf {
        self.work.path().join("ctx")
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.work.path().join("root")
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.ctx().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// `kiln build -t tag` of the context; fails the test if the build fails.
    fn build(&self, tag: &str) {
        let ctx = self.ctx();
        ok(&kiln(
            &self.root(),
            &self.reg,
            &[
                "build",
                "--progress=plain",
                "-t",
                tag,
                ctx.to_str().unwrap(),
            ],
        ));
    }

    /// `kiln ARGS` on this scratch's state root and registry, its output unchecked.
    pub(crate) fn kiln(&self, args: &[&str]) -> std::process::Output {
        kiln(&self.root(), &self.reg, args)
    }

    pub(crate) fn run(&self, args: &[&str]) -> String {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        ok(&kiln(&self.root(), &self.reg, &all))
    }

    /// The image `tag` unpacked by umoci into `dir` (under the scratch directory).
    fn unpack(&self, tag: &str, dir: &str) -> PathBuf {
        unpack(
            &self.root(),
            &format!("docker.io/library/{tag}"),
            &self.work.path().join(dir),
        )
    }
}

#[test]
fn a_rebuilt_copy_through_a_symlinked_directory_keeps_its_files() {
    // `COPY x /bin/` where /bin is a symlink (Debian's usr-merge): the files land in the
    // symlink's target. A rebuild of the COPY starts from the files its earlier build wrote
    // (seeding) and must keep the unchanged one and the new version of the changed one.
    let p = Scratch::new(&[
        ("files/same.txt", "same\n"),
        ("files/changed.txt", "one\n"),
        (
            "Dockerfile",
            "FROM busybox\nRUN mkdir /real && busybox ln -s real /link\nCOPY files/ /link/\n",
        ),
    ]);
    p.build("link:1");
    p.write("files/changed.txt", "two\n");
    p.build("link:1");
    let out = p.run(&["link:1", "cat", "/link/same.txt", "/link/changed.txt"]);
    assert_eq!(out, "same\ntwo");
    let rootfs = p.unpack("link:1", "u");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("real/same.txt")).unwrap(),
        "same\n"
    );
}

#[test]
fn hard_links_among_copied_files_stay_hard_links() {
    // As BuildKit's copy: two names of one source file are one file in the image, also when
    // the COPY is rebuilt from its earlier files (seeding).
    let p = Scratch::new(&[
        ("h/a", "data"),
        ("h/c", "alone"),
        ("Dockerfile", "FROM busybox\nCOPY h/ /h/\n"),
    ]);
    std::fs::hard_link(p.ctx().join("h/a"), p.ctx().join("h/b")).unwrap();
    let check = |want: &str| {
        p.build("links:1");
        // Read from the image's layers (umoci), not a container: a container on a seeded
        // snapshot shares inodes with the snapshot it was seeded from.
        let rootfs = p.unpack("links:1", want);
        use std::os::unix::fs::MetadataExt;
        let m = |f: &str| std::fs::metadata(rootfs.join(f)).unwrap();
        assert_eq!(m("h/a").ino(), m("h/b").ino());
        assert_eq!((m("h/a").nlink(), m("h/c").nlink()), (2, 1));
        assert_eq!(std::fs::read_to_string(rootfs.join("h/b")).unwrap(), want);
    };
    check("data");
    // Rewritten in place, so both names still share the inode.
    std::fs::write(p.ctx().join("h/a"), "changed").unwrap();
    check("changed");
}

#[test]
fn a_run_on_a_base_without_dev_leaves_its_mount_points_0755() {
    // The runtime makes /dev, /proc and /sys (and the parents of the mounts) as mount points
    // when the rootfs lacks them, and they stay in the RUN's layer. BuildKit's runc makes them
    // 0755; crun makes them 01755, so kiln makes them itself, before the runtime starts.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox AS bb\nFROM scratch\nCOPY --from=bb /bin/busybox /bin/busybox\n\
         RUN --mount=type=tmpfs,target=/cache/deep [\"/bin/busybox\", \"touch\", \"/cache/kept\"]\n",
    )]);
    p.build("nodev:1");
    let rootfs = p.unpack("nodev:1", "u");
    use std::os::unix::fs::MetadataExt as _;
    let mode = |d: &str| {
        let m = std::fs::symlink_metadata(rootfs.join(d)).unwrap();
        assert!(m.is_dir(), "{d} is not a directory");
        (m.mode() & 0o7777, m.uid(), m.gid())
    };
    for d in ["dev", "proc", "sys", "cache"] {
        assert_eq!(mode(d), (0o755, 0, 0), "/{d}");
    }
    assert!(rootfs.join("cache/kept").is_file());
    assert!(
        !rootfs.join("cache/deep").exists(),
        "an empty mount stub stays out"
    );
    assert!(
        !rootfs.join("etc").exists(),
        "so does the parent of /etc/hosts"
    );
}

#[test]
fn add_skips_an_archive_entry_that_names_the_root_as_a_file() {
    // A regular-file entry with an empty name, or `./`, names the directory the archive is
    // unpacked into; BuildKit (moby's archive.Unpack) skips it and unpacks the rest.
    let p = Scratch::new(&[("Dockerfile", "FROM scratch\nADD odd.tar /x/\n")]);
    let mut tar = tar::Builder::new(Vec::new());
    let mut file = |name: &[u8], data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name = [0; 100];
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append(&h, data).unwrap();
    };
    file(b"", b"no name\n");
    file(b"./", b"dot slash\n");
    file(b"a.txt", b"kept\n");
    std::fs::write(p.ctx().join("odd.tar"), tar.into_inner().unwrap()).unwrap();
    p.build("oddtar:1");
    let rootfs = p.unpack("oddtar:1", "u");
    assert!(rootfs.join("x").is_dir());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("x/a.txt")).unwrap(),
        "kept\n"
    );
    let names: Vec<_> = std::fs::read_dir(rootfs.join("x"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["a.txt"]);
}

#[test]
fn an_ignored_directory_named_by_an_exception_is_still_in_the_context() {
    // `.dockerignore` `**` then `!dir/file`, where dir/file does not exist: BuildKit keeps
    // `dir` (empty) in the context, so `ADD dir /x` and `COPY dir /y` work; its other files
    // stay out.
    let p = Scratch::new(&[
        (".dockerignore", "**\n!dir/file\n"),
        ("dir/other.txt", "ignored\n"),
        ("Dockerfile", "FROM scratch\nADD dir /x\nCOPY dir /y\n"),
    ]);
    p.build("ignored-dir:1");
    let rootfs = p.unpack("ignored-dir:1", "u");
    for d in ["x", "y"] {
        assert!(rootfs.join(d).is_dir(), "/{d} is missing");
        assert_eq!(
            std::fs::read_dir(rootfs.join(d)).unwrap().count(),
            0,
            "/{d} holds an ignored file"
        );
    }
}

/// `kiln build` of the scratch context with extra options; the output, whatever the outcome.
fn build_with(p: &Scratch, tag: &str, extra: &[&str]) -> std::process::Output {
    let ctx = p.ctx();
    let mut args = vec!["build", "--progress=plain", "-t", tag];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    kiln(&p.root(), &p.reg, &args)
}

#[test]
fn run_gets_dockers_seccomp_profile() {
    // unshare(CLONE_NEWUSER) needs no capability; only Docker's seccomp profile (unshare only
    // with CAP_SYS_ADMIN) refuses it, with EPERM, as under `docker build`.
    let p = Scratch::new(&[("Dockerfile", "FROM busybox\nRUN busybox unshare -U true\n")]);
    let out = build_with(&p, "seccomp:1", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Operation not permitted") && err.contains("Dockerfile:2"),
        "{err}"
    );
    // So does `kiln run`.
    p.write("Dockerfile", "FROM busybox\n");
    p.build("plain:1");
    let out = kiln(
        &p.root(),
        &p.reg,
        &["run", "plain:1", "busybox", "unshare", "-U", "true"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
}

#[test]
fn an_insecure_run_needs_the_entitlement_and_then_runs_unconfined() {
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo sandboxed > /before\n\
         RUN --security=insecure busybox unshare -U true && grep CapEff /proc/self/status > /caps\n",
    )]);
    // Refused before anything runs, at the RUN's line, naming the flag.
    let out = build_with(&p, "insecure:1", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("security.insecure is not allowed")
            && err.contains("--allow security.insecure")
            && err.contains("Dockerfile:3"),
        "{err}"
    );
    assert!(!err.contains("sandboxed"), "a step ran: {err}");

    ok(&build_with(
        &p,
        "insecure:1",
        &["--allow", "security.insecure"],
    ));
    let caps = p.run(&["insecure:1", "cat", "/caps"]);
    // Every capability kiln itself may hold (in a container that can be fewer than all).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    assert_eq!(caps, format!("CapEff:\t{bounding}"));
    // The same RUN sandboxed is another step: its cached insecure result is not reused.
    p.write(
        "Dockerfile",
        "FROM busybox\nRUN echo sandboxed > /before\n\
         RUN busybox unshare -U true && grep CapEff /proc/self/status > /caps\n",
    );
    let out = build_with(&p, "insecure:2", &["--allow", "security.insecure"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
}

#[test]
fn source_date_epoch_is_part_of_every_layer_steps_key() {
    // A COPY cached from a build without SOURCE_DATE_EPOCH must not be reused by a build
    // with it: that layer's file times are not clamped.
    let p = Scratch::new(&[
        ("a.txt", "a\n"),
        ("Dockerfile", "FROM busybox\nCOPY a.txt /a.txt\n"),
    ]);
    p.build("epoch:1");
    let ctx = p.ctx();
    let out = kiln(
        &p.root(),
        &p.reg,
        &[
            "build",
            "--progress=plain",
            "--build-arg",
            "SOURCE_DATE_EPOCH=0",
            "-t",
            "epoch:2",
            ctx.to_str().unwrap(),
        ],
    );
    ok(&out);
    let rootfs = p.unpack("epoch:2", "u");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(rootfs.join("a.txt")).unwrap().mtime(),
        0,
        "the COPY layer was reused from the build without SOURCE_DATE_EPOCH:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn named_build_contexts_replace_from_copy_from_and_mount_from() {
    // `--build-context NAME=DIR` and `NAME=docker-image://REF`, as BuildKit: `FROM base` reads
    // the image, `COPY --from=extra` and `RUN --mount=from=extra` the directory.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM base\nCOPY --from=extra hello.txt /hello.txt\n\
         RUN --mount=from=extra,target=/m cat /m/hello.txt /m/sub/deep.txt > /mounted.txt\n",
    )]);
    let extra = p.work.path().join("extra");
    std::fs::create_dir_all(extra.join("sub")).unwrap();
    std::fs::write(extra.join("hello.txt"), "hello from extra\n").unwrap();
    std::fs::write(extra.join("sub/deep.txt"), "deep\n").unwrap();
    let build = |tag: &str| {
        let ctx = p.ctx();
        let extra_arg = format!("extra={}", extra.display());
        kiln(
            &p.root(),
            &p.reg,
            &[
                "build",
                "--progress=plain",
                "--build-context",
                &extra_arg,
                "--build-context",
                "base=docker-image://busybox:latest",
                "-t",
                tag,
                ctx.to_str().unwrap(),
            ],
        )
    };
    ok(&build("named:1"));
    assert_eq!(
        p.run(&["named:1", "cat", "/hello.txt", "/mounted.txt"]),
        "hello from extra\nhello from extra\ndeep"
    );
    // A change in the named context busts the COPY, as one in the build context would.
    std::fs::write(extra.join("hello.txt"), "changed\n").unwrap();
    ok(&build("named:2"));
    assert_eq!(p.run(&["named:2", "cat", "/hello.txt"]), "changed");
    // A directory cannot be a base.
    std::fs::write(p.ctx().join("Dockerfile"), "FROM extra\n").unwrap();
    let out = build("named:3");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("local directory"), "{err}");
}

/// RUN steps write through an overlay mounted `volatile` (fsync is a no-op there, see
/// `snapshot::volatile_supported`); what they wrote and synced is the layer all the same.
#[test]
fn run_steps_write_through_a_volatile_overlay_into_the_layer() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\n\
         RUN grep ' / ' /proc/mounts > /root-mount.txt \
             && mkdir -p /data && echo synced > /data/f && sync\n",
    )
    .unwrap();
    ok(&kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "-t",
            "vol:1",
            ctx.to_str().unwrap(),
        ],
    ));
    let rootfs = unpack(&root, "docker.io/library/vol:1", &work.path().join("u"));
    let mount = std::fs::read_to_string(rootfs.join("root-mount.txt")).unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let (major, minor) = {
        let mut p = release.split(|c: char| !c.is_ascii_digit());
        let mut n = || p.next().and_then(|x| x.parse::<u32>().ok()).unwrap_or(0);
        (n(), n())
    };
    if (major, minor) >= (5, 10) {
        assert!(
            mount.starts_with("overlay / overlay") && mount.contains("volatile"),
            "the RUN's root is a volatile overlay: {mount}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/f")).unwrap(),
        "synced\n"
    );
    // The committed snapshot has no overlay work dir (where `volatile` leaves its marker).
    let snapshots = std::fs::read_dir(root.join("snapshots/snapshots")).unwrap();
    for s in snapshots {
        assert!(!s.unwrap().path().join("work").exists());
    }
}

/// Stages side by side on one base resolve it once: with `--pull`, each used to pull (and
/// unpack) the same image at the same time.
#[test]
fn stages_on_the_same_base_pull_it_once() {
    let reg = registry_with_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox AS a\nRUN echo a > /a\n\
         FROM busybox AS b\nRUN echo b > /b\n\
         FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
    )
    .unwrap();
    let out = kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "--pull",
            "-t",
            "once:1",
            ctx.to_str().unwrap(),
        ],
    );
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("Pulled ")).count(),
        1,
        "{err}"
    );
    assert_eq!(
        ok(&kiln(
            &root,
            &reg,
            &["run", "--rm", "once:1", "cat", "/a", "/b"]
        )),
        "a\nb"
    );
}

#[test]
fn copy_follows_a_source_symlink_inside_its_root() {
    // As BuildKit (FollowSymlinks): a COPY source that is, or goes through, a symlink copies
    // what it leads to, resolved inside the context or the --from stage (an absolute target
    // starts at that root, never at the host's). Symlinks under a copied directory stay links.
    let p = Scratch::new(&[
        ("project/a.txt", "a\n"),
        ("project/sub/b.txt", "b\n"),
        (
            "Dockerfile",
            "FROM busybox AS s\n\
             RUN mkdir /data && echo d > /data/f && ln -s /data /data-link && ln -s /data/f /abs-f\n\
             FROM scratch\n\
             COPY current /cur/\n\
             COPY link.txt /l.txt\n\
             COPY abs current/sub/b.txt /abs/\n\
             COPY --from=s /abs-f /from-abs.txt\n\
             COPY --from=s /data-link/f /from-through.txt\n",
        ),
    ]);
    let ctx = p.ctx();
    std::os::unix::fs::symlink("project", ctx.join("current")).unwrap();
    std::os::unix::fs::symlink("project/a.txt", ctx.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("/project/a.txt", ctx.join("abs")).unwrap();
    std::os::unix::fs::symlink("sub/b.txt", ctx.join("project/b-link")).unwrap();
    p.build("follow:1");
    let rootfs = p.unpack("follow:1", "u");
    let file = |f: &str| {
        let m = std::fs::symlink_metadata(rootfs.join(f)).unwrap();
        assert!(m.is_file(), "/{f} is not a regular file: {m:?}");
        std::fs::read_to_string(rootfs.join(f)).unwrap()
    };
    assert_eq!(file("cur/a.txt"), "a\n");
    assert_eq!(file("cur/sub/b.txt"), "b\n");
    assert_eq!(
        std::fs::read_link(rootfs.join("cur/b-link")).unwrap(),
        Path::new("sub/b.txt")
    );
    assert_eq!(file("l.txt"), "a\n");
    assert_eq!(file("abs/abs"), "a\n");
    assert_eq!(file("abs/b.txt"), "b\n");
    assert_eq!(file("from-abs.txt"), "d\n");
    assert_eq!(file("from-through.txt"), "d\n");

    // A symlink out of the context leads to nothing in it (not to the host's file).
    let p = Scratch::new(&[("Dockerfile", "FROM scratch\nCOPY out /x\n")]);
    std::os::unix::fs::symlink("/etc/passwd", p.ctx().join("out")).unwrap();
    let out = build_with(&p, "out:1", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"/etc/passwd\" not found"), "{err}");
}

#[test]
fn hard_links_are_kept_within_one_source_only() {
    // BuildKit copies each source (and each wildcard match) on its own: two names of one file
    // given as two sources, or matched by a glob, become two files.
    let p = Scratch::new(&[
        ("ha", "x"),
        ("Dockerfile", "FROM scratch\nCOPY ha hb /d/\nCOPY h* /g/\n"),
    ]);
    std::fs::hard_link(p.ctx().join("ha"), p.ctx().join("hb")).unwrap();
    p.build("links2:1");
    let rootfs = p.unpack("links2:1", "u");
    use std::os::unix::fs::MetadataExt as _;
    for f in ["d/ha", "d/hb", "g/ha", "g/hb"] {
        assert_eq!(
            std::fs::metadata(rootfs.join(f)).unwrap().nlink(),
            1,
            "/{f}"
        );
    }
}

#[test]
fn a_bind_mount_from_a_relative_context_and_through_a_symlink() {
    // `kiln build ctx` (a relative context) with RUN --mount=type=bind from the context: the
    // runtime needs an absolute source. A bind source through an absolute symlink of a stage
    // resolves inside that stage, as BuildKit's does.
    let p = Scratch::new(&[
        ("in.txt", "ctx\n"),
        (
            "Dockerfile",
            "FROM busybox AS s\nRUN mkdir /data && echo d > /data/f && ln -s /data/f /abs-f\n\
             FROM busybox\n\
             RUN --mount=type=bind,source=in.txt,target=/m/in cat /m/in > /from-ctx\n\
             RUN --mount=type=bind,from=s,source=/abs-f,target=/m/f cat /m/f > /from-stage\n",
        ),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(p.work.path())
        .args(["build", "--root"])
        .arg(p.root())
        .args(["--registry-mirror", p.reg.addr.as_str()])
        .args(["--progress=plain", "-t", "relbind:1", "ctx"])
        .env("DOCKER_CONFIG", p.root().join("no-docker-config"))
        .env_remove("KILN_CONFIG")
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(
        p.run(&["relbind:1", "cat", "/from-ctx", "/from-stage"]),
        "ctx\nd"
    );
}

#[test]
fn steps_that_change_nothing_still_make_an_empty_layer() {
    // BuildKit gives every RUN, COPY, ADD and WORKDIR (but `WORKDIR /`) a layer, the empty tar
    // when nothing changed: `WORKDIR /srv` on a base that has /srv is a layer in its history.
    const EMPTY_TAR: &str =
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\nRUN mkdir /srv\nWORKDIR /srv\nCOPY empty/ /srv/\nWORKDIR /\n",
    )]);
    std::fs::create_dir_all(p.ctx().join("empty")).unwrap();
    p.build("empty-steps:1");
    let cfg = config(&p.root(), &p.reg, "empty-steps:1");
    let history: Vec<(String, bool)> = cfg["config"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().unwrap_or_default().to_string(),
                h["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let ours = &history[history.len() - 3..];
    assert_eq!(
        ours.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
        [false, false, true],
        "{history:?}"
    );
    let diff_ids = cfg["config"]["rootfs"]["diff_ids"].as_array().unwrap();
    let last: Vec<&str> = diff_ids[diff_ids.len() - 2..]
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(last, [EMPTY_TAR; 2]);
    // They are real layers: the image unpacks and runs.
    assert_eq!(p.run(&["empty-steps:1", "sh", "-c", "pwd"]), "/");
    p.unpack("empty-steps:1", "u");
}

#[test]
fn add_copies_a_compressed_file_that_is_no_tar_and_unpacks_a_v7_tar() {
    // BuildKit unpacks what starts with a valid tar header after decompression (a v7 tar has
    // no `ustar` magic) and copies anything else as it is: an xz- or bzip2-compressed text too.
    let p = Scratch::new(&[
        ("notes.txt", "release notes\n"),
        (
            "Dockerfile",
            "FROM scratch\nADD notes.txt.xz notes.txt.bz2 /notes/\nADD old.tar /v7/\n",
        ),
    ]);
    let ctx = p.ctx();
    run(Command::new("xz").arg("-k").arg(ctx.join("notes.txt")));
    run(Command::new("bzip2").arg("-k").arg(ctx.join("notes.txt")));
    let mut v7 = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_old();
    header.set_path("pkg/one.txt").unwrap();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    v7.append(&header, &b"one\n"[..]).unwrap();
    std::fs::write(ctx.join("old.tar"), v7.into_inner().unwrap()).unwrap();
    p.build("add-kinds:1");
    let rootfs = p.unpack("add-kinds:1", "u");
    for name in ["notes.txt.xz", "notes.txt.bz2"] {
        assert_eq!(
            std::fs::read(rootfs.join("notes").join(name)).unwrap(),
            std::fs::read(ctx.join(name)).unwrap(),
            "/notes/{name} is not the file itself"
        );
    }
    assert_eq!(
        std::fs::read_to_string(rootfs.join("v7/pkg/one.txt")).unwrap(),
        "one\n"
    );
}

#[test]
fn empty_cmd_and_entrypoint_are_left_out_of_the_config() {
    // BuildKit writes the config with Go's omitempty: `CMD []` and `ENTRYPOINT []` leave no
    // Cmd/Entrypoint at all (docker inspect: null), not empty lists.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox AS base\nENTRYPOINT [\"sh\"]\nCMD [\"-c\", \"true\"]\nFROM base\nENTRYPOINT []\nCMD []\n",
    )]);
    p.build("empty-cmd:1");
    let cfg = config(&p.root(), &p.reg, "empty-cmd:1");
    let container = &cfg["config"]["config"];
    assert!(container.is_object(), "no container config: {cfg}");
    for key in ["Cmd", "Entrypoint"] {
        assert!(
            container.get(key).is_none(),
            "{key} is in the config: {container}"
        );
    }
}

#[test]
fn workdir_for_a_numeric_user_gets_the_uid_as_its_gid() {
    // WORKDIR's directory is BuildKit's Mkdir WithUser: a lone uid is also the gid (as for
    // COPY --chown), not the group its passwd entry names; a name takes the entry's group.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo 'svc:x:1500:1400::/home/svc:/bin/sh' >> /etc/passwd\nUSER 1500\nWORKDIR /numeric/sub\nUSER svc\nWORKDIR /named\n",
    )]);
    p.build("workdir-owner:1");
    let rootfs = p.unpack("workdir-owner:1", "u");
    use std::os::unix::fs::MetadataExt as _;
    for (dir, owner) in [
        ("numeric", (1500, 1500)),
        ("numeric/sub", (1500, 1500)),
        ("named", (1500, 1400)),
    ] {
        let m = std::fs::metadata(rootfs.join(dir)).unwrap();
        assert_eq!((m.uid(), m.gid()), owner, "/{dir}");
    }
}

#[test]
fn cache_mounts_with_uid_gid_or_mode_are_other_caches_than_the_bare_id() {
    // BuildKit keys a cache by id plus, when uid/gid/mode is given, the mkdir it starts from
    // (defaults 0, 0, 0755): `id=c,uid=1000` and `id=c` do not share files.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=cache,id=c,target=/c,uid=1000 touch /c/stamp\n\
         RUN --mount=type=cache,id=c,target=/c ls /c > /bare.txt\n\
         RUN --mount=type=cache,id=c,target=/c,uid=1000,mode=0755 ls /c > /same.txt\n\
         RUN --mount=type=cache,id=c,target=/c,gid=0 ls /c > /other.txt && touch /c/zero\n\
         RUN --mount=type=cache,id=c,target=/c,uid=0,mode=755 ls /c > /defaults.txt\n",
    )]);
    p.build("cache-ids:1");
    let rootfs = p.unpack("cache-ids:1", "u");
    let read = |f: &str| std::fs::read_to_string(rootfs.join(f)).unwrap();
    assert_eq!(read("bare.txt"), "", "the bare id saw the uid=1000 cache");
    assert_eq!(read("same.txt"), "stamp\n");
    assert_eq!(read("other.txt"), "");
    // gid=0 and uid=0,mode=755 are the same mkdir (0:0, 0755): one cache.
    assert_eq!(read("defaults.txt"), "zero\n");
}

#[test]
fn a_cache_id_never_names_a_directory_outside_the_caches() {
    // `id=..` named `cache-mounts/..`, the state root, which the step then had read-write.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=cache,id=..,target=/x ls -a /x > /up.txt\n\
         RUN --mount=type=cache,id=.,target=/x ls -a /x > /here.txt\n\
         RUN --mount=type=cache,id=a/b,target=/x touch /x/slash\n\
         RUN --mount=type=cache,id=a_b,target=/x ls -a /x > /underscore.txt\n",
    )]);
    p.build("cache-escape:1");
    let rootfs = p.unpack("cache-escape:1", "u");
    let read = |f: &str| std::fs::read_to_string(rootfs.join(f)).unwrap();
    for f in ["up.txt", "here.txt", "underscore.txt"] {
        assert_eq!(read(f), ".\n..\n", "{f}: a new, empty cache");
    }
}

#[test]
fn a_relative_cache_target_is_one_cache_whatever_the_workdir() {
    // BuildKit's default cache id is path.Clean of the target as written: `target=cache`
    // under /a and `target=./cache/` under /b share one cache.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\n\
         WORKDIR /a\n\
         RUN --mount=type=cache,target=cache touch cache/from-a\n\
         WORKDIR /b\n\
         RUN --mount=type=cache,target=./cache/ ls cache > /seen.txt\n",
    )]);
    p.build("cache-relative:1");
    let rootfs = p.unpack("cache-relative:1", "u");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("seen.txt")).unwrap(),
        "from-a\n"
    );
}

#[test]
fn an_absolute_workdir_is_kept_as_written_and_its_clean_path_is_made() {
    // BuildKit keeps an absolute WORKDIR as written in the config and history (`/srv/app/`,
    // `/x/../y`) and makes the directory at the cleaned path: /y, no /x (a RUN there would
    // make /x: the runtime creates its cwd as written, in docker too).
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\nWORKDIR /srv/app/\nRUN pwd > /first.txt\nWORKDIR /x/../y\n",
    )]);
    p.build("workdir-raw:1");
    let cfg = config(&p.root(), &p.reg, "workdir-raw:1");
    assert_eq!(cfg["config"]["config"]["WorkingDir"], "/x/../y", "{cfg}");
    let history: Vec<String> = cfg["config"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str().map(str::to_string))
        .collect();
    assert!(
        history.iter().any(|h| h == "WORKDIR /srv/app/"),
        "{history:?}"
    );
    assert!(
        history.iter().any(|h| h == "WORKDIR /x/../y"),
        "{history:?}"
    );
    let rootfs = p.unpack("workdir-raw:1", "u");
    assert!(rootfs.join("y").is_dir());
    assert!(!rootfs.join("x").exists(), "/x was made for /x/../y");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("first.txt")).unwrap(),
        "/srv/app\n"
    );
}

#[test]
fn add_unpacks_every_archive_a_wildcard_matches() {
    // BuildKit tries to unpack each match of an ADD wildcard; the matches that are no archive
    // are copied as they are.
    let p = Scratch::new(&[
        ("payload/pkg/one.txt", "one\n"),
        ("notes.txt", "release notes\n"),
        ("Dockerfile", "FROM scratch\nADD *.tar *.xz /globbed/\n"),
    ]);
    let ctx = p.ctx();
    run(Command::new("tar")
        .arg("-cf")
        .arg(ctx.join("app.tar"))
        .arg("-C")
        .arg(ctx.join("payload"))
        .arg("pkg"));
    run(Command::new("xz").arg(ctx.join("notes.txt")));
    p.build("add-glob:1");
    let rootfs = p.unpack("add-glob:1", "u");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("globbed/pkg/one.txt")).unwrap(),
        "one\n"
    );
    assert!(
        !rootfs.join("globbed/app.tar").exists(),
        "app.tar was not unpacked"
    );
    assert_eq!(
        std::fs::read(rootfs.join("globbed/notes.txt.xz")).unwrap(),
        std::fs::read(ctx.join("notes.txt.xz")).unwrap()
    );
}

#[test]
fn a_cache_mount_from_a_stage_starts_with_its_source_and_is_its_own_cache() {
    // BuildKit starts a `from=` cache mount from the stage's `source` and keys it by that
    // stage's content: the bare id is another cache.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox AS seed\n\
         RUN mkdir -p /seed/sub && echo seeded > /seed/sub/file\n\
         FROM busybox\n\
         RUN --mount=type=cache,id=s,from=seed,source=/seed,target=/c find /c | sort > /first.txt && touch /c/added\n\
         RUN --mount=type=cache,id=s,from=seed,source=/seed,target=/c find /c | sort > /second.txt\n\
         RUN --mount=type=cache,id=s,target=/c find /c > /bare.txt\n",
    )]);
    p.build("cache-from:1");
    let rootfs = p.unpack("cache-from:1", "u");
    let read = |f: &str| std::fs::read_to_string(rootfs.join(f)).unwrap();
    assert_eq!(read("first.txt"), "/c\n/c/sub\n/c/sub/file\n");
    assert_eq!(read("second.txt"), "/c\n/c/added\n/c/sub\n/c/sub/file\n");
    assert_eq!(read("bare.txt"), "/c\n");
}

#[test]
fn copy_of_context_names_that_are_not_utf8_is_byte_exact() {
    // BuildKit copies context names as bytes (Go strings): a Latin-1 `caf\xe9`, a directory and
    // a symlink target that are not UTF-8 land in the layer byte for byte, and `.dockerignore`
    // matches them as bytes (`?` is one such byte). kiln refused them.
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let p = Scratch::new(&[
        ("Dockerfile", "FROM scratch\nCOPY . /x\n"),
        (".dockerignore", "Dockerfile\n.dockerignore\nskip?\n"),
    ]);
    let ctx = p.ctx();
    let raw = |b: &[u8]| ctx.join(OsStr::from_bytes(b));
    std::fs::write(raw(b"caf\xe9"), "latin-1\n").unwrap();
    std::fs::create_dir(raw(b"d\xff")).unwrap();
    std::fs::write(raw(b"d\xff/in"), "in\n").unwrap();
    std::fs::write(raw(b"skip\xe9"), "ignored\n").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9"), raw(b"l\xe8")).unwrap();
    p.build("raw-names:1");

    let manifest: serde_json::Value =
        serde_json::from_str(&ok(&kiln(&p.root(), &p.reg, &["inspect", "raw-names:1"]))).unwrap();
    let layers = manifest["manifest"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let digest = layers[0]["digest"].as_str().unwrap();
    let blob = std::fs::read(
        p.root()
            .join("oci/blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let tar = if blob.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut out).unwrap();
        out
    } else {
        blob
    };
    let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e.link_name_bytes().map(|l| l.into_owned());
            (e.path_bytes().into_owned(), link)
        })
        .collect();
    entries.sort();
    let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
        (b"x/".to_vec(), None),
        (b"x/caf\xe9".to_vec(), None),
        (b"x/d\xff/".to_vec(), None),
        (b"x/d\xff/in".to_vec(), None),
        (b"x/l\xe8".to_vec(), Some(b"caf\xe9".to_vec())),
    ];
    assert_eq!(entries, want);

    let rootfs = p.unpack("raw-names:1", "u");
    let at = |b: &[u8]| rootfs.join(OsStr::from_bytes(b));
    assert_eq!(
        std::fs::read_to_string(at(b"x/caf\xe9")).unwrap(),
        "latin-1\n"
    );
    assert_eq!(std::fs::read_to_string(at(b"x/d\xff/in")).unwrap(), "in\n");
    assert_eq!(
        std::fs::read_link(at(b"x/l\xe8")).unwrap(),
        Path::new(OsStr::from_bytes(b"caf\xe9"))
    );
}

#[test]
fn run_gets_the_users_home_and_a_uid_without_one_gets_slash() {
    // runc sets HOME for BuildKit's RUN when the environment has none: the passwd entry's
    // home, else `/` (`USER 4242:4242`); kiln left it unset for such a uid.
    let p = Scratch::new(&[(
        "Dockerfile",
        "FROM busybox\n\
         RUN echo \"[$HOME]\" > /root-home && mkdir -p /tmp && chmod 1777 /tmp\n\
         USER app\n\
         RUN echo \"[$HOME]\" > /tmp/app-home\n\
         USER 4242:4242\n\
         RUN echo \"[$HOME]\" > /tmp/numeric-home\n\
         ENV HOME=/srv\n\
         RUN echo \"[$HOME]\" > /tmp/env-home\n",
    )]);
    p.build("run-home:1");
    let rootfs = p.unpack("run-home:1", "u");
    let read = |f: &str| std::fs::read_to_string(rootfs.join(f)).unwrap();
    assert_eq!(read("root-home"), "[/root]\n");
    assert_eq!(read("tmp/app-home"), "[/home/app]\n");
    assert_eq!(read("tmp/numeric-home"), "[/]\n");
    assert_eq!(read("tmp/env-home"), "[/srv]\n");
}

#[test]
fn a_copy_wildcard_that_matches_nothing_is_no_error() {
    // `COPY pyproject.toml poetry.lock* ./` without a lock file builds in BuildKit
    // (AllowEmptyWildcard); a lone wildcard with no match copies nothing, and one match to a
    // destination without `/` is that file. kiln failed the build with "not found".
    let p = Scratch::new(&[
        (
            "Dockerfile",
            "FROM busybox\n\
             WORKDIR /app\n\
             COPY pyproject.toml poetry.lock* ./\n\
             COPY *.nope /none/\n\
             COPY pyproject.tom? /single\n",
        ),
        ("pyproject.toml", "[project]\n"),
    ]);
    p.build("empty-wildcard:1");
    let rootfs = p.unpack("empty-wildcard:1", "u");
    assert!(rootfs.join("app/pyproject.toml").is_file());
    assert!(!rootfs.join("none").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("single")).unwrap(),
        "[project]\n"
    );
}
