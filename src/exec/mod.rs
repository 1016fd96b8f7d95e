//! The scheduler: walks the build graph, checks the cache, pulls, runs, commits layers.

pub mod metadata;
