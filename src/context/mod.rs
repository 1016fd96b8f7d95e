//! The build context: walking it and `.dockerignore`.
pub mod copy;
mod gosyntax;
pub mod hashcache;
pub mod ignore;
pub mod rootpath;
pub mod walk;

/// Go's `path.Clean`, for the builder's other paths that BuildKit cleans the Go way.
pub(crate) use gosyntax::clean as go_path_clean;
