//! Errors of the front end, each with the place in the Dockerfile it refers to.

use crate::diag::{Diagnostic, Severity, SourceFile, Span};

/// A Dockerfile that cannot be read, parsed or turned into instructions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}: {message}", span.start_pos.line, span.start_pos.column)]
pub struct ParseError {
    pub message: String,
    pub span: Span,
}

impl ParseError {
    pub fn new(message: impl Into<String>, span: Span) -> ParseError {
        ParseError {
            message: message.into(),
            span,
        }
    }

    /// The error as a diagnostic to render against its source file.
    pub fn diagnostic(&self) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: self.message.clone(),
            span: Some(self.span),
        }
    }

    /// `file:line:col: message` with the line and a caret.
    pub fn render(&self, source: &SourceFile) -> String {
        self.diagnostic().render(source)
    }
}
