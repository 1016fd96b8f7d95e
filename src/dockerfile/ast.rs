//! The raw syntax tree: one [`Node`] per instruction, as BuildKit's `parser.Node` holds it (keyword,
//! flags, argument words, heredocs, JSON-ness), with spans. Typed instructions are made from it in
//! [`super::instructions`].

use crate::diag::Span;
use serde::Serialize;

/// One parsed instruction line (after continuation lines are joined).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instruction keyword as written (`RUN`, `run`, `Copy`).
    pub keyword: String,
    /// `--name=value` words before the arguments, as written.
    pub flags: Vec<String>,
    /// The argument words after the line parser for this keyword has split them.
    pub args: Vec<String>,
    /// ONBUILD's trigger instruction.
    pub sub: Option<Box<Node>>,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    /// Heredoc bodies that follow the instruction line.
    pub heredocs: Vec<Heredoc>,
    /// The logical line: continuation lines joined, comments inside it dropped.
    pub original: String,
    /// From the instruction's first character to the end of its last line (heredoc terminators
    /// included).
    pub span: Span,
    /// Comment lines directly above the instruction.
    pub prev_comment: Vec<String>,
}

impl Node {
    /// The keyword in lower case, as BuildKit dispatches on it.
    pub fn command(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }
}

/// A here-document attached to an instruction (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word with quotes removed.
    pub name: String,
    /// A file descriptor written before `<<` (`3<<EOF`), 0 if none.
    pub file_descriptor: u32,
    /// No part of the delimiter was quoted: the body's variables are expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body lines and the terminator.
    pub chomp: bool,
    /// The body, each line with its line terminator, terminator line excluded.
    pub content: String,
}

impl Heredoc {
    /// The body with leading tabs stripped from every line when the heredoc is `<<-`.
    pub fn body(&self) -> String {
        if self.chomp {
            chomp_heredoc_content(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Strips leading tabs from every line (BuildKit's `ChompHeredocContent`).
pub fn chomp_heredoc_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

/// A parser directive at the top of the file (`# syntax=`, `# escape=`, `# check=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    /// Lower-cased key.
    pub name: String,
    pub value: String,
    pub span: Span,
}

/// Something the parser accepts but warns about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParseWarning {
    /// The build-check rule the warning belongs to.
    pub rule: &'static str,
    pub message: String,
    pub span: Span,
}

/// The result of the line-level parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ast {
    pub directives: Vec<Directive>,
    pub escape: char,
    pub nodes: Vec<Node>,
    pub warnings: Vec<ParseWarning>,
}
