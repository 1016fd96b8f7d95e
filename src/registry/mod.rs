//! The distribution API client: authentication, manifests, blobs, retries and mirrors.

pub mod challenge;
pub mod client;
pub mod config;
pub mod credentials;
pub mod error;
pub mod pull;
pub mod push;
pub mod tap;
mod tasks;

pub use client::{BlobSink, EndpointConfig, FetchedManifest, RegistryClient, RetryPolicy, Scheme};
pub use credentials::{Credential, CredentialSources};
pub use error::RegistryError;
