//! Getting images out of kiln, as root, read back by other tools: `build -o type=oci` read by
//! skopeo and unpacked by umoci, `type=docker` loaded and run by Docker, `type=local`/`type=tar`
//! trees compared with umoci's unpacking of the same image, `dest=-` on stdout, `kiln save` →
//! `kiln load` into a fresh state root, and hostile archives refused by `kiln load`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::busybox::{kiln, ok, registry_with_busybox, run, unpack, Registry};

const DOCKERFILE: &str = "FROM busybox
RUN mkdir -p /data/sub && echo hello > /data/hello.txt && chmod 0640 /data/hello.txt \\
 && ln -s hello.txt /data/link && echo owned > /data/owned && chown 1000:1000 /data/owned \\
 && chmod 1777 /data/sub && rm /bin/wc && rm -rf /root
COPY a.txt /data/a.txt
";

struct Project {
    reg: Registry,
    root: tempfile::TempDir,
    ctx: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let reg = registry_with_busybox();
        let ctx = tempfile::tempdir().unwrap();
        fs::write(ctx.path().join("Dockerfile"), DOCKERFILE).unwrap();
        fs::write(ctx.path().join("a.txt"), "from the context\n").unwrap();
        Project {
            reg,
            root: tempfile::tempdir().unwrap(),
            ctx,
            out: tempfile::tempdir().unwrap(),
        }
    }

    fn kiln(&self, args: &[&str]) -> Output {
        kiln(self.root.path(), &self.reg, args)
    }

    /// `kiln build CONTEXT EXTRA…` with a fixed SOURCE_DATE_EPOCH, so rebuilds give the same
    /// image bytes.
    fn build(&self, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["build", "--root"])
            .arg(self.root.path())
            .args(["--registry-mirror", &self.reg.addr, "--progress", "plain"])
            .args(extra)
            .arg(self.ctx.path())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("DOCKER_CONFIG", self.root.path().join("no-docker-config"))
            .env_remove("KILN_CONFIG")
            .output()
            .expect("run kiln build")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The names of a tar's entries and the bytes of the small ones.
fn tar_entries(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        if entry.header().size().unwrap() < 1 << 20 {
            entry.read_to_end(&mut data).unwrap();
        }
        out.insert(name, data);
    }
    out
}

/// What a tree looks like, path by path: type, permission bits, owner, and file contents or
/// symlink target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &path, out);
                "dir".to_string()
            } else if meta.is_file() {
                format!(
                    "file {}",
                    crate::support::sha256sum(&fs::read(&path).unwrap())
                )
            } else {
                format!("special rdev={}", meta.rdev())
            };
            let mode = meta.permissions().mode() & 0o7777;
            out.insert(
                rel,
                format!("{what} {mode:o} {}:{}", meta.uid(), meta.gid()),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn oci_archive_is_read_by_skopeo_and_unpacked_by_umoci() {
    let p = Project::new();
    let archive = p.out("app.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    let out = p.build(&["-t", "app:1", "-o", &dest]);
    let id = ok(&out);
    assert!(id.starts_with("sha256:"), "build prints the image ID: {id}");

    // skopeo finds the image by the tag, as BuildKit names it in index.json.
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}:1", archive.display())));
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Layers"].as_array().unwrap().len(), 3);
    // As BuildKit's OCI exporter writes them: the store's uncompressed layers leave it as gzip.
    let manifest = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}:1", archive.display())));
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "{manifest}"
        );
    }
    let config = run(Command::new("skopeo")
        .args(["inspect", "--config", "--raw"])
        .arg(format!("oci-archive:{}", archive.display())));
    let config_digest = crate::support::sha256sum(&config.stdout);
    assert_eq!(config_digest, id, "the archive's config is the image ID");

    let entries = tar_entries(&fs::read(&archive).unwrap());
    let index: serde_json::Value = serde_json::from_slice(&entries["index.json"]).unwrap();
    let annotations = &index["manifests"][0]["annotations"];
    assert_eq!(
        annotations["io.containerd.image.name"],
        "docker.io/library/app:1"
    );
    assert_eq!(annotations["org.opencontainers.image.ref.name"], "1");
    assert!(
        !entries.contains_key("manifest.json"),
        "type=oci is not a docker-archive"
    );

    // Unpacked independently of kiln.
    let layout = p.out("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let bundle = p.out("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:1", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("data/hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("data/a.txt")).unwrap(),
        "from the context\n"
    );
    assert!(!rootfs.join("bin/wc").exists(), "deleted in a layer");

    // buildx: an archive output does not tag the local store.
    let images = ok(&p.kiln(&["images", "--format", "json"]));
    assert!(!images.contains("app:1"), "{images}");
}

