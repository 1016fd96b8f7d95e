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
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{0}")]
    Invalid(String),
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
    #[error("invalid ONBUILD trigger {trigger:?} in the base image: {message}")]
    OnbuildTrigger { trigger: String, message: String },
    #[error("cannot RUN for platform {platform} on this {host} machine: no binfmt_misc emulation for {qemu} is registered (install qemu-user-static and binfmt-support), or build for {host}")]
    NoEmulation {
        platform: String,
        host: String,
        qemu: String,
    },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
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
        move |source| BuildError::Io { op, path, source }
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
