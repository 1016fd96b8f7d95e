//! dockerignore
