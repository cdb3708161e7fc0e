//! The replicated state machine of a strong namespace: a revisioned
//! key-value store with transactions, leases, locks and a watch history.
//!
//! Pure and deterministic: no I/O, no clock, no randomness. Every input is a
//! [`KvCommand`] taken from the Raft log, applied in log order; time enters only
//! as the `now_ms` carried *inside* commands (stamped by the proposing leader),
//! so every replica computes the same state from the same log.
//!
//! The data model follows etcd's MVCC API: one global `revision` that grows
//! by one per command that changes anything, and per key `create_revision`,
//! `mod_revision`, `version` and the bound `lease`. Locks take the "revision
//! as fencing token" idea: a grant bumps the revision, and the new revision
//! is the token, so tokens strictly increase across all holders of all locks.
//! The etcd sources and the article on fencing tokens are listed in
//! `docs/design/strong.md`, "References".
//!
//! The interface and its interpreter are kept apart (see
//! `docs/design/strong.md`, section "State machine (`kv`)"): `command` holds
//! the plain data types that cross the Raft log and the client API
//! ([`KvCommand`], [`KvResponse`], [`KvError`], transactions, leases, locks,
//! watch events) with the size checks every command passes, and
//! `state_machine` holds [`KvStateMachine`], which applies them. The limits
//! below bound both.

mod command;
pub mod snapshot;
mod state_machine;

pub use command::{
    Compare, CompareOp, CompareTarget, KeyValue, KvCommand, KvError, KvResponse, Lease, LeaseId, LockMode, LockState,
    TxnOp, TxnOpResult, WatchEvent, WatchEventKind,
};
pub use state_machine::{HistoryLimits, KvStateMachine};

/// Keys are at most 4 KiB: the product-wide limit, defined once.
pub use chorus_core::limits::KEY_BYTES_MAX;
/// Largest value, in bytes (the product-wide default, 1 MiB).
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most compares in one transaction.
pub const TXN_COMPARES_MAX: usize = 128;
/// Most operations in one branch of a transaction.
pub const TXN_OPS_MAX: usize = 128;
/// Most bytes of keys and values in one transaction (both branches and the
/// compares): one Raft entry must fit one storage value and one transport
/// frame (16 MiB each) with room to spare.
pub const TXN_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most live leases. Bounds memory and the cost of one expiry sweep.
pub const LEASES_MAX: usize = 100_000;
/// Longest lease TTL: one day. Keeps `now + ttl` far from overflow.
pub const LEASE_TTL_MS_MAX: u64 = 24 * 3600 * 1000;
/// Most holders of one shared lock.
pub const LOCK_HOLDERS_MAX: usize = 1024;
/// Most keys one range read returns.
pub const RANGE_LIMIT_MAX: usize = 10_000;
/// Watch events kept in the history by default (the daemon's
/// `strong_watch_history_events_max`); older ones are compacted away and a
/// watcher asking for them gets [`KvError::Compacted`].
pub const WATCH_HISTORY_MAX: usize = 10_000;
/// Bytes of keys and values the watch history keeps by default (the
/// daemon's `strong_watch_history_bytes_max`): with 1 MiB values the event
/// count alone would let the history grow to 10 GB.
pub const WATCH_HISTORY_BYTES_DEFAULT: usize = 64 * 1024 * 1024;
/// Longest idempotency key (`request_id`) a client may give: the
/// product-wide limit, defined once.
pub use chorus_core::node::IDEMPOTENCY_KEY_BYTES_MAX;
/// Idempotency keys the state machine remembers at once; past it the oldest
/// is forgotten early (its retries then apply again, as after the window).
/// A constant, not a setting: every replica must forget the same keys.
pub const IDEMPOTENCY_KEYS_MAX: usize = 65_536;
/// Bytes of remembered answers (keys and values inside them) kept at once;
/// past it the oldest key is forgotten early. A constant for the same reason.
pub const IDEMPOTENCY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// A remembered answer larger than this keeps its revisions and flags but
/// drops the values inside it ([`KvResponse::Replayed`] says so), so one
/// transaction of large reads cannot fill the table.
pub const IDEMPOTENT_RESPONSE_BYTES_MAX: usize = VALUE_BYTES_MAX + 64 * 1024;
/// Longest idempotency window a leader may stamp: one day.
pub const IDEMPOTENCY_WINDOW_MS_MAX: u64 = 24 * 3600 * 1000;