/// Docker on the default socket, or why not.
fn docker() -> Result<PathBuf, String> {
    let docker = PathBuf::from("/usr/bin/docker");
    if !docker.is_file() {
        return Err(format!("{} is not installed", docker.display()));
    }
    let out = Command::new(&docker)
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dockerd is not reachable: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(docker)
}

#[test]
fn docker_archive_is_loaded_and_run_by_docker() {
    let docker = match docker() {
        Ok(d) => d,
        Err(why) if std::env::var_os("KILN_REQUIRE_DOCKER").is_some() => {
            panic!("KILN_REQUIRE_DOCKER is set but Docker cannot be used: {why}")
        }
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED docker_archive_is_loaded_and_run_by_docker: {why} \
                 (set KILN_REQUIRE_DOCKER=1 to make this a failure) ***\n"
            );
            return;
        }
    };
    let p = Project::new();
    let archive = p.out("app-docker.tar");
    let name = format!("kiln-export-test-{}:1", std::process::id());
    let dest = format!("type=docker,dest={}", archive.display());
    let id = ok(&p.build(&["-t", &name, "-o", &dest]));

    let entries = tar_entries(&fs::read(&archive).unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&entries["manifest.json"]).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], name.as_str());
    assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 3);

    let load = run(Command::new(&docker).arg("load").arg("-i").arg(&archive));
    let loaded = String::from_utf8_lossy(&load.stdout).into_owned();
    let cleanup = || {
        let _ = Command::new(&docker).args(["rmi", "-f", &name]).output();
    };
    let result = std::panic::catch_unwind(|| {
        assert!(
            loaded.contains(&format!("Loaded image: {name}")),
            "{loaded}"
        );
        let inspect =
            run(Command::new(&docker).args(["image", "inspect", "--format", "{{.Id}}", &name]));
        assert_eq!(
            String::from_utf8_lossy(&inspect.stdout).trim(),
            id,
            "same image ID in Docker"
        );
        let cat = run(Command::new(&docker).args([
            "run",
            "--rm",
            "--network=host",
            &name,
            "cat",
            "/data/hello.txt",
            "/data/a.txt",
        ]));
        assert_eq!(
            String::from_utf8_lossy(&cat.stdout),
            "hello\nfrom the context\n"
        );
    });
    cleanup();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn save_and_load_round_trip_into_a_fresh_root() {
    let p = Project::new();
    let id = ok(&p.build(&["-t", "app:1"]));
    ok(&p.kiln(&["tag", "app:1", "example.com/team/app:2"]));
    ok(&p.kiln(&["tag", &id[7..19], "app:by-id"]));

    for format in ["docker", "oci"] {
        let archive = p.out(&format!("saved-{format}.tar"));
        ok(&p.kiln(&[
            "save",
            "app:1",
            "example.com/team/app:2",
            "busybox",
            "--format",
            format,
            "-o",
            archive.to_str().unwrap(),
        ]));
        let fresh = tempfile::tempdir().unwrap();
        let loaded = ok(&kiln(
            fresh.path(),
            &p.reg,
            &["load", "-i", archive.to_str().unwrap()],
        ));
        for name in ["app:1", "example.com/team/app:2", "busybox:latest"] {
            assert!(
                loaded.lines().any(|l| l == format!("Loaded image: {name}")),
                "{format}: {loaded}"
            );
        }
        let images: serde_json::Value = serde_json::from_str(&ok(&kiln(
            fresh.path(),
            &p.reg,
            &["images", "--format", "json"],
        )))
        .unwrap();
        let id_of = |reference: &str| {
            images
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["reference"] == reference)
                .map(|i| i["id"].as_str().unwrap().to_string())
        };
        assert_eq!(
            id_of("docker.io/library/app:1").as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            id_of("example.com/team/app:2").as_deref(),
            Some(id.as_str())
        );
        assert!(id_of("docker.io/library/busybox:latest").is_some());
        // The loaded image is whole: it runs.
        let hello = ok(&kiln(
            fresh.path(),
            &p.reg,
            &["run", "app:1", "cat", "/data/hello.txt"],
        ));
        assert_eq!(hello, "hello");
    }

    // Through a pipe: save to stdout, load from stdin.
    let save = p.kiln(&["save", "app:by-id"]);
    let bytes = save.stdout.clone();
    ok(&Output {
        stdout: Vec::new(),
        ..save
    });
    let fresh = tempfile::tempdir().unwrap();
    let mut load = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["load", "--root"])
        .arg(fresh.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = load.wait_with_output().unwrap();
    assert_eq!(ok(&out), "Loaded image: app:by-id");
}

