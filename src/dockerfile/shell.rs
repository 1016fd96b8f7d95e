//! TEMPORARY stand-in until the real lexer lands from the shell-lexer branch.
use std::collections::BTreeSet;
pub trait EnvGetter {
    fn get(&self, key: &str) -> Option<&str>;
}
impl EnvGetter for Vec<(String, String)> {
    fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}
impl EnvGetter for std::collections::BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        std::collections::BTreeMap::get(self, key).map(|v| v.as_str())
    }
}
impl EnvGetter for std::collections::HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        std::collections::HashMap::get(self, key).map(|v| v.as_str())
    }
}
#[derive(Debug, Clone)]
pub struct Lexer {
    pub escape: char,
    pub raw_quotes: bool,
    pub raw_escapes: bool,
    pub skip_process_quotes: bool,
    pub skip_unset_env: bool,
}
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessedWord {
    pub result: String,
    pub words: Vec<String>,
    pub matched: BTreeSet<String>,
    pub unmatched: BTreeSet<String>,
}
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ShellError {
    pub message: String,
}
impl Lexer {
    /// Expands one word (no splitting into words beyond `words`).
    pub fn process_word(
        &self,
        word: &str,
        env: &dyn EnvGetter,
    ) -> Result<ProcessedWord, ShellError> {
        let words = self.process_words(word, env)?;
        Ok(ProcessedWord {
            result: words.join(" "),
            words,
            ..Default::default()
        })
    }

    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }
    pub fn process_words(
        &self,
        word: &str,
        _env: &dyn EnvGetter,
    ) -> Result<Vec<String>, ShellError> {
        Ok(word
            .split_whitespace()
            .map(|w| {
                if self.raw_quotes {
                    w.to_string()
                } else {
                    w.replace(['"', '\''], "")
                }
            })
            .collect())
    }
}
