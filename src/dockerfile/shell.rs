//! Word expansion with BuildKit's shell-lexer semantics (`frontend/dockerfile/shell/lex.go`).
//!
//! A word is scanned once, left to right: quotes are removed (unless `raw_quotes`), the escape
//! character (`\` or a backtick) quotes the next character, and `$NAME` / `${NAME…}` are replaced
//! from the environment. Besides the expanded string, the lexer returns the word split on
//! unquoted whitespace *after* expansion (for instructions that take several words) and the sets
//! of variable names that were found and not found (for the `UndefinedVar` check).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;

use super::gostr::go_quote;

/// Where the lexer looks variables up. Keys are compared exactly (Linux semantics).
pub trait EnvGetter {
    fn get(&self, key: &str) -> Option<&str>;
}

/// A list of `(key, value)` pairs; the last definition of a key wins, as in an image's env.
impl EnvGetter for Vec<(String, String)> {
    fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl EnvGetter for [(String, String)] {
    fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl EnvGetter for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(|v| v.as_str())
    }
}

impl EnvGetter for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(|v| v.as_str())
    }
}

/// Builds `(key, value)` pairs from `KEY=VALUE` strings (a bare `KEY` is set and empty), like
/// BuildKit's `BuildEnvs`.
pub fn env_from_strings<S: AsRef<str>>(entries: &[S]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| match e.as_ref().split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.as_ref().to_string(), String::new()),
        })
        .collect()
}

/// The lexer's settings. `escape` is the Dockerfile's escape character.
#[derive(Debug, Clone)]
pub struct Lexer {
    pub escape: char,
    /// Keep quote characters in the output (used for heredoc detection and RUN).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as they were written.
    pub skip_unset_env: bool,
}

/// The outcome of expanding one word.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessedWord {
    /// The expanded word, whitespace kept.
    pub result: String,
    /// The expanded word split on unquoted whitespace.
    pub words: Vec<String>,
    /// Variable names that were looked up and found.
    pub matched: BTreeSet<String>,
    /// Variable names that were looked up and not found.
    pub unmatched: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShellError {
    pub message: String,
}

impl ShellError {
    fn new(message: impl Into<String>) -> ShellError {
        ShellError {
            message: message.into(),
        }
    }
}

