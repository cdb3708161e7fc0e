//! openraft type configuration and the node address type.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::kv::{KvCommand, KvError, KvResponse};

/// What a committed command returns: the state machine's answer, or the
/// reason it refused the command (refusals change nothing).
pub type CommandResult = Result<KvResponse, KvError>;

/// A Raft member as stored in the membership config: its transport name
/// (the DNS name in its certificate) and address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerNode {
    /// Node name, as in its certificate.
    pub name: String,
    /// Transport (QUIC) address.
    pub addr: SocketAddr,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of strong namespaces.
    pub StrongTypes:
        D = KvCommand,
        R = CommandResult,
        NodeId = u64,
        Node = PeerNode,
);

/// The committed leader id of [`StrongTypes`] (term and node).
pub type CommittedLeaderId =
    <<StrongTypes as openraft::RaftTypeConfig>::LeaderId as openraft::vote::RaftLeaderId>::Committed;
/// A Raft log id.
pub type LogId = openraft::LogId<CommittedLeaderId>;
/// A Raft vote.
pub type Vote = <StrongTypes as openraft::RaftTypeConfig>::Vote;
/// A Raft log entry.
pub type Entry = <StrongTypes as openraft::RaftTypeConfig>::Entry;
/// Stored membership.
pub type StoredMembership = openraft::StoredMembership<CommittedLeaderId, u64, PeerNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<CommittedLeaderId, u64, PeerNode>;
/// A snapshot with a handle to its chunks in the store
/// ([`crate::store::SnapshotData`]); the bytes stay on disk.
pub type Snapshot = openraft::Snapshot<CommittedLeaderId, u64, PeerNode, crate::store::SnapshotData>;