/// Regression: a layer stored with Docker's zstd media type
/// (`application/vnd.docker.image.rootfs.diff.tar.zstd`, what `--compression zstd
/// --oci-mediatypes=false` writes) was not recognised as zstd, so `kiln save --format docker`
/// put the zstd blob itself into the docker-archive, which Docker before 23 cannot load.
#[test]
fn save_docker_archive_decompresses_docker_zstd_layers() {
    let p = Project::new();
    ok(&p.build(&[
        "--compression",
        "zstd",
        "--oci-mediatypes=false",
        "-t",
        "app:zstd",
    ]));
    let archive = p.out("saved.tar");
    ok(&p.kiln(&[
        "save",
        "app:zstd",
        "--format",
        "docker",
        "-o",
        archive.to_str().unwrap(),
    ]));
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(fs::File::open(&archive).unwrap())
        .entries()
        .unwrap()
    {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let json = |path: &str| -> serde_json::Value {
        serde_json::from_slice(files.get(path).unwrap_or_else(|| panic!("no {path}"))).unwrap()
    };
    let index = json("index.json");
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = json(&format!(
        "blobs/sha256/{}",
        manifest_digest.trim_start_matches("sha256:")
    ));
    let zstd_layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.zstd")
        .count();
    assert_eq!(zstd_layers, 2, "the RUN and COPY layers: {manifest}");

    let docker = json("manifest.json");
    let config = json(docker[0]["Config"].as_str().unwrap());
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = docker[0]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (path, diff_id) in layers.iter().zip(diff_ids) {
        let path = path.as_str().unwrap();
        let bytes = &files[path];
        assert!(
            !bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            "{path} in the docker-archive is still zstd"
        );
        // Docker decompresses gzip itself (the busybox layer); anything else is the plain tar.
        let tar = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut plain)
                .unwrap();
            plain
        } else {
            bytes.clone()
        };
        assert_eq!(
            crate::support::sha256sum(&tar),
            diff_id.as_str().unwrap(),
            "{path} is not the layer's tar"
        );
    }
}

