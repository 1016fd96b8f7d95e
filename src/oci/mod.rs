//! OCI wire-level vocabulary shared by the registry, store and build: validated digests, image
//! references, platforms, media types and hashing readers/writers.

pub mod digest;
pub mod media;
pub mod platform;
pub mod reference;

pub use digest::{DiffId, Digest, DigestError, DigestingReader, DigestingWriter};
pub use media::Compression;
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError};
