//! Pushing to a registry: blobs first (skipped when the repository has them, mounted from
//! another repository of the same registry when one is known to hold them, else uploaded),
//! bounded in parallel, then the manifest once per tag.
//!
//! Uploads stream from the blob file: one `PUT ?digest=` for small blobs, `PATCH` chunks with
//! `Content-Range` (following each `Location`) and a closing `PUT` for large ones. A failed
//! request (connection error, 5xx, 429) is retried with backoff; a chunked upload asks the
//! registry where its session stands and resumes there, and any other interrupted upload
//! starts that blob again, leaving the others alone.
//!
//! The API is also what pushing arbitrary manifests needs (`--cache-to type=registry`): a
//! [`ManifestPush`] lists blobs that may be absent from the local store when another
//! repository of the registry is known to hold them ([`PushBlob::mount_from`]).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::oci::manifest::ImageManifest;
use crate::oci::{media, BlobRef, Descriptor, Digest, Reference};
use crate::progress::{Direction, Event, Reporter, TransferOutcome};
use crate::store::{Store, StoreError};

use super::challenge::parse_challenges;
use super::client::RegistryClient;
use super::config::RegistryConfig;
use super::credentials::{CredentialError, CredentialSources};
use super::error::{summarize_body, RegistryError};

/// Mount sources tried per blob, and put into one token request per repository.
const MAX_MOUNT_SOURCES: usize = 3;
const MAX_SCOPE_SOURCES: usize = 8;
/// Bytes read from a blob file per body piece.
const BODY_PIECE: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("registry {registry} refused to let kiln push to {registry}/{repository}: {what} was answered {status}: {answer}\n  hint: run `kiln login {registry}` with an account that may push to {repository}")]
    Denied {
        registry: String,
        repository: String,
        what: String,
        status: u16,
        answer: String,
    },
    #[error("no image tagged {0} in the store\n  hint: build it with `kiln build -t {0}` or pull it first")]
    NoSuchImage(String),
    #[error("cannot push {what}: {reason}")]
    Unsupported { what: String, reason: String },
    #[error("blob {digest} cannot be pushed to {registry}/{repository}: it is not in the local store and {tried}")]
    BlobUnavailable {
        registry: String,
        repository: String,
        digest: Digest,
        tried: String,
    },
    #[error("blob {digest} in the store is {actual} bytes, but the manifest says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("registry {registry} answered {status} for {what} without a Location header")]
    NoLocation {
        registry: String,
        what: String,
        status: u16,
    },
    #[error("registry {registry} stored the manifest of {reference} as {actual}, not {expected}")]
    ManifestDigest {
        registry: String,
        reference: String,
        expected: Digest,
        actual: String,
    },
    #[error("upload of {what} failed: {message}")]
    Task { what: String, message: String },
}

#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs uploaded at once.
    pub concurrency: usize,
    /// Blobs smaller than this go up in one `PUT`; larger ones in `PATCH` chunks of this size.
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            concurrency: 3,
            chunk_size: 8 << 20,
        }
    }
}

/// A blob a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBlob {
    pub blob: BlobRef,
    /// Repositories of the destination registry known to hold the blob (`library/busybox`,
    /// without the registry), tried as mount sources. A blob absent from the local store must
    /// be in the destination repository already or mountable from one of these.
    pub mount_from: Vec<String>,
}

/// A manifest and the blobs it needs, ready to push.
#[derive(Debug, Clone)]
pub struct ManifestPush {
    pub bytes: Vec<u8>,
    /// Sent as the `Content-Type` of the manifest `PUT`.
    pub media_type: String,
    pub blobs: Vec<PushBlob>,
    /// For an index: the manifests it lists, pushed (with their blobs) by digest before it.
    pub children: Vec<ManifestPush>,
}