#[test]
fn local_and_tar_outputs_are_the_image_filesystem() {
    let p = Project::new();
    ok(&p.build(&["-t", "app:1"]));
    let reference = unpack(p.root.path(), "docker.io/library/app:1", &p.out("umoci"));
    let expected = tree(&reference);
    assert!(expected.contains_key("data/hello.txt") && !expected.contains_key("bin/wc"));

    let dir = p.out("rootfs");
    ok(&p.build(&["-o", dir.to_str().unwrap()]));
    let got = tree(&dir);
    assert_eq!(
        got, expected,
        "-o DIR (type=local) differs from umoci's unpacking"
    );
    assert_eq!(
        got["data/hello.txt"]
            .rsplit_once(' ')
            .unwrap()
            .0
            .rsplit_once(' ')
            .unwrap()
            .1,
        "640"
    );
    assert!(
        got["data/owned"].ends_with(" 1000:1000"),
        "{}",
        got["data/owned"]
    );
    assert!(
        got["data/sub"].starts_with("dir 1777 "),
        "{}",
        got["data/sub"]
    );
    assert!(got["data/link"].starts_with("link -> hello.txt "));
    assert!(
        !got.contains_key("root"),
        "a deleted directory stays deleted"
    );

    let tar_file = p.out("rootfs.tar");
    let dest = format!("type=tar,dest={}", tar_file.display());
    ok(&p.build(&["-o", &dest]));
    let untarred = p.out("untarred");
    fs::create_dir(&untarred).unwrap();
    run(Command::new("tar")
        .args(["-x", "-p", "--numeric-owner", "-f"])
        .arg(&tar_file)
        .arg("-C")
        .arg(&untarred));
    assert_eq!(
        tree(&untarred),
        expected,
        "type=tar differs from umoci's unpacking"
    );
}

#[test]
fn dest_dash_writes_only_the_archive_to_stdout() {
    let p = Project::new();
    let id = ok(&p.build(&["-t", "app:1"]));
    let out = p.build(&["-t", "app:1", "-o", "type=oci,dest=-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&id),
        "the image ID goes to stderr instead"
    );
    // Same image, same names: byte for byte what `dest=FILE` writes, so stdout holds nothing else.
    let file = p.out("app.tar");
    let to_file = p.build(&[
        "-t",
        "app:1",
        "-o",
        &format!("type=oci,dest={}", file.display()),
    ]);
    assert!(to_file.status.success(), "{}", stderr(&to_file));
    assert!(
        out.stdout == fs::read(&file).unwrap(),
        "stdout is not exactly the OCI archive"
    );
    let entries = tar_entries(&out.stdout);
    assert!(entries.contains_key("index.json") && entries.contains_key("oci-layout"));

    // `-o -` is the root filesystem as a tar on stdout.
    let out = p.build(&["-o", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = tar_entries(&out.stdout);
    assert_eq!(entries["data/hello.txt"], b"hello\n");

    // Refusals are clear and happen before anything is built.
    let out = p.build(&["-o", "type=oci,dest=a.tar", "-o", "type=docker,dest=b.tar"]);
    assert!(
        !out.status.success() && stderr(&out).contains("one output per build"),
        "{}",
        stderr(&out)
    );
    // `type=registry` is a push: to a registry that is down, a clear error.
    let out = p.build(&["-o", "type=registry,name=127.0.0.1:1/x:1"]);
    assert!(
        !out.status.success() && stderr(&out).contains("cannot reach registry 127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
}

/// A tar with raw entry names (the tar crate's builder refuses `..`), as an attacker writes one.
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha_hex(bytes: &[u8]) -> String {
    crate::support::sha256sum(bytes)[7..].to_string()
}

/// `kiln load` of `bytes` into `root`.
fn load(root: &Path, bytes: &[u8]) -> Output {
    let archive = root.join("in.tar");
    fs::write(&archive, bytes).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["load", "--root"])
        .arg(root.join("state"))
        .arg("-i")
        .arg(&archive)
        .output()
        .unwrap()
}

/// A one-layer image as an OCI layout's files: (index.json, blobs by path).
fn oci_image(layer_tar: &[u8], diff_id_hex: &str) -> (serde_json::Value, Vec<(String, Vec<u8>)>) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id_hex}")]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{}", sha_hex(layer_tar)), "size": layer_tar.len()}],
    }))
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{}", sha_hex(&manifest)), "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": "docker.io/library/evil:1",
                                       "org.opencontainers.image.ref.name": "1"}}],
    });
    let blobs = [layer_tar.to_vec(), config, manifest]
        .into_iter()
        .map(|b| (format!("blobs/sha256/{}", sha_hex(&b)), b))
        .collect();
    (index, blobs)
}

