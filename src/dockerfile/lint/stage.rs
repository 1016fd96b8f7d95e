//! Checks on stages and keywords that BuildKit runs while parsing instructions
//! (`instructions/parse.go`) and right after (`validateStageNames`, `validateCommandCasing`).

use super::{rules, Linter};
use crate::dockerfile::{Command, Dockerfile, Instruction};
use std::collections::HashSet;

/// StageNameCasing, FromAsCasing (on FROM) and MaintainerDeprecated, in file order.
pub(super) fn check_parse_time(linter: &mut Linter, df: &Dockerfile) {
    for stage in &df.stages {
        let from = stage.from_cmd();
        if let (Some(name), Some(as_kw)) = (&from.name_as_written, &from.as_keyword) {
            if *name != name.to_lowercase() {
                linter.report(
                    &rules::STAGE_NAME_CASING,
                    stage.from.span,
                    rules::stage_name_casing(name),
                );
            }
            let kw = &stage.from.keyword;
            let matches = if *kw == kw.to_lowercase() {
                *as_kw == as_kw.to_lowercase()
            } else if *kw == kw.to_uppercase() {
                *as_kw == as_kw.to_uppercase()
            } else {
                // Mixed-case FROM is ConsistentInstructionCasing's business.
                true
            };
            if !matches {
                linter.report(
                    &rules::FROM_AS_CASING,
                    stage.from.span,
                    rules::from_as_casing(kw, as_kw),
                );
            }
        }
        for ins in &stage.instructions {
            if matches!(ins.command, Command::Maintainer { .. }) {
                linter.report(
                    &rules::MAINTAINER_DEPRECATED,
                    ins.span,
                    rules::maintainer_deprecated(),
                );
            }
        }
    }
}

/// ReservedStageName and DuplicateStageName.
pub(super) fn check_stage_names(linter: &mut Linter, df: &Dockerfile) {
    let mut seen = HashSet::new();
    for stage in &df.stages {
        let Some(name) = &stage.name else { continue };
        if name == "context" || name == "scratch" {
            linter.report(
                &rules::RESERVED_STAGE_NAME,
                stage.from.span,
                rules::reserved_stage_name(name),
            );
        }
        if !seen.insert(name.as_str()) {
            linter.report(
                &rules::DUPLICATE_STAGE_NAME,
                stage.from.span,
                rules::duplicate_stage_name(name),
            );
        }
    }
}

/// ConsistentInstructionCasing: every keyword in a stage (FROM included, global ARGs not) against
/// the majority casing of the self-consistent ones (a tie counts as uppercase).
pub(super) fn check_instruction_casing(linter: &mut Linter, df: &Dockerfile) {
    let all = || {
        df.stages
            .iter()
            .flat_map(|s| std::iter::once(&s.from).chain(s.instructions.iter()))
    };
    let (mut lower, mut upper) = (0usize, 0usize);
    for ins in all() {
        let kw = &ins.keyword;
        if *kw == kw.to_lowercase() {
            lower += 1;
        } else if *kw == kw.to_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for ins in all() {
        check_case(linter, ins, majority_lower);
    }
}

fn check_case(linter: &mut Linter, ins: &Instruction, majority_lower: bool) {
    let kw = &ins.keyword;
    let casing = if majority_lower && kw.to_lowercase() != *kw {
        "lowercase"
    } else if !majority_lower && kw.to_uppercase() != *kw {
        "uppercase"
    } else {
        return;
    };
    linter.report(
        &rules::CONSISTENT_INSTRUCTION_CASING,
        ins.span,
        rules::consistent_instruction_casing(kw, casing),
    );
}
