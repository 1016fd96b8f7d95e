//! Word expansion through the lexer's public API: the first byte picks which escape character goes
//! first, the rest is `word\0NAME=value\0NAME=value...`. Both `process_word` and
//! `process_words` run with both escape characters; errors are fine, panics are not.
#![no_main]

use kiln::dockerfile::shell::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = text.split('\0');
    let word = parts.next().unwrap_or("");
    let env: Vec<(String, String)> = parts
        .take(8)
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    let first = if control & 1 == 0 { '\\' } else { '`' };
    for escape in [first, if first == '\\' { '`' } else { '\\' }] {
        let lexer = Lexer::new(escape);
        let _ = lexer.process_word(word, &env);
        let _ = lexer.process_words(word, &env);
    }
});
