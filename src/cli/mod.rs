//! Command line: clap definitions, rendering of results and errors, exit codes. The only module that
//! prints or uses `anyhow`.

mod bake;
mod build;
mod build_args;
mod build_context;
mod cache_opts;
mod check;
mod check_ignore;
mod images;
mod isolation;
mod login;
mod manifest;
mod output;
mod parse;
mod pull;
mod push;
mod push_cache;
mod registry_opts;
pub mod render;
mod run;
mod save;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// kiln: build container images from Dockerfiles, with no daemon.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
    /// How RUN steps are confined: auto (the strongest allowed here; the default, or
    /// $KILN_ISOLATION), oci (root: overlay snapshots and crun/runc), rootless (a user
    /// namespace), chroot (no namespaces or mounts)
    #[arg(long, global = true, value_enum)]
    isolation: Option<isolation::Requested>,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Print how kiln reads a Dockerfile: JSON (stages, typed instructions, spans) or BuildKit's AST dump
    Parse(parse::ParseArgs),
    /// Run BuildKit's build checks (linter) on a Dockerfile
    Check(check::CheckArgs),
    /// Build an image from a Dockerfile
    Build(Box<build_args::BuildArgs>),
    /// Build every service of a compose file or every target of a docker-bake.hcl/.json, side by side
    Bake(Box<bake::BakeArgs>),
    /// Run a command in an image from the store
    Run(run::RunArgs),
    /// Pull an image from a registry into the local store
    Pull(pull::PullArgs),
    /// Push an image from the local store to a registry
    Push(push::PushArgs),
    /// Multi-platform indexes: `kiln manifest create -t REF [--push] SRC…` merges images
    Manifest(manifest::ManifestArgs),
    /// List the images in the local store
    Images(images::ImagesArgs),
    /// Print an image's manifest and config as JSON
    Inspect(images::InspectArgs),
    /// Remove image tags from the local store (blobs go with `kiln prune`)
    Rmi(images::RmiArgs),
    /// Delete blobs no tag reaches, and stale partial downloads
    Prune(images::PruneArgs),
    /// Give an image in the store another name
    Tag(images::TagArgs),
    /// Write images to a docker-archive or OCI archive (docker save)
    Save(save::SaveArgs),
    /// Read images from a docker-archive or OCI archive into the store (docker load)
    Load(save::LoadArgs),
    /// Log in to a registry: check the credentials and store them in Docker's config.json
    Login(login::LoginArgs),
    /// Remove stored credentials for a registry
    Logout(login::LogoutArgs),
}

impl Commands {
    /// Whether the command mounts snapshots or runs containers (or deletes snapshot files owned
    /// by other IDs), so that rootless kiln needs its user namespace for it.
    fn needs_engine(&self) -> bool {
        matches!(
            self,
            Commands::Build(_) | Commands::Bake(_) | Commands::Run(_) | Commands::Prune(_)
        )
    }
}

/// Runs the CLI and maps the outcome to an exit code: 0 success, 1 failure, 2 usage error.
pub fn main() -> ExitCode {
    use crate::sandbox::userns;
    if let Some(err) = userns::finish_entry() {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help/version to stdout and usage errors to stderr.
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Rootless: the engine (mounts, the OCI runtime) runs in a user namespace where kiln is
    // root. Before any thread exists: the re-exec forks.
    let reexec = match cli.command.needs_engine() {
        true => match isolation::requested(cli.isolation).and_then(isolation::decide) {
            Ok(r) => r,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        },
        false => false,
    };
    if reexec {
        // Inside, kiln is root, but the state root stays the user's: resolve it out here.
        if std::env::var_os("KILN_ROOT").is_none() {
            if let Ok(root) = crate::store::Store::default_root() {
                std::env::set_var("KILN_ROOT", root);
            }
        }
        return match userns::reexec() {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if userns::inside() {
        // Overlays there are mounted with `userxattr`: their marks are `user.overlay.*`.
        crate::layer::overlay::use_user_xattrs();
    }
    if userns::inside() && cli.command.needs_engine() {
        if let Err(err) = userns::check_capabilities() {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Commands::Parse(args) => parse::run(args),
        Commands::Check(args) => check::run(args),
        Commands::Build(args) => build::build(*args),
        Commands::Bake(args) => bake::run(*args),
        Commands::Run(args) => run::run(args),
        Commands::Pull(args) => pull::run(args),
        Commands::Push(args) => push::run(args),
        Commands::Manifest(args) => manifest::run(args),
        Commands::Images(args) => images::images(args),
        Commands::Inspect(args) => images::inspect(args),
        Commands::Rmi(args) => images::rmi(args),
        Commands::Prune(args) => images::prune(args),
        Commands::Tag(args) => images::tag(args),
        Commands::Save(args) => save::save(args),
        Commands::Load(args) => save::load(args),
        Commands::Login(args) => login::login(args),
        Commands::Logout(args) => login::logout(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", render_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-joined as anyhow's `{:#}` does, but without a cause the
/// message already ends with: the library's errors name their source in their own text
/// (`cannot open PATH: No such file…`) and also return it as `source()`.
fn render_chain(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Reads a Dockerfile (`-` is stdin) into a source file, with errors that name the path.
pub(crate) fn read_dockerfile(path: &std::path::Path) -> anyhow::Result<crate::diag::SourceFile> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let (name, bytes) = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the Dockerfile from stdin")?;
        ("<stdin>".to_string(), buf)
    } else {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading Dockerfile {}", path.display()))?;
        (path.display().to_string(), bytes)
    };
    source_from_bytes(name, bytes)
}

/// A Dockerfile's bytes as a source file named `name`; bytes that are not UTF-8 are an error
/// at their position.
pub(crate) fn source_from_bytes(
    name: String,
    bytes: Vec<u8>,
) -> anyhow::Result<crate::diag::SourceFile> {
    crate::diag::SourceFile::from_bytes(name.clone(), bytes).map_err(|e| {
        anyhow::anyhow!(
            "{name}:{}:{}: {}",
            e.position.line,
            e.position.column,
            e.message
        )
    })
}

#[cfg(test)]
mod chain_tests {
    #[test]
    fn a_cause_the_message_already_names_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "Permission denied");
        let err = crate::oci::IoError::new("open", "/x", io);
        let rendered = super::render_chain(&anyhow::Error::new(err));
        assert_eq!(rendered, "cannot open /x: Permission denied");
        let wrapped = anyhow::anyhow!("inner cause").context("outer");
        assert_eq!(super::render_chain(&wrapped), "outer: inner cause");
    }
}

#[cfg(test)]
mod flag_tests {
    use clap::Parser as _;

    /// Regression: `--progress=tty --progress=plain` (a CI script appending its own flag)
    /// was a usage error; docker takes the last value, and repeatable flags still add up.
    #[test]
    fn a_build_flag_given_twice_takes_the_last_value() {
        let cli = super::Cli::try_parse_from([
            "kiln",
            "build",
            "--progress=tty",
            "--progress=plain",
            "--target",
            "a",
            "--target",
            "b",
            "--label",
            "x=1",
            "--label",
            "y=2",
            ".",
        ])
        .expect("parsed");
        let super::Commands::Build(args) = cli.command else {
            panic!("not a build");
        };
        assert_eq!(args.progress, "plain");
        assert_eq!(args.target.as_deref(), Some("b"));
        assert_eq!(args.labels, ["x=1", "y=2"]);
    }
}
