//! OCI image layouts built by the harness (busybox from Debian's busybox-static plus a few
//! files), pushed into test registries with `skopeo copy`.

use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;

use super::{require_tool, run};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct OciLayout {
    pub dir: tempfile::TempDir,
}

/// A descriptor as written into the layout.
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

impl Desc {
    fn json(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl OciLayout {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let hex = sha256_hex(bytes);
        let dir = self.path().join("blobs/sha256");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&hex), bytes).unwrap();
        Desc {
            media_type: media_type.to_string(),
            digest: format!("sha256:{hex}"),
            size: bytes.len(),
        }
    }

    /// A gzip layer from (path, mode, contents) entries; returns the descriptor and diff ID.
    fn write_layer(&self, files: &[(&str, u32, Vec<u8>)]) -> (Desc, String) {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, mode, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(1_700_000_000);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, path, data.as_slice()).unwrap();
        }
        let tar_bytes = tar.into_inner().unwrap();
        let diff_id = format!("sha256:{}", sha256_hex(&tar_bytes));
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
        let gz = gz.finish().unwrap();
        (self.write_blob(OCI_LAYER_GZIP, &gz), diff_id)
    }

    /// One image manifest for `arch`: a busybox layer and a small files layer.
    fn write_image(&self, arch: &str, busybox: &[u8]) -> Desc {
        let (l1, d1) = self.write_layer(&[("bin/busybox", 0o755, busybox.to_vec())]);
        let (l2, d2) = self.write_layer(&[
            (
                "etc/kiln-test",
                0o644,
                format!("arch={arch}\n").into_bytes(),
            ),
            (
                "hello.txt",
                0o644,
                b"hello from kiln's registry tests\n".to_vec(),
            ),
        ]);
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/busybox", "sh"], "Env": [format!("KILN_TEST_ARCH={arch}")]},
            "rootfs": {"type": "layers", "diff_ids": [d1, d2]},
            "history": [{"created_by": "busybox"}, {"created_by": "files"}],
        });
        let config = self.write_blob(OCI_CONFIG, config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.json(),
            "layers": [l1.json(), l2.json()],
        });
        self.write_blob(OCI_MANIFEST, manifest.to_string().as_bytes())
    }

    fn write_index(&self, top: &Desc, tag: &str) {
        std::fs::write(
            self.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let mut d = top.json();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [d]});
        std::fs::write(self.path().join("index.json"), index.to_string()).unwrap();
    }

    /// A single-platform (amd64) image tagged `tag`.
    pub fn single(tag: &str) -> OciLayout {
        let layout = OciLayout {
            dir: tempfile::tempdir().unwrap(),
        };
        let m = layout.write_image("amd64", &busybox());
        layout.write_index(&m, tag);
        layout
    }

    /// An index of amd64 and arm64 manifests (different configs) tagged `tag`.
    pub fn multi_arch(tag: &str) -> OciLayout {
        let layout = OciLayout {
            dir: tempfile::tempdir().unwrap(),
        };
        let bb = busybox();
        let mut manifests = Vec::new();
        for arch in ["amd64", "arm64"] {
            let mut d = layout.write_image(arch, &bb).json();
            d["platform"] = json!({"architecture": arch, "os": "linux"});
            manifests.push(d);
        }
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        let top = layout.write_blob(OCI_INDEX, index.to_string().as_bytes());
        layout.write_index(&top, tag);
        layout
    }
}

/// Debian busybox-static's binary.
pub fn busybox() -> Vec<u8> {
    let path: PathBuf = require_tool("/bin/busybox", "busybox-static");
    std::fs::read(path).unwrap()
}

#[derive(Default)]
pub struct PushOptions<'a> {
    /// `--all`: copy every manifest of an index.
    pub all: bool,
    /// `--format v2s2`: convert to Docker schema 2.
    pub docker_v2s2: bool,
    /// `--dest-creds user:password`.
    pub creds: Option<&'a str>,
}

/// `skopeo copy oci:<layout>:<tag> docker://<dest>`.
pub fn push(layout: &OciLayout, tag: &str, dest: &str, opts: PushOptions<'_>) {
    let mut cmd = Command::new(require_tool("skopeo", "skopeo"));
    cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
    if opts.all {
        cmd.arg("--all");
    }
    if opts.docker_v2s2 {
        cmd.args(["--format", "v2s2"]);
    }
    if let Some(c) = opts.creds {
        cmd.args(["--dest-creds", c]);
    }
    cmd.arg(format!("oci:{}:{tag}", layout.path().display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd);
}