#[test]
fn load_refuses_hostile_archives() {
    let dir = tempfile::tempdir().unwrap();
    let layer = raw_tar(&[("hello.txt", tar::EntryType::Regular, b"hi\n", "")]);
    let (index, blobs) = oci_image(&layer, &sha_hex(&layer));
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let valid: Vec<(String, Vec<u8>)> = blobs
        .iter()
        .cloned()
        .chain([("index.json".to_string(), index_bytes.clone())])
        .collect();
    let archive = |files: &[(String, Vec<u8>)], extra: &[(&str, tar::EntryType, &[u8], &str)]| {
        let mut entries: Vec<(&str, tar::EntryType, &[u8], &str)> = extra.to_vec();
        for (name, data) in files {
            entries.push((name.as_str(), tar::EntryType::Regular, data.as_slice(), ""));
        }
        raw_tar(&entries)
    };

    // The control: this archive is fine.
    let case = dir.path().join("valid");
    fs::create_dir(&case).unwrap();
    assert_eq!(
        ok(&load(&case, &archive(&valid, &[]))),
        "Loaded image: evil:1"
    );

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "path traversal",
            archive(
                &valid,
                &[("../../escaped", tar::EntryType::Regular, b"x", "")],
            ),
            "refusing archive entry \"../../escaped\"",
        ),
        (
            "absolute path",
            archive(
                &valid,
                &[("/tmp/escaped", tar::EntryType::Regular, b"x", "")],
            ),
            "refusing archive entry",
        ),
        (
            "symlink out of the archive",
            archive(
                &valid,
                &[(
                    "blobs/x",
                    tar::EntryType::Symlink,
                    b"",
                    "../../../etc/passwd",
                )],
            ),
            "a link that points outside the archive",
        ),
        (
            "device node",
            archive(&valid, &[("dev", tar::EntryType::Char, b"", "")]),
            "only files, directories and links",
        ),
        (
            "blob that is not what its name says",
            {
                let mut files = valid.clone();
                files[0].1 = b"something else entirely".to_vec();
                archive(&files, &[])
            },
            "digest mismatch",
        ),
        (
            "descriptor size smaller than the blob",
            {
                let mut index = index.clone();
                index["manifests"][0]["size"] = serde_json::json!(10);
                let mut files = blobs.clone();
                files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
                archive(&files, &[])
            },
            "but its descriptor says 10",
        ),
        (
            "missing layer",
            archive(&valid[1..], &[]),
            "the archive has no layer",
        ),
        (
            "not an archive",
            archive(&blobs, &[]),
            "not an image archive",
        ),
    ];
    for (what, bytes, message) in cases {
        let case = dir.path().join(what.replace(' ', "-"));
        fs::create_dir(&case).unwrap();
        let out = load(&case, &bytes);
        let err = stderr(&out);
        assert!(!out.status.success(), "{what}: kiln load accepted it");
        assert!(
            err.contains(message),
            "{what}: error {err:?} does not say {message:?}"
        );
        assert!(!dir.path().join("escaped").exists() && !Path::new("/tmp/escaped").exists());
        let images = ok(&Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["images", "--root"])
            .arg(case.join("state"))
            .output()
            .unwrap());
        assert!(
            !images.contains("evil"),
            "{what}: an image was tagged: {images}"
        );
    }
}

