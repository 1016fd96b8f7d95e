//! The line-level parse: physical lines → logical instruction lines → [`Node`]s, following
//! BuildKit's `parser.Parse`: parser directives, the escape token, continuation lines (with
//! comments and blank lines inside them), heredoc bodies, and the per-keyword line parsers.

use super::ast::{Ast, Directive, Heredoc, Node, ParseWarning};
use super::error::ParseError;
use super::line_parsers::{
    parse_health_config, parse_maybe_json, parse_maybe_json_to_list, parse_name_val, parse_string,
    parse_strings_whitespace_delimited, parse_words, split_command,
};
use super::shell::Lexer;
use crate::diag::SourceFile;
use nom::bytes::complete::{take_while, take_while1};
use nom::character::complete::{char as ch, satisfy};
use nom::combinator::{recognize, rest};
use nom::{IResult, Parser};
use std::collections::BTreeMap;

/// BuildKit reads lines with Go's `bufio.Scanner`, which refuses a line longer than this.
pub const MAX_LINE_LEN: usize = 65_535;

/// ONBUILD may wrap an instruction; deeper chains than this are refused before they can exhaust
/// the stack (BuildKit rejects `ONBUILD ONBUILD` later anyway).
const MAX_ONBUILD_DEPTH: usize = 8;

const UTF8_BOM: &str = "\u{feff}";

/// The keywords BuildKit's line parser knows; anything else parses with no arguments and is
/// rejected when instructions are made.
pub const KEYWORDS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Parses a whole Dockerfile into its raw syntax tree.
pub fn parse(source: &SourceFile) -> Result<Ast, ParseError> {
    Parser_::new(source).run()
}

/// A physical line: its byte offset and its text including the line terminator.
#[derive(Clone, Copy)]
struct PhysLine<'a> {
    start: usize,
    text: &'a str,
}

impl PhysLine<'_> {
    fn content_end(&self) -> usize {
        self.start + trim_newline(self.text).len()
    }
}

struct Lines<'a> {
    text: &'a str,
    pos: usize,
    /// 1-based number of the last line returned.
    number: usize,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self) -> Option<PhysLine<'a>> {
        if self.pos >= self.text.len() {
            return None;
        }
        let rest = &self.text[self.pos..];
        let len = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = PhysLine {
            start: self.pos,
            text: &rest[..len],
        };
        self.pos += len;
        self.number += 1;
        Some(line)
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Tracks the parser directives at the top of the file (BuildKit's `DirectiveParser`): they are
/// only recognised until the first line that is not one.
struct DirectiveParser {
    done: bool,
    seen: BTreeMap<String, ()>,
}

const VALID_DIRECTIVES: &[&str] = &["syntax", "escape", "check"];

/// `#` then `key = value`: BuildKit's `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` after the `#`.
fn directive_line(input: &str) -> IResult<&str, (&str, &str)> {
    let go_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\u{c}' | '\r');
    let (input, _) = (ch('#'), take_while(char::is_whitespace)).parse(input)?;
    let (input, key) = recognize((
        satisfy(|c| c.is_ascii_alphabetic()),
        take_while(|c: char| c.is_ascii_alphanumeric()),
    ))
    .parse(input)?;
    let (input, _) = (take_while(go_space), ch('='), take_while(go_space)).parse(input)?;
    let (input, value) = rest(input)?;
    let value = value.trim_end_matches(go_space);
    // `(.+?)` needs at least one character, and `.` does not match a newline.
    let (_, value) = take_while1(|c| c != '\n').parse(value)?;
    Ok((input, (key, value)))
}

impl DirectiveParser {
    /// Looks at one processed line; returns the directive it holds, if any.
    fn parse_line(&mut self, line: &str) -> Result<Option<(String, String)>, String> {
        if self.done {
            return Ok(None);
        }
        let Ok((_, (key, value))) = directive_line(line) else {
            self.done = true;
            return Ok(None);
        };
        if value.contains('\n') {
            self.done = true;
            return Ok(None);
        }
        let key = key.to_ascii_lowercase();
        if !VALID_DIRECTIVES.contains(&key.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.insert(key.clone(), ()).is_some() {
            return Err(format!("only one {key} parser directive can be used"));
        }
        Ok(Some((key, value.to_string())))
    }
}

struct Parser_<'a> {
    source: &'a SourceFile,
    lines: Lines<'a>,
    directive_parser: DirectiveParser,
    directives: Vec<Directive>,
    escape: char,
    nodes: Vec<Node>,
    warnings: Vec<ParseWarning>,
}

/// The continuation check: the escape token at the end of the line (trailing spaces and tabs
/// allowed), unless it is itself escaped. Returns the line without it.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    let Some(stripped) = trimmed.strip_suffix(escape) else {
        return (line, true);
    };
    if stripped.is_empty() || !stripped.ends_with(escape) {
        (stripped, false)
    } else {
        (line, true)
    }
}

