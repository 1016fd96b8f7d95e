//! `--cache-to type=registry`: the cache manifest and its layers pushed to a registry.

use crate::cache::transfer::CacheExport;
use crate::exec::build::Builder;
use crate::oci::Reference;

pub async fn push_cache(
    _builder: &Builder,
    _export: &CacheExport,
    reference: &Reference,
) -> anyhow::Result<()> {
    anyhow::bail!("exporting the cache to a registry ({reference}) needs registry push")
}
