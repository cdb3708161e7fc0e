//! Writes signed by their origin (`docs/design/signing.md`).
//!
//! Every write a node makes becomes a [`WriteRecord`]: its dot, its HLC
//! timestamp and a [`Claim`] about what it wrote (a digest of the value or
//! member, or the origin's counter totals after it). The records of one
//! turn of local writes are the leaves of a Merkle tree whose root goes
//! into a [`BlockHeader`]; the origin signs the header, and each header
//! names the previous one's hash, so each origin's blocks form a
//! hash-chained, tamper-evident log. One signature covers a whole turn;
//! each write carries its record, its Merkle path and the signed header
//! (an [`Attestation`]).
//!
//! A key's state is a join of many origins' writes, so it travels with a
//! [`KeyProof`]: exactly the attestations its state depends on, one per
//! clock entry (the latest write of each origin to the key) and one per
//! MV sibling and OR-set element dot. [`check_entry`] verifies the proof
//! and that every part of the state is what some origin signed: an LWW
//! value and timestamp, an origin's counter contribution, an element, and
//! every clock entry (so no relay can claim a third node wrote more than
//! it did). Proofs survive joins: the joined state's proof is picked from
//! the two sides' attestations ([`rebuild`]).
//!
//! A [`Head`] is an attestation of an origin's greatest known dot in a
//! namespace; it backs seen-set claims about that origin.

use crate::causal::{Dot, VersionVector};
use crate::crdt::Entry;
use crate::hlc::Timestamp;
use crate::types::{Key, NodeId, limits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};

/// Bytes of a signature accepted at most (ML-DSA-87 signatures are 4,627).
pub const SIGNATURE_BYTES_MAX: usize = 4_864;
/// Merkle path length at most (a block of 2^32 records).
pub const MERKLE_PATH_MAX: usize = 32;
/// Attestations in one key's proof at most: one per clock entry plus one
/// per element dot, which the entry limits bound.
pub const PROOF_ATTESTATIONS_MAX: usize = 2 * limits::CLOCK_ENTRIES_MAX;
/// Verified block headers a node remembers, so each is checked once.
pub const VERIFIED_BLOCKS_MAX: usize = 65_536;

/// What a write wrote, in a form a receiver can compare with a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Claim {
    /// `lww`/`mv` put or delete: [`value_digest`] of the value (`None`:
    /// a tombstone).
    Value([u8; 32]),
    /// `counter`: the origin's increment and decrement totals after it.
    Totals { inc: u64, dec: u64 },
    /// `set` add: [`value_digest`] of the member.
    Add([u8; 32]),
    /// `set` remove: [`value_digest`] of the member.
    Remove([u8; 32]),
}

/// One write of one origin to one key (the namespace and key are part of
/// the leaf hash, not repeated here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    pub dot: Dot,
    pub ts: Timestamp,
    pub claim: Claim,
}

/// The signed part of a block: one turn of an origin's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub origin: NodeId,
    /// 1, 2, … per origin.
    pub seq: u64,
    /// [`BlockHeader::hash`] of block `seq - 1` (zero for the first).
    pub prev: [u8; 32],
    /// Merkle root of the block's records.
    pub root: [u8; 32],
    pub leaves: u32,
}

impl BlockHeader {
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("chorus 2026-12 block header v1");
        h.update(&postcard::to_stdvec(self).unwrap_or_default());
        *h.finalize().as_bytes()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBlock {
    pub header: BlockHeader,
    /// The origin's signature over [`BlockHeader::hash`].
    pub signature: Vec<u8>,
}

/// A record with the evidence that its origin signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub record: WriteRecord,
    /// Shared by every attestation of the block (in memory; on the wire and
    /// on disk each attestation carries its own copy).
    pub block: Arc<SignedBlock>,
    /// The record's leaf position in the block.
    pub index: u32,
    pub path: Vec<[u8; 32]>,
}

/// The attestations a key's state depends on, sorted by dot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyProof {
    pub attestations: Vec<Attestation>,
}

/// An origin's greatest dot known in a namespace, with its key (the key is
/// in the leaf hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub key: Key,
    pub attestation: Attestation,
}

/// The outcome of checking one signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    /// No public key is known for the origin yet: not evidence of
    /// misbehaviour, the data is refused and comes again later.
    UnknownOrigin,
}

