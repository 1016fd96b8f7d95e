//! OCI wire-level vocabulary shared by the registry, store and build: validated digests, image
//! references, platforms, media types and hashing readers/writers.

pub mod digest;
pub mod reference;

pub use digest::{DiffId, Digest, DigestError, DigestingReader, DigestingWriter};
pub use reference::{Reference, ReferenceError};
