//! The build graph, pure and without I/O: the Dockerfile's stages resolved for one build
//! (`--target` pruning, bases, `--from` edges, the build order), the ARG/ENV scope each
//! instruction is expanded in, and the material each step's cache key is made of.

pub mod error;
pub mod material;
pub mod plan;
pub mod scope;

pub use error::GraphError;
pub use material::{explain_miss, RunInputs, StepMaterial, KEY_SCHEME};
pub use plan::{plan, stage_ref, Base, FromRef, NamedContext, Plan, PlanOptions, PlannedStage};
pub use scope::{StageScope, PROXY_ARGS};

use crate::dockerfile::shell::Lexer;

/// Expands one word as BuildKit's shell lexer does, against `env` (in order, later wins).
fn expand_with(escape: char, word: &str, env: &[(String, String)]) -> Result<String, String> {
    Lexer::new(escape)
        .process_word(word, &env.to_vec())
        .map(|p| p.result)
        .map_err(|e| e.message)
}
