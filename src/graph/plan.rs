//! Stages, their bases and dependencies, and the build order for `--target`, as BuildKit's
//! dispatcher resolves them: global ARGs only in FROM lines, `--build-arg` overriding defaults,
//! and the automatic platform ARGs.

use std::collections::{BTreeMap, BTreeSet};

use crate::dockerfile::{Command, Dockerfile};
use crate::oci::Platform;

use super::error::GraphError;
use super::expand_with;

/// What a stage builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Image(String),
    Stage(usize),
    Scratch,
}

#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub index: usize,
    pub base: Base,
    pub platform: Platform,
    /// Stages this one reads from (`FROM`, `COPY --from`, `RUN --mount from=`).
    pub deps: BTreeSet<usize>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub stages: Vec<PlannedStage>,
    /// Stages to build, dependencies first; the target is last.
    pub order: Vec<usize>,
    pub target: usize,
    /// Global ARG values (after build args), for stages that re-declare them.
    pub global_args: Vec<(String, Option<String>)>,
    pub auto_args: Vec<(String, String)>,
    pub build_args: BTreeMap<String, String>,
    pub escape: char,
    pub named_contexts: BTreeMap<String, NamedContext>,
}

impl Plan {
    /// What `--from=<from>` reads: a named context first, then a stage (by name or index),
    /// else an image.
    pub fn resolve_from(&self, df: &Dockerfile, from: &str) -> FromRef {
        match self.named_contexts.get(from) {
            Some(NamedContext::Dir(dir)) => FromRef::Dir(dir.clone()),
            Some(NamedContext::Image(reference)) => FromRef::Image(reference.clone()),
            None => match stage_ref(df, from) {
                Some(i) => FromRef::Stage(i),
                None => FromRef::Image(from.to_string()),
            },
        }
    }
}

pub struct PlanOptions<'a> {
    pub build_args: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub target_platform: &'a Platform,
    pub build_platform: &'a Platform,
    /// `--build-context NAME=…`.
    pub named_contexts: &'a BTreeMap<String, NamedContext>,
}

/// A named build context (`--build-context NAME=…`, compose's `additional_contexts`): it
/// replaces the stage or image that a `FROM`, `COPY --from` or `RUN --mount from=` of that name
/// would use, as BuildKit's named contexts do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, read like the build context (without its `.dockerignore`).
    Dir(std::path::PathBuf),
    /// `docker-image://REF`.
    Image(String),
}

/// What a `--from` (COPY, RUN --mount) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromRef {
    Stage(usize),
    /// A named context's directory.
    Dir(std::path::PathBuf),
    Image(String),
}

fn platform_args(prefix: &str, p: &Platform) -> Vec<(String, String)> {
    vec![
        (format!("{prefix}PLATFORM"), p.to_string()),
        (format!("{prefix}OS"), p.os.clone()),
        (format!("{prefix}ARCH"), p.architecture.clone()),
        (
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ),
    ]
}

