//! Source files, positions and spans, and rendering `file:line:col` diagnostics with the line and a
//! caret, as BuildKit's `LocationError` and uv's `Pep508Error` do.

use serde::Serialize;
use std::fmt::Write as _;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// A region of a source file: byte offsets plus the matching line/column positions.
/// `end` is exclusive in bytes; `end_pos` is the position of the last character covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub start_pos: Position,
    pub end_pos: Position,
}

impl Span {
    /// A span covering the whole of `line` (1-based) in `source`.
    pub fn line(source: &SourceFile, line: usize) -> Span {
        let (start, end) = source.line_bounds(line);
        source.span(start, end)
    }
}

/// A source text with a line index, so offsets can be turned into positions cheaply.
#[derive(Debug, Clone)]
pub struct SourceFile {
    name: String,
    text: String,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

/// Why bytes could not be read as a source file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub message: String,
    pub position: Position,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> SourceFile {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            name: name.into(),
            text,
            line_starts,
        }
    }

    /// Reads bytes as UTF-8 text; invalid UTF-8 is an error that says where.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<SourceFile, DecodeError> {
        match String::from_utf8(bytes) {
            Ok(text) => Ok(SourceFile::new(name, text)),
            Err(err) => {
                let valid = err.utf8_error().valid_up_to();
                let bytes = err.into_bytes();
                // The prefix is valid UTF-8 by construction.
                let prefix = String::from_utf8_lossy(&bytes[..valid]);
                let line = prefix.matches('\n').count() + 1;
                let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                Err(DecodeError {
                    message: format!(
                        "invalid UTF-8 (byte 0x{:02x}): a Dockerfile must be UTF-8 text",
                        bytes.get(valid).copied().unwrap_or(0)
                    ),
                    position: Position { line, column },
                })
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn line_count(&self) -> usize {
        if self.text.ends_with('\n') {
            self.line_starts.len() - 1
        } else {
            self.line_starts.len()
        }
    }

    /// Byte offsets of line `line` (1-based), without its line terminator.
    pub fn line_bounds(&self, line: usize) -> (usize, usize) {
        let idx = line.saturating_sub(1).min(self.line_starts.len() - 1);
        let start = self.line_starts[idx];
        let mut end = self
            .line_starts
            .get(idx + 1)
            .map_or(self.text.len(), |next| next - 1);
        if end > start && self.text.as_bytes().get(end - 1) == Some(&b'\r') {
            end -= 1;
        }
        (start, end.max(start))
    }

    /// The text of line `line` (1-based), without its terminator.
    pub fn line_text(&self, line: usize) -> &str {
        let (start, end) = self.line_bounds(line);
        self.text.get(start..end).unwrap_or("")
    }

    /// The position of byte offset `offset` (clamped to the text, moved back to a char boundary).
    pub fn position(&self, offset: usize) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[idx];
        Position {
            line: idx + 1,
            column: self.text[start..offset].chars().count() + 1,
        }
    }

    /// A span for the bytes `start..end`.
    pub fn span(&self, start: usize, end: usize) -> Span {
        let end = end.max(start);
        let last = if end > start {
            // Position of the last character covered.
            let mut last = end - 1;
            while last > start && !self.text.is_char_boundary(last) {
                last -= 1;
            }
            last
        } else {
            start
        };
        Span {
            start,
            end,
            start_pos: self.position(start),
            end_pos: self.position(last),
        }
    }

    /// The source text a span covers.
    pub fn slice(&self, span: &Span) -> &str {
        self.text.get(span.start..span.end).unwrap_or("")
    }
}

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A message about a place in a source file, ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Option<Span>,
}

impl Diagnostic {
    /// Renders `file:line:col: message`, then the source line with a caret under the span.
    /// Long lines are shown as a window around the caret so a 1 MB line stays readable.
    pub fn render(&self, source: &SourceFile) -> String {
        let Some(span) = self.span else {
            return format!("{}: {}", source.name(), self.message);
        };
        let pos = span.start_pos;
        let mut out = format!(
            "{}:{}:{}: {}",
            source.name(),
            pos.line,
            pos.column,
            self.message
        );
        if pos.line == 0 || pos.line > source.line_count().max(1) {
            return out;
        }
        let line = source.line_text(pos.line);
        let chars: Vec<char> = line.chars().collect();
        let caret_col = pos.column.saturating_sub(1).min(chars.len());
        let caret_len = if span.end_pos.line == pos.line && span.end_pos.column >= pos.column {
            (span.end_pos.column - pos.column + 1).min(chars.len().saturating_sub(caret_col))
        } else {
            chars.len().saturating_sub(caret_col)
        }
        .max(1);
        const WINDOW: usize = 100;
        let win_start = caret_col.saturating_sub(WINDOW / 2);
        let win_end = (win_start + WINDOW).min(chars.len());
        let prefix = if win_start > 0 { "..." } else { "" };
        let suffix = if win_end < chars.len() { "..." } else { "" };
        let shown: String = chars[win_start..win_end]
            .iter()
            .map(|c| if *c == '\t' { ' ' } else { *c })
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect();
        let gutter = pos.line.to_string();
        let pad = " ".repeat(gutter.len());
        let _ = write!(
            out,
            "\n{pad} |\n{gutter} | {prefix}{shown}{suffix}\n{pad} | {}{}",
            " ".repeat(prefix.len() + caret_col - win_start),
            "^".repeat(caret_len.min(win_end - caret_col).max(1))
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_and_lines() {
        let src = SourceFile::new("Dockerfile", "FROM a\nRUN é x\r\nCMD y");
        assert_eq!(src.position(0), Position { line: 1, column: 1 });
        assert_eq!(src.position(7), Position { line: 2, column: 1 });
        // 'x' comes after a two-byte character.
        assert_eq!(src.position(14), Position { line: 2, column: 7 });
        assert_eq!(src.line_text(2), "RUN é x");
        assert_eq!(src.line_text(3), "CMD y");
        assert_eq!(src.line_count(), 3);
    }

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let err = SourceFile::from_bytes("Dockerfile", b"FROM a\nRUN \xff\n".to_vec()).unwrap_err();
        assert_eq!(err.position, Position { line: 2, column: 5 });
        assert!(err.message.contains("0xff"));
    }

    #[test]
    fn render_shows_line_and_caret() {
        let src = SourceFile::new("Dockerfile", "FROM a\nFOO bar\n");
        let d = Diagnostic {
            severity: Severity::Error,
            message: "unknown instruction: FOO".into(),
            span: Some(src.span(7, 10)),
        };
        assert_eq!(
            d.render(&src),
            "Dockerfile:2:1: unknown instruction: FOO\n  |\n2 | FOO bar\n  | ^^^"
        );
    }

    #[test]
    fn render_windows_long_lines() {
        let long = format!("RUN {}", "a".repeat(10_000));
        let src = SourceFile::new("Dockerfile", long);
        let d = Diagnostic {
            severity: Severity::Error,
            message: "too long".into(),
            span: Some(src.span(5000, 5001)),
        };
        let out = d.render(&src);
        assert!(out.len() < 400, "{out}");
        assert!(out.contains("..."));
    }
}
