//! Registry errors: each names the registry, what was asked, what it answered and what to do.

use crate::oci::Digest;

use super::credentials::CredentialError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry} ({url}): {detail}\n  hint: {hint}")]
    Unreachable {
        registry: String,
        url: String,
        detail: String,
        hint: String,
    },
    #[error("registry {registry} answered {status} for {what}: {body}\n  hint: {hint}")]
    Status {
        registry: String,
        what: String,
        status: u16,
        body: String,
        hint: String,
    },
    #[error("registry {registry} refused access to {what} ({status}): {body}\n  hint: {hint}")]
    Unauthorized {
        registry: String,
        what: String,
        status: u16,
        body: String,
        hint: String,
    },
    #[error("{what} not found in registry {registry}: {body}")]
    NotFound {
        registry: String,
        what: String,
        body: String,
    },
    #[error(
        "token service {realm} for registry {registry} answered {status}: {body}\n  hint: {hint}"
    )]
    Token {
        registry: String,
        realm: String,
        status: u16,
        body: String,
        hint: String,
    },
    #[error(
        "registry {registry} sent content for {what} whose digest is {actual}, not {expected}"
    )]
    DigestMismatch {
        registry: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("registry {registry} sent {what} larger than the {limit}-byte limit")]
    TooLarge {
        registry: String,
        what: String,
        limit: u64,
    },
    #[error("registry {registry}: {message}")]
    Protocol { registry: String, message: String },
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("writing {what} from registry {registry}: {source}")]
    Write {
        registry: String,
        what: String,
        source: std::io::Error,
    },
    #[error("invalid TLS configuration for registry {registry}: {message}")]
    Tls { registry: String, message: String },
}

impl RegistryError {
    /// Whether trying again (or another mirror) could help.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Keeps error bodies short and on one line.
pub(crate) fn summarize_body(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "(empty body)".to_string();
    }
    const MAX: usize = 400;
    if one_line.len() <= MAX {
        return one_line;
    }
    let mut end = MAX;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &one_line[..end])
}
