//! The data types of the strong-namespace interface: the [`KvCommand`]s that
//! enter the Raft log, their [`KvResponse`]s and refusals ([`KvError`]), and
//! the values they carry or return (key-values, compares, transaction ops,
//! leases, locks, watch events). They are plain serialisable data with no
//! behaviour beyond [`KvCommand::validate`], so the log format, the forwarding
//! RPCs and the HTTP layer can depend on them without the state machine
//! (`docs/design/strong.md`, section "State machine (`kv`)").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    IDEMPOTENCY_KEY_BYTES_MAX, IDEMPOTENCY_WINDOW_MS_MAX, KEY_BYTES_MAX, LEASE_TTL_MS_MAX, TXN_BYTES_MAX,
    TXN_COMPARES_MAX, TXN_OPS_MAX, VALUE_BYTES_MAX,
};

/// A lease identifier, assigned by the state machine (1, 2, 3, ...).
pub type LeaseId = u64;

/// One stored key with its MVCC metadata, as etcd keeps it (see
/// `docs/design/strong.md`, "References").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the command that created this incarnation of the key.
    pub create_revision: u64,
    /// Revision of the last command that modified the key.
    pub mod_revision: u64,
    /// Number of modifications since creation (1 after creation).
    pub version: u64,
    /// The lease the key is bound to; the key is deleted with the lease.
    pub lease: Option<LeaseId>,
}

/// What a [`Compare`] looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CompareTarget {
    /// The value; an absent key compares as an absent value (only `Equal`
    /// and `NotEqual` to `None` are meaningful then).
    Value(Option<Vec<u8>>),
    /// The version; an absent key has version 0.
    Version(u64),
    /// The create revision; an absent key has 0.
    CreateRevision(u64),
    /// The mod revision; an absent key has 0.
    ModRevision(u64),
}

/// How a [`Compare`] relates the key's current attribute to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// current == target
    Equal,
    /// current != target
    NotEqual,
    /// current < target
    Less,
    /// current > target
    Greater,
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// The relation.
    pub op: CompareOp,
    /// The attribute and the value it is compared with.
    pub target: CompareTarget,
}

/// One operation inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TxnOp {
    /// Sets a key.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Lease to bind the key to.
        lease: Option<LeaseId>,
    },
    /// Deletes a key (absent keys are fine).
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// Reads a key at the transaction's point in the log.
    Get {
        /// Key.
        key: Vec<u8>,
    },
}

/// Result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TxnOpResult {
    /// The put was applied; the previous value, if any.
    Put {
        /// Previous key-value.
        prev: Option<KeyValue>,
    },
    /// The delete was applied; whether the key existed.
    Delete {
        /// Whether a key was removed.
        existed: bool,
    },
    /// The value read.
    Get {
        /// The key-value, if present.
        kv: Option<KeyValue>,
    },
}

/// Lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockMode {
    /// At most one holder, and no shared holders.
    Exclusive,
    /// Any number of shared holders, and no exclusive holder.
    Shared,
}

