//! Options every registry-touching command shares, and the config file they read.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::registry::config::RegistryConfig;
use crate::registry::CredentialSources;

#[derive(Debug, Clone, clap::Args)]
pub struct RegistryOpts {
    /// Mirror for docker.io images, tried before Docker Hub (repeatable)
    #[arg(long = "registry-mirror", value_name = "HOST[:PORT]")]
    pub registry_mirrors: Vec<String>,
    /// Registry that may be reached over plain HTTP (repeatable)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Config file (default: $KILN_CONFIG, $XDG_CONFIG_HOME/kiln/config.toml, /etc/kiln/config.toml)
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl RegistryOpts {
    pub fn config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.config {
            return Some(p.clone());
        }
        if let Some(p) = std::env::var_os("KILN_CONFIG") {
            return Some(PathBuf::from(p));
        }
        let user = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|d| d.join("kiln/config.toml"));
        if let Some(p) = user.filter(|p| p.exists()) {
            return Some(p);
        }
        let system = PathBuf::from("/etc/kiln/config.toml");
        system.exists().then_some(system)
    }

    /// The registry configuration with the command-line overrides applied.
    pub fn load(&self) -> anyhow::Result<RegistryConfig> {
        let base = match self.config_path() {
            Some(path) => {
                let explicit = self.config.is_some() || std::env::var_os("KILN_CONFIG").is_some();
                if explicit && !path.exists() {
                    anyhow::bail!("config file {} does not exist", path.display());
                }
                RegistryConfig::load(&path).with_context(|| "loading the kiln config")?
            }
            None => RegistryConfig::default(),
        };
        Ok(base.with_overrides(&self.registry_mirrors, &self.insecure_registries))
    }

    pub fn credentials(&self) -> CredentialSources {
        CredentialSources::from_env()
    }

    /// A puller into `store` with this configuration and these credentials.
    pub fn puller(
        &self,
        store: crate::store::Store,
        reporter: std::sync::Arc<dyn crate::progress::Reporter>,
    ) -> anyhow::Result<crate::registry::pull::Puller> {
        Ok(crate::registry::pull::Puller {
            config: self.load()?,
            credentials: self.credentials(),
            store,
            reporter,
        })
    }
}

/// A tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `https://index.docker.io/v1/`, `index.docker.io`, `docker.io` → `docker.io`; others as given
/// without scheme or path.
pub fn normalize_registry_name(input: &str) -> String {
    let s = input
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_ascii_lowercase(),
    }
}