/// A node's signing key and the public keys of the origins it knows.
/// The simulator may use a cheap implementation; the daemon uses
/// [`Ed25519Signing`].
pub trait Signing: Send + Sync {
    fn sign(&self, message: &[u8; 32]) -> Vec<u8>;
    fn verify(&self, origin: NodeId, message: &[u8; 32], signature: &[u8]) -> Verdict;
    /// Whether a write of `origin` at `ts` may be accepted: `false` for the
    /// writes of a revoked origin made after its revocation.
    fn admits(&self, origin: NodeId, ts: Timestamp) -> bool {
        let _ = (origin, ts);
        true
    }
}

/// ed25519 (RFC 8032, strict verification).
pub struct Ed25519Signing {
    key: ed25519_dalek::SigningKey,
    keys: RwLock<HashMap<NodeId, ed25519_dalek::VerifyingKey>>,
    /// Revoked origins: their writes with a physical time above this (µs)
    /// are refused.
    cutoffs: RwLock<HashMap<NodeId, u64>>,
}

impl Ed25519Signing {
    /// This node's key from its 32-byte secret; it knows its own public key.
    pub fn new(me: NodeId, secret: &[u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(secret);
        let keys = RwLock::new(HashMap::from([(me, key.verifying_key())]));
        Ed25519Signing { key, keys, cutoffs: RwLock::new(HashMap::new()) }
    }

    /// Refuse `origin`'s writes made after `physical_us` (its revocation);
    /// an earlier cutoff wins. What it wrote before stays acceptable.
    pub fn revoke_after(&self, origin: NodeId, physical_us: u64) {
        if let Ok(mut c) = self.cutoffs.write() {
            let e = c.entry(origin).or_insert(physical_us);
            *e = (*e).min(physical_us);
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Learn an origin's public key (the driver checks that the cluster CA
    /// bound it to the origin). A malformed key is refused.
    pub fn learn(&self, origin: NodeId, public: &[u8; 32]) -> bool {
        let Ok(k) = ed25519_dalek::VerifyingKey::from_bytes(public) else { return false };
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(origin, k);
        }
        true
    }
}

impl Signing for Ed25519Signing {
    fn sign(&self, message: &[u8; 32]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes().to_vec()
    }

    fn verify(&self, origin: NodeId, message: &[u8; 32], signature: &[u8]) -> Verdict {
        let key = match self.keys.read() {
            Ok(keys) => keys.get(&origin).copied(),
            Err(_) => None,
        };
        let Some(key) = key else { return Verdict::UnknownOrigin };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else { return Verdict::Invalid };
        match key.verify_strict(message, &sig) {
            Ok(()) => Verdict::Valid,
            Err(_) => Verdict::Invalid,
        }
    }

    fn admits(&self, origin: NodeId, ts: Timestamp) -> bool {
        match self.cutoffs.read() {
            Ok(c) => c.get(&origin).is_none_or(|&cut| ts.physical_us <= cut),
            Err(_) => true,
        }
    }
}

/// A deterministic stand-in for the simulator and tests: each origin's
/// "signature" is a keyed BLAKE3 MAC under a key derived from its id.
/// Anyone who knows the scheme can forge it, so it proves nothing outside
/// a simulation; it exercises every code path of real signing at a
/// fraction of the cost.
pub struct TestSigning {
    me: NodeId,
}

impl TestSigning {
    pub fn new(me: NodeId) -> Self {
        TestSigning { me }
    }

    fn mac(origin: NodeId, message: &[u8; 32]) -> Vec<u8> {
        let key = blake3::derive_key("chorus test signing key", &origin.0.to_le_bytes());
        blake3::keyed_hash(&key, message).as_bytes().to_vec()
    }
}

impl Signing for TestSigning {
    fn sign(&self, message: &[u8; 32]) -> Vec<u8> {
        Self::mac(self.me, message)
    }

    fn verify(&self, origin: NodeId, message: &[u8; 32], signature: &[u8]) -> Verdict {
        if Self::mac(origin, message) == signature { Verdict::Valid } else { Verdict::Invalid }
    }
}

/// Digest of a value or member (`None`: a tombstone).
pub fn value_digest(value: Option<&[u8]>) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("chorus 2026-12 value v1");
    match value {
        Some(v) => {
            h.update(&[1]);
            h.update(v);
        }
        None => {
            h.update(&[0]);
        }
    }
    *h.finalize().as_bytes()
}

/// The Merkle leaf of a record of `namespace`/`key`.
pub fn leaf_hash(namespace: &str, key: &[u8], record: &WriteRecord) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("chorus 2026-12 write record v1");
    h.update(&postcard::to_stdvec(&(namespace, key, record)).unwrap_or_default());
    *h.finalize().as_bytes()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("chorus 2026-12 merkle node v1");
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The root of `leaves` and each leaf's path. A level with an odd count
/// promotes its last node unchanged.
pub fn merkle_tree(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<[u8; 32]>>) {
    let mut paths: Vec<Vec<[u8; 32]>> = vec![Vec::new(); leaves.len()];
    if leaves.is_empty() {
        return ([0; 32], paths);
    }
    // positions[i]: where leaf i's ancestor sits in the current level.
    let mut positions: Vec<usize> = (0..leaves.len()).collect();
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    while level.len() > 1 {
        for (leaf, pos) in positions.iter_mut().enumerate() {
            let sibling = *pos ^ 1;
            if sibling < level.len() {
                paths[leaf].push(level[sibling]);
            }
            *pos /= 2;
        }
        level = level.chunks(2).map(|c| if c.len() == 2 { node_hash(&c[0], &c[1]) } else { c[0] }).collect();
    }
    (level[0], paths)
}

/// The root that `leaf` at `index` of a tree of `leaves` leaves proves with
/// `path`, or `None` when the path does not fit that shape.
pub fn merkle_root_of(leaf: [u8; 32], index: u32, leaves: u32, path: &[[u8; 32]]) -> Option<[u8; 32]> {
    if index >= leaves || path.len() > MERKLE_PATH_MAX {
        return None;
    }
    let (mut idx, mut n, mut h) = (index as u64, leaves as u64, leaf);
    let mut rest = path.iter();
    while n > 1 {
        if idx % 2 == 1 {
            h = node_hash(rest.next()?, &h);
        } else if idx + 1 < n {
            h = node_hash(&h, rest.next()?);
        }
        idx /= 2;
        n = n.div_ceil(2);
    }
    if rest.next().is_some() { None } else { Some(h) }
}

/// Why a proof was refused. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    #[error("no key is known for origin {0}")]
    UnknownOrigin(NodeId),
    #[error("bad signature on block {seq} of origin {origin}")]
    BadSignature { origin: NodeId, seq: u64 },
    #[error("record {0} is not in its block (bad Merkle path)")]
    NotInBlock(Dot),
    #[error("record {dot} is in a block of another origin")]
    WrongOrigin { dot: Dot },
    #[error("the proof covers {got} dots where the state needs {want}")]
    WrongDots { got: usize, want: usize },
    #[error("the state does not match what its origins signed: {0}")]
    Mismatch(&'static str),
    #[error("write {0} was made after its origin's revocation")]
    Revoked(Dot),
}

impl ProofError {
    /// Whether the sender must have altered or invented data (as opposed to
    /// us not knowing an origin's key yet).
    pub fn is_misbehaviour(&self) -> bool {
        // A relay may not have the revocation list yet: refusing its
        // forwarding of a revoked node's write is enough.
        !matches!(self, ProofError::UnknownOrigin(_) | ProofError::Revoked(_))
    }
}

/// Block headers already verified, by hash (bounded, oldest forgotten).
#[derive(Default)]
pub struct VerifiedBlocks {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    /// Signature checks done (for the verifications-per-second benchmark).
    pub signatures_checked: u64,
}

impl VerifiedBlocks {
    fn check(&mut self, signing: &dyn Signing, block: &SignedBlock) -> Result<(), ProofError> {
        let hash = block.header.hash();
        if self.set.contains(&hash) {
            return Ok(());
        }
        self.signatures_checked += 1;
        match signing.verify(block.header.origin, &hash, &block.signature) {
            Verdict::Valid => {}
            Verdict::Invalid => {
                return Err(ProofError::BadSignature { origin: block.header.origin, seq: block.header.seq });
            }
            Verdict::UnknownOrigin => return Err(ProofError::UnknownOrigin(block.header.origin)),
        }
        self.set.insert(hash);
        self.order.push_back(hash);
        while self.order.len() > VERIFIED_BLOCKS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        Ok(())
    }
}

/// Check that `a` is a record of `namespace`/`key` signed by its origin.
pub fn check_attestation(
    namespace: &str,
    key: &[u8],
    a: &Attestation,
    signing: &dyn Signing,
    verified: &mut VerifiedBlocks,
) -> Result<(), ProofError> {
    let dot = a.record.dot;
    if a.block.header.origin != dot.node || a.record.ts.node != dot.node {
        return Err(ProofError::WrongOrigin { dot });
    }
    let leaf = leaf_hash(namespace, key, &a.record);
    if merkle_root_of(leaf, a.index, a.block.header.leaves, &a.path) != Some(a.block.header.root) {
        return Err(ProofError::NotInBlock(dot));
    }
    verified.check(signing, &a.block)?;
    if !signing.admits(dot.node, a.record.ts) {
        return Err(ProofError::Revoked(dot));
    }
    Ok(())
}

/// The dots a state's proof must attest: each origin's latest write (its
/// clock entry) and every element dot.
pub fn needed_dots(entry: &Entry) -> BTreeSet<Dot> {
    let mut dots: BTreeSet<Dot> = entry.clock().iter().map(|(node, counter)| Dot { node, counter }).collect();
    match entry {
        Entry::Mv(r) => dots.extend(r.siblings.iter().map(|s| s.dot)),
        Entry::Set(s) => dots.extend(s.members.values().flatten().copied()),
        Entry::Lww(_) | Entry::Counter(_) => {}
    }
    dots
}

/// The proof of `entry` picked from the attestations of `pools` (the proofs
/// of the states it was joined from, and new records). `None` when some
/// needed dot is attested nowhere.
pub fn rebuild<'a>(entry: &Entry, pools: impl IntoIterator<Item = &'a KeyProof>) -> Option<KeyProof> {
    let needed = needed_dots(entry);
    let mut found: BTreeMap<Dot, &Attestation> = BTreeMap::new();
    for pool in pools {
        for a in &pool.attestations {
            if needed.contains(&a.record.dot) {
                found.entry(a.record.dot).or_insert(a);
            }
        }
    }
    if found.len() != needed.len() {
        return None;
    }
    Some(KeyProof { attestations: found.into_values().cloned().collect() })
}

