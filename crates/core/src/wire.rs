//! Messages between nodes and their binary encoding.
//!
//! Frame layout (all integers little-endian):
//!
//! ```text
//! magic   "CHR"            3 bytes
//! version u8               = WIRE_VERSION
//! length  u32              bytes of body
//! body    postcard(Message) `length` bytes
//! check   [u8; 8]          first 8 bytes of BLAKE3(body)
//! ```
//!
//! postcard encodes integers as varints and lengths as varint u32/u64, so
//! the encoding is the same on every platform; no `usize` is ever encoded.
//! The decoder checks the frame, then the body, then every semantic limit
//! (names, key and value sizes, clock sizes, entry validity), and returns a
//! [`DecodeError`] for anything it does not like. It never panics.
//! Validation runs in pairs, after decoding and before encoding (see
//! `docs/design/replication.md`, "References"): `encode` asserts the message
//! it is given is valid too, so a node cannot emit what peers reject.

use crate::causal::{Dot, SeenSet, VersionVector};
use crate::crdt::{Entry, InvalidEntry, ValueType};
use crate::hlc::Timestamp;
use crate::signing::{Head, KeyProof};
use crate::types::{Key, NodeId, limits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const WIRE_MAGIC: [u8; 3] = *b"CHR";
/// 2: push items and deltas carry origin signatures (`docs/design/signing.md`).
/// 3: a push names the nodes it was already sent to (`Push::covered`).
pub const WIRE_VERSION: u8 = 3;
const HEADER_BYTES: usize = 3 + 1 + 4;
const CHECK_BYTES: usize = 8;

/// Items in one push or entries in one sync delta, whatever the sender's config.
pub const ITEMS_PER_MESSAGE_MAX: usize = 65_536;
/// Namespaces named in one sync message.
pub const NAMESPACES_PER_MESSAGE_MAX: usize = 4096;

/// A message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Eager broadcast of new writes (`docs/design/replication.md`,
    /// "Messages").
    Push(Push),
    /// Anti-entropy, step 1: "here is what I have seen".
    SyncRequest(SyncRequest),
    /// Anti-entropy, step 2: "here is what you lack, and what I have seen".
    SyncReply(SyncReply),
    /// Anti-entropy, step 3: "and here is what you lacked".
    SyncPush(SyncPush),
    /// One step of a range-based reconciliation session, run when seen sets
    /// are equal but fingerprints are not (silent divergence).
    Reconcile(ReconcileStep),
    /// A namespace creation spreading to every reachable node, tier by tier
    /// (a diffusing computation: `docs/design/replication.md`, "Namespace
    /// creation").
    Announce(NamespaceAnnounce),
    /// The answer to an [`Message::Announce`]: which nodes of the sender's
    /// part of the spread hold the namespace durably.
    Confirm(NamespaceConfirm),
}

/// Node ids one announcement or confirmation names at most.
pub const ANNOUNCE_NODES_MAX: usize = 65_536;

/// "Create this namespace, pass it on, and tell me who has it."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceAnnounce {
    /// The node the client asked; with `id` it names the announcement.
    pub origin: NodeId,
    pub id: u64,
    pub namespace: String,
    pub value_type: ValueType,
    /// Nodes that some sender already sent this announcement to: a receiver
    /// does not send it to them again (each of them answers its own sender).
    pub covered: Vec<NodeId>,
    /// How long the receiver may wait for the nodes it passes the
    /// announcement on to before it answers with what it has.
    pub budget_us: u64,
}

/// "These nodes hold the namespace durably" (the sender and the nodes it
/// passed the announcement on to, transitively). Empty: the sender had
/// already answered this announcement to someone else, or refused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceConfirm {
    pub origin: NodeId,
    pub id: u64,
    pub confirmed: Vec<NodeId>,
}

/// A reconciliation message for one namespace. `body` is a
/// `chorus_reconcile::Message`, validated by that crate's decoder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileStep {
    pub namespace: String,
    /// Chosen by the initiator; with the initiator's id it names the session.
    pub session: u64,
    /// Whether the sender initiated the session.
    pub from_initiator: bool,
    pub body: Vec<u8>,
}

/// An order-independent fingerprint of a namespace's live entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFingerprint {
    pub tag_sum: u64,
    pub check_sum: u32,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// Hops this batch has travelled; receivers forward while below the limit.
    pub hops: u8,
    pub items: Vec<PushItem>,
    /// Nodes this batch was already sent to (by its origin and the relays
    /// before this hop, at most [`PUSH_COVERED_MAX`]). A receiver for
    /// which it names every peer it could forward to does not forward
    /// (`docs/design/replication.md`, "Messages").
    pub covered: Vec<NodeId>,
}

/// Node ids one push names as already sent to. A relay adds its own targets
/// while the list is shorter; past it, relays only forward more often.
pub const PUSH_COVERED_MAX: usize = 256;

