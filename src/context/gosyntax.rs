//! Ports of the pieces of the Go standard library that `.dockerignore` semantics depend on:
//! `path.Clean`, `path.Dir`, the syntax check of `path/filepath.Match`, and a translator from the
//! RE2 syntax Go's `regexp` accepts to the syntax of the `regex` crate (so that the regular
//! expression moby/patternmatcher builds means the same thing here).

/// Go's `path.Clean` (and `filepath.Clean` on Unix).
pub(crate) fn clean(path: &str) -> String {
    // Only whole components and ASCII separators go: UTF-8 stays UTF-8.
    String::from_utf8(clean_bytes(path.as_bytes()))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Go's `path.Clean` on a path whose names need not be UTF-8 (Go strings are bytes).
pub(crate) fn clean_bytes(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        return b".".to_vec();
    }
    let rooted = path.starts_with(b"/");
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.last().is_some_and(|p| *p != b"..") {
                    parts.pop();
                } else if !rooted {
                    parts.push(b"..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join(&b'/');
    match (rooted, joined.is_empty()) {
        (true, _) => [b"/".as_slice(), &joined].concat(),
        (false, true) => b".".to_vec(),
        (false, false) => joined,
    }
}

/// Go's `filepath.Dir` on Unix: everything before the last `/`, cleaned.
pub(crate) fn dir(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => clean_bytes(&path[..=i]),
        None => b".".to_vec(),
    }
}

/// The string Go's `regexp` and `filepath.Match` see when they decode `s` rune by rune
/// (`utf8.DecodeRuneInString`): each byte that does not start a valid UTF-8 sequence is one
/// U+FFFD. Borrowed when `s` is UTF-8. (`String::from_utf8_lossy` differs: it makes one
/// U+FFFD of a truncated sequence.)
pub(crate) fn go_runes(s: &[u8]) -> std::borrow::Cow<'_, str> {
    let first = match std::str::from_utf8(s) {
        Ok(valid) => return std::borrow::Cow::Borrowed(valid),
        Err(e) => e,
    };
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    let mut valid = first.valid_up_to();
    loop {
        out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
        rest = &rest[valid..];
        if rest.is_empty() {
            break;
        }
        // One byte at a time, as Go's decoder steps over an invalid sequence.
        out.push('\u{fffd}');
        rest = &rest[1..];
        valid = match std::str::from_utf8(rest) {
            Ok(_) => rest.len(),
            Err(e) => e.valid_up_to(),
        };
    }
    std::borrow::Cow::Owned(out)
}

/// The syntax check `filepath.Match(pattern, ".")` performs (Unix flavour): every chunk of the
/// pattern is scanned by `matchChunk`, whose errors do not depend on the name being matched.
pub(crate) fn validate_glob(pattern: &str) -> Result<(), ()> {
    let mut rest = pattern.as_bytes();
    while !rest.is_empty() {
        let (star, chunk, r) = scan_chunk(rest);
        rest = r;
        if star && chunk.is_empty() {
            return Ok(());
        }
        check_chunk(chunk)?;
    }
    Ok(())
}

fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut pattern = pattern;
    let mut star = false;
    while let Some((b'*', r)) = pattern.split_first() {
        pattern = r;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

fn check_chunk(mut chunk: &[u8]) -> Result<(), ()> {
    while let Some(&c) = chunk.first() {
        match c {
            b'[' => {
                chunk = &chunk[1..];
                if chunk.first() == Some(&b'^') {
                    chunk = &chunk[1..];
                }
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    chunk = get_esc(chunk)?;
                    if chunk.first() == Some(&b'-') {
                        chunk = get_esc(&chunk[1..])?;
                    }
                    nrange += 1;
                }
            }
            b'\\' => {
                chunk = &chunk[1..];
                if chunk.is_empty() {
                    return Err(());
                }
                chunk = &chunk[1..];
            }
            _ => chunk = &chunk[1..],
        }
    }
    Ok(())
}

