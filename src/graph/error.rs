//! Planning errors. Each keeps the instruction it came from, so the CLI can show the line.

use crate::diag::Span;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A word that does not expand (`${VAR?message}`, a bad substitution).
    #[error("{0}")]
    Expand(String),
    #[error("base name ({0}) should not be blank")]
    BlankBase(String),
    #[error(transparent)]
    Platform(#[from] crate::oci::platform::PlatformError),
    #[error("FROM {0}: that build context is a local directory; only COPY --from and RUN --mount from= read one")]
    DirAsBase(String),
    #[error("a stage without FROM")]
    NoFrom,
    #[error("invalid stage reference {0:?}: a stage can only read from earlier stages")]
    ForwardStageRef(String),
    #[error("target stage \"{0}\" could not be found")]
    TargetNotFound(String),
    #[error("dockerfile contains no stages to build")]
    NoStages,
    /// An error of one instruction.
    #[error("{instruction}: {source}")]
    At {
        instruction: String,
        span: Span,
        #[source]
        source: Box<GraphError>,
    },
}

impl GraphError {
    pub fn at(self, instruction: &crate::dockerfile::Instruction) -> GraphError {
        match self {
            already @ GraphError::At { .. } => already,
            other => GraphError::At {
                instruction: instruction.original.clone(),
                span: instruction.span,
                source: Box::new(other),
            },
        }
    }
}
