//! chorus-strong: strong namespaces replicated by Raft (openraft).
//!
//! - [`kv`]: the replicated state machine (pure): revisioned KV, transactions,
//!   leases, locks with fencing tokens, watch history.
//! - [`store`]: the Raft log and state machine on a chorus `Storage`
//!   (keyspaces `raft.log`, `raft.meta`, `raft.sm`).
//! - [`network`]: Raft RPCs and request forwarding over the chorus QUIC transport.
//! - [`node`]: [`StrongNode`], the client API (write, linearizable query,
//!   membership) and the background tasks (reachability probe, lease expiry).
//! - [`linearizability`]: a Wing–Gong–Lowe checker for recorded histories.
//!
//! See `docs/design/strong.md`.

pub mod error;
pub mod kv;
pub mod linearizability;
pub mod network;
pub mod node;
pub mod store;
pub mod types;

pub use error::{StartError, StrongError};
pub use network::{STRONG_RPC_TAG, is_strong_request};
pub use node::{
    Query, QueryResponse, QueryResult, QuorumStatus, StrongConfig, StrongNode, StrongStatus, SystemClock, WallClock,
};
pub use store::{SnapshotData, SnapshotStatus};
pub use types::{PeerNode, StrongTypes};
