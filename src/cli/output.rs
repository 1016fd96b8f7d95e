//! `kiln build --output` (`-o`), in docker buildx's syntax, and writing an export to its
//! destination (a file, a directory or stdout).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;

use crate::export::{self, ArchiveFormat, ExportSource, IndexSource};
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The local store (the default).
    Image,
    /// The local store, then pushed.
    Registry,
    Oci,
    Docker,
    /// The root filesystem into a directory.
    Local,
    /// The root filesystem as a tar.
    Tar,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    /// A path, or `-` for stdout (archives only).
    pub dest: Option<String>,
    /// Full references from `name=`.
    pub names: Vec<String>,
    pub push: bool,
}

impl OutputSpec {
    pub fn image() -> OutputSpec {
        OutputSpec {
            kind: OutputKind::Image,
            dest: None,
            names: Vec::new(),
            push: false,
        }
    }

    /// Whether the image is tagged in the store (buildx: only the image and registry outputs).
    pub fn tags_store(&self) -> bool {
        matches!(self.kind, OutputKind::Image | OutputKind::Registry)
    }

    pub fn writes_stdout(&self) -> bool {
        self.dest.as_deref() == Some("-")
    }
}

/// Parses the `--output` values given (none: the store). One output per build, as buildx
/// before multi-exporter BuildKit.
pub fn parse_outputs(specs: &[String], stdout_is_tty: bool) -> anyhow::Result<OutputSpec> {
    match specs {
        [] => Ok(OutputSpec::image()),
        [one] => parse_output(one, stdout_is_tty),
        _ => anyhow::bail!(
            "{} --output values given: kiln exports one output per build (build again, or \
             `kiln save` the image in another format)",
            specs.len()
        ),
    }
}

/// One `--output` value: `type=oci,dest=app.tar`, `type=image,name=a:1,push=true`, the
/// shorthands `DIR` (type=local) and `-` (type=tar to stdout).
pub fn parse_output(spec: &str, stdout_is_tty: bool) -> anyhow::Result<OutputSpec> {
    let fields = split_csv(spec).with_context(|| format!("invalid --output {spec:?}"))?;
    if fields.len() == 1 && !fields[0].contains('=') {
        let (kind, dest) = if fields[0] == "-" {
            (OutputKind::Tar, "-")
        } else {
            (OutputKind::Local, fields[0].as_str())
        };
        return check_dest(
            OutputSpec {
                kind,
                dest: Some(dest.to_string()),
                names: Vec::new(),
                push: false,
            },
            stdout_is_tty,
        );
    }
    let mut kind = None;
    let mut dest = None;
    let mut names = Vec::new();
    let mut push = None;
    let mut others = Vec::new();
    for field in &fields {
        let (k, v) = field.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid --output field {field:?}: expected key=value")
        })?;
        match k.trim().to_ascii_lowercase().as_str() {
            "type" => {
                kind = Some(match v {
                    "image" => OutputKind::Image,
                    "registry" => OutputKind::Registry,
                    "oci" => OutputKind::Oci,
                    "docker" => OutputKind::Docker,
                    "local" => OutputKind::Local,
                    "tar" => OutputKind::Tar,
                    other => anyhow::bail!(
                        "unsupported output type {other:?}: kiln knows image, registry, oci, \
                         docker, local and tar"
                    ),
                })
            }
            "dest" => dest = Some(v.to_string()),
            "name" => {
                for n in v.split(',').filter(|n| !n.is_empty()) {
                    names.push(crate::oci::Reference::parse(n)?.to_string());
                }
            }
            "push" => push = Some(parse_bool(v).context("invalid push= in --output")?),
            // buildx writes a tarball unless tar=false (a directory layout).
            "tar" if parse_bool(v).context("invalid tar= in --output")? => {}
            other => others.push(other.to_string()),
        }
    }
    let kind = kind.ok_or_else(|| {
        anyhow::anyhow!("--output {spec:?} has no type= (image, registry, oci, docker, local, tar)")
    })?;
    let allowed: &[&str] = match kind {
        OutputKind::Image | OutputKind::Registry => &["name", "push"],
        OutputKind::Oci | OutputKind::Docker => &["dest", "name"],
        OutputKind::Local | OutputKind::Tar => &["dest"],
    };
    for key in others.iter().map(String::as_str).chain(
        [
            dest.as_ref().map(|_| "dest"),
            (!names.is_empty()).then_some("name"),
            push.map(|_| "push"),
        ]
        .into_iter()
        .flatten(),
    ) {
        if !allowed.contains(&key) {
            anyhow::bail!(
                "--output {spec:?}: kiln does not support {key}= for type={} (it takes: {})",
                type_name(kind),
                allowed.join(", ")
            );
        }
    }
    let push = match kind {
        OutputKind::Registry => push.unwrap_or(true),
        _ => push.unwrap_or(false),
    };
    check_dest(
        OutputSpec {
            kind,
            dest,
            names,
            push,
        },
        stdout_is_tty,
    )
}

