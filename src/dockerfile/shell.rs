//! shell lexer