/// Resolves stages, their bases and dependencies, and the build order for `--target`.
pub fn plan(df: &Dockerfile, opts: &PlanOptions<'_>) -> Result<Plan, GraphError> {
    let escape = df.escape;
    let mut auto_args = platform_args("TARGET", opts.target_platform);
    auto_args.extend(platform_args("BUILD", opts.build_platform));
    // Global scope: automatic args, then the meta ARGs in order.
    let mut global_env: Vec<(String, String)> = auto_args
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                opts.build_args.get(k).cloned().unwrap_or_else(|| v.clone()),
            )
        })
        .collect();
    let mut global_args = Vec::new();
    for instr in &df.meta_args {
        if let Command::Arg { args } = &instr.command {
            for a in args {
                let value = match (opts.build_args.get(&a.key), &a.default) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(d)) => Some(
                        expand_with(escape, d, &global_env)
                            .map_err(|e| GraphError::Expand(e).at(instr))?,
                    ),
                    (None, None) => None,
                };
                if let Some(v) = &value {
                    global_env.retain(|(k, _)| k != &a.key);
                    global_env.push((a.key.clone(), v.clone()));
                }
                global_args.push((a.key.clone(), value));
            }
        }
    }
    let mut stages: Vec<PlannedStage> = Vec::new();
    for stage in &df.stages {
        let Command::From(from) = &stage.from.command else {
            return Err(GraphError::NoFrom.at(&stage.from));
        };
        let at_from = |e: GraphError| e.at(&stage.from);
        let expand = |word: &str| {
            expand_with(escape, word, &global_env).map_err(|e| at_from(GraphError::Expand(e)))
        };
        let base_name = expand(&from.base)?;
        if base_name.trim().is_empty() {
            return Err(at_from(GraphError::BlankBase(from.base.clone())));
        }
        let platform = match &from.platform {
            Some(p) => Platform::parse(&expand(p)?)
                .map_err(|e| at_from(e.into()))?
                .normalized(),
            None => opts.target_platform.clone(),
        };
        let lower = base_name.to_ascii_lowercase();
        let base = if let Some(named) = opts.named_contexts.get(&base_name) {
            match named {
                NamedContext::Image(reference) => Base::Image(reference.clone()),
                NamedContext::Dir(_) => {
                    return Err(at_from(GraphError::DirAsBase(base_name.clone())))
                }
            }
        } else if let Some(parent) = df.stages[..stage.index]
            .iter()
            .rev()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            Base::Stage(parent.index)
        } else if lower == "scratch" {
            Base::Scratch
        } else {
            Base::Image(base_name)
        };
        let mut deps = BTreeSet::new();
        if let Base::Stage(i) = base {
            deps.insert(i);
        }
        for instr in &stage.instructions {
            let froms: Vec<&str> = match &instr.command {
                Command::Copy(c) => c.from.iter().map(String::as_str).collect(),
                Command::Run(r) => r.mounts.iter().filter_map(|m| m.from.as_deref()).collect(),
                _ => Vec::new(),
            };
            for from in froms {
                if opts.named_contexts.contains_key(from) {
                    continue;
                }
                if let Some(i) = stage_ref(df, from) {
                    if i >= stage.index {
                        return Err(GraphError::ForwardStageRef(from.to_string()).at(instr));
                    }
                    deps.insert(i);
                }
            }
        }
        stages.push(PlannedStage {
            index: stage.index,
            base,
            platform,
            deps,
        });
    }
    let target = match opts.target {
        Some(t) => df
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(t.to_ascii_lowercase().as_str()))
            .map(|s| s.index)
            .ok_or_else(|| GraphError::TargetNotFound(t.to_string()))?,
        None => stages.len().checked_sub(1).ok_or(GraphError::NoStages)?,
    };
    // Only what the target needs, dependencies first (stage indexes already order them).
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if needed.insert(i) {
            todo.extend(stages[i].deps.iter().copied());
        }
    }
    Ok(Plan {
        stages,
        order: needed.into_iter().collect(),
        target,
        global_args,
        auto_args,
        build_args: opts.build_args.clone(),
        escape,
        named_contexts: opts.named_contexts.clone(),
    })
}

