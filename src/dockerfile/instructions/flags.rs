//! Instruction flags (`--name=value`), typed and validated with BuildKit's `BFlags` rules: each
//! instruction declares the flags it takes; anything else is an error naming the flag.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--x`, `--x=true`, `--x=false`.
    Bool,
    /// `--x=value`, at most once.
    String,
    /// `--x=value`, repeatable.
    Strings,
}

/// The flags an instruction accepts, and the values found on its line.
#[derive(Debug, Default)]
pub struct Flags {
    declared: BTreeMap<&'static str, FlagKind>,
    values: BTreeMap<String, Vec<String>>,
}

/// A flag problem, and the flag word it is about (to point at it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError {
    pub message: String,
    pub flag: String,
}

impl Flags {
    pub fn new(declared: &[(&'static str, FlagKind)]) -> Flags {
        Flags {
            declared: declared.iter().copied().collect(),
            values: BTreeMap::new(),
        }
    }

    /// Checks and records `words` (the flags as the parser split them).
    pub fn parse(&mut self, words: &[String]) -> Result<(), FlagError> {
        for word in words {
            if word == "--" {
                return Ok(());
            }
            let err = |message: String| FlagError {
                message,
                flag: word.clone(),
            };
            let Some(body) = word.strip_prefix("--") else {
                return Err(err(format!("arg should start with -- : {word}")));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let flag_name = format!("--{name}");
            let Some(kind) = self.declared.get(name).copied() else {
                let known: Vec<&str> = self.declared.keys().copied().collect();
                let mut message = format!("unknown flag: {flag_name}");
                if let Some(s) = suggest(name, &known) {
                    message.push_str(&format!(" (did you mean {s}?)"));
                }
                return Err(err(message));
            };
            if kind != FlagKind::Strings && self.values.contains_key(name) {
                return Err(err(format!("duplicate flag specified: {flag_name}")));
            }
            let value = match kind {
                FlagKind::Bool => match value {
                    Some("") => return Err(err(format!("missing a value on flag: {flag_name}"))),
                    None => "true".to_string(),
                    Some(v) => match v.to_ascii_lowercase().as_str() {
                        "true" => "true".to_string(),
                        "false" => "false".to_string(),
                        _ => {
                            return Err(err(format!(
                                "expecting boolean value for flag {flag_name}, not: {v}"
                            )))
                        }
                    },
                },
                FlagKind::String | FlagKind::Strings => match value {
                    Some(v) => v.to_string(),
                    None => return Err(err(format!("missing a value on flag: {flag_name}"))),
                },
            };
            self.values.entry(name.to_string()).or_default().push(value);
        }
        Ok(())
    }

    pub fn is_used(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// A string flag's value, if given.
    pub fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.last()).cloned()
    }

    /// A repeatable flag's values, in order.
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    /// A bool flag's value, if given.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(|v| v == "true")
    }
}

/// The closest candidate within an edit distance of 2 (BuildKit's `suggest.Search`).
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (levenshtein(&word, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_follow_bflags_rules() {
        let decl = [
            ("from", FlagKind::String),
            ("link", FlagKind::Bool),
            ("exclude", FlagKind::Strings),
        ];
        let mut f = Flags::new(&decl);
        f.parse(&words(&[
            "--from=a",
            "--link",
            "--exclude=x",
            "--exclude=y",
        ]))
        .unwrap();
        assert_eq!(f.string("from").as_deref(), Some("a"));
        assert_eq!(f.bool("link"), Some(true));
        assert_eq!(f.strings("exclude"), vec!["x", "y"]);

        let mut f = Flags::new(&decl);
        let e = f.parse(&words(&["--form=a"])).unwrap_err();
        assert_eq!(e.message, "unknown flag: --form (did you mean from?)");
        let mut f = Flags::new(&decl);
        let e = f.parse(&words(&["--from=a", "--from=b"])).unwrap_err();
        assert_eq!(e.message, "duplicate flag specified: --from");
        let mut f = Flags::new(&decl);
        let e = f.parse(&words(&["--from"])).unwrap_err();
        assert_eq!(e.message, "missing a value on flag: --from");
        let mut f = Flags::new(&decl);
        let e = f.parse(&words(&["--link=maybe"])).unwrap_err();
        assert_eq!(
            e.message,
            "expecting boolean value for flag --link, not: maybe"
        );
        let mut f = Flags::new(&decl);
        let e = f.parse(&words(&["--link="])).unwrap_err();
        assert_eq!(e.message, "missing a value on flag: --link");
    }
}