fn check_dest(mut spec: OutputSpec, stdout_is_tty: bool) -> anyhow::Result<OutputSpec> {
    let name = type_name(spec.kind);
    match spec.kind {
        OutputKind::Image | OutputKind::Registry => {}
        OutputKind::Local => match spec.dest.as_deref() {
            None | Some("") => anyhow::bail!("type=local needs dest=DIR"),
            Some("-") => {
                anyhow::bail!("type=local writes a directory; use type=tar,dest=- for stdout")
            }
            Some(_) => {}
        },
        OutputKind::Oci | OutputKind::Docker | OutputKind::Tar => {
            if spec.dest.as_deref().is_none_or(str::is_empty) {
                // buildx: no dest means stdout, unless that is a terminal.
                spec.dest = Some("-".into());
            }
            if spec.writes_stdout() && stdout_is_tty {
                anyhow::bail!(
                    "type={name} would write a tar archive to the terminal: give dest=FILE or \
                     redirect stdout"
                );
            }
        }
    }
    Ok(spec)
}

fn type_name(kind: OutputKind) -> &'static str {
    match kind {
        OutputKind::Image => "image",
        OutputKind::Registry => "registry",
        OutputKind::Oci => "oci",
        OutputKind::Docker => "docker",
        OutputKind::Local => "local",
        OutputKind::Tar => "tar",
    }
}

fn parse_bool(v: &str) -> anyhow::Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Ok(true),
        "false" | "0" | "f" | "no" => Ok(false),
        _ => anyhow::bail!("{v:?} is not true or false"),
    }
}

/// Splits one CSV record as buildx does (Go's encoding/csv): commas separate fields, double
/// quotes protect commas (`"name=a,b"`), `""` inside quotes is a quote.
fn split_csv(s: &str) -> anyhow::Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        anyhow::bail!("unterminated quote");
    }
    fields.push(cur);
    Ok(fields)
}