/// Verify `proof` and that `entry` is exactly what its origins signed
/// (see the module documentation). Structural validity of `entry`
/// ([`Entry::validate`]) is checked by the decoder before this.
pub fn check_entry(
    namespace: &str,
    key: &[u8],
    entry: &Entry,
    proof: &KeyProof,
    signing: &dyn Signing,
    verified: &mut VerifiedBlocks,
) -> Result<(), ProofError> {
    let needed = needed_dots(entry);
    if proof.attestations.len() != needed.len()
        || !proof.attestations.iter().map(|a| a.record.dot).eq(needed.iter().copied())
    {
        return Err(ProofError::WrongDots { got: proof.attestations.len(), want: needed.len() });
    }
    for a in &proof.attestations {
        check_attestation(namespace, key, a, signing, verified)?;
    }
    let rec: BTreeMap<Dot, &WriteRecord> = proof.attestations.iter().map(|a| (a.record.dot, &a.record)).collect();
    let latest = |clock: &VersionVector, node: NodeId| rec.get(&Dot { node, counter: clock.get(node) }).copied();
    let max_ts = |clock: &VersionVector| {
        clock.iter().filter_map(|(n, _)| latest(clock, n)).map(|r| r.ts).max().unwrap_or(Timestamp::ZERO)
    };
    match entry {
        Entry::Lww(r) => {
            if r.clock.is_empty() {
                return if r.ts == Timestamp::ZERO && r.value.is_none() {
                    Ok(())
                } else {
                    Err(ProofError::Mismatch("lww value without a write"))
                };
            }
            let winner = latest(&r.clock, r.ts.node).ok_or(ProofError::Mismatch("lww winner is no write"))?;
            if winner.ts != r.ts || winner.claim != Claim::Value(value_digest(r.value.as_deref())) {
                return Err(ProofError::Mismatch("lww value or timestamp differs from its write"));
            }
            if r.clock.iter().filter_map(|(n, _)| latest(&r.clock, n)).any(|w| w.ts > r.ts) {
                return Err(ProofError::Mismatch("lww hides a later write"));
            }
            if rec.values().any(|w| !matches!(w.claim, Claim::Value(_))) {
                return Err(ProofError::Mismatch("lww write of another type"));
            }
        }
        Entry::Mv(r) => {
            for s in &r.siblings {
                let w = rec.get(&s.dot).ok_or(ProofError::Mismatch("mv sibling is no write"))?;
                if w.ts != s.ts || w.claim != Claim::Value(value_digest(s.value.as_deref())) {
                    return Err(ProofError::Mismatch("mv sibling differs from its write"));
                }
            }
            if rec.values().any(|w| !matches!(w.claim, Claim::Value(_))) {
                return Err(ProofError::Mismatch("mv write of another type"));
            }
        }
        Entry::Counter(c) => {
            if c.totals.len() != c.clock.len() || c.totals.keys().any(|n| c.clock.get(*n) == 0) {
                return Err(ProofError::Mismatch("counter contributions do not match its clock"));
            }
            for (node, &(inc, dec)) in &c.totals {
                let w = latest(&c.clock, *node).ok_or(ProofError::Mismatch("counter contribution is no write"))?;
                if w.claim != (Claim::Totals { inc, dec }) {
                    return Err(ProofError::Mismatch("counter contribution differs from what its origin signed"));
                }
            }
            if c.ts != max_ts(&c.clock) {
                return Err(ProofError::Mismatch("counter timestamp differs from its writes"));
            }
        }
        Entry::Set(s) => {
            for (member, dots) in &s.members {
                let want = Claim::Add(value_digest(Some(member)));
                if dots.iter().any(|d| rec.get(d).is_none_or(|w| w.claim != want)) {
                    return Err(ProofError::Mismatch("set element is no add of that member"));
                }
            }
            if rec.values().any(|w| !matches!(w.claim, Claim::Add(_) | Claim::Remove(_))) {
                return Err(ProofError::Mismatch("set write of another type"));
            }
            if s.ts != max_ts(&s.clock) {
                return Err(ProofError::Mismatch("set timestamp differs from its writes"));
            }
        }
    }
    Ok(())
}

