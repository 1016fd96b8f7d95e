//! Where `kiln build` finds its context and Dockerfile, as the docker CLI and buildx decide:
//! a directory, or `-` for stdin, which holds either a context tar (plain, gzip or zstd) or a
//! lone Dockerfile (the context is then empty and `-f` is not used, as `docker build - <
//! Dockerfile` has it); `-f` relative to the working directory for a directory context and
//! inside the tar for a tar context; and a missing `Dockerfile` falls back to a `dockerfile`
//! next to it (moby#10858, buildx#444, buildkit#1816).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::diag::SourceFile;
use crate::oci::Compression;

/// How many bytes of stdin are looked at to tell a tar from a Dockerfile (the docker CLI
/// peeks two tar blocks).
const PEEK: u64 = 1024;

/// The build context directory (the one named, or a temporary one for stdin, which lives as
/// long as this value) and where the Dockerfile comes from.
pub(super) struct BuildContext {
    pub dir: PathBuf,
    pub dockerfile: DockerfileSource,
    _from_stdin: Option<tempfile::TempDir>,
}

/// Where the Dockerfile is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DockerfileSource {
    /// A file (its `<name>.dockerignore` applies).
    Path(PathBuf),
    /// `-f -`: stdin, read when the Dockerfile is loaded.
    Stdin,
    /// Stdin was the Dockerfile itself (`kiln build - < Dockerfile`), already read.
    Bytes(Vec<u8>),
}

impl DockerfileSource {
    /// The file whose `<name>.dockerignore` is looked for, if it is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DockerfileSource::Path(p) => Some(p),
            _ => None,
        }
    }

    /// Reads the Dockerfile, with errors that name it.
    pub fn load(&self) -> anyhow::Result<SourceFile> {
        match self {
            DockerfileSource::Path(p) => super::read_dockerfile(p),
            DockerfileSource::Stdin => super::read_dockerfile(Path::new("-")),
            DockerfileSource::Bytes(b) => super::source_from_bytes("<stdin>".into(), b.clone()),
        }
    }
}

impl BuildContext {
    /// `spec` is the context argument, `file` the `-f` given.
    pub fn open(spec: &str, file: Option<&Path>) -> anyhow::Result<BuildContext> {
        let is_stdin = |p: &Path| p.as_os_str() == "-";
        if spec != "-" {
            let dir = PathBuf::from(spec);
            if !dir.exists() && is_remote(spec) {
                anyhow::bail!(
                    "unable to prepare context: {spec:?} is a remote context (git repository or \
                     URL), which kiln does not fetch: clone or download it and build the \
                     directory, or send a tar on stdin (`-`)"
                );
            }
            if !dir.is_dir() {
                anyhow::bail!("unable to prepare context: path {spec:?} not found");
            }
            let dockerfile = match file {
                Some(f) if is_stdin(f) => DockerfileSource::Stdin,
                Some(f) => DockerfileSource::Path(lowercase_fallback(f.to_path_buf())),
                None => DockerfileSource::Path(lowercase_fallback(dir.join("Dockerfile"))),
            };
            return Ok(BuildContext {
                dir,
                dockerfile,
                _from_stdin: None,
            });
        }
        if file.is_some_and(is_stdin) {
            anyhow::bail!(
                "invalid argument: can't use stdin for both the build context and the \
                 Dockerfile (`-f -` with context `-`)"
            );
        }
        let tmp = tempfile::tempdir().context("creating a directory for the context")?;
        let mut stdin = std::io::stdin();
        let mut prefix = Vec::new();
        (&mut stdin)
            .take(PEEK)
            .read_to_end(&mut prefix)
            .context("reading the build context from stdin")?;
        let dockerfile = match stdin_kind(&prefix)? {
            StdinKind::Archive(compression) => {
                let reader = std::io::Cursor::new(prefix).chain(stdin);
                crate::layer::extract_layer(
                    reader,
                    compression,
                    tmp.path(),
                    &crate::layer::ExtractOptions::apply(),
                )
                .context("reading the build context tar from stdin")?;
                // A `-f` names a file inside the tar, as the daemon reads it.
                let inside = match file {
                    Some(f) => tmp.path().join(f.strip_prefix("/").unwrap_or(f)),
                    None => tmp.path().join("Dockerfile"),
                };
                DockerfileSource::Path(lowercase_fallback(inside))
            }
            StdinKind::Dockerfile => {
                let mut bytes = prefix;
                stdin
                    .read_to_end(&mut bytes)
                    .context("reading the Dockerfile from stdin")?;
                DockerfileSource::Bytes(bytes)
            }
        };
        Ok(BuildContext {
            dir: tmp.path().to_path_buf(),
            dockerfile,
            _from_stdin: Some(tmp),
        })
    }
}

