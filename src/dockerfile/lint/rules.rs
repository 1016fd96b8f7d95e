//! The rule registry: names, descriptions and URLs as in BuildKit's `linter/ruleset.go`, and the
//! message of each (its `Format` function).

use serde::Serialize;

/// A build check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    pub url: &'static str,
    /// Runs only when enabled with `# check=experimental=<name>|all`.
    pub experimental: bool,
}

macro_rules! rule {
    ($id:ident, $name:literal, $desc:literal, $slug:literal) => {
        rule!($id, $name, $desc, $slug, false);
    };
    ($id:ident, $name:literal, $desc:literal, $slug:literal, $exp:literal) => {
        pub const $id: Rule = Rule {
            name: $name,
            description: $desc,
            url: concat!("https://docs.docker.com/go/dockerfile/rule/", $slug, "/"),
            experimental: $exp,
        };
    };
}

rule!(
    STAGE_NAME_CASING,
    "StageNameCasing",
    "Stage names should be lowercase",
    "stage-name-casing"
);
rule!(
    FROM_AS_CASING,
    "FromAsCasing",
    "The 'as' keyword should match the case of the 'from' keyword",
    "from-as-casing"
);
rule!(
    NO_EMPTY_CONTINUATION,
    "NoEmptyContinuation",
    "Empty continuation lines will become errors in a future release",
    "no-empty-continuation"
);
rule!(
    CONSISTENT_INSTRUCTION_CASING,
    "ConsistentInstructionCasing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)",
    "consistent-instruction-casing"
);
rule!(
    DUPLICATE_STAGE_NAME,
    "DuplicateStageName",
    "Stage names should be unique",
    "duplicate-stage-name"
);
rule!(
    RESERVED_STAGE_NAME,
    "ReservedStageName",
    "Reserved words should not be used as stage names",
    "reserved-stage-name"
);
rule!(JSON_ARGS_RECOMMENDED, "JSONArgsRecommended", "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals", "json-args-recommended");
rule!(
    MAINTAINER_DEPRECATED,
    "MaintainerDeprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
    "maintainer-deprecated"
);
rule!(
    UNDEFINED_ARG_IN_FROM,
    "UndefinedArgInFrom",
    "FROM command must use declared ARGs",
    "undefined-arg-in-from"
);
rule!(WORKDIR_RELATIVE_PATH, "WorkdirRelativePath", "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes", "workdir-relative-path");
rule!(
    UNDEFINED_VAR,
    "UndefinedVar",
    "Variables should be defined before their use",
    "undefined-var"
);
rule!(
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    "MultipleInstructionsDisallowed",
    "Multiple instructions of the same type should not be used in the same stage",
    "multiple-instructions-disallowed"
);
rule!(
    LEGACY_KEY_VALUE_FORMAT,
    "LegacyKeyValueFormat",
    "Legacy key/value format with whitespace separator should not be used",
    "legacy-key-value-format"
);
rule!(REDUNDANT_TARGET_PLATFORM, "RedundantTargetPlatform", "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior", "redundant-target-platform");
rule!(
    SECRETS_USED_IN_ARG_OR_ENV,
    "SecretsUsedInArgOrEnv",
    "Sensitive data should not be used in the ARG or ENV commands",
    "secrets-used-in-arg-or-env"
);
rule!(
    INVALID_DEFAULT_ARG_IN_FROM,
    "InvalidDefaultArgInFrom",
    "Default value for global ARG results in an empty or invalid base image name",
    "invalid-default-arg-in-from"
);
rule!(
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    "FromPlatformFlagConstDisallowed",
    "FROM --platform flag should not use a constant value",
    "from-platform-flag-const-disallowed"
);
rule!(
    COPY_IGNORED_FILE,
    "CopyIgnoredFile",
    "Attempting to Copy file that is excluded by .dockerignore",
    "copy-ignored-file",
    true
);
rule!(
    EXPOSE_PROTO_CASING,
    "ExposeProtoCasing",
    "Protocol in EXPOSE instruction should be lowercase",
    "expose-proto-casing"
);
rule!(EXPOSE_INVALID_FORMAT, "ExposeInvalidFormat", "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release", "expose-invalid-format");