/// The claim of a local write, from the op and the state after it.
pub fn claim_of(op: &crate::crdt::Op, after: &Entry, me: NodeId) -> Claim {
    use crate::crdt::Op;
    match op {
        Op::Put { value, .. } => Claim::Value(value_digest(Some(value))),
        Op::Delete { .. } => Claim::Value(value_digest(None)),
        Op::Increment { .. } => {
            let (inc, dec) = match after {
                Entry::Counter(c) => c.totals.get(&me).copied().unwrap_or((0, 0)),
                _ => (0, 0),
            };
            Claim::Totals { inc, dec }
        }
        Op::Add { member } => Claim::Add(value_digest(Some(member))),
        Op::Remove { member, .. } => Claim::Remove(value_digest(Some(member))),
    }
}

/// Structural bounds of a proof from outside (the decoder's part).
pub fn validate_proof(proof: &KeyProof) -> Result<(), String> {
    if proof.attestations.len() > PROOF_ATTESTATIONS_MAX {
        return Err(format!("proof has {} attestations", proof.attestations.len()));
    }
    for a in &proof.attestations {
        validate_attestation(a)?;
    }
    Ok(())
}

pub fn validate_attestation(a: &Attestation) -> Result<(), String> {
    if a.path.len() > MERKLE_PATH_MAX {
        return Err(format!("Merkle path of {} hashes", a.path.len()));
    }
    if a.block.signature.len() > SIGNATURE_BYTES_MAX {
        return Err(format!("signature of {} bytes", a.block.signature.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| *blake3::hash(&(i as u64).to_le_bytes()).as_bytes()).collect()
    }

    #[test]
    fn every_leaf_of_every_tree_shape_proves_the_root_and_no_other_leaf_does() {
        for n in 1..=33usize {
            let ls = leaves(n);
            let (root, paths) = merkle_tree(&ls);
            for (i, leaf) in ls.iter().enumerate() {
                assert_eq!(merkle_root_of(*leaf, i as u32, n as u32, &paths[i]), Some(root), "n={n} i={i}");
                // The wrong position or a different leaf proves something else.
                let other = (i + 1) % n;
                if other != i {
                    assert_ne!(merkle_root_of(*leaf, other as u32, n as u32, &paths[i]), Some(root));
                    assert_ne!(merkle_root_of(ls[other], i as u32, n as u32, &paths[i]), Some(root));
                }
            }
        }
    }

    #[test]
    fn ed25519_signatures_verify_only_for_their_origin_and_message() {
        let a = Ed25519Signing::new(NodeId(1), &[7; 32]);
        let b = Ed25519Signing::new(NodeId(2), &[9; 32]);
        assert!(b.learn(NodeId(1), &a.public_key()));
        let msg = [3u8; 32];
        let sig = a.sign(&msg);
        assert_eq!(b.verify(NodeId(1), &msg, &sig), Verdict::Valid);
        assert_eq!(b.verify(NodeId(1), &[4u8; 32], &sig), Verdict::Invalid);
        assert_eq!(b.verify(NodeId(2), &msg, &sig), Verdict::Invalid);
        assert_eq!(b.verify(NodeId(3), &msg, &sig), Verdict::UnknownOrigin);
        assert_eq!(b.verify(NodeId(1), &msg, &sig[..10]), Verdict::Invalid);
    }
}
