//! OCI wire-level vocabulary shared by the registry, store and build: validated digests, image
//! references, platforms, media types, descriptors and blob references, and hashing
//! readers/writers; and [`SafeRoot`], resolving paths inside a root filesystem without escaping
//! it, which every module may need.

pub mod blob;
pub mod digest;
mod hashahead;
pub mod io_error;
pub mod manifest;
pub mod media;
pub mod pipe;
pub mod platform;
pub mod reference;
pub mod saferoot;

pub use blob::{BlobRef, LayerBlob};
pub use digest::{DiffId, Digest, DigestError, DigestingReader, DigestingWriter};
pub use hashahead::HashAhead;
pub use io_error::IoError;
pub use manifest::{
    sniff_manifest, ContainerConfig, Descriptor, Healthcheck, History, ImageConfig, ImageIndex,
    ImageManifest, Manifest, ManifestError, ManifestKind, RootFs,
};
pub use media::Compression;
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError};
pub use saferoot::{NewDir, SafeRoot};