impl<'a> Parser_<'a> {
    fn new(source: &'a SourceFile) -> Self {
        Parser_ {
            source,
            lines: Lines {
                text: source.text(),
                pos: 0,
                number: 0,
            },
            directive_parser: DirectiveParser {
                done: false,
                seen: BTreeMap::new(),
            },
            directives: Vec::new(),
            escape: '\\',
            nodes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn line_error(&self, message: impl Into<String>, line: &PhysLine) -> ParseError {
        ParseError::new(message, self.source.span(line.start, line.content_end()))
    }

    /// Reads the next physical line, refusing lines BuildKit's scanner cannot hold and NUL bytes.
    fn next_line(&mut self) -> Result<Option<PhysLine<'a>>, ParseError> {
        let Some(line) = self.lines.next_line() else {
            return Ok(None);
        };
        let content = trim_newline(line.text);
        if let Some(nul) = content.find('\0') {
            let at = line.start + nul;
            return Err(ParseError::new(
                "NUL byte in Dockerfile: it must be text",
                self.source.span(at, at + 1),
            ));
        }
        if line.text.strip_suffix('\n').unwrap_or(line.text).len() > MAX_LINE_LEN {
            return Err(ParseError::new(
                format!("dockerfile line greater than max allowed size of {MAX_LINE_LEN}"),
                self.source.span(line.start, line.start + 1),
            ));
        }
        Ok(Some(line))
    }

    /// BuildKit's `processLine`: trims the line, feeds the directive parser, and blanks comments.
    fn process_line(
        &mut self,
        line: &PhysLine<'a>,
        strip_left: bool,
    ) -> Result<(&'a str, bool), ParseError> {
        let mut token = trim_newline(line.text);
        if strip_left {
            token = token.trim_start();
        }
        let directive = self
            .directive_parser
            .parse_line(token)
            .map_err(|m| self.line_error(m, line))?;
        let is_directive = directive.is_some();
        if let Some((name, value)) = directive {
            if name == "escape" {
                self.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(self.line_error(
                            format!("invalid escape token '{value}' does not match ` or \\"),
                            line,
                        ))
                    }
                };
            }
            self.directives.push(Directive {
                name,
                value,
                span: self.source.span(line.start, line.content_end()),
            });
        }
        let token = if is_comment(token) { "" } else { token };
        Ok((token, is_directive))
    }

    fn run(mut self) -> Result<Ast, ParseError> {
        let mut comments: Vec<String> = Vec::new();
        while let Some(mut first) = self.next_line()? {
            if self.lines.number == 1 {
                if let Some(stripped) = first.text.strip_prefix(UTF8_BOM) {
                    first = PhysLine {
                        start: first.start + UTF8_BOM.len(),
                        text: stripped,
                    };
                }
            }
            let first_content = trim_newline(first.text);
            if is_comment(first_content) {
                let comment = first_content.get(1..).unwrap_or("").trim().to_string();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment);
                }
            }
            let (token, is_directive) = self.process_line(&first, true)?;
            if is_directive {
                comments.pop();
            }
            let start_offset =
                first.start + (first_content.len() - first_content.trim_start().len());
            let mut end_offset = first.content_end();
            let (first_part, mut end_of_line) = trim_continuation(token, self.escape);
            if end_of_line && first_part.is_empty() {
                continue;
            }
            let mut line = first_part.to_string();

            let mut has_empty_continuation = false;
            while !end_of_line {
                let Some(next) = self.next_line()? else {
                    break;
                };
                let (token, _) = self.process_line(&next, false)?;
                end_offset = next.content_end();
                if is_comment(next.text) {
                    continue;
                }
                if token.trim_start().is_empty() {
                    has_empty_continuation = true;
                    continue;
                }
                let (part, eol) = trim_continuation(token, self.escape);
                end_of_line = eol;
                line.push_str(part);
            }
            let end_line = self.lines.number;

            if has_empty_continuation {
                let (ls, le) = self.source.line_bounds(end_line);
                self.warnings.push(ParseWarning {
                    rule: "NoEmptyContinuation",
                    message: format!("Empty continuation line found in: {line}"),
                    span: self.source.span(ls, le),
                });
            }

            let span = self.source.span(start_offset, end_offset);
            let mut node =
                new_node_from_line(&line, self.escape, 0).map_err(|m| ParseError::new(m, span))?;
            node.prev_comment = std::mem::take(&mut comments);

            if can_contain_heredoc(&node) && line.contains("<<") {
                let heredocs = heredocs_from_line(&line).map_err(|m| ParseError::new(m, span))?;
                for mut heredoc in heredocs {
                    let mut terminated = false;
                    while let Some(body) = self.next_line()? {
                        end_offset = body.content_end();
                        let mut candidate = trim_newline(body.text);
                        if heredoc.chomp {
                            candidate = candidate.trim_start_matches('\t');
                        }
                        if candidate == heredoc.name {
                            terminated = true;
                            break;
                        }
                        heredoc.content.push_str(body.text);
                    }
                    if !terminated {
                        return Err(ParseError::new(
                            format!(
                                "unterminated heredoc: no line `{}` ends the heredoc started here",
                                heredoc.name
                            ),
                            span,
                        ));
                    }
                    node.heredocs.push(heredoc);
                }
            }
            node.span = self.source.span(start_offset, end_offset);
            if let Some(sub) = node.sub.as_mut() {
                sub.span = node.span;
            }
            self.nodes.push(node);
            comments.clear();
        }
        if self.nodes.is_empty() {
            // Point at the end of the last line (not past a final newline) so the error renders
            // with the line and a caret, as BuildKit reports the last line read.
            let text = self.source.text();
            let end = text.strip_suffix('\n').map_or(text.len(), str::len);
            let end = text[..end].strip_suffix('\r').map_or(end, str::len);
            return Err(ParseError::new(
                "file with no instructions",
                self.source.span(end, end),
            ));
        }
        Ok(Ast {
            directives: self.directives,
            escape: self.escape,
            nodes: self.nodes,
            warnings: self.warnings,
        })
    }
}

