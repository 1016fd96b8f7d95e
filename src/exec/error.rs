//! Build errors. A failure inside a step is wrapped with the instruction's span so the CLI can
//! print `Dockerfile:LINE:COL`, the line and a caret.

use crate::diag::Span;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Pull(#[from] crate::registry::pull::PullError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Reference(#[from] crate::oci::ReferenceError),
    /// Planning: stages, `--target`, word expansion (see `From<GraphError>`).
    #[error(transparent)]
    Graph(crate::graph::GraphError),
    #[error(transparent)]
    Metadata(#[from] super::metadata::MetadataError),
    #[error(transparent)]
    Sandbox(#[from] Box<crate::sandbox::SandboxError>),
    #[error("preparing the manifest with gzip layers (for a push or an OCI archive): {0}")]
    PushManifest(String),
    #[error("expected one mount for a snapshot, got {0}")]
    SnapshotMounts(usize),
    /// Mounting a snapshot for a file step (COPY, WORKDIR, `--mount=from`).
    #[error("{0} (kiln needs root and overlayfs to build)")]
    Mount(#[source] Box<crate::sandbox::SandboxError>),
    #[error(transparent)]
    Copy(#[from] crate::context::copy::CopyError),
    #[error("cannot set up HTTP: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("ADD {url}: {source}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("ADD {url}: the server answered {status}")]
    DownloadStatus { url: String, status: u16 },
    #[error("ADD {url}: digest mismatch: --checksum is {expected}, the download is {actual}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: crate::oci::Digest,
    },
    #[error("ADD {}: cannot run {tool} to decompress it: {source} (apt-get install {tool})", path.display())]
    Decompressor {
        tool: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ADD {}: {tool} failed", path.display())]
    DecompressorFailed {
        tool: String,
        path: std::path::PathBuf,
    },
    #[error(
        "ADD from a git repository ({0}) is not supported by kiln yet; clone it in a RUN step"
    )]
    GitSourceUnsupported(String),
    #[error("{0:?} is not a COPY or ADD")]
    NotAFileStep(String),
    #[error("--from={0}: no such stage or image was prepared")]
    FromNotReady(String),
    #[error("unable to convert uid/gid chown string {spec:?} to host mapping: {source}")]
    Chown {
        spec: String,
        #[source]
        source: Box<crate::sandbox::SandboxError>,
    },
    #[error("secret {id}: environment variable {var} is not set")]
    SecretEnvUnset { id: String, var: String },
    #[error("secret {0} is required but was not provided (use --secret id={0},src=PATH)")]
    SecretRequired(String),
    #[error("{0} mount needs a target")]
    MountNeedsTarget(&'static str),
    #[error("--mount source {0} does not exist")]
    MountSourceMissing(String),
    #[error(
        "no SSH key {0:?} forwarded: RUN --mount=type=ssh,required=true needs an agent, and \
         kiln forwards none (--ssh is not supported; without required=true the RUN runs with \
         no agent, as BuildKit runs it when none is forwarded)"
    )]
    SshNotForwarded(String),
    #[error("{0} was pulled but is not in the store")]
    PulledButMissing(String),
    #[error("{image}: the manifest has {layers} layers but the config lists {diff_ids} diff IDs")]
    LayerCountMismatch {
        image: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("stage {0} is not built for this target: name it literally in the Dockerfile")]
    StageNotPlanned(String),
    #[error("stage {0} failed")]
    StageFailed(String),
    #[error("the snapshot {0} is missing from the state root")]
    SnapshotMissing(crate::snapshot::ChainId),
    #[error("the blob is not in the store")]
    BlobNotInStore,
    #[error("cannot fetch cached layer {digest}: {source}")]
    CachedLayerFetch {
        digest: crate::oci::Digest,
        #[source]
        source: Box<BuildError>,
    },
    #[error("layer {digest} of the image is not in the store: {source}")]
    LayerNotInStore {
        digest: crate::oci::Digest,
        #[source]
        source: Box<BuildError>,
    },
    #[error("a stage's build thread panicked")]
    StagePanicked,
    #[error("the target stage was not built")]
    TargetNotBuilt,
    #[error("stage {0} stopped: another stage failed")]
    StageStopped(String),
    /// `RUN --security=insecure` in a build started without the entitlement (BuildKit's words).
    #[error("security.insecure is not allowed: RUN --security=insecure needs `kiln build --allow security.insecure`")]
    InsecureNotAllowed,
    #[error("invalid ONBUILD trigger {trigger:?} in the base image: {message}")]
    OnbuildTrigger { trigger: String, message: String },
    /// One platform of a multi-platform build failed.
    #[error("[{platform}] {source}")]
    ForPlatform {
        platform: String,
        source: Box<BuildError>,
    },
    #[error(transparent)]
    NoEmulation(#[from] crate::sandbox::emulation::EmulationError),
    #[error(transparent)]
    Io(#[from] crate::oci::IoError),
    /// A failure while executing one instruction.
    #[error("{instruction}: {source}")]
    Step {
        instruction: String,
        span: Span,
        #[source]
        source: Box<BuildError>,
    },
    /// A RUN whose command failed.
    #[error("process \"{command}\" did not complete successfully: exit code: {code}")]
    RunFailed {
        command: String,
        code: i32,
        /// The last lines of its output.
        tail: Vec<String>,
    },
    #[error("the build was interrupted")]
    Interrupted,
}

impl From<crate::sandbox::SandboxError> for BuildError {
    fn from(e: crate::sandbox::SandboxError) -> BuildError {
        BuildError::Sandbox(Box::new(e))
    }
}

/// A planning error at an instruction becomes a step error, so the CLI shows its line.
impl From<crate::graph::GraphError> for BuildError {
    fn from(e: crate::graph::GraphError) -> BuildError {
        match e {
            crate::graph::GraphError::At {
                instruction,
                span,
                source,
            } => BuildError::Step {
                instruction,
                span,
                source: Box::new(BuildError::Graph(*source)),
            },
            other => BuildError::Graph(other),
        }
    }
}

impl BuildError {
    pub fn io(
        op: &'static str,
        path: impl Into<std::path::PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io(crate::oci::IoError { op, path, source })
    }

    pub fn in_step(self, instruction: &str, span: &Span) -> BuildError {
        match self {
            already @ BuildError::Step { .. } => already,
            other => BuildError::Step {
                instruction: instruction.to_string(),
                span: *span,
                source: Box::new(other),
            },
        }
    }
}
