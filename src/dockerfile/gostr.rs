//! Go's string quoting (`strconv.Quote`, `%q`), so `kiln parse --dump` prints byte for byte what
//! BuildKit's `Node.Dump` prints.

use std::fmt::Write as _;

/// Go's `unicode.IsPrint`, approximated without Unicode tables: everything but control, format,
/// private-use and surrogate code points, and spaces other than U+0020.
fn is_go_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    let format = matches!(u,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x08E2 | 0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
        | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0001 | 0xE0020..=0xE007F);
    let private = matches!(u, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF);
    let nonchar = (u & 0xFFFE) == 0xFFFE || (0xFDD0..=0xFDEF).contains(&u);
    !(format || private || nonchar)
}

/// `strconv.Quote(s)`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// `fmt.Sprintf("%q", n)` of an integer (`strconv.QuoteRune`): `'\x03'`, `'A'`; a value that
/// is no code point prints as U+FFFD, as Go's does.
pub fn go_quote_rune(n: i64) -> String {
    let c = u32::try_from(n)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or('\u{fffd}');
    let mut out = String::from("'");
    push_escaped(&mut out, c, '\'');
    out.push('\'');
    out
}

/// One character of a Go-quoted literal delimited by `quote`.
fn push_escaped(out: &mut String, c: char, quote: char) {
    match c {
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        '\\' => out.push_str("\\\\"),
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if is_go_print(c) => out.push(c),
        c if (c as u32) < 0x20 || c == '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// `fmt.Sprintf("%q", []string{...})`: `["a" "b"]`.
pub fn go_quote_slice(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a \"b\" \\ c"), r#""a \"b\" \\ c""#);
        assert_eq!(go_quote("\t\n\0\u{7f}"), r#""\t\n\x00\x7f""#);
        assert_eq!(go_quote("♥ ☃ 한국어"), "\"♥ ☃ 한국어\"");
        assert_eq!(
            go_quote("\u{a0}\u{200b}\u{feff}"),
            r#""\u00a0\u200b\ufeff""#
        );
        assert_eq!(go_quote("\u{f0000}"), r#""\U000f0000""#);
        assert_eq!(
            go_quote_slice(&["--a=1".into(), "--b".into()]),
            r#"["--a=1" "--b"]"#
        );
        // `%q` of an int, as a HEALTHCHECK's retries print in Moby 20.10's history.
        assert_eq!(go_quote_rune(0), r"'\x00'");
        assert_eq!(go_quote_rune(3), r"'\x03'");
        assert_eq!(go_quote_rune(9), r"'\t'");
        assert_eq!(go_quote_rune(39), r"'\''");
        assert_eq!(go_quote_rune(34), "'\"'");
        assert_eq!(go_quote_rune(65), "'A'");
        assert_eq!(go_quote_rune(-1), "'\u{fffd}'");
    }
}
