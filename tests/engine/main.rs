//! The build engine end to end, as root: `kiln build`/`run` against a real registry with RUN
//! steps in crun/runc, the layer cache, exports, layer extraction, the sandbox, the store and
//! the sweep of what killed builds leave. Shared harness: tests/support.

#[path = "../support/mod.rs"]
mod support;

mod bake;
mod base_pull;
mod build;
mod cache;
mod chroot;
mod cli;
mod export;
mod extract;
mod multiplatform;
mod rootless;
mod sandbox;
mod store;
mod sweep;
