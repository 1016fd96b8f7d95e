//! COPY and ADD: sources (heredocs included), destination and their flags.

use super::convert::Ctx;
use super::flags::FlagKind;
use super::{Add, Command, Copy, SourceContent, SourcesAndDest};
use crate::dockerfile::ast::chomp_heredoc_content;
use crate::dockerfile::error::ParseError;
use crate::dockerfile::parser::parse_heredoc;

/// Splits the arguments into sources (heredocs resolved to their bodies) and the destination.
fn sources_and_dest(ctx: &Ctx, name: &str) -> Result<SourcesAndDest, ParseError> {
    let args = ctx.args();
    if args.len() < 2 {
        return Err(ctx.error(format!(
            "{name} requires at least two arguments, but only one was provided. Destination could not be determined"
        )));
    }
    let (dest, srcs) = args.split_last().expect("at least two arguments");
    let heredoc_word = |w: &str| {
        if ctx.node.json {
            Ok(None)
        } else {
            parse_heredoc(w).map_err(|m| ctx.error_at(m, w))
        }
    };
    if heredoc_word(dest)?.is_some() {
        return Err(ctx.error_at(
            format!("{name} cannot accept a heredoc as a destination"),
            dest,
        ));
    }
    let mut sources = Vec::new();
    let mut contents = Vec::new();
    for src in srcs {
        match heredoc_word(src)? {
            Some(h) => {
                let body = ctx
                    .node
                    .heredocs
                    .iter()
                    .find(|b| b.name == h.name)
                    .map(|b| b.content.clone())
                    .unwrap_or_default();
                contents.push(SourceContent {
                    data: if h.chomp {
                        chomp_heredoc_content(&body)
                    } else {
                        body
                    },
                    path: h.name,
                    expand: h.expand,
                });
            }
            None => sources.push(src.clone()),
        }
    }
    Ok(SourcesAndDest {
        sources,
        contents,
        dest: dest.clone(),
        json: ctx.node.json,
    })
}

/// `--chmod`: octal up to 07777, or symbolic (`u+x,g-w`, `a=rX`).
pub fn validate_chmod(value: &str) -> Result<(), String> {
    let error = || {
        format!(
            "invalid chmod parameter: '{value}'. it should be octal string and between 0 and 07777"
        )
    };
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
        return match u32::from_str_radix(value, 8) {
            Ok(n) if n <= 0o7777 => Ok(()),
            _ => Err(error()),
        };
    }
    for clause in value.split(',') {
        let ops = clause.trim_start_matches(['u', 'g', 'o', 'a']);
        if ops.is_empty() {
            return Err(error());
        }
        let mut chars = ops.chars().peekable();
        while let Some(op) = chars.next() {
            if !matches!(op, '+' | '-' | '=') {
                return Err(error());
            }
            while let Some(&c) = chars.peek() {
                if matches!(c, 'r' | 'w' | 'x' | 'X' | 's' | 't' | 'u' | 'g' | 'o') {
                    chars.next();
                } else {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn checked_chmod(ctx: &Ctx, chmod: Option<String>) -> Result<Option<String>, ParseError> {
    if let Some(c) = &chmod {
        // A value with variables is checked when it is expanded.
        if !c.contains('$') {
            validate_chmod(c).map_err(|m| ctx.error_at(m, c))?;
        }
    }
    Ok(chmod)
}

pub(super) fn parse_copy(ctx: &Ctx) -> Result<Command, ParseError> {
    let flags = ctx.flags(&[
        ("chown", FlagKind::String),
        ("from", FlagKind::String),
        ("chmod", FlagKind::String),
        ("link", FlagKind::Bool),
        ("parents", FlagKind::Bool),
        ("exclude", FlagKind::Strings),
    ])?;
    let files = sources_and_dest(ctx, "COPY")?;
    let from = flags.string("from");
    if let Some(f) = &from {
        if f.contains('$') {
            return Err(ctx.error_at(
                "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                f,
            ));
        }
        if f.is_empty() {
            return Err(ctx.error_at("--from cannot be empty", "--from"));
        }
    }
    Ok(Command::Copy(Copy {
        files,
        from,
        chown: flags.string("chown"),
        chmod: checked_chmod(ctx, flags.string("chmod"))?,
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        exclude: flags.strings("exclude"),
    }))
}

pub(super) fn parse_add(ctx: &Ctx) -> Result<Command, ParseError> {
    let flags = ctx.flags(&[
        ("chown", FlagKind::String),
        ("chmod", FlagKind::String),
        ("link", FlagKind::Bool),
        ("keep-git-dir", FlagKind::Bool),
        ("checksum", FlagKind::String),
        ("unpack", FlagKind::Bool),
        ("exclude", FlagKind::Strings),
    ])?;
    let files = sources_and_dest(ctx, "ADD")?;
    Ok(Command::Add(Add {
        files,
        chown: flags.string("chown"),
        chmod: checked_chmod(ctx, flags.string("chmod"))?,
        link: flags.bool("link").unwrap_or(false),
        keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
        checksum: flags.string("checksum"),
        unpack: flags.bool("unpack"),
        exclude: flags.strings("exclude"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_forms() {
        for ok in [
            "0755", "755", "7777", "0", "u+x", "a=rX", "u+x,g-w", "go-rwx", "+x", "u=g",
        ] {
            assert!(validate_chmod(ok).is_ok(), "{ok}");
        }
        for bad in ["64a", "10000", "", "u", "z+x", "u+q", "u+x,"] {
            assert!(validate_chmod(bad).is_err(), "{bad}");
        }
    }
}
