//! The Dockerfile front end and the build context, without root: BuildKit's parser and
//! shell-lexer golden cases, kiln's own golden files, malformed input, build checks, and
//! `.dockerignore`.

mod check;
mod dockerignore;
mod malformed;
mod parser_conformance;
mod parser_golden;
mod shell_conformance;
