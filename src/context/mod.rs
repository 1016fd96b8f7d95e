//! The build context: walking it and `.dockerignore`.
mod gosyntax;
pub mod ignore;
pub mod walk;
