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
    #[error("{0}")]
    Invalid(String),
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