/// A command in the Raft log. Every mutation of a strong namespace is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KvCommand {
    /// Sets `key` to `value`, optionally bound to a lease.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Lease to bind to (must be live).
        lease: Option<LeaseId>,
    },
    /// Deletes `key`.
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// Sets `key` to `value` if its value is `expected` (`None`: absent).
    CompareAndSwap {
        /// Key.
        key: Vec<u8>,
        /// Expected current value, `None` for "absent".
        expected: Option<Vec<u8>>,
        /// New value.
        value: Vec<u8>,
    },
    /// `if compares then success else failure`, atomically.
    Txn {
        /// All must hold for the success branch.
        compares: Vec<Compare>,
        /// Applied when every compare holds.
        success: Vec<TxnOp>,
        /// Applied otherwise.
        failure: Vec<TxnOp>,
    },
    /// Grants a lease living `ttl_ms` from `now_ms` (the proposer's clock).
    LeaseGrant {
        /// Time to live.
        ttl_ms: u64,
        /// The proposer's time, ms since the Unix epoch.
        now_ms: u64,
    },
    /// Extends a lease to `now_ms + ttl`.
    LeaseKeepAlive {
        /// The lease.
        lease: LeaseId,
        /// The proposer's time.
        now_ms: u64,
    },
    /// Ends a lease now: its keys are deleted and its locks released.
    LeaseRevoke {
        /// The lease.
        lease: LeaseId,
    },
    /// Proposed by the leader: every lease whose deadline is at or before
    /// `now_ms` expires as if revoked.
    ExpireLeases {
        /// The leader's time.
        now_ms: u64,
    },
    /// Proposed by a new leader: every lease gets at least a full TTL from
    /// `now_ms`, so clients can find the new leader before their leases
    /// lapse (as etcd's lessor does on promotion; see `docs/design/strong.md`,
    /// "References").
    RefreshLeases {
        /// The new leader's time.
        now_ms: u64,
    },
    /// Takes lock `name` for `lease` in `mode`, if compatible with the
    /// current holders. Re-acquiring in the same mode returns the token of
    /// the existing grant (retries are idempotent).
    LockAcquire {
        /// Lock name.
        name: Vec<u8>,
        /// Holder's lease.
        lease: LeaseId,
        /// Mode.
        mode: LockMode,
    },
    /// Releases `lease`'s hold on lock `name`.
    LockRelease {
        /// Lock name.
        name: Vec<u8>,
        /// Holder's lease.
        lease: LeaseId,
    },
    /// `command` under the client's idempotency key `request_id`: the first
    /// time it applies and its outcome is remembered until `at_ms +
    /// window_ms`; a retry with the same key inside that window applies
    /// nothing and answers [`KvResponse::Replayed`] with the first outcome
    /// (`docs/design/strong.md`, "Idempotent writes"). The table lives in
    /// the state machine, so the retry may reach another leader.
    Idempotent {
        /// The client's key, 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`] bytes.
        request_id: Vec<u8>,
        /// The leader's time when it proposed the command; 0 when its clock
        /// was not safe, in which case the state machine's own clock is used.
        at_ms: u64,
        /// How long the key is remembered: the leader's `idempotency_window_ms`.
        window_ms: u64,
        /// The write itself (not another `Idempotent`, nor a leader's sweep).
        command: Box<KvCommand>,
    },
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(32)]).into_owned()
}

/// openraft logs requests with `Display`; keys are shown truncated and
/// values never (they may be large or secret).
impl fmt::Display for KvCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvCommand::Put { key, value, lease } => {
                write!(f, "put({}, {} bytes, lease {lease:?})", show(key), value.len())
            }
            KvCommand::Delete { key } => write!(f, "delete({})", show(key)),
            KvCommand::CompareAndSwap { key, value, .. } => write!(f, "cas({}, {} bytes)", show(key), value.len()),
            KvCommand::Txn { compares, success, failure } => {
                write!(f, "txn({} compares, {}/{} ops)", compares.len(), success.len(), failure.len())
            }
            KvCommand::LeaseGrant { ttl_ms, now_ms } => write!(f, "lease_grant(ttl {ttl_ms} ms at {now_ms})"),
            KvCommand::LeaseKeepAlive { lease, now_ms } => write!(f, "lease_keep_alive({lease} at {now_ms})"),
            KvCommand::LeaseRevoke { lease } => write!(f, "lease_revoke({lease})"),
            KvCommand::ExpireLeases { now_ms } => write!(f, "expire_leases(at {now_ms})"),
            KvCommand::RefreshLeases { now_ms } => write!(f, "refresh_leases(at {now_ms})"),
            KvCommand::LockAcquire { name, lease, mode } => {
                write!(f, "lock_acquire({}, lease {lease}, {mode:?})", show(name))
            }
            KvCommand::LockRelease { name, lease } => write!(f, "lock_release({}, lease {lease})", show(name)),
            KvCommand::Idempotent { request_id, command, .. } => {
                write!(f, "idempotent({}, {command})", show(request_id))
            }
        }
    }
}

