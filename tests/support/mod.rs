//! Shared harness for tests that talk to real registries: a `docker-registry` (CNCF
//! Distribution) process per test in four set-ups (anonymous, htpasswd, token, TLS), a tiny
//! token issuer, OCI layouts built here and pushed with `skopeo`, and a fault-injecting proxy.
//!
//! Tools come from Debian packages; a missing tool fails the test with the package's name.
//! Every server listens on 127.0.0.1 only.

#![allow(dead_code)]

pub mod busybox;
pub mod layout;
pub mod proxy;
pub mod python_base;
pub mod registry;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::oci::Digest;
use kiln::registry::BlobSink;

/// Fails (never skips) when `program` is not installed, naming the apt package to install.
pub fn require_tool(program: &str, apt_package: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    match candidates.into_iter().find(|p| p.is_file()) {
        Some(p) => p,
        None => panic!(
            "required tool `{program}` is missing: install the Debian package `{apt_package}` \
             (apt-get install -y {apt_package})"
        ),
    }
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A free TCP port on 127.0.0.1 (bound and released; callers retry if it gets taken).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A blob sink that keeps everything in memory.
#[derive(Default, Debug)]
pub struct VecSink {
    pub data: Vec<u8>,
    pub resets: usize,
}

impl BlobSink for VecSink {
    fn offset(&self) -> u64 {
        self.data.len() as u64
    }
    fn write_chunk(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(chunk);
        Ok(())
    }
    fn reset(&mut self) -> std::io::Result<()> {
        self.data.clear();
        self.resets += 1;
        Ok(())
    }
}

/// The caller-side verification the client leaves to whoever owns the sink.
pub fn verify_blob(data: &[u8], expected: &Digest) -> Result<(), String> {
    let actual = Digest::of(data);
    if &actual == expected {
        Ok(())
    } else {
        Err(format!(
            "digest mismatch: expected {expected}, got {actual}"
        ))
    }
}

/// `sha256:<hex>` of a file's bytes computed by coreutils' `sha256sum`, independently of kiln.
pub fn sha256sum(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new(require_tool("sha256sum", "coreutils"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// Config and layer digests referenced by an image manifest (OCI or Docker schema 2).
pub fn manifest_blobs(manifest: &[u8]) -> Vec<Digest> {
    let v: serde_json::Value = serde_json::from_slice(manifest).expect("manifest is JSON");
    let mut out = vec![v["config"]["digest"]
        .as_str()
        .expect("manifest has a config")
        .parse()
        .unwrap()];
    for l in v["layers"].as_array().expect("manifest has layers") {
        out.push(l["digest"].as_str().unwrap().parse().unwrap());
    }
    out
}

/// `skopeo inspect --raw` of an image in a test registry.
pub fn skopeo_raw(image: &str, creds: Option<&str>, cert_dir: Option<&Path>) -> Vec<u8> {
    let mut cmd = Command::new(require_tool("skopeo", "skopeo"));
    cmd.args(["--insecure-policy", "inspect", "--raw"]);
    match cert_dir {
        Some(d) => {
            cmd.arg("--cert-dir").arg(d);
        }
        None => {
            cmd.arg("--tls-verify=false");
        }
    }
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    cmd.arg(format!("docker://{image}"));
    run(&mut cmd).stdout
}
