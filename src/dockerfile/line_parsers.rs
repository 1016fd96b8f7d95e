//! Per-instruction argument splitting, with BuildKit's exact rules: the keyword and its `--flags`,
//! quote-aware words for ENV/LABEL/ARG, whitespace lists for FROM/EXPOSE, JSON (exec form) with the
//! shell-form fallback, and HEALTHCHECK's type word.

use super::gostr::go_quote;
use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while_m_n};
use nom::character::complete::{char as ch, digit0, digit1, one_of};
use nom::combinator::{opt, recognize};
use nom::sequence::{pair, preceded};
use nom::{IResult, Parser};

/// BuildKit's `reWhitespace`: the characters that separate words in FROM, EXPOSE, COPY lists.
pub fn is_token_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\u{0b}' | '\u{0c}' | '\r' | ' ')
}

/// Splits on runs of [`is_token_whitespace`], like Go's `regexp.Split(s, -1)`: empty input gives no
/// words, and leading/trailing separators give empty words.
pub fn split_whitespace_tokens(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_sep = false;
    for c in s.chars() {
        if is_token_whitespace(c) {
            if !in_sep {
                out.push(std::mem::take(&mut word));
                in_sep = true;
            }
        } else {
            in_sep = false;
            word.push(c);
        }
    }
    out.push(word);
    out
}

/// Splits off the first word: `(first, rest)` where rest starts after the separator run.
fn split_first_token(s: &str) -> (&str, Option<&str>) {
    match s.find(is_token_whitespace) {
        None => (s, None),
        Some(i) => {
            let rest = s[i..].trim_start_matches(is_token_whitespace);
            (&s[..i], Some(rest))
        }
    }
}

/// The keyword, the `--flags`, and the rest of the line (BuildKit's `splitCommand`).
pub fn split_command(line: &str) -> (String, Vec<String>, String) {
    let (cmd, rest) = split_first_token(line.trim());
    match rest {
        None => (cmd.to_string(), Vec::new(), String::new()),
        Some(rest) => {
            let (args, flags) = extract_builder_flags(rest);
            (cmd.to_string(), flags, args.trim().to_string())
        }
    }
}

/// Reads leading `--flag[=value]` words (quotes and `\` escapes allowed inside them) and returns the
/// remaining text and the flags. A bare `--` ends the flags and is dropped.
pub fn extract_builder_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut i = 0;
    while i <= chars.len() {
        let at_end = i == chars.len();
        let (pos, c) = chars.get(i).copied().unwrap_or((line.len(), '\0'));
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            let next = chars.get(i + 1).map(|x| x.1);
            if c != '-' || next != Some('-') {
                return (&line[pos..], words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if c.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (&line[pos..], words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                i += 1;
                continue;
            }
            if c == '\'' || c == '"' {
                quote = c;
                blank_ok = true;
                phase = Phase::Quote;
                i += 1;
                continue;
            }
            let mut c = c;
            if c == '\\' {
                if i + 1 == chars.len() {
                    i += 1;
                    continue;
                }
                i += 1;
                c = chars[i].1;
            }
            word.push(c);
            i += 1;
            continue;
        }
        // Phase::Quote
        if c == quote {
            phase = Phase::Word;
            i += 1;
            continue;
        }
        let mut c = c;
        if c == '\\' {
            if i + 1 == chars.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            i += 1;
            c = chars[i].1;
        }
        word.push(c);
        i += 1;
    }
    ("", words)
}