/// The outcome of applying one [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KvResponse {
    /// A put was applied at `revision`.
    Put {
        /// The store's revision after the command.
        revision: u64,
        /// Previous key-value.
        prev: Option<KeyValue>,
    },
    /// A delete was applied.
    Delete {
        /// The store's revision after the command.
        revision: u64,
        /// Whether the key existed.
        existed: bool,
    },
    /// A compare-and-swap.
    CompareAndSwap {
        /// Whether the swap happened.
        succeeded: bool,
        /// The store's revision after the command.
        revision: u64,
        /// The key's value after the command.
        current: Option<KeyValue>,
    },
    /// A transaction.
    Txn {
        /// Whether the success branch ran.
        succeeded: bool,
        /// The store's revision after the command.
        revision: u64,
        /// One result per op of the branch that ran.
        results: Vec<TxnOpResult>,
    },
    /// A lease was granted or kept alive.
    Lease {
        /// The lease.
        lease: LeaseId,
        /// Its TTL.
        ttl_ms: u64,
        /// Its deadline in the proposer's clock.
        deadline_ms: u64,
    },
    /// A lease was revoked.
    LeaseRevoked {
        /// The store's revision after the command.
        revision: u64,
        /// Keys deleted with it.
        keys_deleted: usize,
    },
    /// Leases expired or refreshed by a leader command.
    LeasesSwept {
        /// Leases that expired.
        expired: Vec<LeaseId>,
    },
    /// The lock was granted (or was already held in that mode).
    LockGranted {
        /// The fencing token: the revision of the grant. Strictly greater
        /// than every token granted before, for any lock.
        fencing_token: u64,
    },
    /// The lock is held in an incompatible mode.
    LockBusy {
        /// Current holders' leases.
        holders: Vec<LeaseId>,
    },
    /// The lock was released (or was not held by that lease).
    LockReleased {
        /// Whether the lease held it.
        was_held: bool,
    },
    /// An entry without a command (leader blank entry, membership change).
    Empty,
    /// A retried [`KvCommand::Idempotent`]: nothing was applied now; `first`
    /// is the answer the command got when it applied.
    Replayed {
        /// The first answer.
        first: Box<KvResponse>,
        /// Whether the values inside `first` were dropped when it was
        /// remembered (it was larger than
        /// [`super::IDEMPOTENT_RESPONSE_BYTES_MAX`]); revisions and flags are kept.
        values_elided: bool,
    },
}

/// Why a command was refused. Refused commands change nothing (except
/// that they occupy a log slot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// A key is empty or larger than [`KEY_BYTES_MAX`].
    #[error("key of {len} bytes is empty or exceeds {max}")]
    BadKey {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A value exceeds [`VALUE_BYTES_MAX`].
    #[error("value of {len} bytes exceeds {max}")]
    ValueTooLarge {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A transaction exceeds [`TXN_COMPARES_MAX`] or [`TXN_OPS_MAX`].
    #[error("transaction too large")]
    TxnTooLarge,
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// A TTL of zero or above [`LEASE_TTL_MS_MAX`].
    #[error("lease ttl {0} ms out of range")]
    BadTtl(u64),
    /// Too many leases or lock holders.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The watch history no longer holds the revision asked for.
    #[error("revision {requested} compacted; oldest available is {oldest}")]
    Compacted {
        /// Requested start revision.
        requested: u64,
        /// Oldest revision still in the history.
        oldest: u64,
    },
    /// The idempotency key is empty or longer than [`IDEMPOTENCY_KEY_BYTES_MAX`],
    /// or the command under it cannot carry one.
    #[error("bad request_id: {0}")]
    BadRequestId(String),
    /// The idempotency key was used for a different command within its
    /// window. Nothing changed.
    #[error("request_id was already used for a different command within the idempotency window")]
    RequestIdReused,
    /// The leader's clock is not safe (further than `max_offset_ms` from
    /// cluster time), so it stamps no lease time. Nothing changed.
    #[error("the leader's clock is unsafe; lease time is not stamped")]
    ClockUnsafe,
}

/// A change event, in revision order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The revision of the command that made the change.
    pub revision: u64,
    /// What happened.
    pub kind: WatchEventKind,
    /// The key.
    pub key: Vec<u8>,
    /// The new value (puts only).
    pub value: Option<Vec<u8>>,
}

