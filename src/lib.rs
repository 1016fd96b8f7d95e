//! kiln: a daemonless Dockerfile image builder.
//!
//! Data flows one way (see DESIGN.md): Dockerfile text → [`dockerfile`] (AST) → [`graph`] → [`exec`] → [`export`],
//! with [`context`] reading the build context. Only [`cli`] prints or uses `anyhow`.

pub mod bake;
pub mod cache;
pub mod cli;
pub mod context;
pub mod diag;
pub mod dockerfile;
pub mod exec;
pub mod export;
pub mod graph;
pub mod layer;
pub mod oci;
pub mod progress;
pub mod registry;
pub mod sandbox;
pub mod snapshot;
pub mod store;