/// Quote-aware word splitting for ENV, LABEL and ARG. Quotes and escapes are kept in the words;
/// they are removed later, when the words are expanded.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut i = 0;
    while i <= chars.len() {
        let at_end = i == chars.len();
        let mut c = chars.get(i).copied().unwrap_or('\0');
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if c.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                i += 1;
                continue;
            }
            if c == '\'' || c == '"' {
                quote = c;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if c == escape {
                if i + 1 == chars.len() {
                    // An escape at the very end is dropped.
                    i += 1;
                    continue;
                }
                // Unquoted, the escape and the next character are both kept, even a quote.
                word.push(c);
                i += 1;
                c = chars[i];
            }
            word.push(c);
            i += 1;
            continue;
        }
        // Phase::Quote
        if c == quote {
            phase = Phase::Word;
        }
        // Nothing escapes inside single quotes.
        if c == escape && quote != '\'' {
            if i + 1 == chars.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            word.push(c);
            i += 1;
            c = chars[i];
        }
        word.push(c);
        i += 1;
    }
    words
}

/// ENV and LABEL: `key value` (legacy, one pair) or `k=v k2=v2`. Returns `key value sep` triples, sep
/// being `""` for the legacy form and `"="` otherwise.
pub fn parse_name_val(rest: &str, keyword: &str, escape: char) -> Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let (name, value) = split_first_token(rest);
        return match value {
            Some(value) => Ok(vec![name.to_string(), value.to_string(), String::new()]),
            None => Err(format!("{keyword} must have two arguments")),
        };
    }
    let mut out = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                go_quote(&word)
            ));
        };
        out.push(key.to_string());
        out.push(value.to_string());
        out.push("=".to_string());
    }
    Ok(out)
}

/// FROM, EXPOSE and the shell form of COPY/ADD/VOLUME: words separated by whitespace.
pub fn parse_strings_whitespace_delimited(rest: &str) -> Vec<String> {
    split_whitespace_tokens(rest)
}

/// MAINTAINER, USER, WORKDIR, STOPSIGNAL: the rest of the line is one argument.
pub fn parse_string(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        Vec::new()
    } else {
        vec![rest.to_string()]
    }
}

/// Why text that starts with `[` was not taken as exec form.
#[derive(Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Not a JSON array at all: the text is shell form.
    NotJson,
    /// A JSON array with something other than strings in it: an error.
    NotStringArray,
}

pub const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// Deeper JSON nesting than this is treated as invalid JSON, so hostile input cannot exhaust the
/// stack.
const MAX_JSON_DEPTH: usize = 256;

/// Exec form: a JSON array of strings, read with Go's `encoding/json` rules.
pub fn parse_json(rest: &str) -> Result<Vec<String>, JsonError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Err(JsonError::NotJson);
    }
    let (after, values) = json_array(rest, 0).map_err(|_| JsonError::NotJson)?;
    if !after.trim_start_matches(is_json_ws).is_empty() {
        return Err(JsonError::NotJson);
    }
    values
        .into_iter()
        .map(|v| match v {
            JsonValue::String(s) => Ok(s),
            JsonValue::Other => Err(JsonError::NotStringArray),
        })
        .collect()
}

/// RUN, CMD, ENTRYPOINT, SHELL: exec form when the text is a JSON array of strings, otherwise the
/// whole text as one shell-form argument. Returns the words and whether they were JSON.
pub fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool), String> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json(rest) {
        Ok(words) => Ok((words, true)),
        Err(JsonError::NotStringArray) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok((vec![rest.to_string()], false)),
    }
}

/// COPY, ADD, VOLUME: exec form, or whitespace-separated words.
pub fn parse_maybe_json_to_list(rest: &str) -> Result<(Vec<String>, bool), String> {
    match parse_json(rest) {
        Ok(words) => Ok((words, true)),
        Err(JsonError::NotStringArray) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok((parse_strings_whitespace_delimited(rest), false)),
    }
}

/// HEALTHCHECK: a type word (`CMD`, `NONE`, ...) then the command as in [`parse_maybe_json`].
pub fn parse_health_config(rest: &str) -> Result<(Vec<String>, bool), String> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let typ = &rest[..sep];
    let cmd = rest[sep..].trim_start();
    let (words, json) = parse_maybe_json(cmd)?;
    let mut out = Vec::with_capacity(words.len() + 1);
    out.push(typ.to_string());
    out.extend(words);
    Ok((out, json))
}