/// A `--from` value naming a stage (by name or index); `None` means an image.
pub fn stage_ref(df: &Dockerfile, from: &str) -> Option<usize> {
    let lower = from.to_ascii_lowercase();
    if let Some(s) = df
        .stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        return Some(s.index);
    }
    from.parse::<usize>().ok().filter(|i| *i < df.stages.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use crate::dockerfile::parse_dockerfile;

    fn plan_text(text: &str, target: Option<&str>) -> Result<Plan, GraphError> {
        plan_with(text, target, &BTreeMap::new())
    }

    fn plan_with(
        text: &str,
        target: Option<&str>,
        named_contexts: &BTreeMap<String, NamedContext>,
    ) -> Result<Plan, GraphError> {
        let df = parse_dockerfile(&SourceFile::new("Dockerfile", text)).unwrap();
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let arm64 = Platform::parse("linux/arm64").unwrap();
        plan(
            &df,
            &PlanOptions {
                build_args: &BTreeMap::new(),
                target,
                target_platform: &arm64,
                build_platform: &amd64,
                named_contexts,
            },
        )
    }

    #[test]
    fn edges_come_from_from_copy_from_and_mount_from() {
        let text = "FROM busybox AS tools\n\
                    FROM busybox AS assets\n\
                    FROM scratch AS unused\n\
                    FROM tools AS app\n\
                    COPY --from=assets /a /a\n\
                    RUN --mount=type=bind,from=1,target=/m true\n\
                    COPY --from=alpine:3 /b /b\n";
        let plan = plan_text(text, None).unwrap();
        assert_eq!(plan.target, 3);
        assert_eq!(plan.stages[3].base, Base::Stage(0));
        assert_eq!(plan.stages[3].deps, BTreeSet::from([0, 1]));
        assert_eq!(
            plan.order,
            vec![0, 1, 3],
            "an image --from is no stage edge"
        );
    }

    #[test]
    fn platforms_follow_from_platform_and_the_build_platform_args() {
        let text = "FROM --platform=$BUILDPLATFORM busybox AS build\n\
                    FROM busybox\n\
                    COPY --from=build /x /x\n";
        let plan = plan_text(text, None).unwrap();
        assert_eq!(plan.stages[0].platform.to_string(), "linux/amd64");
        assert_eq!(plan.stages[1].platform.to_string(), "linux/arm64");
        assert!(plan
            .auto_args
            .contains(&("TARGETARCH".to_string(), "arm64".to_string())));
        assert!(plan
            .auto_args
            .contains(&("BUILDARCH".to_string(), "amd64".to_string())));
    }

    #[test]
    fn planning_errors_name_the_instruction() {
        let err = plan_text("ARG EMPTY\nFROM ${EMPTY}\n", None).unwrap_err();
        match &err {
            GraphError::At {
                instruction,
                span,
                source,
            } => {
                assert_eq!(instruction, "FROM ${EMPTY}");
                assert_eq!(span.start_pos.line, 2);
                assert!(matches!(**source, GraphError::BlankBase(_)), "{source:?}");
            }
            other => panic!("{other:?}"),
        }
        let err = plan_text(
            "FROM busybox\nCOPY --from=later / /\nFROM busybox AS later\n",
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("only read from earlier stages"),
            "{err}"
        );
        let err = plan_text("FROM --platform=nope/x/y/z busybox\n", None).unwrap_err();
        assert!(matches!(err, GraphError::At { .. }), "{err:?}");
        let err = plan_text("FROM busybox\n", Some("missing")).unwrap_err();
        assert!(matches!(err, GraphError::TargetNotFound(_)), "{err:?}");
    }

    #[test]
    fn named_contexts_replace_stages_and_images() {
        let named = BTreeMap::from([
            (
                "base".to_string(),
                NamedContext::Image("busybox:1.36".into()),
            ),
            (
                "assets".to_string(),
                NamedContext::Dir("/srv/assets".into()),
            ),
            ("tools".to_string(), NamedContext::Dir("/srv/tools".into())),
        ]);
        let text = "FROM scratch AS tools\n\
                    FROM base\n\
                    COPY --from=assets /a /a\n\
                    COPY --from=tools /t /t\n\
                    RUN --mount=from=assets,target=/m true\n";
        let df = parse_dockerfile(&SourceFile::new("Dockerfile", text)).unwrap();
        let plan = plan_with(text, None, &named).unwrap();
        assert_eq!(plan.stages[1].base, Base::Image("busybox:1.36".into()));
        assert!(
            plan.stages[1].deps.is_empty(),
            "a named context is no stage edge"
        );
        assert_eq!(plan.order, vec![1], "the stage `tools` names is replaced");
        assert_eq!(
            plan.resolve_from(&df, "tools"),
            FromRef::Dir("/srv/tools".into())
        );
        assert_eq!(plan.resolve_from(&df, "0"), FromRef::Stage(0));
        assert_eq!(
            plan.resolve_from(&df, "alpine"),
            FromRef::Image("alpine".into())
        );
        let err = plan_with("FROM assets\n", None, &named).unwrap_err();
        assert!(err.to_string().contains("local directory"), "{err}");
    }
}