/// Every rule kiln checks.
pub const RULES: &[&Rule] = &[
    &STAGE_NAME_CASING,
    &FROM_AS_CASING,
    &NO_EMPTY_CONTINUATION,
    &CONSISTENT_INSTRUCTION_CASING,
    &DUPLICATE_STAGE_NAME,
    &RESERVED_STAGE_NAME,
    &JSON_ARGS_RECOMMENDED,
    &MAINTAINER_DEPRECATED,
    &UNDEFINED_ARG_IN_FROM,
    &WORKDIR_RELATIVE_PATH,
    &UNDEFINED_VAR,
    &MULTIPLE_INSTRUCTIONS_DISALLOWED,
    &LEGACY_KEY_VALUE_FORMAT,
    &REDUNDANT_TARGET_PLATFORM,
    &SECRETS_USED_IN_ARG_OR_ENV,
    &INVALID_DEFAULT_ARG_IN_FROM,
    &FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    &COPY_IGNORED_FILE,
    &EXPOSE_PROTO_CASING,
    &EXPOSE_INVALID_FORMAT,
];

/// The rule named `name`.
pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|r| r.name == name)
}

// The messages: BuildKit's `Format` functions.

pub(crate) fn stage_name_casing(stage: &str) -> String {
    format!("Stage name '{stage}' should be lowercase")
}

pub(crate) fn from_as_casing(from: &str, as_kw: &str) -> String {
    format!("'{as_kw}' and '{from}' keywords' casing do not match")
}

pub(crate) fn consistent_instruction_casing(command: &str, casing: &str) -> String {
    format!("Command '{command}' should match the case of the command majority ({casing})")
}

pub(crate) fn duplicate_stage_name(name: &str) -> String {
    format!(
        "Duplicate stage name {}, stage names should be unique",
        go_q(name)
    )
}

pub(crate) fn reserved_stage_name(name: &str) -> String {
    format!(
        "Stage name should not use the same name as reserved stage {}",
        go_q(name)
    )
}

pub(crate) fn json_args_recommended(instruction: &str) -> String {
    format!("JSON arguments recommended for {instruction} to prevent unintended behavior related to OS signals")
}

pub(crate) fn maintainer_deprecated() -> String {
    "Maintainer instruction is deprecated in favor of using label".to_string()
}

pub(crate) fn undefined_arg_in_from(arg: &str, suggestion: Option<&str>) -> String {
    let mut out = format!("FROM argument '{arg}' is not declared");
    if let Some(s) = suggestion {
        out.push_str(&format!(" (did you mean {s}?)"));
    }
    out
}

pub(crate) fn workdir_relative_path(workdir: &str) -> String {
    format!(
        "Relative workdir {} can have unexpected results if the base image changes",
        go_q(workdir)
    )
}

pub(crate) fn undefined_var(var: &str, suggestion: Option<&str>) -> String {
    let mut out = format!("Usage of undefined variable '${var}'");
    if let Some(s) = suggestion {
        out.push_str(&format!(" (did you mean ${s}?)"));
    }
    out
}

pub(crate) fn multiple_instructions_disallowed(instruction: &str) -> String {
    format!("Multiple {instruction} instructions should not be used in the same stage because only the last one will be used")
}

pub(crate) fn legacy_key_value_format(cmd: &str) -> String {
    format!("\"{cmd} key=value\" should be used instead of legacy \"{cmd} key value\" format")
}

pub(crate) fn redundant_target_platform(platform_var: &str) -> String {
    format!("Setting platform to predefined {platform_var} in FROM is redundant as this is the default behavior")
}

pub(crate) fn secrets_used_in_arg_or_env(instruction: &str, key: &str) -> String {
    format!(
        "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
        go_q(key)
    )
}

pub(crate) fn invalid_default_arg_in_from(base: &str) -> String {
    format!("Default value for ARG {base} results in empty or invalid base image name")
}

pub(crate) fn from_platform_flag_const_disallowed(platform: &str) -> String {
    format!(
        "FROM --platform flag should not use constant value {}",
        go_q(platform)
    )
}

pub(crate) fn copy_ignored_file(cmd: &str, file: &str) -> String {
    format!(
        "Attempting to {cmd} file {} that is excluded by .dockerignore",
        go_q(file)
    )
}

pub(crate) fn expose_proto_casing(port: &str) -> String {
    format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase")
}

pub(crate) fn expose_invalid_format(port: &str) -> String {
    format!(
        "EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"
    )
}

/// Go's `%q`.
fn go_q(s: &str) -> String {
    crate::dockerfile::go_quote(s)
}
