//! The variables one stage sees while it is dispatched: the base image's env, ENV and valued
//! ARGs in order, and what RUN gets of them.

use std::collections::{BTreeMap, BTreeSet};

use crate::dockerfile::shell::Lexer;
use crate::dockerfile::{Command, Instruction};

use super::error::GraphError;
use super::expand_with;
use super::plan::Plan;

/// ARGs BuildKit lets through to RUN without declaration (and keeps out of history).
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The variables one stage sees while it is dispatched.
#[derive(Debug, Clone)]
pub struct StageScope {
    escape: char,
    /// Env and valued ARGs in order; a redefined name moves to the end.
    vars: Vec<(String, String)>,
    /// ARGs declared in this stage (or inherited from the parent stage), with values.
    args: Vec<(String, Option<String>)>,
    /// The names this stage's own ARG instructions declared, in order, repeats included: what
    /// BuildKit lists before a RUN in its history.
    declared: Vec<String>,
    globals: Vec<(String, Option<String>)>,
    auto: Vec<(String, String)>,
    build_args: BTreeMap<String, String>,
}

impl StageScope {
    /// `image_env` is the base's `Env` (`K=V`); `inherited_args` the parent stage's ARGs.
    pub fn new(
        plan: &Plan,
        image_env: &[String],
        inherited_args: &[(String, Option<String>)],
    ) -> StageScope {
        let mut vars: Vec<(String, String)> = image_env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect();
        for (k, v) in inherited_args {
            if let Some(v) = v {
                vars.retain(|(n, _)| n != k);
                vars.push((k.clone(), v.clone()));
            }
        }
        StageScope {
            escape: plan.escape,
            vars,
            args: inherited_args.to_vec(),
            declared: Vec::new(),
            globals: plan.global_args.clone(),
            auto: plan.auto_args.clone(),
            build_args: plan.build_args.clone(),
        }
    }

    pub fn args(&self) -> &[(String, Option<String>)] {
        &self.args
    }

    pub fn expansion_env(&self) -> &[(String, String)] {
        &self.vars
    }

    /// Expands the instruction's expandable fields against the current scope.
    pub fn expand(&self, instr: &Instruction) -> Result<Instruction, GraphError> {
        let lexer = Lexer::new(self.escape);
        let env = self.vars.clone();
        let mut expander = |w: &str| {
            lexer
                .process_word(w, &env)
                .map(|p| p.result)
                .map_err(|e| e.message)
        };
        instr
            .expand(&mut expander)
            .map_err(|e| GraphError::Expand(e).at(instr))
    }