impl ManifestPush {
    /// An image manifest (OCI or Docker schema 2): its config and layers become the blobs.
    /// The media type is the manifest's own `mediaType`, else `fallback_media_type`.
    pub fn from_image_manifest(
        bytes: Vec<u8>,
        fallback_media_type: &str,
    ) -> Result<ManifestPush, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
        let media_type = doc["mediaType"]
            .as_str()
            .unwrap_or(fallback_media_type)
            .to_string();
        if media::is_index(&media_type) {
            return Err("it is an index (multi-platform image), which kiln cannot push yet".into());
        }
        let manifest: ImageManifest =
            serde_json::from_value(doc).map_err(|e| format!("not an image manifest: {e}"))?;
        let push = |d: &Descriptor| PushBlob {
            blob: BlobRef::from(d),
            mount_from: Vec::new(),
        };
        let mut blobs = vec![push(&manifest.config)];
        // Foreign layers stay where their URLs point, as Docker leaves them.
        for layer in manifest
            .layers
            .iter()
            .filter(|l| !media::is_nondistributable(&l.media_type))
        {
            if !blobs.iter().any(|b| b.blob.digest == layer.digest) {
                blobs.push(push(layer));
            }
        }
        Ok(ManifestPush {
            bytes,
            media_type,
            blobs,
            children: Vec::new(),
        })
    }

    /// The manifest or index `digest` of the store (`media_type` when the document names
    /// none): an index with every manifest it lists, each of which the store must hold.
    pub fn from_store(
        store: &Store,
        digest: &Digest,
        media_type: &str,
    ) -> Result<ManifestPush, String> {
        let bytes = store.read_blob(digest).map_err(|e| e.to_string())?;
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
        let media_type = doc["mediaType"].as_str().unwrap_or(media_type).to_string();
        if !media::is_index(&media_type) {
            return ManifestPush::from_image_manifest(bytes, &media_type);
        }
        let index: crate::oci::manifest::ImageIndex =
            serde_json::from_value(doc).map_err(|e| format!("not an image index: {e}"))?;
        let mut children = Vec::new();
        for d in &index.manifests {
            let platform = d
                .platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "no platform".into());
            if !store.has_blob(&d.digest) {
                return Err(format!(
                    "the index lists {} ({platform}), which is not in the store (`kiln pull \
                     --platform` it, or push a single platform)",
                    d.digest
                ));
            }
            if media::is_index(&d.media_type) {
                return Err(format!("it lists another index, {}", d.digest));
            }
            let child_bytes = store.read_blob(&d.digest).map_err(|e| e.to_string())?;
            children.push(
                ManifestPush::from_image_manifest(child_bytes, &d.media_type)
                    .map_err(|e| format!("its manifest {} ({platform}): {e}", d.digest))?,
            );
        }
        Ok(ManifestPush {
            bytes,
            media_type,
            blobs: Vec::new(),
            children,
        })
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.bytes)
    }

    /// Its blobs and its children's, each once.
    pub fn all_blobs(&self) -> Vec<PushBlob> {
        let mut out: Vec<PushBlob> = Vec::new();
        for b in self
            .blobs
            .iter()
            .chain(self.children.iter().flat_map(|c| &c.blobs))
        {
            match out.iter_mut().find(|o| o.blob.digest == b.blob.digest) {
                Some(o) => o.mount_from.extend(b.mount_from.iter().cloned()),
                None => out.push(b.clone()),
            }
        }
        out
    }

    /// Adds `repository` as a mount source of every blob (own and children's) `digest` names.
    pub fn add_mount_source(&mut self, digest: &Digest, repository: &str) {
        for b in self
            .blobs
            .iter_mut()
            .chain(self.children.iter_mut().flat_map(|c| c.blobs.iter_mut()))
        {
            if b.blob.digest == *digest && !b.mount_from.iter().any(|m| m == repository) {
                b.mount_from.push(repository.to_string());
            }
        }
    }
}

/// What happened to one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The repository had it already.
    Exists,
    /// Linked from another repository of the registry.
    Mounted { from: String },
    /// Uploaded now.
    Uploaded { bytes: u64 },
}

/// One repository pushed to.
#[derive(Debug, Clone)]
pub struct PushedRepository {
    /// `registry/repository`.
    pub name: String,
    /// The references the manifest was put under (tags, or the digest).
    pub references: Vec<String>,
    pub blobs: Vec<(Digest, BlobOutcome)>,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// The manifest digest, the same in every repository.
    pub digest: Digest,
    pub media_type: String,
    pub repositories: Vec<PushedRepository>,
}

impl PushReport {
    pub fn uploaded_bytes(&self) -> u64 {
        self.repositories
            .iter()
            .flat_map(|r| &r.blobs)
            .map(|(_, o)| match o {
                BlobOutcome::Uploaded { bytes } => *bytes,
                _ => 0,
            })
            .sum()
    }
}

