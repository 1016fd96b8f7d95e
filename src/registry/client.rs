//! One registry endpoint spoken to over the distribution API: scheme choice, authentication
//! (anonymous or credentialed bearer tokens cached per scope, Basic), retries with backoff on
//! connection errors, 5xx and 429 (honouring `Retry-After`), manifests and streamed blobs with
//! `Range` resume.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use crate::oci::{media, Digest};

use super::challenge::{parse_challenges, Challenge};
use super::credentials::Credential;
use super::error::{summarize_body, RegistryError};

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
pub const MANIFEST_SIZE_LIMIT: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

/// How to reach one registry host.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The registry's name as in references (`docker.io`, `127.0.0.1:5000`), for messages and
    /// credential lookup.
    pub name: String,
    /// The host[:port] the API lives on (`registry-1.docker.io` for Docker Hub).
    pub host: String,
    /// Plain HTTP only.
    pub plain_http: bool,
    /// Try HTTPS first and fall back to plain HTTP (loopback and `--insecure-registry`).
    pub allow_http_fallback: bool,
    /// Extra CA certificate (PEM) trusted for this registry.
    pub ca_file: Option<PathBuf>,
    pub credential: Option<Credential>,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff, or the registry's `Retry-After` (capped at a minute).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(Duration::from_secs(60)),
            None => self
                .base_delay
                .saturating_mul(1u32 << attempt.min(16))
                .min(self.max_delay),
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    header: String,
    expires: Instant,
}

/// A manifest as fetched: its bytes, the media type the registry declared, and its digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub digest: Digest,
}

