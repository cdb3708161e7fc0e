//! One eventual namespace on one node: its entries, the seen set that
//! summarizes them for anti-entropy, and the index that makes "what does a
//! peer lack?" cost proportional to the answer.

use crate::causal::{Dot, SeenSet, VersionVector};
use crate::crdt::{Entry, JoinError, ValueType};
use crate::signing::{self, Attestation, Head, KeyProof};
use crate::types::{Key, NodeId};
use crate::watch::{ChangeBatch, Feed};
use chorus_reconcile::{ItemIndex, RangeFingerprint};
use std::collections::{BTreeMap, BTreeSet};

/// Initial Fenwick size of a namespace's reconciliation index: small, since
/// most namespaces are small and a simulated cluster holds thousands; the
/// index regrows as the namespace does.
const RECONCILE_BUCKET_BITS_INITIAL: u8 = 4;

/// A position in the anti-entropy index: (origin, counter).
pub type IndexPosition = (NodeId, u64);

/// Per-namespace state.
///
/// Invariants:
/// * `index[o][c] == k` iff entry `k`'s clock has `clock[o] == c` (every
///   clock entry of every key is indexed once).
/// * `tombstones` holds exactly the keys whose entry `has_tombstone_parts()`.
/// * The seen-set invariant of [`SeenSet`].
/// * `recon` holds `(key, entry.digest())` for exactly the live
///   (non-tombstone) entries: what range-based reconciliation compares when
///   seen sets cannot tell two replicas apart.
#[derive(Clone, Debug)]
pub struct Namespace {
    name: String,
    value_type: ValueType,
    entries: BTreeMap<Key, Entry>,
    seen: SeenSet,
    index: BTreeMap<NodeId, BTreeMap<u64, Key>>,
    tombstones: BTreeSet<Key>,
    recon: ItemIndex,
    pub(crate) gc: GcEpoch,
    /// Pointwise maximum of the `min` vectors under which whole tombstones
    /// were collected: a watch position below it may have missed a delete
    /// (`docs/design/watch.md`, "Reset").
    collected_floor: VersionVector,
    /// The change recorder, while the node's feed is on.
    feed: Option<Feed>,
    /// Each entry's origin signatures, when signing is on
    /// (`docs/design/signing.md`): at most one per key of `entries`.
    proofs: BTreeMap<Key, KeyProof>,
    /// Per origin, the attestation of its greatest dot known here: backs
    /// this node's seen-set claims about that origin.
    heads: BTreeMap<NodeId, Head>,
}

/// Causal-stability bookkeeping for tombstone collection.
///
/// A tombstone may be dropped only when (1) every known node has seen it,
/// and (2) this node has seen every write that any node issued before
/// seeing it — otherwise a concurrent older write arriving after collection
/// would resurrect the key here but not on nodes that saw it first. An epoch
/// collects one summary from every known member; `min` is the pointwise
/// minimum of their seen prefixes (what everyone has seen) and `own` holds
/// each member's own write counter at that time (a bound on everything it
/// issued before reporting). A completed epoch makes tombstones covered by
/// `min` collectible once our seen set covers `own`.
#[derive(Clone, Debug, Default)]
pub(crate) struct GcEpoch {
    pub(crate) min: Option<VersionVector>,
    pub(crate) own: VersionVector,
    pub(crate) reported: BTreeSet<NodeId>,
    pub(crate) completed: Option<(VersionVector, VersionVector)>,
}

impl GcEpoch {
    pub(crate) fn report(&mut self, node: NodeId, seen_prefix: &VersionVector) {
        if !self.reported.insert(node) {
            // A newer report from the same node could only raise its
            // values; keeping the first is conservative.
            return;
        }
        self.own.raise(node, seen_prefix.get(node));
        self.min = Some(match self.min.take() {
            None => seen_prefix.clone(),
            Some(m) => m.meet(seen_prefix),
        });
    }