/// `getEsc`: one (possibly escaped) character of a class; the rest must not be empty.
fn get_esc(chunk: &[u8]) -> Result<&[u8], ()> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(()),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(());
            }
        }
        Some(_) => {}
    }
    let n = utf8_len(chunk).ok_or(())?;
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(());
    }
    Ok(rest)
}

/// Length of the valid UTF-8 sequence at the start of `b`, if there is one.
fn utf8_len(b: &[u8]) -> Option<usize> {
    let want = match b.first()? {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return None,
    };
    let prefix = b.get(..want)?;
    std::str::from_utf8(prefix).ok().map(|_| want)
}

/// Translate a regular expression in Go's RE2 syntax (the subset moby/patternmatcher can
/// produce: literals, escapes, classes, `.`, groups, `*`/`?`/`+` and anchors) into the syntax of
/// the `regex` crate with the same meaning. Go's classes are parsed the way Go parses them (so
/// `[` inside a class is a literal and `[[^/]*]` is the class `{[,^,/}` repeated, then `]`), and
/// every literal is re-emitted escaped.
pub(crate) fn go_regex_to_rust(go: &str) -> Result<String, String> {
    let chars: Vec<char> = go.chars().collect();
    let mut out = String::with_capacity(go.len() * 2);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => i = escape_outside_class(&chars, i + 1, &mut out)?,
            '[' => i = class(&chars, i + 1, &mut out)?,
            '^' | '$' | '.' | '*' | '?' | '+' | '(' | ')' | '|' => {
                out.push(c);
                i += 1;
            }
            _ => {
                push_literal(&mut out, c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        out.push_str(&format!("\\x{{{:x}}}", c as u32));
    }
}

const PERL_D: &str = "0-9";
const PERL_S: &str = "\\x{9}\\x{a}\\x{c}\\x{d}\\x{20}";
const PERL_W: &str = "0-9A-Za-z_";

/// Go's Perl classes are ASCII-only.
fn perl_class(c: char) -> Option<String> {
    Some(match c {
        'd' => format!("[{PERL_D}]"),
        'D' => format!("[^{PERL_D}]"),
        's' => format!("[{PERL_S}]"),
        'S' => format!("[^{PERL_S}]"),
        'w' => format!("[{PERL_W}]"),
        'W' => format!("[^{PERL_W}]"),
        _ => return None,
    })
}

/// After a `\` outside a class, at `j`; returns the index after the escape.
fn escape_outside_class(chars: &[char], j: usize, out: &mut String) -> Result<usize, String> {
    let Some(&c) = chars.get(j) else {
        return Err("trailing backslash at end of expression".into());
    };
    if let Some(class) = perl_class(c) {
        out.push_str(&class);
        return Ok(j + 1);
    }
    match c {
        'A' => {
            out.push_str("\\A");
            Ok(j + 1)
        }
        'z' => {
            out.push_str("\\z");
            Ok(j + 1)
        }
        'b' => {
            out.push_str("(?-u:\\b)");
            Ok(j + 1)
        }
        'B' => {
            out.push_str("(?-u:\\B)");
            Ok(j + 1)
        }
        'p' | 'P' => unicode_class(chars, j, out),
        'Q' => {
            // Literal text up to `\E` or the end.
            let mut k = j + 1;
            while k < chars.len() {
                if chars[k] == '\\' && chars.get(k + 1) == Some(&'E') {
                    return Ok(k + 2);
                }
                push_literal(out, chars[k]);
                k += 1;
            }
            Ok(k)
        }
        _ => {
            let (lit, next) = escape_char(chars, j)?;
            push_literal(out, lit);
            Ok(next)
        }
    }
}

/// `\p{Name}` / `\pN` (and `\P`): passed through to the `regex` crate, which knows the same
/// Unicode general categories and scripts.
fn unicode_class(chars: &[char], j: usize, out: &mut String) -> Result<usize, String> {
    let sign = chars[j];
    match chars.get(j + 1) {
        None => Err("invalid character class range".into()),
        Some('{') => {
            let close = chars[j + 2..]
                .iter()
                .position(|&c| c == '}')
                .ok_or_else(|| "invalid character class range".to_string())?;
            let name: String = chars[j + 2..j + 2 + close].iter().collect();
            out.push('\\');
            out.push(sign);
            out.push('{');
            out.push_str(&name);
            out.push('}');
            Ok(j + 3 + close)
        }
        Some(&n) => {
            out.push('\\');
            out.push(sign);
            out.push(n);
            Ok(j + 2)
        }
    }
}

/// Go's `parseEscape` for escapes that stand for one character; `j` is just after the `\`.
fn escape_char(chars: &[char], j: usize) -> Result<(char, usize), String> {
    let invalid = || format!("invalid escape sequence at {:?}", &chars[j - 1..]);
    let Some(&c) = chars.get(j) else {
        return Err("trailing backslash at end of expression".into());
    };
    if c.is_ascii() && !c.is_ascii_alphanumeric() {
        return Ok((c, j + 1));
    }
    let is_oct = |k: usize| chars.get(k).is_some_and(|c| ('0'..='7').contains(c));
    match c {
        '1'..='7' | '0' => {
            if c != '0' && !is_oct(j + 1) {
                return Err(invalid());
            }
            let mut r = c as u32 - '0' as u32;
            let mut k = j + 1;
            while k < j + 3 && is_oct(k) {
                r = r * 8 + (chars[k] as u32 - '0' as u32);
                k += 1;
            }
            char::from_u32(r).map(|ch| (ch, k)).ok_or_else(invalid)
        }
        'x' => {
            if chars.get(j + 1) == Some(&'{') {
                let mut k = j + 2;
                let mut r: u32 = 0;
                let mut digits = 0;
                while let Some(d) = chars.get(k).and_then(|c| c.to_digit(16)) {
                    r = r.checked_mul(16).map(|r| r + d).ok_or_else(invalid)?;
                    if r > 0x10ffff {
                        return Err(invalid());
                    }
                    digits += 1;
                    k += 1;
                }
                if digits == 0 || chars.get(k) != Some(&'}') {
                    return Err(invalid());
                }
                char::from_u32(r).map(|ch| (ch, k + 1)).ok_or_else(invalid)
            } else {
                let hi = chars.get(j + 1).and_then(|c| c.to_digit(16));
                let lo = chars.get(j + 2).and_then(|c| c.to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => char::from_u32(h * 16 + l)
                        .map(|ch| (ch, j + 3))
                        .ok_or_else(invalid),
                    _ => Err(invalid()),
                }
            }
        }
        'a' => Ok(('\u{7}', j + 1)),
        'f' => Ok(('\u{c}', j + 1)),
        'n' => Ok(('\n', j + 1)),
        'r' => Ok(('\r', j + 1)),
        't' => Ok(('\t', j + 1)),
        'v' => Ok(('\u{b}', j + 1)),
        _ => Err(invalid()),
    }
}

const POSIX_CLASSES: &[&str] = &[
    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
    "space", "upper", "word", "xdigit",
];

/// A Go class starting just after its `[`; emits an equivalent `regex` class and returns the
/// index after the closing `]`.
fn class(chars: &[char], mut j: usize, out: &mut String) -> Result<usize, String> {
    const MISSING: &str = "missing closing ]";
    const RANGE: &str = "invalid character class range";
    out.push('[');
    if chars.get(j) == Some(&'^') {
        out.push('^');
        j += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = chars.get(j) else {
            return Err(MISSING.into());
        };
        if c == ']' && !first {
            out.push(']');
            return Ok(j + 1);
        }
        first = false;
        // POSIX [:alpha:] (only when a ":]" follows somewhere, as in Go).
        if c == '[' && chars.get(j + 1) == Some(&':') && chars.len() > j + 2 {
            let rest = &chars[j + 2..];
            if let Some(end) = rest.windows(2).position(|w| w == [':', ']']) {
                let name: String = rest[..end].iter().collect();
                let bare = name.strip_prefix('^').unwrap_or(&name);
                if !POSIX_CLASSES.contains(&bare) {
                    return Err(RANGE.into());
                }
                out.push_str(&format!("[:{name}:]"));
                j += 2 + end + 2;
                continue;
            }
        }
        if c == '\\' {
            match chars.get(j + 1) {
                Some('p' | 'P') => {
                    j = unicode_class(chars, j + 1, out)?;
                    continue;
                }
                Some(&p) => {
                    if let Some(class) = perl_class(p) {
                        out.push_str(&class);
                        j += 2;
                        continue;
                    }
                }
                None => {}
            }
        }
        let (lo, next) = class_char(chars, j)?;
        j = next;
        let mut hi = lo;
        if chars.len() >= j + 2 && chars[j] == '-' && chars[j + 1] != ']' {
            let (h, next) = class_char(chars, j + 1)?;
            if h < lo {
                return Err(RANGE.into());
            }
            hi = h;
            j = next;
        }
        push_class_char(out, lo);
        if hi != lo {
            out.push('-');
            push_class_char(out, hi);
        }
    }
}

fn class_char(chars: &[char], j: usize) -> Result<(char, usize), String> {
    match chars.get(j) {
        None => Err("missing closing ]".into()),
        Some('\\') => escape_char(chars, j + 1),
        Some(&c) => Ok((c, j + 1)),
    }
}

fn push_class_char(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        out.push_str(&format!("\\x{{{:x}}}", c as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("a/../b", "b"),
            ("a//b", "a/b"),
            ("a/b/", "a/b"),
            ("./a", "a"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("a/..", "."),
            ("a/../..", ".."),
            ("//a/./b/", "/a/b"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn dir_matches_go() {
        assert_eq!(dir(b"a/b/c"), b"a/b");
        assert_eq!(dir(b"a"), b".");
        assert_eq!(dir(b"file/"), b"file");
        assert_eq!(dir(b"/"), b"/");
        assert_eq!(dir(b"/a"), b"/");
        assert_eq!(dir(b"caf\xe9/x"), b"caf\xe9");
        assert_eq!(clean_bytes(b"./caf\xe9//../\xff/"), b"\xff");
    }

    #[test]
    fn go_runes_makes_each_invalid_byte_one_replacement() {
        assert_eq!(go_runes(b"caf\xc3\xa9"), "caf\u{e9}");
        assert_eq!(go_runes(b"caf\xe9"), "caf\u{fffd}");
        // A truncated 4-byte sequence is three runes for Go (one U+FFFD for from_utf8_lossy).
        assert_eq!(go_runes(b"a\xf0\x9f\x98b"), "a\u{fffd}\u{fffd}\u{fffd}b");
        assert_eq!(go_runes(b"\xff\xfe/\xc3\xa9"), "\u{fffd}\u{fffd}/\u{e9}");
    }

    #[test]
    fn glob_syntax() {
        for ok in [
            "abc", "*", "a[b-d]e", "[\\]a]", "[\\-]", "[x\\-]", "[*]", "a\\*b", "]",
        ] {
            assert!(validate_glob(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "a\\",
        ] {
            assert!(validate_glob(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn go_classes_are_parsed_like_go() {
        let re = |s: &str| regex::Regex::new(&go_regex_to_rust(s).expect("translates")).unwrap();
        // `[` is literal inside a Go class.
        let r = re("^[[^/]*]$");
        assert!(r.is_match("[^]"));
        assert!(r.is_match("]"));
        assert!(!r.is_match("a]"));
        // `]` first in a class is literal; `-` at the end is literal.
        assert!(re("^[]a-]$").is_match("-"));
        assert!(re("^[]a-]$").is_match("]"));
        // Perl classes are ASCII.
        assert!(!re("^\\d$").is_match("٣"));
        assert!(re("^[[:alpha:]]$").is_match("q"));
        assert!(go_regex_to_rust("[l-O]").is_err());
        assert!(go_regex_to_rust("[:foo:]]").is_ok());
        assert!(go_regex_to_rust("[[:foo:]]").is_err());
        assert!(go_regex_to_rust("a\\").is_err());
        assert!(go_regex_to_rust("\\q").is_err());
        assert!(re("^\\<$").is_match("<"));
        assert!(re("^\\101$").is_match("A"));
        assert!(re("^a\\Q.*\\Eb$").is_match("a.*b"));
    }
}
