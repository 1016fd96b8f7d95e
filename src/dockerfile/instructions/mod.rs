//! Typed instructions: one [`Command`] variant per keyword, with validated flags, grouped into
//! build stages (BuildKit's `instructions` package). Values that hold variables stay as written;
//! [`Instruction::expand`] expands exactly the fields BuildKit expands, once the environment is known.

mod convert;
mod convert_exec;
mod convert_files;
pub mod duration;
pub mod flags;
pub mod mount;

use crate::diag::{SourceFile, Span};
use serde::Serialize;

pub use convert::{instruction_from_node, parse_dockerfile};
pub use mount::{Mount, MountType, NetworkMode, SecurityMode, Sharing};

/// A whole Dockerfile: its directives, the ARGs before the first FROM, and its stages.
#[derive(Debug, Clone, Serialize)]
pub struct Dockerfile {
    /// The escape token (`\` unless `# escape=` says otherwise).
    pub escape: char,
    pub directives: Vec<super::Directive>,
    /// ARG instructions before the first FROM (global scope).
    pub meta_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
    /// Parser warnings (empty continuation lines).
    pub warnings: Vec<super::ParseWarning>,
}

/// A build stage: a FROM and the instructions up to the next FROM.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// The position of the stage in the file, from 0 (what `COPY --from=0` refers to).
    pub index: usize,
    /// The `AS` name, lower-cased, if any.
    pub name: Option<String>,
    /// The FROM instruction.
    pub from: Instruction,
    pub instructions: Vec<Instruction>,
}

impl Stage {
    /// The stage's FROM fields.
    pub fn from_cmd(&self) -> &From {
        match &self.from.command {
            Command::From(f) => f,
            // parse_dockerfile only makes stages from FROM instructions.
            _ => unreachable!("a stage always starts with FROM"),
        }
    }

    /// The span from the FROM to the stage's last instruction.
    pub fn span(&self) -> Span {
        let end = self.instructions.last().map_or(self.from.span, |i| i.span);
        Span {
            start: self.from.span.start,
            end: end.end,
            start_pos: self.from.span.start_pos,
            end_pos: end.end_pos,
        }
    }
}

/// One instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instruction {
    /// The keyword as written (its case matters to the ConsistentInstructionCasing check).
    pub keyword: String,
    /// The logical line (continuations joined).
    pub original: String,
    pub span: Span,
    /// Comment lines directly above the instruction.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comments: Vec<String>,
    #[serde(flatten)]
    pub command: Command,
}

/// The instruction, by keyword.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "instruction", rename_all = "UPPERCASE")]
pub enum Command {
    From(From),
    Run(Run),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Shell { shell: Vec<String> },
    Label { labels: Vec<KeyValue> },
    Env { env: Vec<KeyValue> },
    Maintainer { maintainer: String },
    Expose { ports: Vec<String> },
    Add(Add),
    Copy(Copy),
    Volume { volumes: Vec<String>, json: bool },
    User { user: String },
    Workdir { path: String },
    Arg { args: Vec<ArgDef> },
    Onbuild(Onbuild),
    Stopsignal { signal: String },
    Healthcheck(Healthcheck),
}

impl Command {
    /// The keyword in upper case.
    pub fn name(&self) -> &'static str {
        match self {
            Command::From(_) => "FROM",
            Command::Run(_) => "RUN",
            Command::Cmd(_) => "CMD",
            Command::Entrypoint(_) => "ENTRYPOINT",
            Command::Shell { .. } => "SHELL",
            Command::Label { .. } => "LABEL",
            Command::Env { .. } => "ENV",
            Command::Maintainer { .. } => "MAINTAINER",
            Command::Expose { .. } => "EXPOSE",
            Command::Add(_) => "ADD",
            Command::Copy(_) => "COPY",
            Command::Volume { .. } => "VOLUME",
            Command::User { .. } => "USER",
            Command::Workdir { .. } => "WORKDIR",
            Command::Arg { .. } => "ARG",
            Command::Onbuild(_) => "ONBUILD",
            Command::Stopsignal { .. } => "STOPSIGNAL",
            Command::Healthcheck(_) => "HEALTHCHECK",
        }
    }
}

/// `FROM [--platform=P] image [AS name]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct From {
    /// The image reference or stage name, unexpanded.
    pub base: String,
    /// The stage name lower-cased.
    pub name: Option<String>,
    /// The stage name as written.
    pub name_as_written: Option<String>,
    /// The `AS` keyword as written.
    pub as_keyword: Option<String>,
    pub platform: Option<String>,
}

/// RUN/CMD/ENTRYPOINT arguments: exec form (JSON) or shell form (one string run by the shell).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandLine {
    pub args: Vec<String>,
    /// Shell form: prepend the stage's SHELL (`/bin/sh -c`).
    pub shell_form: bool,
    /// Heredoc bodies that follow the line (RUN only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<InlineFile>,
}

/// A heredoc attached to RUN.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InlineFile {
    pub name: String,
    pub data: String,
    /// `<<-`: strip leading tabs.
    pub chomp: bool,
    /// The delimiter was not quoted.
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    #[serde(flatten)]
    pub cmd: CommandLine,
    pub mounts: Vec<Mount>,
    pub network: Option<NetworkMode>,
    pub security: Option<SecurityMode>,
    /// `--device=name[,required]` (CDI device names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

/// `key=value` of ENV and LABEL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Written in the legacy `ENV key value` form.
    pub legacy: bool,
}

/// One name of an ARG line, with its default.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArgDef {
    pub key: String,
    pub default: Option<String>,
}

