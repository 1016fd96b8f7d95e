//! `kiln login` / `kiln logout`: check credentials against a registry and store them where
//! Docker keeps them.

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use anyhow::Context as _;

use super::registry_opts::{normalize_registry_name, runtime, RegistryOpts};
use crate::registry::{Credential, RegistryClient};

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Registry to log in to (default: Docker Hub)
    #[arg(value_name = "REGISTRY")]
    registry: Option<String>,
    /// User name
    #[arg(short, long)]
    username: Option<String>,
    /// Password or token (prefer --password-stdin: arguments are visible to other processes)
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password or token from stdin
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    #[command(flatten)]
    registry_opts: RegistryOpts,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// Registry to log out from (default: Docker Hub)
    #[arg(value_name = "REGISTRY")]
    registry: Option<String>,
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = normalize_registry_name(args.registry.as_deref().unwrap_or("docker.io"));
    let Some(username) = args.username.filter(|u| !u.is_empty()) else {
        anyhow::bail!("a user name is required: kiln login {registry} -u USER --password-stdin");
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else if let Some(p) = args.password {
        eprintln!("warning: a password on the command line is visible to other users; use --password-stdin");
        p
    } else if std::io::stdin().is_terminal() {
        anyhow::bail!("no password given: pass it with --password-stdin (e.g. `echo $TOKEN | kiln login {registry} -u {username} --password-stdin`)");
    } else {
        anyhow::bail!("no password given: use --password-stdin");
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }

    let config = args.registry_opts.load()?;
    let sources = args.registry_opts.credentials();
    // The registry itself (not a mirror) checks the credentials.
    let mut endpoint = config
        .endpoints(&registry, &crate::registry::CredentialSources::none())?
        .pop()
        .context("no endpoint for the registry")?;
    endpoint.credential = Some(Credential::Basic {
        username: username.clone(),
        password: password.clone(),
    });
    let client = RegistryClient::new(endpoint)?;
    runtime()?
        .block_on(client.ping(None))
        .with_context(|| format!("logging in to {registry} as {username}"))?;
    let location = sources.store(&registry, &username, &password)?;
    eprintln!("Login Succeeded (credentials for {registry} stored in {location})");
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = normalize_registry_name(args.registry.as_deref().unwrap_or("docker.io"));
    match crate::registry::CredentialSources::from_env().erase(&registry)? {
        Some(location) => eprintln!("Removed credentials for {registry} from {location}"),
        None => eprintln!("Not logged in to {registry}"),
    }
    Ok(ExitCode::SUCCESS)
}