/// Where streamed blob bytes go. `reset` starts over when the registry ignores a `Range`.
pub trait BlobSink {
    /// Bytes already held (a resumed download starts here).
    fn offset(&self) -> u64;
    fn write_chunk(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    fn reset(&mut self) -> std::io::Result<()>;
}

pub struct RegistryClient {
    config: EndpointConfig,
    http: reqwest::Client,
    scheme: Mutex<Option<Scheme>>,
    tokens: Mutex<HashMap<String, CachedToken>>,
    basic: Mutex<Option<String>>,
}

#[derive(Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl RegistryClient {
    pub fn new(config: EndpointConfig) -> Result<RegistryClient, RegistryError> {
        let tls_error = |message: String| RegistryError::Tls {
            registry: config.name.clone(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(10));
        let mut ca_files: Vec<PathBuf> = config.ca_file.iter().cloned().collect();
        if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
            ca_files.push(PathBuf::from(file));
        }
        for path in ca_files {
            let pem = std::fs::read(&path)
                .map_err(|e| tls_error(format!("cannot read CA file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| tls_error(format!("CA file {} is not PEM: {e}", path.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| tls_error(format!("cannot set up the HTTP client: {e}")))?;
        let scheme = if config.plain_http {
            Some(Scheme::Http)
        } else {
            None
        };
        Ok(RegistryClient {
            config,
            http,
            scheme: Mutex::new(scheme),
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn base_url(&self, scheme: Scheme) -> String {
        match scheme {
            Scheme::Https => format!("https://{}", self.config.host),
            Scheme::Http => format!("http://{}", self.config.host),
        }
    }

    /// Decides HTTPS vs HTTP once per client: HTTPS unless configured plain, falling back to
    /// HTTP for loopback and insecure registries when HTTPS cannot be spoken.
    async fn scheme(&self) -> Result<Scheme, RegistryError> {
        if let Some(s) = *lock(&self.scheme) {
            return Ok(s);
        }
        let chosen = if self.config.allow_http_fallback {
            let url = format!("{}/v2/", self.base_url(Scheme::Https));
            match self
                .http
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
            {
                Ok(_) => Scheme::Https,
                Err(_) => Scheme::Http,
            }
        } else {
            Scheme::Https
        };
        *lock(&self.scheme) = Some(chosen);
        Ok(chosen)
    }

    /// `GET /v2/`: checks the registry answers and, with credentials, that they are accepted.
    pub async fn ping(&self, scope: Option<&str>) -> Result<(), RegistryError> {
        let scheme = self.scheme().await?;
        let url = format!("{}/v2/", self.base_url(scheme));
        let resp = self
            .send(
                |c| c.request(Method::GET, &url),
                scope.unwrap_or(""),
                "the API root /v2/",
            )
            .await?;
        self.expect_success(resp, "the API root /v2/")
            .await
            .map(|_| ())
    }

    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let scheme = self.scheme().await?;
        let url = format!(
            "{}/v2/{repository}/manifests/{reference}",
            self.base_url(scheme)
        );
        let what = format!("manifest {repository}:{reference}");
        let scope = format!("repository:{repository}:pull");
        let resp = self
            .send(
                |c| c.get(&url).header(ACCEPT, media::MANIFEST_ACCEPT),
                &scope,
                &what,
            )
            .await?;
        let mut resp = self.expect_success(resp, &what).await?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(&url, &e))? {
            if bytes.len() as u64 + chunk.len() as u64 > MANIFEST_SIZE_LIMIT {
                return Err(RegistryError::TooLarge {
                    registry: self.config.name.clone(),
                    what,
                    limit: MANIFEST_SIZE_LIMIT,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.config.name.clone(),
                    what,
                    expected,
                    actual: digest,
                });
            }
        }
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Streams blob `digest` into `sink`, resuming from `sink.offset()` with a `Range` request,
    /// and picking up again after a connection drops mid-body. `progress` gets byte counts.
    /// The caller verifies the digest of what the sink holds.
    pub async fn fetch_blob(
        &self,
        repository: &str,
        digest: &Digest,
        sink: &mut (dyn BlobSink + Send),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        let scheme = self.scheme().await?;
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base_url(scheme));
        let what = format!("blob {digest} of {repository}");
        let scope = format!("repository:{repository}:pull");
        let mut body_failures = 0u32;
        loop {
            let offset = sink.offset();
            let resp = self
                .send(
                    |c| {
                        let req = c.get(&url);
                        if offset > 0 {
                            req.header(RANGE, format!("bytes={offset}-"))
                        } else {
                            req
                        }
                    },
                    &scope,
                    &what,
                )
                .await?;
            if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
                // What we hold is already the whole blob (or garbage); let the caller verify.
                sink.reset().map_err(|e| self.write_error(&what, e))?;
                continue;
            }
            let mut resp = self.expect_success(resp, &what).await?;
            if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                // The registry ignored the Range header: start over.
                sink.reset().map_err(|e| self.write_error(&what, e))?;
            }
            let mut failed = None;
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        sink.write_chunk(&chunk)
                            .map_err(|e| self.write_error(&what, e))?;
                        progress(chunk.len() as u64);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(()),
                Some(e) => {
                    body_failures += 1;
                    if body_failures >= self.config.retry.attempts {
                        return Err(self.unreachable(&url, &e));
                    }
                    tokio::time::sleep(self.config.retry.delay(body_failures, None)).await;
                }
            }
        }
    }

    /// The base URL (`https://host` or `http://host`) once the scheme is settled.
    pub async fn base(&self) -> Result<String, RegistryError> {
        Ok(self.base_url(self.scheme().await?))
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.config.retry
    }

    /// Whether credentials are configured for this registry.
    pub fn has_credential(&self) -> bool {
        self.config.credential.is_some()
    }

    /// Sends a request built by `build`, authenticating on a 401 and retrying transient failures.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        scope: &str,
        what: &str,
    ) -> Result<Response, RegistryError> {
        self.send_with(build, scope, what, true).await
    }

    /// [`send`](Self::send) for callers that own the retry decision (uploads, whose bodies
    /// may have been half-consumed): with `retry_transient` false, a connection error, 5xx or
    /// 429 comes back at once; a 401 is still answered with authentication and one resend.
    /// `scope` may hold several space-separated scopes (`repository:a:pull,push
    /// repository:b:pull`).
    pub async fn send_with(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        scope: &str,
        what: &str,
        retry_transient: bool,
    ) -> Result<Response, RegistryError> {
        let mut policy = self.config.retry;
        if !retry_transient {
            policy.attempts = 1;
        }
        let mut authenticated_after_401 = false;
        let mut attempt = 0u32;
        loop {
            let mut request = match build(&self.http).build() {
                Ok(r) => r,
                Err(e) => return Err(self.unreachable(&self.config.host, &e)),
            };
            let url_for_errors = request.url().to_string();
            // Credentials go only to the registry's own host, never to a host an upload
            // `Location` or a redirect names.
            if self.is_own_host(request.url()) {
                if let Some(mut value) = self
                    .cached_authorization(scope)
                    .and_then(|h| HeaderValue::from_str(&h).ok())
                {
                    value.set_sensitive(true);
                    request.headers_mut().insert(AUTHORIZATION, value);
                }
            }
            match self.http.execute(request).await {
                Err(e) => {
                    attempt += 1;
                    // A certificate the client does not trust will not become trusted by
                    // waiting: fail at once instead of backing off for seconds.
                    if attempt >= policy.attempts || is_certificate_error(&e) {
                        return Err(self.unreachable(&url_for_errors, &e));
                    }
                    tokio::time::sleep(policy.delay(attempt, None)).await;
                }
                Ok(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED && !authenticated_after_401 =>
                {
                    authenticated_after_401 = true;
                    let challenges = challenges_of(resp.headers());
                    self.forget_authorization(scope);
                    if challenges.is_empty() {
                        return Ok(resp);
                    }
                    self.authenticate(&challenges, scope, what).await?;
                }
                Ok(resp)
                    if resp.status() == StatusCode::TOO_MANY_REQUESTS
                        || resp.status().is_server_error() =>
                {
                    attempt += 1;
                    if attempt >= policy.attempts {
                        return Ok(resp);
                    }
                    let retry_after = retry_after(resp.headers());
                    tokio::time::sleep(policy.delay(attempt, retry_after)).await;
                }
                Ok(resp) => return Ok(resp),
            }
        }
    }

    fn is_own_host(&self, url: &reqwest::Url) -> bool {
        let own =
            self.config
                .host
                .rsplit_once(':')
                .map_or(self.config.host.as_str(), |(h, port)| {
                    if port.chars().all(|c| c.is_ascii_digit()) {
                        h
                    } else {
                        &self.config.host
                    }
                });
        let own = own.trim_start_matches('[').trim_end_matches(']');
        url.host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| h.eq_ignore_ascii_case(own))
    }

    fn cached_authorization(&self, scope: &str) -> Option<String> {
        if let Some(t) = lock(&self.tokens).get(scope) {
            if t.expires > Instant::now() {
                return Some(t.header.clone());
            }
        }
        lock(&self.basic).clone()
    }

    fn forget_authorization(&self, scope: &str) {
        lock(&self.tokens).remove(scope);
    }

    async fn authenticate(
        &self,
        challenges: &[Challenge],
        scope: &str,
        what: &str,
    ) -> Result<(), RegistryError> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let (header, lifetime) = self.fetch_token(bearer, scope).await?;
            lock(&self.tokens).insert(
                scope.to_string(),
                CachedToken {
                    header,
                    expires: Instant::now() + lifetime,
                },
            );
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(credential) = &self.config.credential else {
                return Err(RegistryError::Unauthorized {
                    registry: self.config.name.clone(),
                    what: what.to_string(),
                    status: 401,
                    body: "the registry requires a user name and password".into(),
                    hint: format!("run `kiln login {}`", self.config.name),
                });
            };
            let (user, secret) = match credential {
                Credential::Basic { username, password } => (username, password),
                Credential::IdentityToken { username, token } => (username, token),
            };
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
            *lock(&self.basic) = Some(format!("Basic {encoded}"));
            return Ok(());
        }
        Err(RegistryError::Protocol {
            registry: self.config.name.clone(),
            message: format!(
                "asked for authentication with an unsupported scheme ({})",
                challenges
                    .iter()
                    .map(|c| c.scheme.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// The distribution token flow: GET the realm (with Basic credentials if any), or POST an
    /// OAuth2 refresh-token grant for identity tokens.
    async fn fetch_token(
        &self,
        challenge: &Challenge,
        scope: &str,
    ) -> Result<(String, Duration), RegistryError> {
        let registry = self.config.name.clone();
        let Some(realm) = challenge.param("realm") else {
            return Err(RegistryError::Protocol {
                registry,
                message: "sent a Bearer challenge without a realm".into(),
            });
        };
        let realm_url = reqwest::Url::parse(realm).map_err(|_| RegistryError::Protocol {
            registry: registry.clone(),
            message: format!("sent a Bearer challenge with an invalid realm {realm:?}"),
        })?;
        let service = challenge.param("service").unwrap_or_default();
        let scope = if scope.is_empty() {
            challenge.param("scope").unwrap_or_default()
        } else {
            scope
        };
        let mut query: Vec<(&str, &str)> = Vec::new();
        if !service.is_empty() {
            query.push(("service", service));
        }
        // Several scopes (a push with mount sources) are several `scope` parameters.
        for one in scope.split_whitespace() {
            query.push(("scope", one));
        }
        let req = match &self.config.credential {
            Some(Credential::IdentityToken { token, .. }) => {
                let mut form = query.clone();
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", token));
                form.push(("client_id", "kiln"));
                self.http.post(realm_url.clone()).form(&form)
            }
            Some(Credential::Basic { username, password }) => self
                .http
                .get(realm_url.clone())
                .query(&query)
                .basic_auth(username, Some(password)),
            None => self.http.get(realm_url.clone()).query(&query),
        };
        let resp = req.send().await.map_err(|e| RegistryError::Token {
            registry: registry.clone(),
            realm: realm.to_string(),
            status: 0,
            body: e.to_string(),
            hint: "check that the token service is reachable".into(),
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let hint = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                format!("check the credentials for {registry} (`kiln login {registry}`)")
            } else {
                "try again later".to_string()
            };
            return Err(RegistryError::Token {
                registry,
                realm: realm.to_string(),
                status: status.as_u16(),
                body: summarize_body(&body),
                hint,
            });
        }
        let reply: TokenReply =
            serde_json::from_str(&body).map_err(|_| RegistryError::Protocol {
                registry: registry.clone(),
                message: format!(
                    "token service {realm} answered with something that is not a token"
                ),
            })?;
        let Some(token) = reply.token.or(reply.access_token).filter(|t| !t.is_empty()) else {
            return Err(RegistryError::Protocol {
                registry,
                message: format!("token service {realm} answered without a token"),
            });
        };
        // Renew a little early; the spec's default lifetime is 60 s.
        let lifetime =
            Duration::from_secs(reply.expires_in.unwrap_or(60).max(60).saturating_sub(10));
        Ok((format!("Bearer {token}"), lifetime))
    }

    /// The response if it succeeded, else an error naming the registry, `what` and the answer.
    pub async fn expect_success(
        &self,
        resp: Response,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let registry = self.config.name.clone();
        let body = summarize_body(&resp.text().await.unwrap_or_default());
        let what = what.to_string();
        Err(match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                registry,
                what,
                body,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
                hint: if self.config.credential.is_some() {
                    format!("the registry refused the credentials for {registry}; check them and run `kiln login {registry}`")
                } else {
                    format!("run `kiln login {registry}` if the repository is private")
                },
                registry,
                what,
                status: status.as_u16(),
                body,
            },
            _ => RegistryError::Status {
                hint: if status.as_u16() == 429 || status.is_server_error() {
                    "the registry is overloaded or failing; try again later or configure a mirror"
                        .into()
                } else {
                    "check the image reference".into()
                },
                registry,
                what,
                status: status.as_u16(),
                body,
            },
        })
    }

    pub fn unreachable(&self, url: &str, e: &reqwest::Error) -> RegistryError {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        let hint = if detail.contains("certificate")
            || detail.contains("tls")
            || detail.contains("InvalidContentType")
        {
            format!(
                "if {} serves plain HTTP, mark it with --insecure-registry {} or `http = true` in the config; for a private CA set `ca` in the config or SSL_CERT_FILE",
                self.config.name, self.config.name
            )
        } else {
            format!(
                "check that {} is up and reachable from this machine",
                self.config.host
            )
        };
        RegistryError::Unreachable {
            registry: self.config.name.clone(),
            url: url.to_string(),
            detail,
            hint,
        }
    }

    fn write_error(&self, what: &str, source: std::io::Error) -> RegistryError {
        RegistryError::Write {
            registry: self.config.name.clone(),
            what: what.to_string(),
            source,
        }
    }
}

/// Whether a request failed because the TLS handshake rejected the server's certificate.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            return true;
        }
        source = s.source();
    }
    false
}

fn challenges_of(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

/// `Retry-After` in seconds (HTTP dates are rare from registries and fall back to backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(host: &str) -> RegistryClient {
        RegistryClient::new(EndpointConfig {
            name: host.to_string(),
            host: host.to_string(),
            plain_http: true,
            allow_http_fallback: false,
            ca_file: None,
            credential: None,
            retry: RetryPolicy::default(),
        })
        .unwrap()
    }

    #[test]
    fn credentials_only_go_to_the_registry_host() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let c = client("127.0.0.1:5000");
        assert!(c.is_own_host(&url("http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=1")));
        assert!(!c.is_own_host(&url("https://storage.example.com/upload?sig=1")));
        let hub = client("registry-1.docker.io");
        assert!(hub.is_own_host(&url("https://registry-1.docker.io:443/v2/")));
        assert!(!hub.is_own_host(&url("https://auth.docker.io/token")));
        let v6 = client("[::1]:5000");
        assert!(v6.is_own_host(&url("http://[::1]:5000/v2/")));
    }
}
