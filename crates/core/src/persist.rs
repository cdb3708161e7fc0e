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
//! * `e.<namespace>`: key → [`EntryRecord`] (the key's CRDT state and, with
//!   signing on, the proof of that state by its origins' signatures).
//! * `idem`: a client's `request_id` → [`IdempotencyRecord`].
//!
//! Every record carries a version byte and a checksum.

use crate::crdt::{Entry, ValueType};
use crate::hlc::Timestamp;
use crate::wire::WireSeen;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const META_SPACE: &str = "meta";
pub const NAMESPACES_SPACE: &str = "namespaces";
pub const HLC_KEY: &[u8] = b"hlc";
/// Space of remembered idempotency keys (`request_id` → outcome).
/// Prefix of the META keys holding each namespace's collected floor
/// (`gc_floor.{namespace}`: the version vector under which whole
/// tombstones were collected; `docs/design/watch.md`, "Reset").
pub const GC_FLOOR_PREFIX: &str = "gc_floor.";
pub const IDEMPOTENCY_SPACE: &str = "idem";

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

/// A stored entry, with its version and checksum checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub version: u8,
    pub entry: Entry,
    /// The proof of `entry` by its origins' signatures (version
    /// [`RECORD_VERSION_PROVEN`]; `docs/design/signing.md`, "Storage").
    pub proof: Option<crate::signing::KeyProof>,
}

/// The first version, without checksums on the HLC and namespace records
/// (entries always had one). Still read, never written.
const RECORD_VERSION_LEGACY: u8 = 1;
/// Every record: `version u8 | check [u8; 8] | postcard(body)`, where
/// `check` is the first 8 bytes of BLAKE3 of the postcard bytes, so a
/// flipped bit anywhere is detected at recovery (docs/design/storage.md,
/// "Records of the core").
const RECORD_VERSION_CHECKED: u8 = 2;
/// An entry stored with its proof: the body is `postcard((entry, proof))`,
/// sealed like version 2. One record per key keeps a signed write at one
/// store operation (`docs/design/signing.md`, "Storage").
pub const RECORD_VERSION_PROVEN: u8 = 3;
const RECORD_CHECK_BYTES: usize = 8;

fn sealed<T: Serialize>(version: u8, body: &T) -> Vec<u8> {
    // postcard cannot fail serializing these types into a Vec.
    seal_bytes(version, &postcard::to_stdvec(body).unwrap_or_default())
}

/// `version`, the checksum of `body`, then `body`.
fn seal_bytes(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + RECORD_CHECK_BYTES + body.len());
    out.push(version);
    out.extend_from_slice(&blake3::hash(body).as_bytes()[..RECORD_CHECK_BYTES]);
    out.extend_from_slice(body);
    out
}