/// A context the docker CLI would fetch: a git repository or a URL (`builder/remotecontext`'s
/// `IsGitURL`/`IsURL`).
fn is_remote(spec: &str) -> bool {
    ["http://", "https://", "git://", "git@", "github.com/"]
        .iter()
        .any(|p| spec.starts_with(p))
}

/// What stdin holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StdinKind {
    Archive(Compression),
    Dockerfile,
}

/// A compressed stream or a tar header is a context archive, anything else a Dockerfile, as
/// the docker CLI's `build.IsArchive` decides; bzip2 and xz, which it also takes, are refused
/// by name.
fn stdin_kind(prefix: &[u8]) -> anyhow::Result<StdinKind> {
    match Compression::sniff(prefix) {
        Compression::None => {}
        other => return Ok(StdinKind::Archive(other)),
    }
    if prefix.starts_with(b"BZh") || prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        anyhow::bail!(
            "the build context on stdin is compressed with bzip2 or xz, which kiln does not \
             read: send a plain, gzip or zstd tar"
        );
    }
    Ok(if is_tar_header(prefix) {
        StdinKind::Archive(Compression::None)
    } else {
        StdinKind::Dockerfile
    })
}

/// Whether `prefix` starts with a tar header block: 512 bytes, not all zero, whose checksum
/// field matches the sum of the block (taken as unsigned or signed bytes, as Go's reader does).
fn is_tar_header(prefix: &[u8]) -> bool {
    let Some(block) = prefix.get(..512) else {
        return false;
    };
    if block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| *c != ' ' && *c != '\0')
        .collect();
    let Ok(stored) = i64::from_str_radix(&text, 8) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || stored == signed
}

/// `…/Dockerfile` that does not exist, with a `…/dockerfile` next to it: that one.
fn lowercase_fallback(path: PathBuf) -> PathBuf {
    if path.file_name().is_some_and(|n| n == "Dockerfile") && !path.exists() {
        let lower = path.with_file_name("dockerfile");
        if lower.is_file() {
            return lower;
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn stdin_holding_a_dockerfile_is_not_taken_for_a_tar() {
        // Regression: `kiln build - < Dockerfile` read the Dockerfile as a context tar
        // ("failed to read entire block").
        assert_eq!(
            stdin_kind(b"FROM busybox\nRUN true\n").unwrap(),
            StdinKind::Dockerfile
        );
        let long = "FROM busybox\n".repeat(100);
        assert_eq!(stdin_kind(long.as_bytes()).unwrap(), StdinKind::Dockerfile);
        assert_eq!(stdin_kind(b"").unwrap(), StdinKind::Dockerfile);
        let tar = tar_of("Dockerfile", b"FROM busybox\n");
        assert_eq!(
            stdin_kind(&tar[..PEEK as usize]).unwrap(),
            StdinKind::Archive(Compression::None)
        );
        assert_eq!(
            stdin_kind(&[0x1f, 0x8b, 8, 0]).unwrap(),
            StdinKind::Archive(Compression::Gzip)
        );
        assert!(stdin_kind(b"BZh91AY&SY").is_err());
        // An all-zero block is the end of an empty tar, not a header.
        assert_eq!(stdin_kind(&[0u8; 1024]).unwrap(), StdinKind::Dockerfile);
        // A header whose checksum is wrong is not a tar.
        let mut bad = tar.clone();
        bad[0] ^= 1;
        assert!(!is_tar_header(&bad));
    }

    #[test]
    fn a_missing_dockerfile_falls_back_to_lowercase() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("Dockerfile");
        assert_eq!(lowercase_fallback(upper.clone()), upper);
        std::fs::write(dir.path().join("dockerfile"), "FROM scratch\n").unwrap();
        assert_eq!(
            lowercase_fallback(upper.clone()),
            dir.path().join("dockerfile")
        );
        std::fs::write(&upper, "FROM scratch\n").unwrap();
        assert_eq!(lowercase_fallback(upper.clone()), upper);
        // Only the default name falls back.
        let other = dir.path().join("Containerfile");
        assert_eq!(lowercase_fallback(other.clone()), other);
    }

    #[test]
    fn a_remote_context_is_refused_by_name() {
        let err = BuildContext::open("https://github.com/docker/buildx.git", None)
            .err()
            .expect("an error");
        assert!(err.to_string().contains("remote context"), "{err}");
        let err = BuildContext::open("no/such/dir", None)
            .err()
            .expect("an error");
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn stdin_for_both_context_and_dockerfile_is_refused() {
        let err = BuildContext::open("-", Some(Path::new("-")))
            .err()
            .expect("an error");
        assert!(err.to_string().contains("stdin for both"), "{err}");
    }
}