/// Kind of a [`WatchEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEventKind {
    /// The key was set.
    Put,
    /// The key was deleted (explicitly or with its lease).
    Delete,
}

/// A live lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Id.
    pub id: LeaseId,
    /// TTL.
    pub ttl_ms: u64,
    /// Expires when a leader's `ExpireLeases{now_ms}` has `now_ms >= deadline_ms`.
    pub deadline_ms: u64,
    /// Keys bound to it.
    pub keys: BTreeSet<Vec<u8>>,
    /// Locks it holds.
    pub locks: BTreeSet<Vec<u8>>,
}

/// The holders of one lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// Mode of the current holders.
    pub mode: LockMode,
    /// Holder lease → fencing token of its grant.
    pub holders: BTreeMap<LeaseId, u64>,
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(KvError::BadKey { len: key.len(), max: KEY_BYTES_MAX });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(KvError::ValueTooLarge { len: value.len(), max: VALUE_BYTES_MAX });
    }
    Ok(())
}

impl KvCommand {
    /// Checks the sizes of everything in the command. Run by the proposer
    /// (to fail early) and again by `apply` (the log is input too).
    pub fn validate(&self) -> Result<(), KvError> {
        match self {
            KvCommand::Put { key, value, .. } | KvCommand::CompareAndSwap { key, value, .. } => {
                check_key(key)?;
                check_value(value)
            }
            KvCommand::Delete { key } => check_key(key),
            KvCommand::Txn { compares, success, failure } => {
                if compares.len() > TXN_COMPARES_MAX || success.len() > TXN_OPS_MAX || failure.len() > TXN_OPS_MAX {
                    return Err(KvError::TxnTooLarge);
                }
                if self.payload_bytes() > TXN_BYTES_MAX {
                    return Err(KvError::TxnTooLarge);
                }
                for compare in compares {
                    check_key(&compare.key)?;
                    if let CompareTarget::Value(Some(value)) = &compare.target {
                        check_value(value)?;
                    }
                }
                for op in success.iter().chain(failure) {
                    match op {
                        TxnOp::Put { key, value, .. } => {
                            check_key(key)?;
                            check_value(value)?;
                        }
                        TxnOp::Delete { key } | TxnOp::Get { key } => check_key(key)?,
                    }
                }
                Ok(())
            }
            KvCommand::LeaseGrant { ttl_ms, .. } => {
                if *ttl_ms == 0 || *ttl_ms > LEASE_TTL_MS_MAX {
                    return Err(KvError::BadTtl(*ttl_ms));
                }
                Ok(())
            }
            KvCommand::LockAcquire { name, .. } | KvCommand::LockRelease { name, .. } => check_key(name),
            KvCommand::LeaseKeepAlive { .. }
            | KvCommand::LeaseRevoke { .. }
            | KvCommand::ExpireLeases { .. }
            | KvCommand::RefreshLeases { .. } => Ok(()),
            KvCommand::Idempotent { request_id, window_ms, command, .. } => {
                if request_id.is_empty() || request_id.len() > IDEMPOTENCY_KEY_BYTES_MAX {
                    return Err(KvError::BadRequestId(format!(
                        "{} bytes; it must have 1 to {IDEMPOTENCY_KEY_BYTES_MAX}",
                        request_id.len()
                    )));
                }
                if *window_ms == 0 || *window_ms > IDEMPOTENCY_WINDOW_MS_MAX {
                    return Err(KvError::BadRequestId(format!(
                        "window of {window_ms} ms; it must be 1 to {IDEMPOTENCY_WINDOW_MS_MAX}"
                    )));
                }
                if matches!(
                    **command,
                    KvCommand::Idempotent { .. } | KvCommand::ExpireLeases { .. } | KvCommand::RefreshLeases { .. }
                ) {
                    return Err(KvError::BadRequestId(format!("{command} cannot carry a request_id")));
                }
                command.validate()
            }
        }
    }

