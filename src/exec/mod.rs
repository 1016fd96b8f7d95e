//! The scheduler: walks the build graph, checks the cache, pulls, runs, commits layers.

mod add_archive;
pub mod base;
mod cache_mount;
pub mod error;
pub mod metadata;
pub mod mounts;
pub mod prune;

pub use error::BuildError;
pub mod build;
pub mod commit;
pub mod compress;
pub mod file_step;
pub mod history;
mod protocol;
pub mod run_step;
pub mod seed;
pub mod session;
pub mod stage;
pub mod stages;
mod steps;
pub mod sweep;
