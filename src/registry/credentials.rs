//! Registry credentials from where Docker and the containers tools keep them: Docker's
//! `config.json` (`auths`, `credsStore`, `credHelpers`) and then containers' `auth.json`.
//! Secrets are wrapped so that `Debug` never prints them.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

/// Docker Hub's historical key in `config.json`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or personal access token).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm.
    IdentityToken { username: String, token: String },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credential::IdentityToken { username, .. } => {
                write!(
                    f,
                    "IdentityToken {{ username: {username:?}, token: <redacted> }}"
                )
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "credentials file {path}: the `auth` entry for {registry} is not base64 of user:password"
    )]
    BadAuthEntry { path: PathBuf, registry: String },
    #[error("cannot write credentials to {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("credential helper docker-credential-{helper} failed for {registry}: {message}")]
    Helper {
        helper: String,
        registry: String,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// Where credentials are looked up, in order.
#[derive(Debug, Clone)]
pub struct CredentialSources {
    /// Docker's `config.json`.
    pub docker_config: Option<PathBuf>,
    /// containers' `auth.json` (`$REGISTRY_AUTH_FILE`).
    pub auth_file: Option<PathBuf>,
}

impl CredentialSources {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; then `$REGISTRY_AUTH_FILE`.
    pub fn from_env() -> CredentialSources {
        let docker_config = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .map(|d| d.join("config.json"));
        let auth_file = std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from);
        CredentialSources {
            docker_config,
            auth_file,
        }
    }

    /// No credentials at all (anonymous pulls only).
    pub fn none() -> CredentialSources {
        CredentialSources {
            docker_config: None,
            auth_file: None,
        }
    }

    /// Credentials for `registry` (`docker.io`, `ghcr.io`, `127.0.0.1:5000`), if any are stored.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        if let Some(path) = &self.docker_config {
            if let Some(config) = read_config(path)? {
                if let Some(helper) = config
                    .cred_helpers
                    .get(registry)
                    .or_else(|| config.cred_helpers.get(&auth_key(registry)))
                {
                    return run_helper(helper, registry);
                }
                if let Some(found) = from_auths(path, &config.auths, registry)? {
                    return Ok(Some(found));
                }
                if let Some(store) = &config.creds_store {
                    if let Some(found) = run_helper(store, registry)? {
                        return Ok(Some(found));
                    }
                }
            }
        }
        if let Some(path) = &self.auth_file {
            if let Some(config) = read_config(path)? {
                return from_auths(path, &config.auths, registry);
            }
        }
        Ok(None)
    }
}

