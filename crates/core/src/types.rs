//! Small shared types.

use serde::{Deserialize, Serialize};

/// A node's stable identity on the wire and in every dot and timestamp.
/// The daemon derives it from the node's name (see `NodeId::from_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A stable id from a node name: the first 8 bytes of its BLAKE3 hash.
    /// Collisions among a cluster's names are astronomically unlikely and the
    /// daemon refuses to start a member whose id collides with a known one.
    pub fn from_name(name: &str) -> NodeId {
        let h = blake3::hash(name.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        NodeId(u64::from_le_bytes(b))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Keys are byte strings, at most [`crate::limits::KEY_BYTES_MAX`].
pub type Key = Vec<u8>;

/// Hard limits that hold for every node and every message.
pub mod limits {
    /// Keys are at most 4 KiB (defined once, in chorus-reconcile).
    pub use chorus_reconcile::KEY_BYTES_MAX;
    /// Values default to at most 1 MiB (configurable per node up to this cap).
    pub const VALUE_BYTES_DEFAULT: usize = 1 << 20;
    /// No configuration may raise values above this.
    pub const VALUE_BYTES_CAP: usize = 16 << 20;
    /// Namespace names.
    pub const NAMESPACE_NAME_BYTES_MAX: usize = 128;
    /// A version vector or dot set larger than this on the wire is refused:
    /// it bounds memory per decoded entry.
    pub const CLOCK_ENTRIES_MAX: usize = 65_536;
    /// Siblings an MV register may carry; beyond it the oldest (by HLC) are
    /// dropped on the writing node, never on merge (merge must stay a join).
    pub const SIBLINGS_MAX: usize = 64;
    /// Members of one OR-set key.
    pub const SET_MEMBERS_MAX: usize = 100_000;
    /// An encoded frame, whatever it carries.
    pub const FRAME_BYTES_MAX: usize = 64 << 20;
}