pub struct Pusher {
    pub config: RegistryConfig,
    pub credentials: CredentialSources,
    pub store: Store,
    pub reporter: Arc<dyn Reporter>,
}

impl Pusher {
    /// The image tagged `source` (a reference as given on the command line) as a push.
    pub fn stored_image(&self, source: &str) -> Result<ManifestPush, PushError> {
        let tag = Reference::parse(source)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| source.to_string());
        let descriptor = self
            .store
            .resolve(&tag)?
            .ok_or_else(|| PushError::NoSuchImage(source.to_string()))?;
        ManifestPush::from_store(&self.store, &descriptor.digest, &descriptor.media_type).map_err(
            |reason| PushError::Unsupported {
                what: tag.clone(),
                reason,
            },
        )
    }

    /// Pushes the stored image `source` to every destination.
    pub async fn push_image(
        &self,
        source: &str,
        destinations: &[Reference],
        options: &PushOptions,
    ) -> Result<PushReport, PushError> {
        let image = self.stored_image(source)?;
        self.push(&image, destinations, options).await
    }

    /// Pushes `manifest` with its blobs to every destination: blobs once per repository, the
    /// manifest once per tag (a destination pinned by digest is put under that digest, which
    /// must be the manifest's). Besides each blob's `mount_from`, the store's records of where
    /// blobs live and the repositories pushed earlier in this call are tried as mount sources.
    /// Afterwards the store remembers that the blobs live in each destination repository.
    pub async fn push(
        &self,
        manifest: &ManifestPush,
        destinations: &[Reference],
        options: &PushOptions,
    ) -> Result<PushReport, PushError> {
        let digest = manifest.digest();
        // (registry, repository) → references, in the order given.
        let mut groups: Vec<((String, String), Vec<String>)> = Vec::new();
        for dest in destinations {
            let reference = match dest.digest() {
                Some(d) if *d != digest => {
                    return Err(PushError::Unsupported {
                        what: dest.to_string(),
                        reason: format!("the manifest's digest is {digest}, not {d}"),
                    })
                }
                Some(d) => d.to_string(),
                None => dest.manifest_reference(),
            };
            let key = (dest.registry().to_string(), dest.repository().to_string());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, refs)) => {
                    if !refs.contains(&reference) {
                        refs.push(reference)
                    }
                }
                None => groups.push((key, vec![reference])),
            }
        }
        let mut clients: BTreeMap<String, Arc<RegistryClient>> = BTreeMap::new();
        let mut repositories: Vec<PushedRepository> = Vec::new();
        for ((registry, repository), references) in groups {
            let client = match clients.get(&registry) {
                Some(c) => c.clone(),
                None => {
                    let endpoint = self
                        .config
                        .registry_endpoint(&registry, &self.credentials)?;
                    let c = Arc::new(RegistryClient::new(endpoint)?);
                    clients.insert(registry.clone(), c.clone());
                    c
                }
            };
            let pushed_before: Vec<String> = repositories
                .iter()
                .filter_map(|r| r.name.strip_prefix(&format!("{registry}/")))
                .map(str::to_string)
                .collect();
            let blobs = self.with_mount_hints(manifest, &registry, &repository, &pushed_before);
            self.reporter.report(Event::Status {
                message: format!("The push refers to repository [{registry}/{repository}]"),
            });
            let target = Target {
                client: client.clone(),
                store: self.store.clone(),
                reporter: self.reporter.clone(),
                scope: push_scope(&repository, &blobs),
                repository: repository.clone(),
                chunk_size: options.chunk_size.max(1),
            };
            let outcomes = push_blobs(Arc::new(target.clone()), blobs, options.concurrency).await?;
            // An index's manifests go first, by digest: a registry refuses an index whose
            // manifests it does not hold.
            for child in &manifest.children {
                let child_digest = child.digest();
                target
                    .put_manifest(child, &child_digest.to_string(), &child_digest)
                    .await?;
                self.reporter.report(Event::Status {
                    message: format!("{child_digest}: size: {}", child.bytes.len()),
                });
            }
            for reference in &references {
                target.put_manifest(manifest, reference, &digest).await?;
                self.reporter.report(Event::Status {
                    message: format!(
                        "{reference}: digest: {digest} size: {}",
                        manifest.bytes.len()
                    ),
                });
            }
            let name = format!("{registry}/{repository}");
            for b in &manifest.all_blobs() {
                let _ = self.store.record_blob_source(&b.blob.digest, &name);
            }
            repositories.push(PushedRepository {
                name,
                references,
                blobs: outcomes,
            });
        }
        Ok(PushReport {
            digest,
            media_type: manifest.media_type.clone(),
            repositories,
        })
    }

    /// The blobs with their mount sources on `registry`: the caller's first, then repositories
    /// pushed earlier in this call, then what the store remembers; never `repository` itself.
    fn with_mount_hints(
        &self,
        manifest: &ManifestPush,
        registry: &str,
        repository: &str,
        pushed_before: &[String],
    ) -> Vec<PushBlob> {
        let prefix = format!("{registry}/");
        manifest
            .all_blobs()
            .iter()
            .map(|blob| {
                let remembered = self
                    .store
                    .blob_sources(&blob.blob.digest)
                    .unwrap_or_default();
                let mut sources: Vec<String> = Vec::new();
                let candidates = blob
                    .mount_from
                    .iter()
                    .cloned()
                    .chain(pushed_before.iter().cloned())
                    .chain(
                        remembered
                            .iter()
                            .filter_map(|r| r.strip_prefix(&prefix))
                            .map(str::to_string),
                    );
                for c in candidates {
                    if c != repository && !c.is_empty() && !sources.contains(&c) {
                        sources.push(c);
                    }
                }
                PushBlob {
                    mount_from: sources,
                    ..blob.clone()
                }
            })
            .collect()
    }
}

