//! Chain IDs (OCI image spec, "Layer ChainID"): the identity of a stack of layers.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::oci::{DiffId, Digest};

/// `ChainID(L0) = DiffID(L0)`; `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`,
/// both written as `sha256:<hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChainId(pub Digest);

impl ChainId {
    /// The chain ID of layer `diff_id` applied on top of the stack `parent`.
    pub fn of(parent: Option<&ChainId>, diff_id: &DiffId) -> ChainId {
        match parent {
            None => ChainId(diff_id.0.clone()),
            Some(parent) => ChainId(Digest::of(format!("{parent} {diff_id}").as_bytes())),
        }
    }
}

/// The chain ID of every prefix of `diff_ids` (bottom layer first).
pub fn chain_ids(diff_ids: &[DiffId]) -> Vec<ChainId> {
    let mut out: Vec<ChainId> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = ChainId::of(out.last(), diff_id);
        out.push(next);
    }
    out
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DiffId {
        DiffId(s.parse().expect("test digest"))
    }

    // DiffIDs are sha256("a"), sha256("b"), sha256("c"); the chain IDs were computed independently:
    //   printf 'sha256:<sha256 a> sha256:<sha256 b>' | sha256sum
    //   printf 'sha256:<that> sha256:<sha256 c>' | sha256sum
    const A: &str = "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";
    const B: &str = "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d";
    const C: &str = "sha256:2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6";
    const AB: &str = "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676";
    const ABC: &str = "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106";

    #[test]
    fn chain_ids_match_sha256sum() {
        assert_eq!(d(A).0, Digest::of(b"a"));
        let ids = chain_ids(&[d(A), d(B), d(C)]);
        let got: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(got, [A, AB, ABC]);
        assert_eq!(ChainId::of(None, &d(A)).to_string(), A);
        assert_eq!(ChainId::of(Some(&ids[0]), &d(B)), ids[1]);
        assert!(chain_ids(&[]).is_empty());
    }
}
