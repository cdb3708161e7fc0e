//! How the core's state is laid out in a byte-oriented store.
//!
//! The core emits [`PersistBatch`]es of [`StoreOp`]s against named spaces;
//! the driver commits each batch atomically and durably (the storage
//! crate's contract) before running any later action. At restart the driver
//! hands every space back as a [`RecoveryImage`] and [`crate::Node::recover`]
//! rebuilds the node. Records are versioned postcard, never raw structs of
//! the HTTP layer.
//!
//! Spaces:
//! * `meta`: `hlc` → the HLC high-water mark (a [`Timestamp`]).
//! * `namespaces`: namespace name → [`NamespaceRecord`] (type, seen set).
//! * `e.<namespace>`: key → [`EntryRecord`] (the key's CRDT state).

use crate::crdt::{Entry, ValueType};
use crate::hlc::Timestamp;
use crate::wire::WireSeen;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const META_SPACE: &str = "meta";
pub const NAMESPACES_SPACE: &str = "namespaces";
pub const HLC_KEY: &[u8] = b"hlc";
const RECORD_VERSION: u8 = 1;

pub fn entries_space(namespace: &str) -> String {
    format!("e.{namespace}")
}

/// One write to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOp {
    pub space: String,
    pub key: Vec<u8>,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// Writes that must be committed atomically and durably, in order with the
/// other actions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistBatch {
    pub ops: Vec<StoreOp>,
}

/// Everything the store holds, by space, as handed back at restart.
pub type RecoveryImage = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub version: u8,
    pub value_type: ValueType,
    pub seen: WireSeen,
}

/// A stored entry. On disk: `version u8 | check [u8; 8] | postcard(entry)`
/// where `check` is the first 8 bytes of BLAKE3 of the postcard bytes, so a
/// flipped bit is detected at recovery; the entry is then dropped, counted,
/// and repaired from a peer by reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub version: u8,
    pub entry: Entry,
}

const ENTRY_CHECK_BYTES: usize = 8;

pub(crate) fn encode_entry_record(entry: &Entry) -> Vec<u8> {
    let body = postcard::to_stdvec(entry).unwrap_or_default();
    let mut out = Vec::with_capacity(1 + ENTRY_CHECK_BYTES + body.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&blake3::hash(&body).as_bytes()[..ENTRY_CHECK_BYTES]);
    out.extend_from_slice(&body);
    out
}

/// Why the stored state could not be loaded. Nothing was changed; the node
/// must not start (starting without its state would reuse dots).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    #[error("corrupt record in space {space:?} at key {key:?}: {reason}")]
    Corrupt { space: String, key: Vec<u8>, reason: String },
}

pub(crate) fn encode_hlc(ts: &Timestamp) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_stdvec(ts).unwrap_or_default());
    out
}

pub(crate) fn decode_hlc(bytes: &[u8]) -> Result<Timestamp, String> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

pub(crate) fn encode_record<T: Serialize>(record: &T) -> Vec<u8> {
    postcard::to_stdvec(record).unwrap_or_default()
}

/// Decode a stored namespace record.
pub fn decode_namespace(bytes: &[u8]) -> Result<NamespaceRecord, String> {
    let r: NamespaceRecord = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    if r.version != RECORD_VERSION {
        return Err(format!("unknown record version {}", r.version));
    }
    Ok(r)
}

/// Decode a stored entry, checking its checksum.
pub fn decode_entry(bytes: &[u8]) -> Result<EntryRecord, String> {
    let Some((&version, rest)) = bytes.split_first() else { return Err("empty record".into()) };
    if version != RECORD_VERSION {
        return Err(format!("unknown record version {version}"));
    }
    if rest.len() < ENTRY_CHECK_BYTES {
        return Err("record shorter than its checksum".into());
    }
    let (check, body) = rest.split_at(ENTRY_CHECK_BYTES);
    if blake3::hash(body).as_bytes()[..ENTRY_CHECK_BYTES] != *check {
        return Err("checksum mismatch".into());
    }
    let entry: Entry = postcard::from_bytes(body).map_err(|e| e.to_string())?;
    Ok(EntryRecord { version, entry })
}

pub(crate) fn namespace_record(value_type: ValueType, seen: WireSeen) -> NamespaceRecord {
    NamespaceRecord { version: RECORD_VERSION, value_type, seen }
}