/// `repository:<repo>:pull,push` plus pull on the mount sources, as one space-separated scope.
fn push_scope(repository: &str, blobs: &[PushBlob]) -> String {
    let mut scope = format!("repository:{repository}:pull,push");
    let mut sources: Vec<&str> = Vec::new();
    for s in blobs
        .iter()
        .flat_map(|b| b.mount_from.iter().take(MAX_MOUNT_SOURCES))
    {
        if !sources.contains(&s.as_str()) && sources.len() < MAX_SCOPE_SOURCES {
            sources.push(s);
        }
    }
    for s in sources {
        scope.push_str(&format!(" repository:{s}:pull"));
    }
    scope
}

/// Pushes every blob, `concurrency` at a time; the first failure stops the others.
async fn push_blobs(
    target: Arc<Target>,
    blobs: Vec<PushBlob>,
    concurrency: usize,
) -> Result<Vec<(Digest, BlobOutcome)>, PushError> {
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for blob in blobs {
        let (target, semaphore) = (target.clone(), semaphore.clone());
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let outcome = target.push_blob(&blob).await;
            outcome.map(|o| (blob.blob.digest, o))
        });
    }
    super::tasks::join_first_error(tasks, |message| PushError::Task {
        what: "a blob".into(),
        message,
    })
    .await
}

/// How one upload request went.
enum Failure {
    /// Worth another try (connection error, 5xx, 429), after `retry_after` if the registry
    /// said so.
    Transient {
        error: PushError,
        retry_after: Option<Duration>,
    },
    Fatal(PushError),
}

impl From<PushError> for Failure {
    fn from(e: PushError) -> Failure {
        let transient = matches!(&e, PushError::Registry(r) if r.is_transient());
        if transient {
            Failure::Transient {
                error: e,
                retry_after: None,
            }
        } else {
            Failure::Fatal(e)
        }
    }
}

/// One destination repository and what pushing to it needs.
#[derive(Clone)]
struct Target {
    client: Arc<RegistryClient>,
    store: Store,
    reporter: Arc<dyn Reporter>,
    repository: String,
    scope: String,
    chunk_size: u64,
}

enum Mount {
    Mounted,
    /// The registry opened an ordinary upload session instead.
    Session(Url),
    /// The registry refused the request (not an authorization problem).
    Refused,
}

impl Target {
    fn name(&self) -> &str {
        self.client.name()
    }

    async fn url(&self, path: &str) -> Result<Url, PushError> {
        let base = self.client.base().await?;
        Url::parse(&format!("{base}{path}")).map_err(|e| {
            PushError::Registry(RegistryError::Protocol {
                registry: self.name().to_string(),
                message: format!("invalid URL {base}{path}: {e}"),
            })
        })
    }