/// Writes an export to `dest`: stdout for `-`, else a file that is removed again if writing
/// fails part way.
pub fn write_to_dest(
    dest: &str,
    write: impl FnOnce(&mut dyn Write) -> Result<(), export::ExportError>,
) -> anyhow::Result<()> {
    if dest == "-" {
        let stdout = std::io::stdout();
        let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
        write(&mut out)?;
        out.flush().context("writing to stdout")?;
        return Ok(());
    }
    let path = Path::new(dest);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let result = write(&mut out)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(())
        })
        .with_context(|| format!("writing {}", path.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Exports the built image (manifest `manifest`) as `spec` says; `names` are the full
/// references it carries (`-t` and `name=`). With `gzip_uncompressed` (the build left
/// compression to the image's way out), an OCI archive gets gzip layers, as BuildKit's OCI
/// exporter writes them and as a push sends them; a docker archive keeps them as they are,
/// since `docker load` only unpacks them.
pub fn export_build(
    store: &Store,
    manifest: &crate::oci::Digest,
    spec: &OutputSpec,
    names: Vec<String>,
    gzip_uncompressed: bool,
) -> anyhow::Result<()> {
    // The gzip copies are untagged blobs until the archive is written: prune waits for it.
    let mut _lock = None;
    let gzipped;
    let manifest = if spec.kind == OutputKind::Oci && gzip_uncompressed {
        _lock = Some(crate::exec::prune::BuildsLock::shared(store.root())?);
        gzipped = crate::exec::compress::gzip_for_push(store, manifest)?;
        &gzipped
    } else {
        manifest
    };
    if let Some(index) = IndexSource::from_store(store, manifest, names.clone())? {
        return export_index(store, &index, spec);
    }
    let source = ExportSource::from_manifest(store, manifest, names)?;
    let dest = spec.dest.as_deref().unwrap_or("-");
    match spec.kind {
        OutputKind::Image | OutputKind::Registry => Ok(()),
        OutputKind::Oci | OutputKind::Docker => {
            let format = if spec.kind == OutputKind::Oci {
                ArchiveFormat::Oci
            } else {
                ArchiveFormat::Docker
            };
            write_to_dest(dest, |out| {
                export::write_archive(store, std::slice::from_ref(&source), format, out).map(|_| ())
            })
        }
        OutputKind::Tar => write_to_dest(dest, |out| {
            export::write_rootfs_tar(store, &source, out).map(|_| ())
        }),
        OutputKind::Local => export::write_rootfs_dir(store, &source, Path::new(dest))
            .with_context(|| format!("writing the root filesystem into {dest}")),
    }
}

/// Refuses, before the build, the outputs that hold one platform when `platforms` are built.
pub fn check_multi_platform(spec: &OutputSpec, platforms: usize) -> anyhow::Result<()> {
    match spec.kind {
        OutputKind::Docker => anyhow::bail!(
            "type=docker holds one platform, and this build makes {platforms}: use type=oci for \
             all of them, or build one --platform"
        ),
        OutputKind::Tar => anyhow::bail!(
            "type=tar writes one root filesystem, and this build makes {platforms}: use \
             type=local (a directory per platform), or build one --platform"
        ),
        _ => Ok(()),
    }
}

/// A multi-platform build's export: the OCI archive holds the index and every platform;
/// a root filesystem goes into one directory per platform (`DIR/linux_arm64`, as buildx).
fn export_index(store: &Store, index: &IndexSource, spec: &OutputSpec) -> anyhow::Result<()> {
    let dest = spec.dest.as_deref().unwrap_or("-");
    match spec.kind {
        OutputKind::Image | OutputKind::Registry => Ok(()),
        OutputKind::Oci => write_to_dest(dest, |out| {
            export::write_index_archive(store, index, out).map(|_| ())
        }),
        OutputKind::Docker | OutputKind::Tar => check_multi_platform(spec, index.platforms.len()),
        OutputKind::Local => {
            for image in &index.platforms {
                let platform = image
                    .descriptor
                    .platform
                    .as_ref()
                    .map(|p| p.to_string().replace('/', "_"))
                    .unwrap_or_else(|| image.descriptor.digest.hex().to_string());
                let dir = Path::new(dest).join(platform);
                export::write_rootfs_dir(store, image, &dir).with_context(|| {
                    format!("writing the root filesystem into {}", dir.display())
                })?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<OutputSpec> {
        parse_output(s, false)
    }

    #[test]
    fn buildx_forms() {
        let o = parse("type=oci,dest=app.tar").unwrap();
        assert_eq!(o.kind, OutputKind::Oci);
        assert_eq!(o.dest.as_deref(), Some("app.tar"));
        let o = parse("out").unwrap();
        assert_eq!(
            (o.kind, o.dest.as_deref()),
            (OutputKind::Local, Some("out"))
        );
        let o = parse("-").unwrap();
        assert_eq!((o.kind, o.dest.as_deref()), (OutputKind::Tar, Some("-")));
        let o = parse("type=docker").unwrap();
        assert_eq!(o.dest.as_deref(), Some("-"));
        let o = parse(r#"type=image,"name=a:1,b:2",push=false"#).unwrap();
        assert_eq!(
            o.names,
            ["docker.io/library/a:1", "docker.io/library/b:2"].map(String::from)
        );
        assert!(!o.push);
        assert!(parse("type=registry,name=r:1").unwrap().push);
        assert!(parse("type=image,push=true").unwrap().push);
    }

    #[test]
    fn refusals() {
        assert!(parse("type=local").is_err());
        assert!(parse("type=local,dest=-").is_err());
        assert!(parse("type=oci,dest=x,compression=zstd").is_err());
        assert!(parse("type=oci,dest=x,tar=false").is_err());
        assert!(parse("type=tar,name=x").is_err());
        assert!(parse("dest=x").is_err());
        assert!(parse("type=bogus").is_err());
        assert!(parse_output("type=oci", true).is_err());
        assert!(parse_outputs(&["a".into(), "b".into()], false).is_err());
        assert_eq!(parse_outputs(&[], false).unwrap(), OutputSpec::image());
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(
            split_csv(r#"a=1,"b=2,3",c="x""y""#).unwrap(),
            ["a=1", "b=2,3", "c=x\"y"]
        );
        assert!(split_csv(r#"a="b"#).is_err());
    }
}
