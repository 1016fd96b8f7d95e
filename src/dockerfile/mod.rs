//! The Dockerfile front end: text → spanned AST → typed instructions.
pub mod shell;