    /// An error for a 401/403 answer (`what` names the request), with what the registry said.
    async fn denied(&self, resp: Response, what: &str) -> PushError {
        let status = resp.status().as_u16();
        let challenge_error = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .find_map(|c| c.param("error").map(str::to_string));
        let body = resp.text().await.unwrap_or_default();
        let answer = match (body.trim().is_empty(), challenge_error) {
            (false, _) => summarize_body(&body),
            (true, Some(e)) => format!("error={e:?} in WWW-Authenticate"),
            (true, None) => "(empty body)".to_string(),
        };
        PushError::Denied {
            registry: self.name().to_string(),
            repository: self.repository.clone(),
            what: what.to_string(),
            status,
            answer,
        }
    }

    /// Maps authorization failures of the client (a token service refusing, Basic auth without
    /// credentials) to the push's own error.
    fn map_denied(&self, e: RegistryError, what: &str) -> PushError {
        match e {
            RegistryError::Unauthorized { status, body, .. } => PushError::Denied {
                registry: self.name().to_string(),
                repository: self.repository.clone(),
                what: what.to_string(),
                status,
                answer: body,
            },
            RegistryError::Token {
                status,
                body,
                realm,
                ..
            } if status == 401 || status == 403 => PushError::Denied {
                registry: self.name().to_string(),
                repository: self.repository.clone(),
                what: format!("the token request to {realm}"),
                status,
                answer: body,
            },
            other => PushError::Registry(other),
        }
    }

