//! Layers: tar streams with whiteouts, their compression, and their safe extraction into a
//! directory ([`extract_layer`]).

pub mod extract;
pub mod overlay;
pub mod pargzip;
mod readahead;
pub mod write;

pub use extract::{extract_layer, ExtractOptions, ExtractStats, LayerError, WhiteoutMode};
pub use write::{write_overlay_diff, DiffOptions, DiffStats, LayerInfo, LayerWriter};

/// The one compression type is `oci`'s, next to the media types that name it; re-exported here
/// for the callers that reach it through `layer`.
pub use crate::oci::Compression;
