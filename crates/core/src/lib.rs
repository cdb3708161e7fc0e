//! # chorus-core
//!
//! The replication core of chorus: hybrid logical clocks, causal metadata,
//! the CRDT value types of eventual namespaces, the wire format, and the
//! replication state machine of one node.
//!
//! **Architecture invariant: this crate performs no I/O.** It has no async
//! runtime, opens no sockets or files, never reads the OS clock and owns no
//! global randomness. Time and randomness are handed in, incoming messages
//! are handed in, and outgoing messages and storage writes come out as
//! [`Action`]s (the sans-IO pattern; see `docs/design/replication.md`, "The
//! driver contract" and "References"). That is what lets the simulator run
//! thousands of nodes of *this exact code* in one process, deterministically
//! from a seed.

pub mod causal;
pub mod crdt;
pub mod hlc;
pub mod namespace;
pub mod node;
pub mod persist;
pub mod rng;
pub mod signing;
pub mod types;
pub mod watch;
pub mod wire;

pub use causal::{Dot, SeenSet, VersionVector};
/// The highest tier (tiers are 0–8); one bound for every tier check.
pub use chorus_clock::TIER_MAX;
pub use crdt::{Entry, Op, ReadValue, ValueType};
pub use hlc::{Hlc, HlcError, Timestamp};
#[cfg(feature = "test-knobs")]
pub use node::InjectedBug;
pub use node::{
    Action, Halted, LocalWrite, Member, MemberState, Misbehavior, NamespaceCreated, Node, NodeConfig, NodeStats,
    PersistId, ReadResult, RequestId, WriteError, WriteReceipt, tiers_may_talk,
};
pub use persist::{PersistBatch, RecoveryImage, StoreOp};
pub use rng::Rng;
pub use types::{Key, NodeId, limits};