    /// Close the epoch if every member in `members` has reported.
    pub(crate) fn try_complete(&mut self, members: &BTreeSet<NodeId>) -> bool {
        if members.is_empty() || !members.iter().all(|m| self.reported.contains(m)) {
            return false;
        }
        let min = self.min.take().unwrap_or_default();
        let own = std::mem::take(&mut self.own);
        self.completed = Some((min, own));
        self.reported.clear();
        true
    }
}

/// The outcome of merging one incoming entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Our state changed.
    Changed,
    /// We already had everything it carries.
    Unchanged,
}

impl Namespace {
    pub fn new(name: String, value_type: ValueType) -> Self {
        Self {
            name,
            value_type,
            entries: BTreeMap::new(),
            seen: SeenSet::new(),
            index: BTreeMap::new(),
            tombstones: BTreeSet::new(),
            recon: ItemIndex::with_bucket_bits(RECONCILE_BUCKET_BITS_INITIAL),
            gc: GcEpoch::default(),
            collected_floor: VersionVector::new(),
            feed: None,
            proofs: BTreeMap::new(),
            heads: BTreeMap::new(),
        }
    }

    /// Start recording changes (see [`crate::watch`]).
    pub(crate) fn enable_feed(&mut self) {
        if self.feed.is_none() {
            self.feed = Some(Feed::new(self.seen.contiguous()));
        }
    }

    /// The changes recorded since the last call.
    pub(crate) fn take_feed(&mut self) -> Option<ChangeBatch> {
        let prefix = self.seen.contiguous().clone();
        self.feed.as_mut()?.take(&self.name, &prefix)
    }

    /// See the field: positions below it cannot be resumed here.
    pub fn collected_floor(&self) -> &VersionVector {
        &self.collected_floor
    }

    pub(crate) fn raise_collected_floor(&mut self, floor: &VersionVector) {
        self.collected_floor.merge(floor);
    }

