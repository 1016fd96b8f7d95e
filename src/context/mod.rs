//! The build context: walking it and `.dockerignore`.
pub mod copy;
mod gosyntax;
pub mod hashcache;
pub mod ignore;
pub mod rootpath;
pub mod walk;
