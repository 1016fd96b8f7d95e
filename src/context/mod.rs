//! The build context: walking it and `.dockerignore`.
pub mod ignore;
