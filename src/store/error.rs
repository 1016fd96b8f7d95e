//! Store errors: every I/O failure names the operation and the path it failed on.

use std::io;
use std::path::{Path, PathBuf};

use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] crate::oci::IoError),
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not a usable OCI image layout: {reason}", path.display())]
    InvalidLayout { path: PathBuf, reason: String },
    #[error("digest mismatch: expected {expected}, got {actual} ({size} bytes written)")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error(
        "size mismatch{}: expected {expected} bytes, got {actual}",
        for_digest(digest)
    )]
    SizeMismatch {
        digest: Option<Digest>,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    #[error("invalid tag {name:?}: {reason}")]
    InvalidTag { name: String, reason: &'static str },
    #[error("cannot choose a store root: {0}")]
    NoRoot(&'static str),
}

fn for_digest(d: &Option<Digest>) -> String {
    match d {
        Some(d) => format!(" for {d}"),
        None => String::new(),
    }
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| StoreError::Io(crate::oci::IoError { op, path, source })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
