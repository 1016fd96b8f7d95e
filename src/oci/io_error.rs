//! The one I/O error of kiln: what was being done, to which path, and what the OS answered.
//! Every module's error type carries it as its `Io` variant (`#[from]`), so an I/O failure
//! names its path the same way wherever it happens.

use std::io;
use std::path::PathBuf;

use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct IoError {
    /// What was being done: `open`, `create directory`, `chown`, ….
    pub op: &'static str,
    /// The path on the host.
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }

    /// For `map_err`: `fs::read(&p).map_err(IoError::at("read", &p))?`.
    pub fn at(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> IoError {
        let path = path.into();
        move |source| IoError { op, path, source }
    }

    /// The errno behind it, for callers that decide by it (`ENOTDIR`, `ENOENT`).
    pub fn errno(&self) -> Option<Errno> {
        self.source.raw_os_error().map(Errno::from_raw_os_error)
    }
}