// ---- A JSON reader with Go's acceptance rules, in nom. Only strings are kept. ----

enum JsonValue {
    String(String),
    Other,
}

fn is_json_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn ws(input: &str) -> IResult<&str, &str> {
    take_while(is_json_ws)(input)
}

fn json_array(input: &str, depth: usize) -> IResult<&str, Vec<JsonValue>> {
    if depth > MAX_JSON_DEPTH {
        return Err(nom::Err::Failure(nom::error::Error::new(
            input,
            nom::error::ErrorKind::TooLarge,
        )));
    }
    let (mut input, _) = (ch('['), ws).parse(input)?;
    let mut values = Vec::new();
    if let Ok((rest, _)) = ch::<&str, nom::error::Error<&str>>(']').parse(input) {
        return Ok((rest, values));
    }
    loop {
        let (rest, value) = json_value(input, depth)?;
        values.push(value);
        let (rest, _) = ws(rest)?;
        let (rest, sep) = one_of(",]").parse(rest)?;
        if sep == ']' {
            return Ok((rest, values));
        }
        let (rest, _) = ws(rest)?;
        input = rest;
    }
}

fn json_object(input: &str, depth: usize) -> IResult<&str, JsonValue> {
    if depth > MAX_JSON_DEPTH {
        return Err(nom::Err::Failure(nom::error::Error::new(
            input,
            nom::error::ErrorKind::TooLarge,
        )));
    }
    let (mut input, _) = (ch('{'), ws).parse(input)?;
    if let Ok((rest, _)) = ch::<&str, nom::error::Error<&str>>('}').parse(input) {
        return Ok((rest, JsonValue::Other));
    }
    loop {
        let (rest, _) = (json_string, ws, ch(':'), ws).parse(input)?;
        let (rest, _) = json_value(rest, depth)?;
        let (rest, _) = ws(rest)?;
        let (rest, sep) = one_of(",}").parse(rest)?;
        if sep == '}' {
            return Ok((rest, JsonValue::Other));
        }
        let (rest, _) = ws(rest)?;
        input = rest;
    }
}

fn json_value(input: &str, depth: usize) -> IResult<&str, JsonValue> {
    match input.chars().next() {
        Some('"') => json_string(input).map(|(r, s)| (r, JsonValue::String(s))),
        Some('[') => json_array(input, depth + 1).map(|(r, _)| (r, JsonValue::Other)),
        Some('{') => json_object(input, depth + 1),
        _ => alt((tag("true"), tag("false"), tag("null"), json_number))
            .parse(input)
            .map(|(r, _)| (r, JsonValue::Other)),
    }
}

fn json_number(input: &str) -> IResult<&str, &str> {
    recognize((
        opt(ch('-')),
        alt((tag("0"), recognize(pair(one_of("123456789"), digit0)))),
        opt(pair(ch('.'), digit1)),
        opt((one_of("eE"), opt(one_of("+-")), digit1)),
    ))
    .parse(input)
}

fn hex4(input: &str) -> IResult<&str, u32> {
    let (rest, digits) = preceded(
        ch('u'),
        take_while_m_n(4, 4, |c: char| c.is_ascii_hexdigit()),
    )
    .parse(input)?;
    // Four hex digits always fit.
    let value = u32::from_str_radix(digits, 16).unwrap_or(0xfffd);
    Ok((rest, value))
}

