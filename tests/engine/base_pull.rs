//! A build's base image is unpacked while its layers download (`registry::tap`): through a
//! download cut in the middle and resumed, and never from a blob that fails its digest.

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::busybox::{kiln_command, ok, registry_with_busybox, run, Registry};
use crate::support::proxy::{Action, FaultProxy};

/// `kiln build` with per-phase timings, the base named by `from`.
fn build(root: &Path, from: &str, tag: &str) -> Output {
    let ctx = root.join(format!("ctx-{}", tag.replace([':', '/'], "-")));
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {from}\nRUN wc -c < /bin/busybox > /size\n"),
    )
    .unwrap();
    // The base is named in full, so the mirror is never asked.
    kiln_command(
        root,
        "127.0.0.1:1",
        &[
            "build",
            "--progress=plain",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ],
    )
    .env("KILN_TIMINGS", "1")
    .output()
    .expect("run kiln")
}

/// The digest of busybox's only layer, as the registry serves it.
fn layer_digest(reg: &Registry) -> String {
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/library/busybox:latest", reg.addr),
    ]));
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert!(
        layers[0]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with("tar+gzip"),
        "{manifest}"
    );
    layers[0]["digest"].as_str().unwrap().to_string()
}

fn installed_snapshots(root: &Path) -> Vec<String> {
    match fs::read_dir(root.join("snapshots/snapshots")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn leftovers(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("snapshots/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn port_of(reg: &Registry) -> u16 {
    reg.addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn a_base_is_unpacked_while_it_downloads_even_when_the_download_is_cut_and_resumed() {
    let reg = registry_with_busybox();
    let layer = layer_digest(&reg);
    let proxy = FaultProxy::start(port_of(&reg));
    // The layer's first answer stops after 50,000 bytes; the client asks for the rest.
    proxy.add_rule(&layer, 1, Action::CutAfter(50_000));
    let root = tempfile::tempdir().unwrap();
    let out = build(
        root.path(),
        &format!("{}/library/busybox", proxy.host()),
        "streamed:1",
    );
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unpack (1 of 1 layers while downloading)"),
        "the layer was not unpacked from its download:\n{err}"
    );
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|s| s.path.contains(&layer) && s.header("range") == Some("bytes=50000-")),
        "no resumed request: {seen:#?}"
    );
    // What the RUN saw is the base's file, byte for byte.
    let host_size = fs::metadata("/bin/busybox").unwrap().len();
    let size = ok(
        &kiln_command(root.path(), "", &["run", "streamed:1", "cat", "/size"])
            .output()
            .unwrap(),
    );
    assert_eq!(size, host_size.to_string());
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

#[test]
fn a_base_layer_that_fails_its_digest_never_becomes_a_snapshot() {
    let reg = registry_with_busybox();
    let layer = layer_digest(&reg);
    // Byte 4 is the gzip header's MTIME: flipped, the layer still inflates to the tar its
    // DiffID names, so only the blob digest tells. Check that on the registry's own copy.
    let hex = layer.trim_start_matches("sha256:");
    let stored = reg
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut blob = fs::read(&stored).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob[..])
        .read_to_end(&mut tar)
        .unwrap();
    blob[4] ^= 0x01;
    let mut flipped = Vec::new();
    flate2::read::GzDecoder::new(&blob[..])
        .read_to_end(&mut flipped)
        .unwrap();
    assert!(tar == flipped, "flipping the MTIME byte changed the tar");

    let proxy = FaultProxy::start(port_of(&reg));
    proxy.add_rule(&layer, 1, Action::FlipByte(4));
    let root = tempfile::tempdir().unwrap();
    let out = build(
        root.path(),
        &format!("{}/library/busybox", proxy.host()),
        "bad:1",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("digest") && err.contains(&proxy.host()),
        "{err}"
    );
    assert_eq!(installed_snapshots(root.path()), Vec::<String>::new());
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );

    // The registry's good copy builds into the same state root.
    let out = build(
        root.path(),
        &format!("{}/library/busybox", reg.addr),
        "good:1",
    );
    ok(&out);
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}