    /// The index entries above `prefix`, per origin: the keys whose clock
    /// reaches above it (a key may appear under several origins).
    pub(crate) fn index_above<'a>(
        &'a self,
        prefix: &'a VersionVector,
    ) -> impl Iterator<Item = (NodeId, impl Iterator<Item = &'a Key> + 'a)> + 'a {
        self.index.iter().filter_map(move |(&origin, per)| {
            let from = prefix.get(origin).checked_add(1)?;
            Some((origin, per.range(from..).map(|(_, k)| k)))
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value_type(&self) -> ValueType {
        self.value_type
    }

    pub fn seen(&self) -> &SeenSet {
        &self.seen
    }

    pub(crate) fn seen_mut(&mut self) -> &mut SeenSet {
        &mut self.seen
    }

    pub(crate) fn set_seen(&mut self, seen: SeenSet) {
        self.seen = seen;
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter()
    }

    /// Keys starting with `prefix`, in order, at most `limit`, starting after `after`.
    pub fn scan<'a>(
        &'a self,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a Key, &'a Entry)> + 'a {
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_vec()),
            None => std::ops::Bound::Included(prefix.to_vec()),
        };
        self.entries
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .take(limit)
    }

    /// Our next own dot (the caller persists before exposing it); `None`
    /// once 2^64 - 1 writes were issued.
    pub(crate) fn next_dot(&self, me: NodeId) -> Option<Dot> {
        Some(Dot { node: me, counter: self.seen.contiguous().get(me).checked_add(1)? })
    }

    /// Our own write counter: only we issue our dots, so nobody else's
    /// claim about them is believed beyond this.
    pub(crate) fn own_counter(&self, me: NodeId) -> u64 {
        self.seen.contiguous().get(me)
    }

    pub fn proof(&self, key: &[u8]) -> Option<&KeyProof> {
        self.proofs.get(key)
    }

    pub(crate) fn take_proof(&mut self, key: &[u8]) -> Option<KeyProof> {
        self.proofs.remove(key)
    }

    pub(crate) fn set_proof(&mut self, key: Key, proof: KeyProof) {
        self.proofs.insert(key, proof);
    }

    pub fn heads(&self) -> &BTreeMap<NodeId, Head> {
        &self.heads
    }

    /// Remember `a` as `key`'s origin's head if it is greater than the one
    /// known. Returns whether it was.
    pub(crate) fn raise_head(&mut self, key: &[u8], a: &Attestation) -> bool {
        let origin = a.record.dot.node;
        if self.heads.get(&origin).is_some_and(|h| h.attestation.record.dot.counter >= a.record.dot.counter) {
            return false;
        }
        self.heads.insert(origin, Head { key: key.to_vec(), attestation: a.clone() });
        true
    }

    pub(crate) fn set_heads(&mut self, heads: BTreeMap<NodeId, Head>) {
        self.heads = heads;
    }

    /// Install `entry` at `key` (the result of a local op or a join),
    /// keeping the index and tombstone set in step.
    pub(crate) fn install(&mut self, key: Key, entry: Entry) {
        let old_clock = self.entries.get(&key).map(|e| e.clock().clone());
        if let Some(old) = &old_clock {
            for (o, c) in old.iter() {
                if entry.clock().get(o) != c
                    && let Some(per) = self.index.get_mut(&o)
                    && per.get(&c) == Some(&key)
                {
                    per.remove(&c);
                }
            }
        }
        for (o, c) in entry.clock().iter() {
            if old_clock.as_ref().is_none_or(|old| old.get(o) != c) {
                self.index.entry(o).or_default().insert(c, key.clone());
            }
        }
        if entry.has_tombstone_parts() {
            self.tombstones.insert(key.clone());
        } else {
            self.tombstones.remove(&key);
        }
        if entry.is_tombstone() {
            self.recon.remove(&key);
        } else {
            // Keys are at most limits::KEY_BYTES_MAX, the index's own limit,
            // so this cannot fail for a key that passed validation.
            let _ = self.recon.insert(key.clone(), entry.digest());
        }
        if let Some(feed) = self.feed.as_mut() {
            feed.record(key.clone(), old_clock.unwrap_or_default(), entry.clone(), self.seen.contiguous());
        }
        self.entries.insert(key, entry);
    }

    /// Join a remote entry into ours and mark its clock entries seen.
    pub(crate) fn merge(&mut self, key: &[u8], incoming: &Entry) -> Result<MergeOutcome, JoinError> {
        if incoming.value_type() != self.value_type {
            return Err(JoinError::TypeMismatch {
                ours: self.value_type.as_str(),
                theirs: incoming.value_type().as_str(),
            });
        }
        let outcome = match self.entries.get(key) {
            Some(current) => {
                let mut next = current.clone();
                if next.join(incoming)? {
                    self.install(key.to_vec(), next);
                    MergeOutcome::Changed
                } else {
                    MergeOutcome::Unchanged
                }
            }
            None => {
                let mut next = Entry::empty(self.value_type);
                next.join(incoming)?;
                self.install(key.to_vec(), next);
                MergeOutcome::Changed
            }
        };
        for (node, counter) in incoming.clock().iter() {
            self.seen.insert(Dot { node, counter });
        }
        Ok(outcome)
    }

    /// Entries a peer whose seen set is `peer` lacks: those with a clock
    /// entry the peer has not seen. Scans the index in (origin, counter)
    /// order from `start` (inclusive; `None`: the beginning) and returns at
    /// most `entries_max` entries and about `bytes_max` encoded bytes, the
    /// position to resume from when it stopped early (`None` when it
    /// reached the end).
    ///
    /// Cost: proportional to the entries indexed above the peer's prefix,
    /// i.e. to the gap, not to the namespace's size.
    pub(crate) fn missing_for(
        &self,
        peer: &SeenSet,
        start: Option<IndexPosition>,
        entries_max: usize,
        bytes_max: usize,
    ) -> (Vec<(Key, Entry)>, Option<IndexPosition>) {
        let mut keys: BTreeSet<&Key> = BTreeSet::new();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let origins = match start {
            Some((o, _)) => self.index.range(o..),
            None => self.index.range(..),
        };
        for (&origin, per) in origins {
            // A peer may claim any counter; u64::MAX means it lacks nothing.
            let Some(mut from) = peer.contiguous().get(origin).checked_add(1) else { continue };
            if let Some((o, c)) = start
                && o == origin
            {
                from = from.max(c);
            }
            for (&counter, key) in per.range(from..) {
                if peer.contains(Dot { node: origin, counter }) || keys.contains(key) {
                    continue;
                }
                let Some(entry) = self.entries.get(key) else { continue };
                let size = key.len() + entry.canonical_bytes().len();
                if out.len() >= entries_max || (bytes + size > bytes_max && !out.is_empty()) {
                    return (out, Some((origin, counter)));
                }
                bytes += size;
                keys.insert(key);
                out.push((key.clone(), entry.clone()));
            }
        }
        (out, None)
    }

    /// Collect what the completed GC epoch proves stable: whole tombstones
    /// (returned as `(key, None)`: the caller deletes them) and tombstone
    /// siblings inside MV registers (returned as `(key, Some(entry))`: the
    /// caller rewrites the entry).
    pub(crate) fn collect_garbage(&mut self, limit: usize) -> Vec<(Key, Option<Entry>)> {
        let Some((min, own)) = &self.gc.completed else { return Vec::new() };
        if !own.le(self.seen.contiguous()) {
            return Vec::new();
        }
        let min = min.clone();
        let mut floor_raised = false;
        let mut out = Vec::new();
        let mut examined = 0usize;
        let candidates: Vec<Key> = self.tombstones.iter().cloned().collect();
        for k in candidates {
            if out.len() >= limit {
                break;
            }
            examined += 1;
            let Some(entry) = self.entries.get(&k) else { continue };
            if entry.is_tombstone() && entry.clock().le(&min) {
                if let Some(e) = self.entries.remove(&k) {
                    for (o, c) in e.clock().iter() {
                        if let Some(per) = self.index.get_mut(&o)
                            && per.get(&c) == Some(&k)
                        {
                            per.remove(&c);
                        }
                    }
                }
                self.tombstones.remove(&k);
                self.recon.remove(&k);
                self.proofs.remove(&k);
                if !floor_raised {
                    self.collected_floor.merge(&min);
                    floor_raised = true;
                }
                out.push((k, None));
            } else {
                let mut pruned = entry.clone();
                if pruned.prune_stable_tombstone_siblings(&min) {
                    if let Some(p) = self.proofs.get(&k).and_then(|p| signing::rebuild(&pruned, [p])) {
                        self.proofs.insert(k.clone(), p);
                    }
                    self.install(k.clone(), pruned.clone());
                    out.push((k, Some(pruned)));
                }
            }
        }
        if examined >= self.tombstones.len() + out.iter().filter(|(_, e)| e.is_none()).count() {
            // Everything this epoch could prove is collected.
            self.gc.completed = None;
        }
        out
    }

    /// The reconciliation index of the live entries.
    pub fn reconcile_index(&self) -> &ItemIndex {
        &self.recon
    }

    /// Fingerprint of every live entry (order-independent; equal live states
    /// have equal fingerprints).
    pub fn fingerprint(&self) -> RangeFingerprint {
        self.recon.fingerprint()
    }

    /// BLAKE3 over the semantic state ([`Entry::semantic_bytes`]) of every
    /// live (non-tombstone) entry in key order. Nodes that converged have
    /// equal digests. Tombstones are excluded because each node collects them
    /// at its own pace once they are stable.
    pub fn live_digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for (k, e) in &self.entries {
            if e.is_tombstone() {
                continue;
            }
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k);
            let b = e.semantic_bytes();
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(&b);
        }
        *h.finalize().as_bytes()
    }

    /// Verify the index invariant (for tests and debugging; O(n)).
    pub fn check_index(&self) -> Result<(), String> {
        let mut n = 0;
        for (k, e) in &self.entries {
            for (o, c) in e.clock().iter() {
                n += 1;
                if self.index.get(&o).and_then(|p| p.get(&c)) != Some(k) {
                    return Err(format!("clock entry ({o},{c}) of {k:?} not indexed"));
                }
            }
        }
        let indexed: usize = self.index.values().map(|p| p.len()).sum();
        if indexed != n {
            return Err(format!("{indexed} index entries for {n} clock entries"));
        }
        Ok(())
    }
}
