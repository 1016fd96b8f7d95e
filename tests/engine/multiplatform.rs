//! Multi-platform images: `--platform linux/amd64,linux/arm64` builds both side by side (arm64
//! RUN steps through qemu-user-static), an index in the store, pushed and read back with
//! skopeo; per-platform cache; `kiln manifest create`; the missing-emulation error. The
//! arm64 base is Debian's arm64 busybox-static (tests/support/busybox.rs).

use std::path::Path;
use std::process::{Command, Output};

use crate::support::busybox::{
    kiln, kiln_command, ok, registry_with_multiarch_busybox, require_tool_on_path, step_outcomes,
    Registry,
};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Fails (never skips) unless arm64 binaries run here through binfmt_misc.
fn require_arm64_emulation() {
    require_tool_on_path("qemu-aarch64-static", "qemu-user-static");
    let entry =
        std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    assert!(
        entry.starts_with("enabled") && entry.contains("flags: PF"),
        "arm64 emulation is not registered: `mount -t binfmt_misc binfmt_misc \
         /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64` (.ci/run does)"
    );
}

fn write_context(dir: &Path, dockerfile: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join("a.txt"), "a\n").unwrap();
}

fn skopeo_raw(image: &str) -> serde_json::Value {
    let out = crate::support::busybox::run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        image,
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(os/arch, digest)` of every manifest of an index document.
fn platforms(index: &serde_json::Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn run_in(root: &Path, reg: &Registry, platform: &str, image: &str, cmd: &[&str]) -> String {
    let mut args = vec!["run", "--platform", platform, image];
    args.extend_from_slice(cmd);
    ok(&kiln(root, reg, &args))
}

const TWO_STAGES: &str = "\
FROM --platform=$BUILDPLATFORM busybox AS tools
RUN echo tools > /tools
FROM --platform=$BUILDPLATFORM busybox AS build
ARG TARGETARCH
RUN echo \"built on $(uname -m) for $TARGETARCH\" > /built
FROM busybox
ARG TARGETPLATFORM
COPY --from=build /built /built
COPY --from=tools /tools /tools
RUN uname -m > /arch && echo \"$TARGETPLATFORM\" > /target
";

#[test]
fn two_platforms_build_side_by_side_into_a_pushed_index() {
    require_arm64_emulation();
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    write_context(&ctx, TWO_STAGES);
    let tag = format!("{}/team/multi:1", reg.addr);
    let metadata = work.path().join("metadata.json");
    let out = kiln(
        &root,
        &reg,
        &[
            "build",
            "--progress=plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &tag,
            "--push",
            "--metadata-file",
            metadata.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    );
    let id = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[linux/arm64 build ")
            && stderr.lines().any(|l| l.contains("[linux/amd64 ")
                && l.ends_with("RUN uname -m > /arch && echo \"$TARGETPLATFORM\" > /target")),
        "step names name the platform: {stderr}"
    );
    // The tools stage is the same for both platforms: made once, the other waits and hits.
    let tools: Vec<bool> = step_outcomes(&stderr)
        .into_iter()
        .filter(|(name, _)| name == "RUN echo tools > /tools")
        .map(|(_, cached)| cached)
        .collect();
    assert_eq!(tools.len(), 2, "{stderr}");
    assert_eq!(tools.iter().filter(|c| **c).count(), 1, "{stderr}");
    // The registry holds an index of both platforms under the tag.
    let remote = skopeo_raw(&format!("docker://{tag}"));
    assert_eq!(remote["mediaType"], INDEX, "{remote}");
    let listed = platforms(&remote);
    assert_eq!(
        listed.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"]
    );
    let raw = crate::support::busybox::run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{tag}"),
    ]));
    // The store keeps the layers uncompressed and the push sends gzip copies, so the pushed
    // index (recorded in --metadata-file, as buildx does) is not the printed store index.
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(
        recorded["containerimage.digest"],
        crate::support::sha256sum(&raw.stdout).as_str()
    );
    assert_ne!(recorded["containerimage.digest"], id.as_str());
    // skopeo reads the arm64 image's config through the index, and copies every platform.
    let arm_config = crate::support::busybox::run(Command::new("skopeo").args([
        "inspect",
        "--config",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{tag}"),
    ]));
    let arm_config: serde_json::Value = serde_json::from_slice(&arm_config.stdout).unwrap();
    assert_eq!(arm_config["architecture"], "arm64");
    let copied = work.path().join("copied");
    crate::support::busybox::run(
        Command::new("skopeo")
            .args(["copy", "--all", "--src-tls-verify=false"])
            .arg(format!("docker://{tag}"))
            .arg(format!("oci:{}:x", copied.display())),
    );
    // The RUN of the arm64 image ran under qemu; the build stage ran natively for both.
    assert_eq!(
        run_in(&root, &reg, "linux/arm64", &tag, &["cat", "/arch"]),
        "aarch64"
    );
    assert_eq!(
        run_in(&root, &reg, "linux/amd64", &tag, &["cat", "/arch"]),
        "x86_64"
    );
    assert_eq!(
        run_in(
            &root,
            &reg,
            "linux/arm64",
            &tag,
            &["cat", "/built", "/target"]
        ),
        "built on x86_64 for arm64\nlinux/arm64"
    );
    // `kiln images` shows the index with its platforms.
    let images = ok(&kiln(&root, &reg, &["images"]));
    let row = images
        .lines()
        .find(|l| l.starts_with(&tag))
        .unwrap_or_else(|| panic!("{images}"));
    assert!(row.contains("linux/amd64,linux/arm64"), "{images}");
    // `kiln inspect --platform` shows one platform's manifest and config under the index.
    let inspected: serde_json::Value = serde_json::from_str(&ok(&kiln(
        &root,
        &reg,
        &["inspect", "--platform", "linux/arm64", &tag],
    )))
    .unwrap();
    assert_eq!(inspected["config"]["architecture"], "arm64");
    assert_eq!(inspected["descriptor"]["digest"], id.as_str());
    // The printed ID names the index for `kiln tag` too.
    ok(&kiln(
        &root,
        &reg,
        &["tag", &id["sha256:".len()..][..12], "again:1"],
    ));
    let images = ok(&kiln(&root, &reg, &["images"]));
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("docker.io/library/again:1")
                && l.contains("linux/amd64,linux/arm64")),
        "{images}"
    );
    // `kiln push` of the index tag sends every platform to another name.
    let copy = format!("{}/team/copy:2", reg.addr);
    let pushed = ok(&kiln(
        &root,
        &reg,
        &["push", "--progress=plain", &tag, &copy],
    ));
    // Compression is deterministic: the same index as the build's push.
    assert_eq!(pushed, recorded["containerimage.digest"].as_str().unwrap());
    assert_eq!(platforms(&skopeo_raw(&format!("docker://{copy}"))), listed);
    // `kiln save --format oci` of the index keeps every platform; `kiln load` reads it back.
    let saved = work.path().join("saved.tar");
    ok(&kiln(
        &root,
        &reg,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            saved.to_str().unwrap(),
            &tag,
        ],
    ));
    let raw = crate::support::busybox::run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci-archive:{}:1", saved.display()),
    ]));
    // The store's own index (uncompressed layers, as docker save writes them).
    assert_eq!(crate::support::sha256sum(&raw.stdout), id);
    let saved_index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let names = |l: Vec<(String, String)>| l.into_iter().map(|(p, _)| p).collect::<Vec<_>>();
    assert_eq!(names(platforms(&saved_index)), names(listed.clone()));
    let other = work.path().join("other-root");
    let loaded = ok(&kiln(
        &other,
        &reg,
        &["load", "-i", saved.to_str().unwrap()],
    ));
    assert!(loaded.contains(&tag), "{loaded}");
    assert_eq!(
        run_in(&other, &reg, "linux/arm64", &tag, &["cat", "/arch"]),
        "aarch64"
    );
}

/// Plain output → how many steps (FROM aside, which is never cached) were cached and ran.
fn cached_and_run(out: &Output) -> (usize, usize) {
    let mut steps = step_outcomes(&String::from_utf8_lossy(&out.stderr));
    steps.retain(|(name, _)| !name.starts_with("FROM"));
    let cached = steps.iter().filter(|(_, c)| *c).count();
    (cached, steps.len() - cached)
}

#[test]
fn cache_records_are_per_platform_and_an_oci_archive_holds_every_platform() {
    require_arm64_emulation();
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    // FROM scratch: the same files for every platform, so only the platform tells them apart.
    write_context(
        &ctx,
        "FROM scratch\nCOPY a.txt /a.txt\nFROM busybox\nRUN uname -m > /arch\n",
    );
    let build = |platform: &str, extra: &[&str]| {
        let mut args = vec!["build", "--progress=plain", "--platform", platform];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        kiln(&root, &reg, &args)
    };
    let amd = build("linux/amd64", &["-t", "one:amd64"]);
    ok(&amd);
    assert_eq!(cached_and_run(&amd).0, 0);
    // The amd64 records are not used for arm64, not even for the platform-neutral COPY.
    let arm = build("linux/arm64", &["-t", "one:arm64"]);
    ok(&arm);
    assert_eq!(
        cached_and_run(&arm).0,
        0,
        "{}",
        String::from_utf8_lossy(&arm.stderr)
    );
    assert_eq!(
        run_in(&root, &reg, "linux/arm64", "one:arm64", &["cat", "/arch"]),
        "aarch64"
    );
    // Both platforms together: every step from the cache.
    let archive = work.path().join("multi.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    let both = build("linux/amd64,linux/arm64", &["-o", &dest, "-t", "both:1"]);
    let id = ok(&both);
    let (cached, ran) = cached_and_run(&both);
    assert!(
        cached >= 2 && ran == 0,
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    // A root filesystem per platform; one-platform outputs are refused before any step.
    let dirs = work.path().join("rootfs");
    let dest = format!("type=local,dest={}", dirs.display());
    ok(&build("linux/amd64,linux/arm64", &["-o", &dest]));
    for (platform, arch) in [("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")] {
        let text = std::fs::read_to_string(dirs.join(platform).join("arch")).unwrap();
        assert_eq!(text.trim(), arch);
    }
    let docker = build(
        "linux/amd64,linux/arm64",
        &[
            "-o",
            &format!("type=docker,dest={}", work.path().join("d.tar").display()),
        ],
    );
    assert_eq!(docker.status.code(), Some(1));
    let err = String::from_utf8_lossy(&docker.stderr);
    assert!(
        err.contains("type=docker holds one platform") && !err.contains("#1 "),
        "{err}"
    );
    // The archive: index.json names the index, which lists both platforms.
    let unpacked = work.path().join("archive");
    std::fs::create_dir(&unpacked).unwrap();
    crate::support::busybox::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpacked),
    );
    let layout_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("index.json")).unwrap()).unwrap();
    let top = &layout_index["manifests"][0];
    assert_eq!(top["mediaType"], INDEX);
    // The printed digest is the store's index, whose manifests name uncompressed layers; the
    // archive's name their gzip copies. Same images: the same configs, platform by platform.
    let read_json = |blobs: &Path, digest: &str| -> serde_json::Value {
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let configs = |blobs: &Path, index: &serde_json::Value| -> Vec<String> {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let manifest = read_json(blobs, m["digest"].as_str().unwrap());
                manifest["config"]["digest"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let archive_blobs = unpacked.join("blobs/sha256");
    let index = read_json(&archive_blobs, top["digest"].as_str().unwrap());
    let store_blobs = root.join("oci/blobs/sha256");
    assert_eq!(
        configs(&archive_blobs, &index),
        configs(&store_blobs, &read_json(&store_blobs, &id))
    );
    assert_eq!(
        platforms(&index)
            .into_iter()
            .map(|(p, _)| p)
            .collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"]
    );
    // skopeo takes every platform from it (compare platforms, not bytes: skopeo may write
    // the manifests again).
    let copied = work.path().join("from-archive");
    crate::support::busybox::run(
        Command::new("skopeo")
            .args(["copy", "--all"])
            .arg(format!("oci-archive:{}:1", archive.display()))
            .arg(format!("oci:{}:x", copied.display())),
    );
    let layout_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copied.join("index.json")).unwrap()).unwrap();
    let top = layout_index["manifests"][0]["digest"].as_str().unwrap();
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            copied
                .join("blobs/sha256")
                .join(top.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(platforms(&index).len(), 2, "{index}");
}

#[test]
fn manifest_create_merges_images_built_separately() {
    require_arm64_emulation();
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    write_context(&ctx, "FROM busybox\nRUN uname -m > /arch\n");
    for arch in ["amd64", "arm64"] {
        ok(&kiln(
            &root,
            &reg,
            &[
                "build",
                "--platform",
                &format!("linux/{arch}"),
                "-t",
                &format!("app:{arch}"),
                ctx.to_str().unwrap(),
            ],
        ));
    }
    let merged = format!("{}/team/merged:1", reg.addr);
    let digest = ok(&kiln(
        &root,
        &reg,
        &[
            "manifest",
            "create",
            "-t",
            &merged,
            "--push",
            "app:amd64",
            "app:arm64",
        ],
    ));
    let remote = skopeo_raw(&format!("docker://{merged}"));
    assert_eq!(remote["mediaType"], INDEX);
    assert_eq!(
        platforms(&remote)
            .into_iter()
            .map(|(p, _)| p)
            .collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"]
    );
    // The printed digest is the pushed index's.
    let raw = crate::support::busybox::run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{merged}"),
    ]));
    assert_eq!(digest, crate::support::sha256sum(&raw.stdout));
    // From a registry too: the registry's index of busybox plus nothing new is itself.
    let from_registry = ok(&kiln(
        &root,
        &reg,
        &[
            "manifest",
            "create",
            "-t",
            "bb:multi",
            &format!("{}/library/busybox:amd64", reg.addr),
            &format!("{}/library/busybox:arm64", reg.addr),
        ],
    ));
    assert!(from_registry.starts_with("sha256:"));
    let images = ok(&kiln(&root, &reg, &["images"]));
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("docker.io/library/bb:multi")
                && l.contains("linux/amd64,linux/arm64")),
        "{images}"
    );
    // One platform twice is refused.
    let twice = kiln(
        &root,
        &reg,
        &["manifest", "create", "-t", "bad:1", "app:amd64", "bb:multi"],
    );
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("another image for linux/amd64"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );
}

#[test]
fn a_foreign_run_without_a_binfmt_handler_names_the_package_and_the_fix() {
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    write_context(&ctx, "FROM busybox\nRUN uname -m\n");
    let empty = work.path().join("binfmt");
    std::fs::create_dir_all(&empty).unwrap();
    let kiln_without_handlers = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg(args[0])
            .arg("--root")
            .arg(work.path().join("root"))
            .args(&args[1..])
            .env("KILN_BINFMT_DIR", &empty)
            .env("DOCKER_CONFIG", work.path().join("no-docker-config"))
            .env_remove("KILN_CONFIG")
            .output()
            .unwrap()
    };
    let out = kiln_without_handlers(&[
        "build",
        "--registry-mirror",
        &reg.addr,
        "--platform",
        "linux/amd64,linux/arm64",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[linux/arm64]")
            && err.contains("Dockerfile:2:1")
            && err.contains("qemu-user-static")
            && err.contains("update-binfmts --enable qemu-aarch64"),
        "{err}"
    );
    // `kiln run` checks before it starts anything, too.
    let out = kiln_without_handlers(&["run", "--platform", "linux/arm64", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("qemu-user-static"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_multi_platform_build_finds_each_platforms_base_without_the_registry() {
    require_arm64_emulation();
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let ctx = work.path().join("ctx");
    write_context(&ctx, "FROM busybox\nRUN uname -m > /arch\n");
    let args = [
        "build",
        "--progress=plain",
        "--platform",
        "linux/amd64,linux/arm64",
        ctx.to_str().unwrap(),
    ];
    let first = kiln(&root, &reg, &args);
    ok(&first);
    // Each platform's pull moved the busybox tag; the registry is gone now.
    let mirror = reg.addr.clone();
    drop(reg);
    let again = kiln_command(&root, &mirror, &args).output().unwrap();
    assert_eq!(ok(&again), ok(&first), "the same index");
    let (cached, ran) = cached_and_run(&again);
    assert!(
        cached == 2 && ran == 0,
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn bake_builds_a_targets_platforms_into_an_index() {
    require_arm64_emulation();
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    write_context(
        &work.path().join("app"),
        "FROM busybox\nRUN uname -m > /arch\n",
    );
    std::fs::write(
        work.path().join("docker-bake.hcl"),
        "target \"default\" {\n  context = \"app\"\n  tags = [\"baked:1\"]\n  \
         platforms = [\"linux/amd64\", \"linux/arm64\"]\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("bake")
        .arg("--root")
        .arg(&root)
        .args(["--registry-mirror", &reg.addr, "--progress=plain"])
        .current_dir(work.path())
        .env("DOCKER_CONFIG", root.join("no-docker-config"))
        .env_remove("KILN_CONFIG")
        .output()
        .unwrap();
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[default] #") && stderr.contains("[linux/arm64 "),
        "{stderr}"
    );
    let images = ok(&kiln(&root, &reg, &["images"]));
    let row = images
        .lines()
        .find(|l| l.starts_with("docker.io/library/baked:1"))
        .unwrap_or_else(|| panic!("{images}"));
    assert!(row.contains("linux/amd64,linux/arm64"), "{images}");
    // The printed ID is the index's, the one the tag names.
    assert!(
        stdout.contains(&row.split_whitespace().nth(1).unwrap()[..12]),
        "{stdout}\n{images}"
    );
    assert_eq!(
        run_in(&root, &reg, "linux/arm64", "baked:1", &["cat", "/arch"]),
        "aarch64"
    );
}

#[test]
fn without_oci_media_types_the_index_is_a_docker_manifest_list() {
    require_arm64_emulation();
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    write_context(&ctx, "FROM busybox\nCOPY a.txt /a.txt\n");
    let tag = format!("{}/team/list:1", reg.addr);
    ok(&kiln(
        &work.path().join("root"),
        &reg,
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--oci-mediatypes=false",
            "-t",
            &tag,
            "--push",
            ctx.to_str().unwrap(),
        ],
    ));
    let list = skopeo_raw(&format!("docker://{tag}"));
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    for m in list["manifests"].as_array().unwrap() {
        assert_eq!(
            m["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
    }
    assert_eq!(platforms(&list).len(), 2);
}

#[test]
fn a_failing_platform_stops_the_others_and_is_the_error_reported() {
    require_arm64_emulation();
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    // arm64 fails at once; amd64 is still in its first RUN then, and never starts the second.
    write_context(
        &ctx,
        "FROM busybox\n\
         RUN if [ \"$(uname -m)\" = aarch64 ]; then exit 3; fi; sleep 3\n\
         RUN touch /never\n",
    );
    let out = kiln(
        &work.path().join("root"),
        &reg,
        &[
            "build",
            "--progress=plain",
            "--platform",
            "linux/amd64,linux/arm64",
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: [linux/arm64]") && err.contains("Dockerfile:2:1"),
        "{err}"
    );
    assert!(!err.contains("RUN touch /never"), "{err}");
}

#[test]
fn an_exported_cache_holds_every_platforms_records() {
    require_arm64_emulation();
    let reg = registry_with_multiarch_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    write_context(
        &ctx,
        "FROM busybox\nRUN uname -m > /arch\nCOPY a.txt /a.txt\n",
    );
    let cache = work.path().join("cache");
    let build = |root: &str, cache_arg: &str| {
        kiln(
            &work.path().join(root),
            &reg,
            &[
                "build",
                "--progress=plain",
                "--platform",
                "linux/amd64,linux/arm64",
                cache_arg,
                ctx.to_str().unwrap(),
            ],
        )
    };
    let first = build(
        "a",
        &format!("--cache-to=type=local,dest={},mode=max", cache.display()),
    );
    let id = ok(&first);
    // Another machine: a fresh state root reads both platforms' records from the directory.
    let second = build(
        "b",
        &format!("--cache-from=type=local,src={}", cache.display()),
    );
    assert_eq!(ok(&second), id, "the same index");
    let (cached, ran) = cached_and_run(&second);
    assert!(
        cached == 4 && ran == 0,
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
}
