//! Per-registry settings in the style of buildkitd.toml, and the endpoints a pull tries:
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["127.0.0.1:5000"]
//! [registry."127.0.0.1:5000"]
//! http = true
//! [registry."registry.internal"]
//! ca = "/etc/ssl/internal-ca.pem"
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::client::{EndpointConfig, RetryPolicy};
use super::credentials::{CredentialError, CredentialSources};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub registry: BTreeMap<String, RegistryHostConfig>,
    /// `[gc] keep-storage = "20GB"`: after each build, prune least recently used cache down to
    /// this size.
    #[serde(default)]
    pub gc: GcConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    #[serde(default, rename = "keep-storage")]
    pub keep_storage: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHostConfig {
    /// Mirrors tried in order before the registry itself (host[:port], optionally with a path-less
    /// `http://` or `https://` prefix).
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Speak plain HTTP to this registry.
    #[serde(default)]
    pub http: bool,
    /// Accept this registry over HTTP when HTTPS fails (Docker's "insecure registry").
    #[serde(default)]
    pub insecure: bool,
    /// A PEM CA bundle to trust for this registry.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
}

impl RegistryConfig {
    pub fn parse(text: &str, path: &std::path::Path) -> Result<RegistryConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &std::path::Path) -> Result<RegistryConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => RegistryConfig::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryConfig::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Adds one-off `--registry-mirror` (for docker.io, as dockerd does) and
    /// `--insecure-registry` settings.
    pub fn with_overrides(mut self, mirrors: &[String], insecure: &[String]) -> RegistryConfig {
        if !mirrors.is_empty() {
            let hub = self.registry.entry("docker.io".to_string()).or_default();
            let mut all: Vec<String> = mirrors.to_vec();
            all.append(&mut hub.mirrors);
            hub.mirrors = all;
        }
        for host in insecure {
            let host = strip_scheme(host).0.to_string();
            self.registry.entry(host).or_default().insecure = true;
        }
        self
    }

    /// The endpoints to try for `registry` (`docker.io`, `ghcr.io`, `127.0.0.1:5000`), mirrors
    /// first, then the registry itself, each with its credentials.
    pub fn endpoints(
        &self,
        registry: &str,
        credentials: &CredentialSources,
    ) -> Result<Vec<EndpointConfig>, CredentialError> {
        let mut out = Vec::new();
        let host_config = self.registry.get(registry).cloned().unwrap_or_default();
        for mirror in &host_config.mirrors {
            let (host, forced) = strip_scheme(mirror);
            out.push(self.endpoint(host, host, forced, credentials)?);
        }
        let api_host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        out.push(self.endpoint(registry, api_host, None, credentials)?);
        Ok(out)
    }

    /// The registry itself, without mirrors: where a push goes (mirrors only serve pulls).
    pub fn registry_endpoint(
        &self,
        registry: &str,
        credentials: &CredentialSources,
    ) -> Result<EndpointConfig, CredentialError> {
        let api_host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        self.endpoint(registry, api_host, None, credentials)
    }

    fn endpoint(
        &self,
        name: &str,
        api_host: &str,
        forced_scheme: Option<bool>,
        credentials: &CredentialSources,
    ) -> Result<EndpointConfig, CredentialError> {
        let c = self.registry.get(name).cloned().unwrap_or_default();
        let plain_http = forced_scheme.unwrap_or(c.http);
        Ok(EndpointConfig {
            name: name.to_string(),
            host: api_host.to_string(),
            plain_http,
            allow_http_fallback: !plain_http && (c.insecure || is_loopback_host(name)),
            ca_file: c.ca,
            credential: credentials.lookup(name)?,
            retry: RetryPolicy::default(),
        })
    }
}

/// `http://h` → (h, Some(true)); `https://h` → (h, Some(false)); `h` → (h, None).
fn strip_scheme(s: &str) -> (&str, Option<bool>) {
    let s = s.trim_end_matches('/');
    if let Some(h) = s.strip_prefix("http://") {
        (h, Some(true))
    } else if let Some(h) = s.strip_prefix("https://") {
        (h, Some(false))
    } else {
        (s, None)
    }
}

/// `localhost`, `127.0.0.0/8` and `::1`, with or without a port: Docker lets these speak plain
/// HTTP without configuration.
pub fn is_loopback_host(host: &str) -> bool {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    without_port.eq_ignore_ascii_case("localhost")
        || without_port
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "ghcr.io",
            "10.0.0.1:5000",
            "docker.io",
            "[::2]:80",
            "localhost.example",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn mirrors_come_first_and_docker_hub_uses_its_api_host() {
        let config = RegistryConfig::parse(
            "[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\", \"https://mirror.example\"]\n",
            std::path::Path::new("config.toml"),
        )
        .unwrap()
        .with_overrides(&["http://first.example".into()], &["registry.internal:5000".into()]);
        let eps = config
            .endpoints("docker.io", &CredentialSources::none())
            .unwrap();
        let hosts: Vec<_> = eps
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http, e.allow_http_fallback))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("first.example", true, false),
                ("127.0.0.1:5000", false, true),
                ("mirror.example", false, false),
                ("registry-1.docker.io", false, false),
            ]
        );
        let eps = config
            .endpoints("registry.internal:5000", &CredentialSources::none())
            .unwrap();
        assert!(eps[0].allow_http_fallback);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        let e = RegistryConfig::parse(
            "[registry.\"x\"]\nmirror = []\n",
            std::path::Path::new("/etc/kiln/config.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/etc/kiln/config.toml") && e.contains("mirror"),
            "{e}"
        );
    }
}