/// One write: its dot and timestamp, and the key's full state after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushItem {
    pub namespace: String,
    pub value_type: ValueType,
    pub dot: Dot,
    pub ts: Timestamp,
    pub key: Key,
    pub entry: Entry,
    /// The origins' signatures over `entry` (`None` when signing is off).
    pub proof: Option<KeyProof>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSummary {
    pub namespace: String,
    pub value_type: ValueType,
    pub seen: WireSeen,
    pub fingerprint: WireFingerprint,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub summaries: Vec<NamespaceSummary>,
}

/// What the sender holds that the receiver lacked, for one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceDelta {
    pub namespace: String,
    pub value_type: ValueType,
    pub entries: Vec<(Key, Entry)>,
    /// One proof per entry, in order (empty when signing is off).
    pub proofs: Vec<KeyProof>,
    /// Attestations of the greatest dot of each origin `seen` names: they
    /// back its claims (empty when signing is off).
    pub heads: Vec<Head>,
    /// True when `entries` is everything the receiver lacked; only then may
    /// the receiver fold `seen` into its own seen set.
    pub complete: bool,
    /// The sender's seen set when it computed the delta.
    pub seen: WireSeen,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReply {
    pub deltas: Vec<NamespaceDelta>,
    /// Namespaces whose seen set and fingerprint equal the request's: the
    /// fast path, nothing to exchange.
    pub in_sync: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPush {
    pub deltas: Vec<NamespaceDelta>,
}

/// A seen set as it travels: the contiguous prefix and the exceptions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSeen {
    pub contiguous: Vec<(NodeId, u64)>,
    pub exceptions: Vec<(NodeId, Vec<u64>)>,
}

impl From<&SeenSet> for WireSeen {
    fn from(s: &SeenSet) -> Self {
        let (c, e) = s.parts();
        WireSeen {
            contiguous: c.iter().collect(),
            exceptions: e.iter().map(|(n, s)| (*n, s.iter().copied().collect())).collect(),
        }
    }
}

impl WireSeen {
    pub fn to_seen(&self) -> SeenSet {
        let contiguous = VersionVector::from_entries(self.contiguous.iter().copied());
        let mut exceptions: BTreeMap<NodeId, BTreeSet<u64>> = BTreeMap::new();
        for (n, list) in &self.exceptions {
            exceptions.entry(*n).or_default().extend(list.iter().copied().filter(|&c| c > 0));
        }
        SeenSet::from_parts(contiguous, exceptions)
    }

    fn validate(&self) -> Result<(), DecodeError> {
        if self.contiguous.len() > limits::CLOCK_ENTRIES_MAX || self.exceptions.len() > limits::CLOCK_ENTRIES_MAX {
            return Err(DecodeError::Invalid("seen set has too many origins".into()));
        }
        let total: usize = self.exceptions.iter().map(|(_, l)| l.len()).sum();
        if total > limits::CLOCK_ENTRIES_MAX {
            return Err(DecodeError::Invalid(format!("seen set has {total} exceptions")));
        }
        Ok(())
    }
}

/// Why bytes were not accepted as a message. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("frame is {len} bytes, shorter than a header")]
    Truncated { len: usize },
    #[error("bad magic bytes")]
    BadMagic,
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("frame body declares {declared} bytes but {available} follow")]
    LengthMismatch { declared: u64, available: u64 },
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u64),
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed body: {0}")]
    Body(String),
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("invalid entry for key of {key_len} bytes: {source}")]
    Entry { key_len: usize, source: InvalidEntry },
}

/// Encode a message into one frame.
pub fn encode(message: &Message) -> Vec<u8> {
    debug_assert!(validate(message, limits::VALUE_BYTES_CAP).is_ok(), "encoding an invalid message");
    // postcard cannot fail serializing these types into a Vec.
    let body = postcard::to_stdvec(message).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len() + CHECK_BYTES);
    out.extend_from_slice(&WIRE_MAGIC);
    out.push(WIRE_VERSION);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&blake3::hash(&body).as_bytes()[..CHECK_BYTES]);
    out
}

/// Decode one frame, rejecting anything malformed or over the limits.
pub fn decode(bytes: &[u8], value_bytes_max: usize) -> Result<Message, DecodeError> {
    if bytes.len() < HEADER_BYTES + CHECK_BYTES {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    if bytes[..3] != WIRE_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[3] != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(bytes[3]));
    }
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&bytes[4..8]);
    let declared = u64::from(u32::from_le_bytes(len_bytes));
    if declared > limits::FRAME_BYTES_MAX as u64 {
        return Err(DecodeError::TooLarge(declared));
    }
    let available = (bytes.len() - HEADER_BYTES - CHECK_BYTES) as u64;
    if declared != available {
        return Err(DecodeError::LengthMismatch { declared, available });
    }
    let body = &bytes[HEADER_BYTES..HEADER_BYTES + available as usize];
    let check = &bytes[HEADER_BYTES + available as usize..];
    if blake3::hash(body).as_bytes()[..CHECK_BYTES] != *check {
        return Err(DecodeError::Checksum);
    }
    let message: Message = postcard::from_bytes(body).map_err(|e| DecodeError::Body(e.to_string()))?;
    validate(&message, value_bytes_max)?;
    Ok(message)
}