/// A JSON string with Go's decoding: invalid surrogates become U+FFFD; control characters are errors.
fn json_string(input: &str) -> IResult<&str, String> {
    let fail = |i| nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Char));
    let (mut input, _) = ch('"').parse(input)?;
    let mut out = String::new();
    loop {
        let mut chars = input.chars();
        let c = chars.next().ok_or_else(|| fail(input))?;
        match c {
            '"' => return Ok((chars.as_str(), out)),
            '\\' => {
                let rest = chars.as_str();
                let e = rest.chars().next().ok_or_else(|| fail(rest))?;
                let simple = match e {
                    '"' => Some('"'),
                    '\\' => Some('\\'),
                    '/' => Some('/'),
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    _ => None,
                };
                if let Some(s) = simple {
                    out.push(s);
                    input = &rest[1..];
                    continue;
                }
                let (after, hi) = hex4(rest)?;
                if (0xD800..0xDC00).contains(&hi) {
                    // A high surrogate must be followed by an escaped low surrogate.
                    if let Ok((after2, lo)) = preceded(ch('\\'), hex4).parse(after) {
                        if (0xDC00..0xE000).contains(&lo) {
                            let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                            input = after2;
                            continue;
                        }
                    }
                    out.push('\u{fffd}');
                    input = after;
                } else {
                    out.push(char::from_u32(hi).unwrap_or('\u{fffd}'));
                    input = after;
                }
            }
            c if (c as u32) < 0x20 => return Err(fail(input)),
            c => {
                out.push(c);
                input = chars.as_str();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_split_off() {
        assert_eq!(
            extract_builder_flags("--from=a --chown='a b' src dst"),
            (
                "src dst",
                vec!["--from=a".to_string(), "--chown=a b".to_string()]
            )
        );
        assert_eq!(
            extract_builder_flags("--doit=true -- foo /tmp/"),
            (" foo /tmp/", vec!["--doit=true".to_string()])
        );
        assert_eq!(extract_builder_flags("-- [ ]"), (" [ ]", vec![]));
        assert_eq!(
            extract_builder_flags("--mount=type=cache,target=/x"),
            ("", vec!["--mount=type=cache,target=/x".to_string()])
        );
        assert_eq!(extract_builder_flags("-x a"), ("-x a", vec![]));
    }

    #[test]
    fn json_follows_go_rules() {
        assert_eq!(parse_json(r#"["a","b"]"#), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(parse_json("[]"), Ok(vec![]));
        assert_eq!(
            parse_json(r#" [ "\u0041\ud83d\ude00\ud800" ] "#),
            Ok(vec!["A😀\u{fffd}".into()])
        );
        assert_eq!(parse_json(r#"["a", 1]"#), Err(JsonError::NotStringArray));
        assert_eq!(
            parse_json(r#"["a", ["b"]]"#),
            Err(JsonError::NotStringArray)
        );
        assert_eq!(
            parse_json(r#"["a", {"k": [1, 2.5e3, null]}]"#),
            Err(JsonError::NotStringArray)
        );
        assert_eq!(parse_json(r#"["a"] x"#), Err(JsonError::NotJson));
        assert_eq!(parse_json(r#"['a']"#), Err(JsonError::NotJson));
        assert_eq!(parse_json(r#"["a\x"]"#), Err(JsonError::NotJson));
        assert_eq!(parse_json("[\"a\tb\"]"), Err(JsonError::NotJson));
        assert_eq!(parse_json("[01]"), Err(JsonError::NotJson));
        let deep = "[".repeat(100_000);
        assert_eq!(parse_json(&deep), Err(JsonError::NotJson));
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            parse_name_val("name value with space", "ENV", '\\').unwrap(),
            vec!["name", "value with space", ""]
        );
        assert_eq!(
            parse_name_val(r#"a=1 b="x y""#, "ENV", '\\').unwrap(),
            vec!["a", "1", "=", "b", "\"x y\"", "="]
        );
        assert_eq!(
            parse_name_val("PATH", "ENV", '\\').unwrap_err(),
            "ENV must have two arguments"
        );
        assert!(parse_name_val("a=1 b", "LABEL", '\\')
            .unwrap_err()
            .contains("can't find = in \"b\""));
    }

    #[test]
    fn whitespace_tokens() {
        assert_eq!(split_whitespace_tokens("a  b\tc"), vec!["a", "b", "c"]);
        assert!(split_whitespace_tokens("").is_empty());
    }
}