    fn set(&mut self, key: &str, value: &str) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_string(), value.to_string()));
    }

    /// Advances over ARG and ENV (already expanded for ENV; ARG defaults are expanded here,
    /// only when no build arg gives the value).
    pub fn apply(&mut self, instr: &Instruction) -> Result<(), GraphError> {
        match &instr.command {
            Command::Env { env } => {
                for kv in env {
                    self.set(&kv.key, &kv.value);
                }
            }
            Command::Arg { args } => {
                for a in args {
                    let value = if let Some(v) = self.build_args.get(&a.key) {
                        Some(v.clone())
                    } else if let Some(d) = &a.default {
                        Some(
                            expand_with(self.escape, d, &self.vars)
                                .map_err(|e| GraphError::Expand(e).at(instr))?,
                        )
                    } else if let Some((_, v)) = self.auto.iter().find(|(k, _)| *k == a.key) {
                        Some(v.clone())
                    } else {
                        self.globals
                            .iter()
                            .find(|(k, _)| *k == a.key)
                            .and_then(|(_, v)| v.clone())
                    };
                    if let Some(v) = &value {
                        self.set(&a.key, v);
                    }
                    self.args.retain(|(k, _)| k != &a.key);
                    self.args.push((a.key.clone(), value));
                    self.declared.push(a.key.clone());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The environment RUN sees: image env, ENVs and valued ARGs, plus undeclared proxy args.
    pub fn run_env(&self) -> Vec<String> {
        let mut env: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for name in PROXY_ARGS {
            if let Some(v) = self.build_args.get(*name) {
                if !self.vars.iter().any(|(k, _)| k == name) {
                    env.push(format!("{name}={v}"));
                }
            }
        }
        env
    }

    /// The `K=V` pairs BuildKit (Moby 20.10) prefixes RUN's history with (`|2 A=1 B= …`): every
    /// ARG this stage declared, in order and repeats included (not its parent stage's), each with
    /// its current value in the environment (an ENV of the same name wins) or empty.
    pub fn run_arg_pairs(&self) -> Vec<(String, String)> {
        self.declared
            .iter()
            .map(|k| {
                let v = self
                    .vars
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone());
                (k.clone(), v.unwrap_or_default())
            })
            .collect()
    }

    /// Build args that no ARG in `used` consumed.
    pub fn unused_build_args(
        build_args: &BTreeMap<String, String>,
        used: &BTreeSet<String>,
    ) -> Vec<String> {
        build_args
            .keys()
            .filter(|k| !used.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::{plan, Base, PlanOptions};
    use super::*;
    use crate::diag::SourceFile;
    use crate::dockerfile::parse_dockerfile;
    use crate::dockerfile::Dockerfile;
    use crate::oci::Platform;

    fn plan_of(
        text: &str,
        args: &[(&str, &str)],
        target: Option<&str>,
    ) -> (Dockerfile, Result<Plan, GraphError>) {
        let df = parse_dockerfile(&SourceFile::new("Dockerfile", text)).unwrap();
        let build_args: BTreeMap<String, String> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let p = Platform::parse("linux/amd64").unwrap();
        let plan = plan(
            &df,
            &PlanOptions {
                build_args: &build_args,
                target,
                target_platform: &p,
                build_platform: &p,
                named_contexts: &BTreeMap::new(),
            },
        );
        (df, plan)
    }

    #[test]
    fn global_args_in_from_and_target_pruning() {
        let text = "ARG BASE=busybox\nARG TAG=1\nFROM ${BASE}:${TAG} AS a\nFROM a AS b\nFROM scratch AS c\nCOPY --from=a / /\n";
        let (_, plan) = plan_of(text, &[("TAG", "2")], Some("c"));
        let plan = plan.unwrap();
        assert_eq!(plan.stages[0].base, Base::Image("busybox:2".into()));
        assert_eq!(plan.stages[1].base, Base::Stage(0));
        assert_eq!(plan.stages[2].base, Base::Scratch);
        assert_eq!(plan.order, vec![0, 2], "b is not needed for c");
        let (_, plan) = plan_of(text, &[], Some("nope"));
        assert!(plan
            .unwrap_err()
            .to_string()
            .contains("target stage \"nope\" could not be found"));
        let (_, plan) = plan_of("FROM busybox:${TARGETARCH}\n", &[], None);
        assert_eq!(
            plan.unwrap().stages[0].base,
            Base::Image("busybox:amd64".into())
        );
    }

    #[test]
    fn stage_scope_follows_buildkit() {
        let text = "ARG G=global\nFROM scratch\nARG G\nARG L=${G}-local\nENV E=$L\nARG TARGETARCH\nARG UNSET\n";
        let (df, plan) = plan_of(text, &[("HTTP_PROXY", "http://p")], None);
        let plan = plan.unwrap();
        let mut scope = StageScope::new(&plan, &["PATH=/bin".to_string()], &[]);
        for i in &df.stages[0].instructions {
            let e = scope.expand(i).unwrap();
            scope.apply(&e).unwrap();
        }
        let env = scope.run_env();
        assert!(env.contains(&"G=global".to_string()), "{env:?}");
        assert!(env.contains(&"L=global-local".to_string()));
        assert!(env.contains(&"E=global-local".to_string()));
        assert!(env.contains(&"TARGETARCH=amd64".to_string()));
        assert!(env.contains(&"HTTP_PROXY=http://p".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("UNSET")));
        // Global args are invisible until re-declared.
        let (df, plan) = plan_of("ARG G=x\nFROM scratch\nENV V=${G}\n", &[], None);
        let plan = plan.unwrap();
        let scope = StageScope::new(&plan, &[], &[]);
        let e = scope.expand(&df.stages[0].instructions[0]).unwrap();
        let Command::Env { env } = e.command else {
            panic!()
        };
        assert_eq!(env[0].value, "");
    }

    #[test]
    fn run_history_lists_every_arg_of_the_stage_as_moby_20_10_does() {
        // What `docker build` (Moby 20.10) wrote: `RUN |5 A=2 U= G=glob A=2 PATH=… …` for the
        // first stage, `RUN |1 B=3 …` for the stage built on it.
        let text =
            "ARG G=glob\nFROM scratch AS base\nARG A=1\nARG U\nARG G\nENV A=2\nARG A\nARG PATH\n\
                    FROM base\nARG B=3\n";
        let (df, plan) = plan_of(text, &[], None);
        let plan = plan.unwrap();
        let mut base = StageScope::new(&plan, &["PATH=/bin".to_string()], &[]);
        for i in &df.stages[0].instructions {
            let e = base.expand(i).unwrap();
            base.apply(&e).unwrap();
        }
        let pairs = |s: &StageScope| -> Vec<String> {
            s.run_arg_pairs()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        };
        assert_eq!(pairs(&base), ["A=2", "U=", "G=glob", "A=2", "PATH=/bin"]);
        let mut child = StageScope::new(&plan, &["PATH=/bin".to_string()], base.args());
        for i in &df.stages[1].instructions {
            let e = child.expand(i).unwrap();
            child.apply(&e).unwrap();
        }
        assert_eq!(pairs(&child), ["B=3"]);
    }

    #[test]
    fn forward_references_are_errors() {
        let (_, plan) = plan_of(
            "FROM scratch AS a\nCOPY --from=b / /\nFROM scratch AS b\n",
            &[],
            Some("a"),
        );
        assert!(plan.is_err());
    }
}