/// The key Docker uses for a registry in `auths` and for credential helpers.
pub fn auth_key(registry: &str) -> String {
    if registry == "docker.io" {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

fn read_config(path: &Path) -> Result<Option<ConfigFile>, CredentialError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| CredentialError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Normalises an `auths` key (`https://ghcr.io/v1/`, `ghcr.io`, `index.docker.io`) to a registry.
fn normalize_key(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

fn from_auths(
    path: &Path,
    auths: &BTreeMap<String, AuthEntry>,
    registry: &str,
) -> Result<Option<Credential>, CredentialError> {
    let entry = auths
        .get(&auth_key(registry))
        .or_else(|| auths.get(registry))
        .or_else(|| {
            auths
                .iter()
                .find(|(k, _)| normalize_key(k) == registry)
                .map(|(_, v)| v)
        });
    let Some(entry) = entry else { return Ok(None) };
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || CredentialError::BadAuthEntry {
            path: path.to_path_buf(),
            registry: registry.to_string(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (u, p) = decoded.split_once(':').ok_or_else(bad)?;
        username = Some(u.to_string());
        password = Some(p.to_string());
    }
    if let Some(token) = entry.identity_token.clone().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken {
            username: username.unwrap_or_default(),
            token,
        }));
    }
    match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Ok(Some(Credential::Basic { username, password }))
        }
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Runs `docker-credential-NAME get` with the server URL on stdin, as Docker does.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credential>, CredentialError> {
    let fail = |message: String| CredentialError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        message,
    };
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(auth_key(registry).as_bytes())
            .map_err(|e| fail(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for {program}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Helpers report a missing entry this way; that is "no credentials", not a failure.
        if stdout.contains("credentials not found")
            || String::from_utf8_lossy(&out.stderr).contains("credentials not found")
        {
            return Ok(None);
        }
        return Err(fail(format!("exited with {}", out.status)));
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|_| fail("its answer is not the expected JSON".to_string()))?;
    Ok(Some(if reply.username == "<token>" {
        Credential::IdentityToken {
            username: String::new(),
            token: reply.secret,
        }
    } else {
        Credential::Basic {
            username: reply.username,
            password: reply.secret,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources_with(json: &str) -> (tempfile::TempDir, CredentialSources) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        (
            dir,
            CredentialSources {
                docker_config: Some(path),
                auth_file: None,
            },
        )
    }

    #[test]
    fn auths_base64_and_docker_hub_key() {
        // "user:pa:ss" — the password may contain colons.
        let (_d, s) = sources_with(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},"ghcr.io":{"identitytoken":"tok"}}}"#,
        );
        assert_eq!(
            s.lookup("docker.io").unwrap(),
            Some(Credential::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        assert!(matches!(
            s.lookup("ghcr.io").unwrap(),
            Some(Credential::IdentityToken { .. })
        ));
        assert_eq!(s.lookup("quay.io").unwrap(), None);
    }

    #[test]
    fn bad_auth_entry_is_an_error_without_the_secret() {
        let (_d, s) = sources_with(r#"{"auths":{"r.example":{"auth":"!!notbase64"}}}"#);
        let e = s.lookup("r.example").unwrap_err().to_string();
        assert!(e.contains("r.example") && !e.contains("notbase64"), "{e}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn missing_helper_is_a_clear_error() {
        let (_d, s) = sources_with(r#"{"credHelpers":{"r.example":"kiln-test-nonexistent"}}"#);
        let e = s.lookup("r.example").unwrap_err().to_string();
        assert!(e.contains("docker-credential-kiln-test-nonexistent"), "{e}");
    }
}

/// Where `kiln login` put (or `kiln logout` removed) credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialLocation {
    File(PathBuf),
    Helper(String),
}

impl fmt::Display for CredentialLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialLocation::File(p) => write!(f, "{}", p.display()),
            CredentialLocation::Helper(h) => write!(f, "credential helper docker-credential-{h}"),
        }
    }
}

impl CredentialSources {
    fn config_path(&self) -> Result<&Path, CredentialError> {
        self.docker_config
            .as_deref()
            .ok_or_else(|| CredentialError::Write {
                path: PathBuf::from("config.json"),
                message: "neither $DOCKER_CONFIG nor $HOME is set".into(),
            })
    }

    /// The helper Docker would use for `registry`, if one is configured.
    fn helper_for(&self, registry: &str) -> Result<Option<String>, CredentialError> {
        let Some(config) = read_config(self.config_path()?)? else {
            return Ok(None);
        };
        Ok(config
            .cred_helpers
            .get(registry)
            .or_else(|| config.cred_helpers.get(&auth_key(registry)))
            .cloned()
            .or(config.creds_store))
    }

    /// Stores credentials as Docker does: in the configured helper, else base64 in `auths`.
    pub fn store(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<CredentialLocation, CredentialError> {
        if let Some(helper) = self.helper_for(registry)? {
            let payload = serde_json::json!({
                "ServerURL": auth_key(registry),
                "Username": username,
                "Secret": password,
            });
            run_helper_command(&helper, registry, "store", payload.to_string().as_bytes())?;
            return Ok(CredentialLocation::Helper(helper));
        }
        let path = self.config_path()?.to_path_buf();
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        update_config_file(&path, |doc| {
            let auths = doc
                .entry("auths")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if !auths.is_object() {
                *auths = serde_json::Value::Object(Default::default());
            }
            if let Some(auths) = auths.as_object_mut() {
                auths.insert(auth_key(registry), serde_json::json!({ "auth": auth }));
            }
        })?;
        Ok(CredentialLocation::File(path))
    }

    /// Removes stored credentials; `Ok(None)` when there were none.
    pub fn erase(&self, registry: &str) -> Result<Option<CredentialLocation>, CredentialError> {
        if let Some(helper) = self.helper_for(registry)? {
            run_helper_command(&helper, registry, "erase", auth_key(registry).as_bytes())?;
            return Ok(Some(CredentialLocation::Helper(helper)));
        }
        let path = self.config_path()?.to_path_buf();
        let Some(config) = read_config(&path)? else {
            return Ok(None);
        };
        let key = auth_key(registry);
        let present: Vec<String> = config
            .auths
            .keys()
            .filter(|k| **k == key || normalize_key(k) == registry)
            .cloned()
            .collect();
        if present.is_empty() {
            return Ok(None);
        }
        update_config_file(&path, |doc| {
            if let Some(auths) = doc.get_mut("auths").and_then(|a| a.as_object_mut()) {
                for k in &present {
                    auths.remove(k);
                }
            }
        })?;
        Ok(Some(CredentialLocation::File(path)))
    }
}

/// Rewrites Docker's config.json atomically (temp file, fsync, rename), keeping every other
/// field, with owner-only permissions since it holds secrets.
fn update_config_file(
    path: &Path,
    change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<(), CredentialError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let write_err = |message: String| CredentialError::Write {
        path: path.to_path_buf(),
        message,
    };
    let mut doc: serde_json::Map<String, serde_json::Value> = match std::fs::read(path) {
        Ok(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
            serde_json::from_slice(&bytes).map_err(|source| CredentialError::Parse {
                path: path.to_path_buf(),
                source,
            })?
        }
        Ok(_) => Default::default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(source) => {
            return Err(CredentialError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    change(&mut doc);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| write_err(format!("creating {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(
        ".{}.kiln-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config.json"),
        std::process::id()
    ));
    let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(doc))
        .map_err(|e| write_err(e.to_string()))?;
    text.push('\n');
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e.to_string()));
    }
    Ok(())
}

fn run_helper_command(
    helper: &str,
    registry: &str,
    action: &str,
    input: &[u8],
) -> Result<(), CredentialError> {
    let fail = |message: String| CredentialError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        message,
    };
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| fail(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for {program}: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "`{program} {action}` exited with {}",
            out.status
        )));
    }
    Ok(())
}

#[cfg(test)]
mod write_tests {
    use super::*;

    #[test]
    fn store_and_erase_keep_other_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"psFormat":"table","auths":{"other.example":{"auth":"eDp5"}}}"#,
        )
        .unwrap();
        let s = CredentialSources {
            docker_config: Some(path.clone()),
            auth_file: None,
        };
        assert_eq!(
            s.store("docker.io", "me", "secret").unwrap(),
            CredentialLocation::File(path.clone())
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("psFormat")
                && text.contains("other.example")
                && text.contains(DOCKER_HUB_AUTH_KEY)
        );
        assert_eq!(
            s.lookup("docker.io").unwrap(),
            Some(Credential::Basic {
                username: "me".into(),
                password: "secret".into()
            })
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(s.erase("docker.io").unwrap().is_some());
        assert_eq!(s.lookup("docker.io").unwrap(), None);
        assert!(s.erase("docker.io").unwrap().is_none());
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("other.example"));
    }
}
