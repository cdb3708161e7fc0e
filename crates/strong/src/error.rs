//! Errors of the strong-namespace client API.

use serde::{Deserialize, Serialize};

use crate::kv::KvError;
use crate::types::PeerNode;

/// Why a client operation ([`crate::StrongNode::write`], `query`, membership
/// changes) failed. Each variant says whether state may have changed. The
/// type is serialisable because followers forward requests to the leader
/// and relay its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum StrongError {
    /// This node is not the leader and did not forward the request (or the
    /// leader moved while it was in flight). Nothing changed. Retry at
    /// `leader` if known.
    #[error("not the leader; leader is {leader_id:?}")]
    NotLeader {
        /// The leader's id, if known.
        leader_id: Option<u64>,
        /// The leader's address, if known.
        leader: Option<PeerNode>,
    },
    /// Fewer than a majority of voters are reachable from this node, so the
    /// write cannot commit. Nothing changed. HTTP: 503 "no quorum".
    #[error("no quorum: reachable voters {reachable_voters:?} of {voters:?}")]
    NoQuorum {
        /// Voters this node can reach, itself included.
        reachable_voters: Vec<u64>,
        /// All voters.
        voters: Vec<u64>,
    },
    /// No leader was known before the deadline. Nothing changed.
    #[error("no leader elected")]
    NoLeader,
    /// The deadline passed after the request was submitted: the command
    /// may or may not have been (or later be) applied.
    #[error("timed out; outcome unknown")]
    Timeout,
    /// The state machine refused the command; nothing changed.
    #[error("rejected: {0}")]
    Rejected(#[from] KvError),
    /// A membership change was refused; nothing changed.
    #[error("membership: {0}")]
    Membership(String),
    /// The node is shutting down or its Raft core stopped. The outcome of
    /// an in-flight write is unknown.
    #[error("shut down: {0}")]
    Shutdown(String),
    /// A peer answered with something unexpected. The outcome is unknown.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Why [`crate::StrongNode::start`] failed. Nothing is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configuration value is out of range.
    #[error("invalid config: {0}")]
    Config(String),
    /// Loading the log or the snapshot failed.
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}