fn validate_name(name: &str) -> Result<(), DecodeError> {
    if !crate::node::valid_namespace_name(name) {
        return Err(DecodeError::Invalid(format!("invalid namespace name of {} bytes", name.len())));
    }
    Ok(())
}

fn validate_keyed(key: &Key, entry: &Entry, ty: ValueType, value_bytes_max: usize) -> Result<(), DecodeError> {
    if key.len() > limits::KEY_BYTES_MAX {
        return Err(DecodeError::Invalid(format!("key of {} bytes", key.len())));
    }
    if entry.value_type() != ty {
        return Err(DecodeError::Invalid("entry type differs from its namespace's".into()));
    }
    entry.validate(value_bytes_max).map_err(|source| DecodeError::Entry { key_len: key.len(), source })
}

fn validate_deltas(deltas: &[NamespaceDelta], value_bytes_max: usize) -> Result<(), DecodeError> {
    if deltas.len() > NAMESPACES_PER_MESSAGE_MAX {
        return Err(DecodeError::Invalid("too many namespaces".into()));
    }
    for d in deltas {
        validate_name(&d.namespace)?;
        d.seen.validate()?;
        if d.entries.len() > ITEMS_PER_MESSAGE_MAX {
            return Err(DecodeError::Invalid("too many entries".into()));
        }
        for (k, e) in &d.entries {
            validate_keyed(k, e, d.value_type, value_bytes_max)?;
        }
        if !d.proofs.is_empty() && d.proofs.len() != d.entries.len() {
            return Err(DecodeError::Invalid("a delta's proofs do not match its entries".into()));
        }
        for p in &d.proofs {
            crate::signing::validate_proof(p).map_err(DecodeError::Invalid)?;
        }
        if d.heads.len() > limits::CLOCK_ENTRIES_MAX {
            return Err(DecodeError::Invalid(format!("delta carries {} heads", d.heads.len())));
        }
        for h in &d.heads {
            if h.key.len() > limits::KEY_BYTES_MAX {
                return Err(DecodeError::Invalid(format!("head key of {} bytes", h.key.len())));
            }
            crate::signing::validate_attestation(&h.attestation).map_err(DecodeError::Invalid)?;
        }
    }
    Ok(())
}

/// Semantic checks on a decoded (or about to be encoded) message.
pub fn validate(message: &Message, value_bytes_max: usize) -> Result<(), DecodeError> {
    match message {
        Message::Push(p) => {
            if p.items.len() > ITEMS_PER_MESSAGE_MAX {
                return Err(DecodeError::Invalid("too many push items".into()));
            }
            if p.covered.len() > PUSH_COVERED_MAX {
                return Err(DecodeError::Invalid(format!("push names {} covered nodes", p.covered.len())));
            }
            for item in &p.items {
                validate_name(&item.namespace)?;
                validate_keyed(&item.key, &item.entry, item.value_type, value_bytes_max)?;
                if item.dot.counter == 0 || item.ts.node != item.dot.node {
                    return Err(DecodeError::Invalid("push item's dot and timestamp disagree".into()));
                }
                if item.entry.clock().get(item.dot.node) < item.dot.counter {
                    return Err(DecodeError::Invalid("push item's entry does not reflect its dot".into()));
                }
                if let Some(p) = &item.proof {
                    crate::signing::validate_proof(p).map_err(DecodeError::Invalid)?;
                }
            }
        }
        Message::SyncRequest(r) => {
            if r.summaries.len() > NAMESPACES_PER_MESSAGE_MAX {
                return Err(DecodeError::Invalid("too many namespaces".into()));
            }
            for s in &r.summaries {
                validate_name(&s.namespace)?;
                s.seen.validate()?;
            }
        }
        Message::Reconcile(r) => {
            validate_name(&r.namespace)?;
            if r.body.len() > chorus_reconcile::MESSAGE_BYTES_MAX {
                return Err(DecodeError::Invalid(format!("reconciliation body of {} bytes", r.body.len())));
            }
        }
        Message::SyncReply(r) => {
            validate_deltas(&r.deltas, value_bytes_max)?;
            if r.in_sync.len() > NAMESPACES_PER_MESSAGE_MAX {
                return Err(DecodeError::Invalid("too many namespaces".into()));
            }
            for name in &r.in_sync {
                validate_name(name)?;
            }
        }
        Message::SyncPush(p) => validate_deltas(&p.deltas, value_bytes_max)?,
        Message::Announce(a) => {
            validate_name(&a.namespace)?;
            if a.covered.len() > ANNOUNCE_NODES_MAX {
                return Err(DecodeError::Invalid(format!("announcement names {} nodes", a.covered.len())));
            }
        }
        Message::Confirm(c) => {
            if c.confirmed.len() > ANNOUNCE_NODES_MAX {
                return Err(DecodeError::Invalid(format!("confirmation names {} nodes", c.confirmed.len())));
            }
        }
    }
    Ok(())
}