/// Nested `${a:-${b:-…}}` beyond this depth is refused rather than risking the stack.
const MAX_NESTING: usize = 200;

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word`, returning the result, its words and the variables it referenced.
    pub fn process_word(
        &self,
        word: &str,
        env: &dyn EnvGetter,
    ) -> Result<ProcessedWord, ShellError> {
        let mut scan = Scan {
            lexer: self,
            chars: word.chars().collect(),
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        match scan.process_stop_on(None, self.raw_escapes) {
            Ok((result, words)) => Ok(ProcessedWord {
                result,
                words,
                matched: scan.matched,
                unmatched: scan.unmatched,
            }),
            Err(e) => Err(ShellError::new(format!(
                "failed to process {}: {}",
                go_quote(word),
                e.message
            ))),
        }
    }

    /// Expands `word` and splits it into words on unquoted whitespace.
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn EnvGetter,
    ) -> Result<Vec<String>, ShellError> {
        self.process_word(word, env).map(|p| p.words)
    }
}

/// Accumulates words: whitespace that came from unquoted text or expansions separates words.
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct Scan<'a> {
    lexer: &'a Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn EnvGetter,
    raw_escapes: bool,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl Scan<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    /// Processes until `stop` (consumed) or the end of input; returns the text and its words.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ShellError::new(
                "syntax error: substitutions nested too deeply",
            ));
        }
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let out = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        out
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ShellError> {
        let mut result = String::new();
        let mut words = Words::default();
        let quotes = !self.lexer.skip_process_quotes;
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            if ch == '$' {
                let expanded = self.process_dollar()?;
                result.push_str(&expanded);
                words.add_string(&expanded);
            } else if quotes && (ch == '\'' || ch == '"') {
                let quoted = if ch == '\'' {
                    self.process_single_quote()?
                } else {
                    self.process_double_quote()?
                };
                result.push_str(&quoted);
                words.add_raw_string(&quoted);
            } else {
                self.next();
                let mut ch = ch;
                if ch == self.lexer.escape {
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    // The escape quotes the next character; at the end it vanishes.
                    match self.next() {
                        None => break,
                        Some(next) => ch = next,
                    }
                    words.add_raw_char(ch);
                } else {
                    words.add_char(ch);
                }
                result.push(ch);
            }
        }
        if let Some(stop) = stop {
            return Err(ShellError::new(format!(
                "unexpected end of statement while looking for matching {stop}"
            )));
        }
        Ok((result, words.finish()))
    }

    /// Everything between single quotes is literal; a single quote cannot be escaped.
    fn process_single_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(ShellError::new(
                        "unexpected end of statement while looking for matching single-quote",
                    ))
                }
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    /// Double quotes keep everything literal except `$` and the escape character, which only
    /// escapes `"`, `$` and itself.
    fn process_double_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(ShellError::new(
                        "unexpected end of statement while looking for matching double-quote",
                    ))
                }
                Some('"') => {
                    self.next();
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(_) => {
                    let Some(mut ch) = self.next() else {
                        continue;
                    };
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // An escape at the very end is dropped; the missing quote errors next.
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                self.next();
                                ch = next;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, ShellError> {
        self.next(); // the '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }

        self.next(); // the '{'
        match self.peek() {
            None => return Err(ShellError::new("syntax error: missing '}'")),
            Some('{' | '}' | ':') => return Err(ShellError::new("syntax error: bad substitution")),
            Some(_) => {}
        }
        let name = self.process_name();
        let modifier = self.next();
        // Go prints an EOF rune as U+FFFD in its messages.
        let mut chs: String = modifier.unwrap_or('\u{FFFD}').to_string();
        match modifier {
            Some('}') => Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(first @ (':' | '+' | '-' | '?' | '#' | '%')) => {
                let mut op = Some(first);
                let null_is_unset = first == ':';
                if null_is_unset {
                    op = self.next();
                    chs.push(op.unwrap_or('\u{FFFD}'));
                }
                let raw = matches!(op, Some('#' | '%'));
                let word = match self.process_stop_on(Some('}'), raw) {
                    Ok((word, _)) => word,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err(ShellError::new("syntax error: missing '}'"));
                        }
                        return Err(e);
                    }
                };
                let value = self.get_env(&name);
                if self.lexer.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let empty_counts_as_unset =
                    |v: &Option<String>| v.is_none() || (null_is_unset && v.as_deref() == Some(""));
                match op {
                    Some('-') => Ok(if empty_counts_as_unset(&value) {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if empty_counts_as_unset(&value) {
                        String::new()
                    } else {
                        word
                    }),
                    Some('?') => match value {
                        None => Err(ShellError::new(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        ))),
                        Some(v) if null_is_unset && v.is_empty() => Err(ShellError::new(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        ))),
                        Some(v) => Ok(v),
                    },
                    Some(op @ ('%' | '#')) => {
                        // One `#`/`%` removes the shortest match, two the longest.
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let value = value.unwrap_or_default();
                        if op == '%' {
                            trim_suffix(&pattern, &value, greedy)
                        } else {
                            trim_prefix(&pattern, &value, greedy)
                        }
                    }
                    _ => Err(ShellError::new(format!(
                        "unsupported modifier ({chs}) in substitution"
                    ))),
                }
            }
            Some('/') => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true) {
                    Ok((p, _)) => p,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err(ShellError::new("syntax error: missing '/' in ${}"));
                        }
                        return Err(e);
                    }
                };
                let replacement = match self.process_stop_on(Some('}'), true) {
                    Ok((r, _)) => r,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err(ShellError::new("syntax error: missing '}'"));
                        }
                        return Err(e);
                    }
                };
                let value = self.get_env(&name);
                let Some(value) = value.or_else(|| (!self.lexer.skip_unset_env).then(String::new))
                else {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                };
                let re = shell_pattern_to_regex(&pattern, true, false).map_err(|e| {
                    ShellError::new(format!("invalid pattern ({pattern}) in substitution: {e}"))
                })?;
                if replace_all {
                    Ok(re.replace_all(&value, replacement.as_str()).into_owned())
                } else if let Some(m) = re.find(&value) {
                    Ok(format!(
                        "{}{}{}",
                        &value[..m.start()],
                        replacement,
                        &value[m.end()..]
                    ))
                } else {
                    Ok(value)
                }
            }
            _ => Err(ShellError::new(format!(
                "unsupported modifier ({chs}) in substitution"
            ))),
        }
    }

    /// A name: letters, digits and `_`; or a run of digits (positional); or one special
    /// parameter character.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek().filter(|c| c.is_numeric()) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }
}

fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Converts a shell wildcard pattern (`*`, `?`, `\` escapes; no bracket expressions) into a regex.
fn shell_pattern_to_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, String> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = pattern.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                // `}` and `/` are escaped only to get past the `${…}` syntax.
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(next @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(next);
                    }
                    Some(next) => return Err(format!("invalid escape '\\{next}'")),
                    None => return Err("invalid escape '\\\u{FFFD}'".to_string()),
                }
            }
            _ => {
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(tok.encode_utf8(&mut buf)));
            }
        }
    }
    regex::RegexBuilder::new(&out)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let re = shell_pattern_to_regex(pattern, greedy, true).map_err(|e| {
        ShellError::new(format!("invalid pattern ({pattern}) in substitution: {e}"))
    })?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Regexes cannot find the shortest rightmost match, so both pattern and value are reversed
/// and the prefix trimmed instead.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern keeping escapes in front of what they escape: `a\*c` → `c\*a`.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut pieces: Vec<String> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            pieces.push(format!("\\{}", chars[i + 1]));
            i += 2;
        } else {
            pieces.push(chars[i].to_string());
            i += 1;
        }
    }
    pieces.reverse();
    pieces.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(word: &str, env: &[&str]) -> Result<String, ShellError> {
        Lexer::new('\\')
            .process_word(word, &env_from_strings(env))
            .map(|p| p.result)
    }

    #[test]
    fn pattern_removal() {
        let env = ["P=a/b/c.tar.gz"];
        assert_eq!(expand("${P#*/}", &env).unwrap(), "b/c.tar.gz");
        assert_eq!(expand("${P##*/}", &env).unwrap(), "c.tar.gz");
        assert_eq!(expand("${P%.*}", &env).unwrap(), "a/b/c.tar");
        assert_eq!(expand("${P%%.*}", &env).unwrap(), "a/b/c");
        assert_eq!(expand("${P/\\//-}", &env).unwrap(), "a-b/c.tar.gz");
        assert_eq!(expand("${P//\\//-}", &env).unwrap(), "a-b-c.tar.gz");
        assert_eq!(expand("${P/#a/x}", &env).unwrap(), "a/b/c.tar.gz");
    }

    #[test]
    fn matched_and_unmatched_names() {
        let p = Lexer::new('\\')
            .process_word("$A ${B:-x} ${C}", &env_from_strings(&["A=1", "C="]))
            .unwrap();
        assert_eq!(p.result, "1 x ");
        assert!(p.matched.contains("A") && p.matched.contains("C"));
        assert!(p.unmatched.contains("B"));
    }

    #[test]
    fn skip_unset_env_keeps_references() {
        let mut lexer = Lexer::new('\\');
        lexer.skip_unset_env = true;
        let env = env_from_strings(&["A=1"]);
        assert_eq!(
            lexer
                .process_word("$A $B ${C} ${D:-x}", &env)
                .unwrap()
                .result,
            "1 $B ${C} ${D:-x}"
        );
    }

    #[test]
    fn backtick_escape() {
        let lexer = Lexer::new('`');
        let env = env_from_strings(&["A=1"]);
        assert_eq!(lexer.process_word("`$A\\x", &env).unwrap().result, "$A\\x");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let word = "${a:-".repeat(5000) + &"}".repeat(5000);
        assert!(expand(&word, &[]).is_err());
    }

    #[test]
    fn reverse_pattern_keeps_escapes() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("ab"), "ba");
    }
}
