//! `kiln save` and `kiln load`: images to and from docker-archive / OCI archive files.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::images::find_image;
use super::output::write_to_dest;
use super::pull::StoreOpts;
use crate::export::{self, ArchiveFormat, ExportSource, IndexSource};
use crate::oci::Reference;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Images to save (references or image IDs), all into one archive
    #[arg(required = true)]
    references: Vec<String>,
    /// Write to this file (default: stdout)
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// docker: a docker-archive `docker load` and `podman load` read (also an OCI layout);
    /// oci: an OCI image layout in a tar
    #[arg(long, value_parser = ["docker", "oci"], default_value = "docker")]
    format: String,
    #[command(flatten)]
    store: StoreOpts,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Read from this archive (default: stdin)
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Print nothing
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    store: StoreOpts,
}

pub fn save(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    if let Some(index) = lone_index(&store, &args)? {
        let dest = archive_dest(&args)?;
        return write_to_dest(&dest, |out| {
            export::write_index_archive(&store, &index, out).map(|_| ())
        })
        .map(|_| ExitCode::SUCCESS);
    }
    let mut sources: Vec<ExportSource> = Vec::new();
    for input in &args.references {
        let (image, by_tag) = find_image(&store, input)?;
        let names = if by_tag {
            vec![image.tag.clone()]
        } else {
            vec![]
        };
        // The same image named twice is one image with both names.
        match sources.iter_mut().find(|s| s.id() == image.id()) {
            Some(s) => {
                for n in names {
                    if !s.names.contains(&n) {
                        s.names.push(n);
                    }
                }
            }
            None => sources.push(
                ExportSource::from_manifest(&store, &image.manifest_digest, names)
                    .with_context(|| format!("reading {input}"))?,
            ),
        }
    }
    let format = if args.format == "oci" {
        ArchiveFormat::Oci
    } else {
        ArchiveFormat::Docker
    };
    let dest = archive_dest(&args)?;
    write_to_dest(&dest, |out| {
        export::write_archive(&store, &sources, format, out).map(|_| ())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn archive_dest(args: &SaveArgs) -> anyhow::Result<String> {
    Ok(match &args.output {
        Some(p) => p.display().to_string(),
        None if std::io::stdout().is_terminal() => anyhow::bail!(
            "refusing to write an archive to the terminal: use -o FILE or redirect stdout"
        ),
        None => "-".into(),
    })
}

/// `kiln save --format oci` of one multi-platform image: the index with every platform (the
/// docker format, and several images at once, hold the host's platform of an index).
fn lone_index(store: &Store, args: &SaveArgs) -> anyhow::Result<Option<IndexSource>> {
    let [input] = args.references.as_slice() else {
        return Ok(None);
    };
    if args.format != "oci" {
        return Ok(None);
    }
    let (image, by_tag) = find_image(store, input)?;
    if !crate::oci::media::is_index(&image.target.media_type) {
        return Ok(None);
    }
    let names = if by_tag {
        vec![image.tag.clone()]
    } else {
        vec![]
    };
    Ok(IndexSource::from_store(store, &image.target.digest, names)?)
}

pub fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let loaded = match &args.input {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            export::load_archive(&store, std::io::BufReader::new(file))
                .with_context(|| format!("loading {}", path.display()))?
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                anyhow::bail!("no archive to load: give -i FILE or pipe one into stdin");
            }
            export::load_archive(&store, stdin.lock()).context("loading from stdin")?
        }
    };
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for image in &loaded {
        if image.names.is_empty() {
            writeln!(out, "Loaded image ID: {}", image.id)?;
            eprintln!(
                "warning: the archive does not name image {}: `kiln tag {} NAME` keeps it \
                 from the next `kiln prune`",
                image.id, image.target
            );
        }
        for name in &image.names {
            let shown = Reference::parse(name).map_or_else(|_| name.clone(), |r| r.familiar());
            writeln!(out, "Loaded image: {shown}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