/// Splits one logical line into a [`Node`] (BuildKit's `newNodeFromLine`). Spans are filled in by
/// the caller.
fn new_node_from_line(line: &str, escape: char, depth: usize) -> Result<Node, String> {
    let (keyword, flags, rest) = split_command(line);
    let command = keyword.to_ascii_lowercase();
    let mut sub = None;
    let (args, json) = match command.as_str() {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(&rest)?,
        "arg" => (parse_words(&rest, escape), false),
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(&rest)?,
        "env" => (parse_name_val(&rest, "ENV", escape)?, false),
        "label" => (parse_name_val(&rest, "LABEL", escape)?, false),
        "expose" | "from" => (parse_strings_whitespace_delimited(&rest), false),
        "healthcheck" => parse_health_config(&rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => (parse_string(&rest), false),
        "onbuild" => {
            if !rest.is_empty() {
                if depth >= MAX_ONBUILD_DEPTH {
                    return Err("ONBUILD nested too deeply".to_string());
                }
                sub = Some(Box::new(new_node_from_line(&rest, escape, depth + 1)?));
            }
            (Vec::new(), false)
        }
        // Unknown keywords keep no arguments; they are reported when instructions are made.
        _ => (vec![String::new()], false),
    };
    Ok(Node {
        keyword,
        flags,
        args,
        sub,
        json,
        heredocs: Vec::new(),
        original: line.to_string(),
        span: Default::default(),
        prev_comment: Vec::new(),
    })
}

/// RUN, COPY and ADD (also inside ONBUILD) may have heredocs, but not in exec form.
fn can_contain_heredoc(node: &Node) -> bool {
    let node = match (&node.sub, node.command().as_str()) {
        (Some(sub), "onbuild") => sub,
        _ => node,
    };
    matches!(node.command().as_str(), "add" | "copy" | "run") && !node.json
}

/// A word of the form `[fd]<<[-]NAME` (BuildKit's `reHeredoc`): `(fd, chomp, NAME)`.
fn heredoc_marker(word: &str) -> Option<(&str, bool, &str)> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (fd, after) = word.split_at(digits);
    let after = after.strip_prefix("<<")?;
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let name = after.trim_start_matches([' ', '\t', '\n', '\u{c}', '\r']);
    if name.contains('<') {
        return None;
    }
    Some((fd, chomp, name))
}

