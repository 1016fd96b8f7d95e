//! `WWW-Authenticate` challenges (RFC 7235): `Bearer realm="…",service="…",scope="…"`, `Basic realm="…"`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `bearer`, `basic`, …
    pub scheme: String,
    /// Parameters with lowercased names.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(|s| s.as_str())
    }
}

/// Parses every challenge in a header value; unparseable trailing garbage is ignored, as
/// clients must be lenient with what registries send.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut rest = header.trim_start();
    while !rest.is_empty() {
        let scheme_len = rest
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(rest.len());
        let scheme = rest[..scheme_len].to_ascii_lowercase();
        rest = rest[scheme_len..].trim_start();
        let mut params = BTreeMap::new();
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
            // A token followed by `=` is a parameter; anything else starts the next challenge.
            let name_len = rest
                .find(|c: char| c == '=' || c.is_whitespace() || c == ',')
                .unwrap_or(rest.len());
            if name_len == 0 || !rest[name_len..].trim_start().starts_with('=') {
                break;
            }
            let name = rest[..name_len].to_ascii_lowercase();
            rest = rest[name_len..].trim_start()[1..].trim_start();
            let value;
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut v = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                v.push(escaped);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        _ => v.push(c),
                    }
                }
                value = v;
                rest = &quoted[end.min(quoted.len())..];
            } else {
                let len = rest.find(',').unwrap_or(rest.len());
                value = rest[..len].trim().to_string();
                rest = &rest[len..];
            }
            params.insert(name, value);
        }
        if !scheme.is_empty() {
            out.push(Challenge { scheme, params });
        }
        if rest.len() == header.len() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/python:pull"));
    }

    #[test]
    fn basic_and_several_challenges() {
        let c = parse_challenges(r#"Basic realm="Registry Realm", Bearer realm="x",scope="a:b,c""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].param("scope"), Some("a:b,c"));
    }

    #[test]
    fn escapes_and_unquoted_values() {
        let c = parse_challenges(r#"bearer realm=https://x/token, error="in\"valid""#);
        assert_eq!(c[0].param("realm"), Some("https://x/token"));
        assert_eq!(c[0].param("error"), Some("in\"valid"));
    }

    #[test]
    fn garbage_does_not_loop() {
        for s in [
            "",
            "Bearer",
            "Bearer ,,,",
            "Bearer realm=",
            "Bearer realm=\"unterminated",
            "= = =",
        ] {
            let _ = parse_challenges(s);
        }
    }
}