    async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        what: &str,
        retry_transient: bool,
    ) -> Result<Response, PushError> {
        self.client
            .send_with(build, &self.scope, what, retry_transient)
            .await
            .map_err(|e| self.map_denied(e, what))
    }

    /// The response when it succeeded; otherwise the error that explains it.
    async fn check(&self, resp: Response, what: &str) -> Result<Response, PushError> {
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.denied(resp, what).await);
        }
        Ok(self.client.expect_success(resp, what).await?)
    }

    /// The `Location` of an upload response, resolved against the request URL (registries
    /// answer with absolute URLs or absolute paths, often with a `_state` query).
    fn location(&self, resp: &Response, what: &str) -> Result<Url, PushError> {
        let no_location = || PushError::NoLocation {
            registry: self.name().to_string(),
            what: what.to_string(),
            status: resp.status().as_u16(),
        };
        let value = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(no_location)?;
        resp.url().join(value).map_err(|_| no_location())
    }

    async fn push_blob(&self, push: &PushBlob) -> Result<BlobOutcome, PushError> {
        let blob = &push.blob;
        let label = blob.digest.short().to_string();
        let id = format!("push {}/{} {}", self.name(), self.repository, blob.digest);
        let done = |outcome: TransferOutcome, started: Instant| {
            self.reporter.report(Event::TransferDone {
                id: id.clone(),
                label: label.clone(),
                outcome,
                elapsed: started.elapsed(),
            })
        };
        let started = Instant::now();
        if self.exists(&blob.digest).await? {
            done(TransferOutcome::ExistsRemotely, started);
            return Ok(BlobOutcome::Exists);
        }
        let mut session: Option<Url> = None;
        let mut tried = Vec::new();
        for source in push.mount_from.iter().take(MAX_MOUNT_SOURCES) {
            tried.push(source.clone());
            match self.mount(&blob.digest, source).await? {
                Mount::Mounted => {
                    done(
                        TransferOutcome::Mounted {
                            from: source.clone(),
                        },
                        started,
                    );
                    return Ok(BlobOutcome::Mounted {
                        from: source.clone(),
                    });
                }
                Mount::Session(url) => {
                    if let Some(old) = session.replace(url) {
                        self.cancel(old).await;
                    }
                }
                Mount::Refused => {}
            }
        }
        if !self.store.has_blob(&blob.digest) {
            if let Some(s) = session {
                self.cancel(s).await;
            }
            return Err(PushError::BlobUnavailable {
                registry: self.name().to_string(),
                repository: self.repository.clone(),
                digest: blob.digest.clone(),
                tried: if tried.is_empty() {
                    "no other repository of the registry is known to hold it".into()
                } else {
                    format!("mounting it from {} did not work", tried.join(", "))
                },
            });
        }
        let actual = self.store.blob_size(&blob.digest)?;
        if actual != blob.size {
            return Err(PushError::SizeMismatch {
                digest: blob.digest.clone(),
                expected: blob.size,
                actual,
            });
        }
        self.reporter.report(Event::TransferStarted {
            id: id.clone(),
            label: label.clone(),
            total: Some(blob.size),
            offset: 0,
            direction: Direction::Upload,
        });
        match self.upload(blob, session, &id, &label).await {
            Ok(()) => {
                done(TransferOutcome::Transferred, started);
                Ok(BlobOutcome::Uploaded { bytes: blob.size })
            }
            Err(e) => {
                done(TransferOutcome::Failed, started);
                Err(e)
            }
        }
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: whether the repository has the blob.
    async fn exists(&self, digest: &Digest) -> Result<bool, PushError> {
        let url = self
            .url(&format!("/v2/{}/blobs/{digest}", self.repository))
            .await?;
        let what = format!("blob {digest} in {}", self.repository);
        let resp = self.send(|c| c.head(url.clone()), &what, true).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => self.check(resp, &what).await.map(|_| false),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<source>`.
    async fn mount(&self, digest: &Digest, source: &str) -> Result<Mount, PushError> {
        let mut url = self
            .url(&format!("/v2/{}/blobs/uploads/", self.repository))
            .await?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", source);
        let what = format!("mounting blob {digest} from {source}");
        let resp = self
            .send(
                |c| c.post(url.clone()).header(CONTENT_LENGTH, 0),
                &what,
                true,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Session(self.location(&resp, &what)?)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.denied(resp, &what).await),
            _ => Ok(Mount::Refused),
        }
    }

    /// Best effort: closes an upload session kiln will not use.
    async fn cancel(&self, session: Url) {
        let _ = self
            .send(|c| c.delete(session.clone()), "cancelling an upload", false)
            .await;
    }

    /// `POST /v2/<repo>/blobs/uploads/`: a new upload session.
    async fn start_upload(&self, digest: &Digest) -> Result<Url, Failure> {
        let url = self
            .url(&format!("/v2/{}/blobs/uploads/", self.repository))
            .await?;
        let what = format!("starting the upload of blob {digest}");
        let resp = self
            .send(
                |c| c.post(url.clone()).header(CONTENT_LENGTH, 0),
                &what,
                false,
            )
            .await?;
        let resp = self.settle(resp, &what).await?;
        Ok(self.location(&resp, &what)?)
    }

    /// Sorts a response into success, a transient failure, or a fatal one.
    async fn settle(&self, resp: Response, what: &str) -> Result<Response, Failure> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        let error = match self.check(resp, what).await {
            Err(e) => e,
            Ok(resp) => return Ok(resp),
        };
        Err(if transient {
            Failure::Transient { error, retry_after }
        } else {
            Failure::Fatal(error)
        })
    }

    /// Uploads a blob from the store into `session` (or a new one), retrying and resuming.
    async fn upload(
        &self,
        blob: &BlobRef,
        session: Option<Url>,
        id: &str,
        label: &str,
    ) -> Result<(), PushError> {
        let path = self.store.blob_path(&blob.digest);
        let file = Arc::new(std::fs::File::open(&path).map_err(|e| {
            StoreError::Io(crate::oci::IoError {
                op: "open blob",
                path: path.clone(),
                source: e,
            })
        })?);
        let policy = self.client.retry_policy();
        let chunked = blob.size >= self.chunk_size;
        let mut state = UploadState { session, offset: 0 };
        let mut failures = 0u32;
        loop {
            let error = match self.upload_attempt(blob, &file, &mut state, id).await {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient { error, retry_after }) => {
                    failures += 1;
                    if failures >= policy.attempts {
                        return Err(error);
                    }
                    tokio::time::sleep(policy.delay(failures, retry_after)).await;
                    error
                }
            };
            // A chunked upload resumes where the registry says its session stands; anything
            // else (or a session the registry no longer knows) starts this blob again.
            let resumed = match (&state.session, chunked) {
                (Some(session), true) => self.upload_status(session).await,
                _ => None,
            };
            let message = match resumed {
                Some((session, held)) => {
                    state = UploadState {
                        session: Some(session),
                        offset: held,
                    };
                    format!("resuming at byte {held}")
                }
                None => {
                    state = UploadState {
                        session: None,
                        offset: 0,
                    };
                    "starting it again".to_string()
                }
            };
            let error = error.to_string();
            let first_line = error.lines().next().unwrap_or_default();
            self.reporter.report(Event::Warning {
                message: format!("{label}: upload interrupted ({first_line}); {message}"),
            });
            // Progress starts again from what the registry holds.
            self.reporter.report(Event::TransferStarted {
                id: id.to_string(),
                label: label.to_string(),
                total: Some(blob.size),
                offset: state.offset,
                direction: Direction::Upload,
            });
        }
    }

    async fn upload_attempt(
        &self,
        blob: &BlobRef,
        file: &Arc<std::fs::File>,
        state: &mut UploadState,
        id: &str,
    ) -> Result<(), Failure> {
        let digest = &blob.digest;
        let mut session = match state.session.clone() {
            Some(s) => s,
            None => {
                let s = self.start_upload(digest).await?;
                state.session = Some(s.clone());
                state.offset = 0;
                s
            }
        };
        let progress = Some((self.reporter.clone(), id.to_string()));
        if blob.size < self.chunk_size && state.offset == 0 {
            let url = with_digest(&session, digest);
            let what = format!("uploading blob {digest}");
            let resp = self
                .send(
                    |c| {
                        c.put(url.clone())
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, blob.size)
                            .body(file_body(file.clone(), 0, blob.size, progress.clone()))
                    },
                    &what,
                    false,
                )
                .await?;
            self.settle(resp, &what).await?;
            return Ok(());
        }
        while state.offset < blob.size {
            let start = state.offset;
            let end = (start + self.chunk_size).min(blob.size);
            let what = format!("uploading bytes {start}-{} of blob {digest}", end - 1);
            let url = session.clone();
            let resp = self
                .send(
                    |c| {
                        c.patch(url.clone())
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header("Content-Range", format!("{start}-{}", end - 1))
                            .header(CONTENT_LENGTH, end - start)
                            .body(file_body(file.clone(), start, end, progress.clone()))
                    },
                    &what,
                    false,
                )
                .await?;
            let resp = self.settle(resp, &what).await?;
            session = self.location(&resp, &what)?;
            state.session = Some(session.clone());
            state.offset = held_bytes(&resp).unwrap_or(end);
        }
        let url = with_digest(&session, digest);
        let what = format!("completing the upload of blob {digest}");
        let resp = self
            .send(
                |c| c.put(url.clone()).header(CONTENT_LENGTH, 0),
                &what,
                false,
            )
            .await?;
        self.settle(resp, &what).await?;
        Ok(())
    }

    /// `GET` on an upload session: its current `Location` and how many bytes it holds, or
    /// `None` when the registry cannot say (the session is then abandoned).
    async fn upload_status(&self, session: &Url) -> Option<(Url, u64)> {
        let what = "the status of an upload";
        let resp = self
            .send(|c| c.get(session.clone()), what, true)
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let held = held_bytes(&resp)?;
        let location = self
            .location(&resp, what)
            .unwrap_or_else(|_| session.clone());
        Some((location, held))
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the manifest's own media type.
    async fn put_manifest(
        &self,
        manifest: &ManifestPush,
        reference: &str,
        digest: &Digest,
    ) -> Result<(), PushError> {
        let url = self
            .url(&format!("/v2/{}/manifests/{reference}", self.repository))
            .await?;
        let what = format!("manifest {}:{reference}", self.repository);
        let resp = self
            .send(
                |c| {
                    c.put(url.clone())
                        .header(CONTENT_TYPE, manifest.media_type.as_str())
                        .body(manifest.bytes.clone())
                },
                &what,
                true,
            )
            .await?;
        let resp = self.check(resp, &what).await?;
        if let Some(stored) = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
        {
            if stored != digest.to_string() {
                return Err(PushError::ManifestDigest {
                    registry: self.name().to_string(),
                    reference: format!("{}:{reference}", self.repository),
                    expected: digest.clone(),
                    actual: stored.to_string(),
                });
            }
        }
        Ok(())
    }
}

struct UploadState {
    /// The upload session's URL, once one is open.
    session: Option<Url>,
    /// Bytes the session holds.
    offset: u64,
}

/// The session URL with `digest=` added to whatever query it carries.
fn with_digest(session: &Url, digest: &Digest) -> Url {
    let mut url = session.clone();
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    url
}

/// Bytes an upload session holds, from its `Range: 0-<last>` header (`0--1` when empty).
fn held_bytes(resp: &Response) -> Option<u64> {
    let range = resp.headers().get(RANGE)?.to_str().ok()?;
    parse_held(range)
}

fn parse_held(range: &str) -> Option<u64> {
    let last = range
        .trim()
        .trim_start_matches("bytes=")
        .strip_prefix("0-")?;
    let last: i64 = last.parse().ok()?;
    u64::try_from(last + 1).ok()
}

/// A request body streaming bytes `start..end` of `file`, read in pieces off the async
/// threads, reporting progress as pieces go out.
fn file_body(
    file: Arc<std::fs::File>,
    start: u64,
    end: u64,
    progress: Option<(Arc<dyn Reporter>, String)>,
) -> reqwest::Body {
    let stream = futures_util::stream::try_unfold(start, move |pos| {
        let (file, progress) = (file.clone(), progress.clone());
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(BODY_PIECE) as usize;
            let piece = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, pos).map(|_| buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            if let Some((reporter, id)) = &progress {
                reporter.report(Event::TransferProgress {
                    id: id.clone(),
                    bytes: len as u64,
                });
            }
            Ok::<_, std::io::Error>(Some((piece, pos + len as u64)))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ranges() {
        assert_eq!(parse_held("0-1023"), Some(1024));
        assert_eq!(parse_held("0--1"), Some(0));
        assert_eq!(parse_held("bytes=0-9"), Some(10));
        assert_eq!(parse_held("5-9"), None);
        assert_eq!(parse_held("garbage"), None);
    }

    #[test]
    fn digest_is_added_to_an_existing_query() {
        let d = Digest::of(b"x");
        let u = Url::parse("http://r:5000/v2/a/blobs/uploads/u1?_state=abc%3D").unwrap();
        let with = with_digest(&u, &d);
        assert_eq!(
            with.as_str(),
            format!(
                "http://r:5000/v2/a/blobs/uploads/u1?_state=abc%3D&digest=sha256%3A{}",
                d.hex()
            )
        );
        let base = Url::parse("http://r:5000/v2/a/blobs/uploads/").unwrap();
        assert_eq!(
            base.join("/v2/a/blobs/uploads/u2?_state=x")
                .unwrap()
                .as_str(),
            "http://r:5000/v2/a/blobs/uploads/u2?_state=x"
        );
        assert_eq!(
            base.join("https://other:1/up?x=1").unwrap().as_str(),
            "https://other:1/up?x=1"
        );
    }

    #[test]
    fn image_manifests_list_config_and_layers_once() {
        let d1 = Digest::of(b"1");
        let d2 = Digest::of(b"2");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"c","digest":"{d1}","size":1}},"layers":[{{"mediaType":"l","digest":"{d2}","size":2}},{{"mediaType":"l","digest":"{d2}","size":2}}]}}"#,
            media::DOCKER_MANIFEST
        );
        let p = ManifestPush::from_image_manifest(m.into_bytes(), media::OCI_MANIFEST).unwrap();
        assert_eq!(p.media_type, media::DOCKER_MANIFEST);
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.blobs[1].blob, BlobRef::new("l", d2, 2));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
            media::OCI_INDEX
        );
        assert!(ManifestPush::from_image_manifest(index.into_bytes(), "").is_err());
        assert!(ManifestPush::from_image_manifest(b"{}".to_vec(), "").is_err());
    }

    #[test]
    fn scope_asks_pull_on_mount_sources() {
        let blob = |from: &[&str]| PushBlob {
            blob: BlobRef::new("", Digest::of(b"x"), 1),
            mount_from: from.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            push_scope(
                "app",
                &[blob(&["library/busybox"]), blob(&["library/busybox", "b"])]
            ),
            "repository:app:pull,push repository:library/busybox:pull repository:b:pull"
        );
        assert_eq!(push_scope("app", &[]), "repository:app:pull,push");
    }
}