#[test]
fn load_reads_legacy_docker_archives_and_checks_diff_ids() {
    // What `docker save` wrote before Docker 25: <id>/layer.tar (a later image's copy is a
    // symlink to the first), <id>.json configs, manifest.json.
    let dir = tempfile::tempdir().unwrap();
    let layer = raw_tar(&[("hello.txt", tar::EntryType::Regular, b"hi\n", "")]);
    let config = |diff_id: &str| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["cat", "/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        }))
        .unwrap()
    };
    let good = config(&sha_hex(&layer));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{}.json", sha_hex(&good)),
        "RepoTags": ["old:1", "ghcr.io/o/old:2"],
        "Layers": ["aaaa/layer.tar"],
    }, {
        "Config": format!("{}.json", sha_hex(&good)),
        "RepoTags": ["old:3"],
        "Layers": ["bbbb/layer.tar"],
    }]))
    .unwrap();
    let cfg_name = format!("{}.json", sha_hex(&good));
    let bytes = raw_tar(&[
        ("aaaa/layer.tar", tar::EntryType::Regular, &layer, ""),
        (
            "bbbb/layer.tar",
            tar::EntryType::Symlink,
            b"",
            "../aaaa/layer.tar",
        ),
        (&cfg_name, tar::EntryType::Regular, &good, ""),
        ("manifest.json", tar::EntryType::Regular, &manifest, ""),
    ]);
    let out = load(dir.path(), &bytes);
    assert_eq!(
        ok(&out),
        "Loaded image: old:1\nLoaded image: ghcr.io/o/old:2\nLoaded image: old:3"
    );
    let inspect = ok(&Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["inspect", "--root"])
        .arg(dir.path().join("state"))
        .arg("ghcr.io/o/old:2")
        .output()
        .unwrap());
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["id"], format!("sha256:{}", sha_hex(&good)));

    // A layer that is not what the config's diffID says.
    let bad = config(&sha_hex(b"another layer"));
    let bad_name = format!("{}.json", sha_hex(&bad));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": bad_name, "RepoTags": ["bad:1"], "Layers": ["aaaa/layer.tar"],
    }]))
    .unwrap();
    let bytes = raw_tar(&[
        ("aaaa/layer.tar", tar::EntryType::Regular, &layer, ""),
        (&bad_name, tar::EntryType::Regular, &bad, ""),
        ("manifest.json", tar::EntryType::Regular, &manifest, ""),
    ]);
    let case = dir.path().join("bad");
    fs::create_dir(&case).unwrap();
    let out = load(&case, &bytes);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has diffID"), "{}", stderr(&out));
}

#[test]
fn local_and_tar_outputs_keep_owners_modes_and_xattrs() {
    crate::support::busybox::require_root();
    let dir = tempfile::tempdir().unwrap();
    // A base image whose only layer has a file with an owner, a mode and a user xattr.
    let mut layer = tar::Builder::new(Vec::new());
    layer
        .append_pax_extensions([("SCHILY.xattr.user.kiln", &b"kept"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(3);
    h.set_mode(0o4751);
    h.set_uid(5);
    h.set_gid(6);
    layer.append_data(&mut h, "f.txt", &b"x\n\n"[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha_hex(&layer))]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "c.json", "RepoTags": ["xattr-base:1"], "Layers": ["l/layer.tar"],
    }]))
    .unwrap();
    ok(&load(
        dir.path(),
        &raw_tar(&[
            ("l/layer.tar", tar::EntryType::Regular, &layer, ""),
            ("c.json", tar::EntryType::Regular, &config, ""),
            ("manifest.json", tar::EntryType::Regular, &manifest, ""),
        ]),
    ));
    let ctx = dir.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM xattr-base:1\nLABEL a=b\n").unwrap();
    let build = |output: &str| {
        ok(&Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["build", "--root"])
            .arg(dir.path().join("state"))
            .args(["-q", "-o", output])
            .arg(&ctx)
            .output()
            .unwrap())
    };

    let out = dir.path().join("out");
    build(out.to_str().unwrap());
    let meta = fs::metadata(out.join("f.txt")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o4751, 5, 6)
    );
    let mut value = [0u8; 16];
    let n = rustix::fs::getxattr(out.join("f.txt"), "user.kiln", &mut value).unwrap();
    assert_eq!(&value[..n], b"kept");

    let tar_file = dir.path().join("rootfs.tar");
    build(&format!("type=tar,dest={}", tar_file.display()));
    let bytes = fs::read(&tar_file).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut entries = archive.entries().unwrap();
    let mut entry = entries.next().unwrap().unwrap();
    assert_eq!(entry.path().unwrap().to_str(), Some("f.txt"));
    let h = entry.header();
    assert_eq!(
        (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
        (0o4751, 5, 6)
    );
    let xattrs: Vec<(String, Vec<u8>)> = entry
        .pax_extensions()
        .unwrap()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.key().unwrap().to_string(), e.value_bytes().to_vec())
        })
        .collect();
    assert!(
        xattrs.contains(&("SCHILY.xattr.user.kiln".into(), b"kept".to_vec())),
        "{xattrs:?}"
    );
}