/// Parses one word as a heredoc start (BuildKit's `ParseHeredoc`). `Ok(None)` when it is not one.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    let Some((fd, chomp, rest)) = heredoc_marker(word) else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let env: Vec<(String, String)> = Vec::new();
    let mut lexer = Lexer::new('\\');
    lexer.skip_unset_env = true;
    let words = lexer.process_words(rest, &env).map_err(|e| e.message)?;
    if words.len() != 1 {
        return Ok(None);
    }
    lexer.raw_quotes = true;
    let raw = lexer.process_words(rest, &env).map_err(|e| e.message)?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    let name = words[0].clone();
    Ok(Some(Heredoc {
        expand: quotes(&name) == quotes(&raw[0]),
        name,
        file_descriptor: fd.parse().unwrap_or(0),
        chomp,
        content: String::new(),
    }))
}

/// Finds the heredocs a logical line starts, in order.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut lexer = Lexer::new('\\');
    lexer.raw_quotes = true;
    lexer.raw_escapes = true;
    lexer.skip_unset_env = true;
    let env: Vec<(String, String)> = Vec::new();
    // A line the lexer cannot split has no heredocs, as in BuildKit.
    let words = lexer.process_words(line, &env).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Ast, ParseError> {
        parse(&SourceFile::new("Dockerfile", text))
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(trim_continuation("echo \\", '\\'), ("echo ", false));
        assert_eq!(trim_continuation("echo \\  \t", '\\'), ("echo ", false));
        assert_eq!(trim_continuation("echo \\\\", '\\'), ("echo \\\\", true));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a`", '`'), ("a", false));
        assert_eq!(trim_continuation("a\\", '`'), ("a\\", true));
    }

    #[test]
    fn directives_only_at_top() {
        let ast = parse_str("# syntax=docker/dockerfile:1\n# ESCAPE = `\nFROM a `\n  b\n").unwrap();
        assert_eq!(ast.escape, '`');
        assert_eq!(ast.directives.len(), 2);
        assert_eq!(ast.nodes[0].args, vec!["a", "b"]);
        let ast = parse_str("# hello\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(ast.escape, '\\');
        let err = parse_str("# escape=`\n# escape=\\\nFROM a\n").unwrap_err();
        assert!(err.message.contains("only one escape"));
        assert_eq!(err.span.start_pos.line, 2);
        let err = parse_str("# escape=x\nFROM a\n").unwrap_err();
        assert!(err.message.contains("invalid escape token 'x'"));
    }

    #[test]
    fn spans_cover_continuations_and_heredocs() {
        let ast =
            parse_str("FROM a\n\n  RUN x \\\n  # c\n  y\nCOPY <<EOF /f\nhello\nEOF\n").unwrap();
        let run = &ast.nodes[1];
        assert_eq!(run.original, "RUN x   y");
        assert_eq!(
            run.span.start_pos,
            crate::diag::Position { line: 3, column: 3 }
        );
        assert_eq!(run.span.end_pos.line, 5);
        let copy = &ast.nodes[2];
        assert_eq!(copy.span.end_pos.line, 8);
        assert_eq!(copy.heredocs[0].content, "hello\n");
    }

    #[test]
    fn heredoc_markers() {
        let h = parse_heredoc("<<EOF").unwrap().unwrap();
        assert!(h.expand && !h.chomp && h.name == "EOF");
        let h = parse_heredoc("<<-'EOF'").unwrap().unwrap();
        assert!(!h.expand && h.chomp && h.name == "EOF");
        let h = parse_heredoc("3<<\"E\"OF").unwrap().unwrap();
        assert!(!h.expand && h.file_descriptor == 3 && h.name == "EOF");
        assert!(parse_heredoc("<<").unwrap().is_none());
        assert!(parse_heredoc("cat<<EOF").unwrap().is_none());
    }

    #[test]
    fn unterminated_heredoc_is_an_error() {
        let err = parse_str("FROM a\nRUN <<EOF\necho hi\n").unwrap_err();
        assert!(err.message.contains("unterminated heredoc"));
        assert_eq!(err.span.start_pos.line, 2);
    }

    #[test]
    fn long_lines_and_nul_are_errors() {
        let err = parse_str(&format!("FROM a\nRUN {}\n", "x".repeat(70_000))).unwrap_err();
        assert_eq!(err.span.start_pos.line, 2);
        let err = parse_str("FROM a\nRUN a\0b\n").unwrap_err();
        assert_eq!((err.span.start_pos.line, err.span.start_pos.column), (2, 6));
    }
}