/// The checked body of a sealed record.
fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < 1 + RECORD_CHECK_BYTES {
        return Err("record shorter than its checksum".into());
    }
    let (check, body) = bytes[1..].split_at(RECORD_CHECK_BYTES);
    if blake3::hash(body).as_bytes()[..RECORD_CHECK_BYTES] != *check {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

pub(crate) fn encode_entry_record(entry: &Entry) -> Vec<u8> {
    // Entries keep version 1: their layout has had a checksum from the start.
    sealed(RECORD_VERSION_LEGACY, entry)
}

/// An entry with the proof of its state, as one record.
pub(crate) fn encode_proven_entry(entry: &Entry, proof: &crate::signing::KeyProof) -> Vec<u8> {
    sealed(RECORD_VERSION_PROVEN, &(entry, proof))
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
    sealed(RECORD_VERSION_CHECKED, ts)
}

/// Decode the stored HLC high-water mark, checking its checksum.
pub fn decode_hlc(bytes: &[u8]) -> Result<Timestamp, String> {
    match bytes.split_first() {
        Some((&RECORD_VERSION_CHECKED, _)) => postcard::from_bytes(unseal(bytes)?).map_err(|e| e.to_string()),
        Some((&RECORD_VERSION_LEGACY, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

pub(crate) fn encode_namespace_record(record: &NamespaceRecord) -> Vec<u8> {
    sealed(RECORD_VERSION_CHECKED, record)
}

/// Decode a stored namespace record, checking its checksum.
pub fn decode_namespace(bytes: &[u8]) -> Result<NamespaceRecord, String> {
    let r: NamespaceRecord = match bytes.first() {
        Some(&RECORD_VERSION_CHECKED) => postcard::from_bytes(unseal(bytes)?).map_err(|e| e.to_string())?,
        // The legacy layout is the bare postcard of the record, whose first
        // field is its version (1).
        Some(&RECORD_VERSION_LEGACY) => postcard::from_bytes(bytes).map_err(|e| e.to_string())?,
        Some(v) => return Err(format!("unknown record version {v}")),
        None => return Err("empty record".into()),
    };
    if r.version != RECORD_VERSION_LEGACY {
        return Err(format!("unknown namespace record version {}", r.version));
    }
    Ok(r)
}

/// Decode a stored entry, checking its checksum.
pub fn decode_entry(bytes: &[u8]) -> Result<EntryRecord, String> {
    let Some(&version) = bytes.first() else { return Err("empty record".into()) };
    match version {
        RECORD_VERSION_LEGACY => {
            let entry: Entry = postcard::from_bytes(unseal(bytes)?).map_err(|e| e.to_string())?;
            Ok(EntryRecord { version, entry, proof: None })
        }
        RECORD_VERSION_PROVEN => {
            let (entry, proof): (Entry, crate::signing::KeyProof) =
                postcard::from_bytes(unseal(bytes)?).map_err(|e| e.to_string())?;
            Ok(EntryRecord { version, entry, proof: Some(proof) })
        }
        v => Err(format!("unknown record version {v}")),
    }
}

/// One remembered idempotency key (space `idem`, keyed by the client's
/// `request_id`): the write it named and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub namespace: String,
    pub key: Vec<u8>,
    pub dot: crate::causal::Dot,
    pub ts: Timestamp,
    pub context: crate::causal::VersionVector,
    /// When it was first applied (µs of the node's corrected clock).
    pub at_us: u64,
}

pub(crate) fn encode_idempotency_record(record: &IdempotencyRecord) -> Vec<u8> {
    sealed(RECORD_VERSION_CHECKED, record)
}

/// Decode a remembered idempotency key, checking its checksum.
pub fn decode_idempotency_record(bytes: &[u8]) -> Result<IdempotencyRecord, String> {
    match bytes.first() {
        Some(&RECORD_VERSION_CHECKED) => postcard::from_bytes(unseal(bytes)?).map_err(|e| e.to_string()),
        Some(v) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

pub(crate) fn encode_gc_floor(floor: &crate::causal::VersionVector) -> Vec<u8> {
    sealed(RECORD_VERSION_CHECKED, floor)
}

/// Decode a namespace's collected floor, checking its checksum.
pub fn decode_gc_floor(bytes: &[u8]) -> Result<crate::causal::VersionVector, String> {
    match bytes.first() {
        Some(&RECORD_VERSION_CHECKED) => postcard::from_bytes(unseal(bytes)?).map_err(|e| e.to_string()),
        Some(v) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

/// Space of each key's origin signatures as stores before record version 3
/// kept them (`p.<namespace>`: key → [`crate::signing::KeyProof`];
/// `docs/design/signing.md`, "Storage"). Read at recovery for entries
/// whose record carries no proof; no longer written, only cleared.
pub fn proofs_space(namespace: &str) -> String {
    format!("p.{namespace}")
}

/// Prefix of the META keys holding each namespace's origin heads
/// (`heads.{namespace}`).
pub const HEADS_PREFIX: &str = "heads.";
/// META key of this node's last signed block: `(seq, header hash)`.
pub const BLOCK_HEAD_KEY: &[u8] = b"block_head";

pub(crate) fn encode_proof(proof: &crate::signing::KeyProof) -> Vec<u8> {
    sealed(RECORD_VERSION_CHECKED, proof)
}

/// Decode a stored proof, checking its checksum.
pub fn decode_proof(bytes: &[u8]) -> Result<crate::signing::KeyProof, String> {
    decode_checked(bytes)
}

pub(crate) fn encode_heads(heads: &BTreeMap<crate::types::NodeId, crate::signing::Head>) -> Vec<u8> {
    sealed(RECORD_VERSION_CHECKED, heads)
}

pub fn decode_heads(bytes: &[u8]) -> Result<BTreeMap<crate::types::NodeId, crate::signing::Head>, String> {
    decode_checked(bytes)
}

pub(crate) fn encode_block_head(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    sealed(RECORD_VERSION_CHECKED, &(seq, hash))
}

pub fn decode_block_head(bytes: &[u8]) -> Result<(u64, [u8; 32]), String> {
    decode_checked(bytes)
}

fn decode_checked<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.first() {
        Some(&RECORD_VERSION_CHECKED) => postcard::from_bytes(unseal(bytes)?).map_err(|e| e.to_string()),
        Some(v) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

pub(crate) fn namespace_record(value_type: ValueType, seen: WireSeen) -> NamespaceRecord {
    NamespaceRecord { version: RECORD_VERSION_LEGACY, value_type, seen }
}

/// The record encoders, for the round trips of the fuzz targets (`fuzz/`,
/// see `docs/design/fault-injection.md`, "Fuzzing"): whatever a decoder
/// accepts must encode to a record that decodes to the same value. Not an
/// interface: the core alone writes records.
#[doc(hidden)]
pub mod fuzz_api {
    use super::{IdempotencyRecord, NamespaceRecord, Timestamp};
    use crate::crdt::Entry;

    pub fn encode_entry_record(entry: &Entry) -> Vec<u8> {
        super::encode_entry_record(entry)
    }

    /// The record [`super::decode_entry`] reads back as `entry` and `proof`.
    pub fn encode_entry_with(entry: &Entry, proof: Option<&crate::signing::KeyProof>) -> Vec<u8> {
        match proof {
            Some(p) => super::encode_proven_entry(entry, p),
            None => super::encode_entry_record(entry),
        }
    }

    /// `raw` (a version byte, then a body) with the checksum a record of
    /// that version carries, so fuzzed bodies reach the real decoding.
    pub fn seal(raw: &[u8]) -> Vec<u8> {
        match raw.split_first() {
            Some((&version, body)) => super::seal_bytes(version, body),
            None => Vec::new(),
        }
    }

    pub fn encode_hlc(ts: &Timestamp) -> Vec<u8> {
        super::encode_hlc(ts)
    }

    pub fn encode_namespace_record(record: &NamespaceRecord) -> Vec<u8> {
        super::encode_namespace_record(record)
    }

    pub fn encode_idempotency_record(record: &IdempotencyRecord) -> Vec<u8> {
        super::encode_idempotency_record(record)
    }

    pub fn encode_proof(proof: &crate::signing::KeyProof) -> Vec<u8> {
        super::encode_proof(proof)
    }

    pub fn encode_heads(heads: &std::collections::BTreeMap<crate::types::NodeId, crate::signing::Head>) -> Vec<u8> {
        super::encode_heads(heads)
    }

    pub fn encode_block_head(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
        super::encode_block_head(seq, hash)
    }
}
