//! OCI wire-level vocabulary shared by the registry, store and build: validated digests, image
//! references, platforms, media types and hashing readers/writers.

pub mod digest;

pub use digest::{DiffId, Digest, DigestError, DigestingReader, DigestingWriter};
