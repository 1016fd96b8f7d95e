//! The Dockerfile front end: text → spanned AST ([`parser`]) → typed instructions
//! ([`instructions`]), with word expansion ([`shell`]) and build checks ([`lint`]).

pub mod ast;
pub mod dump;
pub mod error;
mod gostr;
pub mod line_parsers;
pub mod parser;
pub mod shell;

pub use ast::{Ast, Directive, Heredoc, Node, ParseWarning};
pub use error::ParseError;
pub use gostr::{go_quote, go_quote_rune, go_quote_slice};
pub mod instructions;
pub mod lint;

pub use instructions::{parse_dockerfile, Command, Dockerfile, Instruction, Stage};