/// COPY/ADD sources and destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourcesAndDest {
    /// Source paths (or URLs for ADD), unexpanded.
    pub sources: Vec<String>,
    /// Heredoc sources, written as files named after the delimiter.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contents: Vec<SourceContent>,
    pub dest: String,
    /// The arguments were a JSON array.
    pub json: bool,
}

/// A heredoc used as a COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceContent {
    pub path: String,
    /// The body, tabs already stripped for `<<-`.
    pub data: String,
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Copy {
    #[serde(flatten)]
    pub files: SourcesAndDest,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Add {
    #[serde(flatten)]
    pub files: SourcesAndDest,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub keep_git_dir: bool,
    pub checksum: Option<String>,
    /// `--unpack`: `None` means "archives are unpacked unless they come from a URL".
    pub unpack: Option<bool>,
    pub exclude: Vec<String>,
}

/// `ONBUILD <instruction>`: stored as text in the image and run by the child build.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Onbuild {
    /// The trigger text, as stored in the image config's `OnBuild`.
    pub expression: String,
    /// The trigger, parsed (so errors show here, not in a child build).
    pub trigger: Box<Instruction>,
}

/// `HEALTHCHECK`: `test` is `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
/// Durations are nanoseconds; unset ones are 0, as Docker stores them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

/// A word expander (the shell lexer over the stage's environment).
pub type Expander<'a> = dyn FnMut(&str) -> Result<String, String> + 'a;

impl Instruction {
    /// Expands the fields BuildKit expands for this instruction (ENV and LABEL keys and values,
    /// COPY/ADD sources, destination, `--chown`, `--chmod`, ADD's `--checksum`, WORKDIR, USER,
    /// VOLUME, STOPSIGNAL, EXPOSE words, RUN's `--mount` values, FROM's base and `--platform`, ARG
    /// defaults). RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK, MAINTAINER and ONBUILD are left as
    /// they are. EXPOSE words are split again after expansion.
    pub fn expand(&self, expand: &mut Expander) -> Result<Instruction, String> {
        let mut out = self.clone();
        match &mut out.command {
            Command::From(f) => {
                f.base = expand(&f.base)?;
                if let Some(p) = &f.platform {
                    f.platform = Some(expand(p)?);
                }
            }
            Command::Env { env: kvs } | Command::Label { labels: kvs } => {
                for kv in kvs {
                    kv.key = expand(&kv.key)?;
                    kv.value = expand(&kv.value)?;
                }
            }
            Command::Arg { args } => {
                for arg in args {
                    if let Some(d) = &arg.default {
                        arg.default = Some(expand(d)?);
                    }
                }
            }
            Command::Copy(c) => {
                expand_files(&mut c.files, expand)?;
                expand_opt(&mut c.chown, expand)?;
                expand_opt(&mut c.chmod, expand)?;
            }
            Command::Add(a) => {
                expand_files(&mut a.files, expand)?;
                expand_opt(&mut a.chown, expand)?;
                expand_opt(&mut a.chmod, expand)?;
                expand_opt(&mut a.checksum, expand)?;
            }
            Command::Workdir { path } => *path = expand(path)?,
            Command::User { user } => *user = expand(user)?,
            Command::Stopsignal { signal } => *signal = expand(signal)?,
            Command::Volume { volumes, .. } => {
                for v in volumes.iter_mut() {
                    *v = expand(v)?;
                    if v.trim().is_empty() {
                        return Err("VOLUME specified can not be an empty string".into());
                    }
                }
            }
            Command::Expose { ports } => {
                let mut expanded = Vec::new();
                for p in ports.iter() {
                    expanded.extend(expand(p)?.split_whitespace().map(str::to_string));
                }
                *ports = expanded;
            }
            Command::Run(r) => {
                for m in r.mounts.iter_mut() {
                    *m = mount::parse_mount(&m.raw, Some(expand))?;
                }
            }
            Command::Cmd(_)
            | Command::Entrypoint(_)
            | Command::Shell { .. }
            | Command::Maintainer { .. }
            | Command::Onbuild(_)
            | Command::Healthcheck(_) => {}
        }
        Ok(out)
    }

    /// The words this instruction would expand (for checks that look for variables).
    pub fn expandable_words(&self) -> Vec<String> {
        let mut words = Vec::new();
        let mut collect = |w: &str| {
            words.push(w.to_string());
            Ok(w.to_string())
        };
        // Collecting never fails.
        let _ = self.expand(&mut collect);
        words
    }
}

fn expand_opt(value: &mut Option<String>, expand: &mut Expander) -> Result<(), String> {
    if let Some(v) = value {
        *v = expand(v)?;
    }
    Ok(())
}

fn expand_files(files: &mut SourcesAndDest, expand: &mut Expander) -> Result<(), String> {
    for content in files.contents.iter_mut().filter(|c| c.expand) {
        content.data = expand(&content.data)?;
    }
    for s in files.sources.iter_mut() {
        *s = expand(s)?;
    }
    files.dest = expand(&files.dest)?;
    Ok(())
}

/// The span of `needle` inside an instruction's source text, or the instruction's first line.
pub(crate) fn locate(source: &SourceFile, span: Span, needle: &str) -> Span {
    let text = source.slice(&span);
    match (!needle.is_empty()).then(|| text.find(needle)).flatten() {
        Some(i) => source.span(span.start + i, span.start + i + needle.len()),
        None => {
            let first_line_end = text.find('\n').map_or(span.end, |i| span.start + i);
            source.span(span.start, first_line_end.max(span.start))
        }
    }
}