    /// Bytes of keys and values the command carries, plus a fixed overhead
    /// per item: an upper estimate of its encoded size, which bounds Raft
    /// appends in bytes (`network`).
    pub fn payload_bytes(&self) -> usize {
        const ITEM_OVERHEAD_BYTES: usize = 32;
        match self {
            KvCommand::Put { key, value, .. } => key.len() + value.len() + ITEM_OVERHEAD_BYTES,
            KvCommand::CompareAndSwap { key, expected, value } => {
                key.len() + expected.as_ref().map_or(0, Vec::len) + value.len() + ITEM_OVERHEAD_BYTES
            }
            KvCommand::Delete { key } => key.len() + ITEM_OVERHEAD_BYTES,
            KvCommand::Txn { compares, success, failure } => {
                let compares: usize = compares
                    .iter()
                    .map(|c| {
                        let value = match &c.target {
                            CompareTarget::Value(Some(value)) => value.len(),
                            _ => 0,
                        };
                        c.key.len() + value + ITEM_OVERHEAD_BYTES
                    })
                    .sum();
                let ops: usize = success
                    .iter()
                    .chain(failure)
                    .map(|op| match op {
                        TxnOp::Put { key, value, .. } => key.len() + value.len() + ITEM_OVERHEAD_BYTES,
                        TxnOp::Delete { key } | TxnOp::Get { key } => key.len() + ITEM_OVERHEAD_BYTES,
                    })
                    .sum();
                compares + ops + ITEM_OVERHEAD_BYTES
            }
            KvCommand::LockAcquire { name, .. } | KvCommand::LockRelease { name, .. } => {
                name.len() + ITEM_OVERHEAD_BYTES
            }
            KvCommand::Idempotent { request_id, command, .. } => {
                request_id.len() + command.payload_bytes() + ITEM_OVERHEAD_BYTES
            }
            KvCommand::LeaseGrant { .. }
            | KvCommand::LeaseKeepAlive { .. }
            | KvCommand::LeaseRevoke { .. }
            | KvCommand::ExpireLeases { .. }
            | KvCommand::RefreshLeases { .. } => ITEM_OVERHEAD_BYTES,
        }
    }

    /// Whether the command carries lease time (`now_ms`) that the leader
    /// stamps when it proposes it.
    pub fn carries_lease_time(&self) -> bool {
        match self {
            KvCommand::LeaseGrant { .. }
            | KvCommand::LeaseKeepAlive { .. }
            | KvCommand::ExpireLeases { .. }
            | KvCommand::RefreshLeases { .. } => true,
            KvCommand::Idempotent { command, .. } => command.carries_lease_time(),
            _ => false,
        }
    }

    /// Stamps the leader's time into the command: `now_ms` of lease
    /// commands, `at_ms` and `window_ms` of an idempotent one. Time is
    /// stamped only here, on the leader as it proposes, never by the node
    /// that took the client's call (`docs/design/strong.md`, "Lease time").
    /// `now_ms == None`: the leader's clock is unsafe; an idempotent write
    /// then carries 0 (the state machine uses its own clock), and lease
    /// time cannot be stamped at all.
    pub fn stamp(&mut self, now_ms: Option<u64>, window_ms: u64) -> Result<(), KvError> {
        match self {
            KvCommand::LeaseGrant { now_ms: t, .. }
            | KvCommand::LeaseKeepAlive { now_ms: t, .. }
            | KvCommand::ExpireLeases { now_ms: t }
            | KvCommand::RefreshLeases { now_ms: t } => {
                *t = now_ms.ok_or(KvError::ClockUnsafe)?;
                Ok(())
            }
            KvCommand::Idempotent { at_ms, window_ms: w, command, .. } => {
                *at_ms = now_ms.unwrap_or(0);
                *w = window_ms;
                command.stamp(now_ms, window_ms)
            }
            _ => Ok(()),
        }
    }

    /// The command with every stamped time cleared: what identifies it for
    /// idempotency, since a retry is stamped again with a later time.
    pub(crate) fn unstamped(&self) -> KvCommand {
        let mut command = self.clone();
        match &mut command {
            KvCommand::LeaseGrant { now_ms, .. }
            | KvCommand::LeaseKeepAlive { now_ms, .. }
            | KvCommand::ExpireLeases { now_ms }
            | KvCommand::RefreshLeases { now_ms } => *now_ms = 0,
            _ => {}
        }
        command
    }
}
