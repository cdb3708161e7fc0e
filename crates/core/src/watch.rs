//! Change feeds and stream positions of eventual namespaces
//! (`docs/design/watch.md`).
//!
//! A node with its feed switched on ([`crate::Node::enable_change_feed`])
//! records every change it installs in an eventual namespace — the key, the
//! clock it had, the entry it has now — and the raises of the namespace's
//! contiguous seen prefix in between. The records of one persisted batch
//! leave as one [`ChangeBatch`], held behind that batch like every other
//! output, so a watcher never sees state a crash could take back.
//!
//! A watch stream's position is a [`StreamPosition`]: a version vector
//! `prefix` ("every write at or below it, on any key the stream watches, was
//! delivered") plus the delivered clocks of the few keys whose delivered
//! state reaches above it (`above`). It is a causal position, not a log
//! offset, so any node can resume it exactly: the dots a key's next event
//! newly covers are its clock minus the position, on every node alike.
//! Positions are bounded ([`POSITION_KEYS_MAX`], [`POSITION_BYTES_MAX`]);
//! a stream that would exceed them is closed as lagged and resumed by
//! catch-up, which also respects them.

use crate::causal::VersionVector;
use crate::crdt::Entry;
use crate::namespace::Namespace;
use crate::types::{Key, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Keys a position may list above its prefix. A stream whose position
/// would list more is closed as lagged (its last position stays valid);
/// a catch-up larger than this is refused as [`CatchUpError::GapTooLarge`].
pub const POSITION_KEYS_MAX: usize = 256;

/// Bytes (keys and clock entries, 16 per entry) the keys above a position's
/// prefix may take; the same rule as [`POSITION_KEYS_MAX`].
pub const POSITION_BYTES_MAX: usize = 32 << 10;

/// Entry bytes one catch-up returns at most (soft: one entry always goes).
pub const CATCH_UP_BYTES_MAX: usize = 16 << 20;

/// Index entries one catch-up (or [`Namespace::position_now`]) examines at
/// most: the walk runs on the node task, so a position far behind (writes
/// to other prefixes included) is refused as [`CatchUpError::GapTooLarge`]
/// rather than stalling the node. About 10–30 ms of work.
pub const CATCH_UP_WALK_MAX: usize = 1 << 18;

/// One change installed in a namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedItem {
    pub key: Key,
    /// The key's clock before the change (empty for a new key).
    pub old_clock: VersionVector,
    /// The key's entry after the change.
    pub entry: Entry,
    /// Raises of the namespace's contiguous seen prefix that hold once this
    /// change is delivered (every dot they add is covered by an entry
    /// installed at or before this one).
    pub raises: Vec<(NodeId, u64)>,
}

/// The changes of one namespace in one persisted batch, in the order they
/// were installed.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeBatch {
    pub namespace: String,
    pub items: Vec<FeedItem>,
    /// The namespace's contiguous seen prefix after the batch: a stream
    /// that delivered every change up to here may raise its position to it.
    pub prefix: VersionVector,
}

/// A namespace's recorder, present while the node's feed is on.
#[derive(Clone, Debug, Default)]
pub(crate) struct Feed {
    items: Vec<FeedItem>,
    /// The contiguous prefix as of the last record.
    last_prefix: VersionVector,
}

impl Feed {
    pub(crate) fn new(prefix: &VersionVector) -> Self {
        Feed { items: Vec::new(), last_prefix: prefix.clone() }
    }

    /// Origins whose contiguous prefix rose since the last record.
    fn raises(&mut self, prefix: &VersionVector) -> Vec<(NodeId, u64)> {
        let raised: Vec<(NodeId, u64)> = prefix.iter().filter(|&(n, c)| c > self.last_prefix.get(n)).collect();
        self.last_prefix = prefix.clone();
        raised
    }

    pub(crate) fn record(&mut self, key: Key, old_clock: VersionVector, entry: Entry, prefix: &VersionVector) {
        let raises = self.raises(prefix);
        self.items.push(FeedItem { key, old_clock, entry, raises });
    }

    /// The batch recorded since the last call, if anything changed.
    pub(crate) fn take(&mut self, namespace: &str, prefix: &VersionVector) -> Option<ChangeBatch> {
        let raised = !self.raises(prefix).is_empty();
        if self.items.is_empty() && !raised {
            return None;
        }
        Some(ChangeBatch {
            namespace: namespace.to_string(),
            items: std::mem::take(&mut self.items),
            prefix: prefix.clone(),
        })
    }
}

/// Write dots `first..=last` of `node`, as an event lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DotRange {
    pub node: NodeId,
    pub first: u64,
    pub last: u64,
}

/// Where a watch stream is: see the module documentation.
///
/// Invariant: for every key `k` the stream watches, every write on `k` whose
/// dot is at or below `delivered(k)` (the pointwise maximum of `prefix` and
/// `above[k]`) was covered by an event the stream delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub prefix: VersionVector,
    /// Delivered clocks of keys above `prefix`, keeping only the entries
    /// above it.
    pub above: BTreeMap<Key, VersionVector>,
}

/// Why a position could not take one more key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the stream position would list more than {POSITION_KEYS_MAX} keys or {POSITION_BYTES_MAX} bytes above its prefix"
)]
pub struct PositionFull;

impl StreamPosition {
    /// The position of a stream that delivered nothing.
    pub fn origin() -> Self {
        Self::default()
    }

    fn delivered_of(&self, key: &[u8], node: NodeId) -> u64 {
        let base = self.prefix.get(node);
        self.above.get(key).map_or(base, |vv| base.max(vv.get(node)))
    }

    /// The write dots on `key` that a state with `clock` covers and this
    /// position does not: what an event delivering it newly covers.
    pub fn new_dots(&self, key: &[u8], clock: &VersionVector) -> Vec<DotRange> {
        clock
            .iter()
            .filter_map(|(node, c)| {
                let base = self.delivered_of(key, node);
                (c > base).then_some(DotRange { node, first: base + 1, last: c })
            })
            .collect()
    }

    /// Whether a state with `clock` for `key` adds nothing to this position.
    pub fn covers(&self, key: &[u8], clock: &VersionVector) -> bool {
        clock.iter().all(|(node, c)| c <= self.delivered_of(key, node))
    }

    /// Note that `key`'s state with `clock` was delivered. Fails (changing
    /// nothing) when the position would exceed its bounds.
    pub fn record(&mut self, key: &[u8], clock: &VersionVector) -> Result<(), PositionFull> {
        let above: Vec<(NodeId, u64)> = clock.iter().filter(|&(n, c)| c > self.prefix.get(n)).collect();
        if above.is_empty() {
            return Ok(());
        }
        if !self.above.contains_key(key)
            && (self.above.len() >= POSITION_KEYS_MAX
                || self.bytes() + key.len() + 16 * above.len() > POSITION_BYTES_MAX)
        {
            return Err(PositionFull);
        }
        let slot = self.above.entry(key.to_vec()).or_default();
        for (n, c) in above {
            slot.raise(n, c);
        }
        Ok(())
    }

    /// Raise the prefix (every write of `node` up to `counter` delivered),
    /// dropping what it now covers from `above`.
    pub fn raise(&mut self, node: NodeId, counter: u64) {
        if counter <= self.prefix.get(node) {
            return;
        }
        self.prefix.raise(node, counter);
        self.above.retain(|_, vv| {
            if vv.get(node) > 0 {
                *vv = VersionVector::from_entries(vv.iter().filter(|&(n, c)| !(n == node && c <= counter)));
            }
            !vv.is_empty()
        });
    }

    /// Raise the prefix to `prefix` pointwise.
    pub fn raise_to(&mut self, prefix: &VersionVector) {
        for (n, c) in prefix.iter() {
            self.raise(n, c);
        }
    }

    /// Encoded size of `above`, as bounded by [`POSITION_BYTES_MAX`].
    pub fn bytes(&self) -> usize {
        self.above.iter().map(|(k, vv)| k.len() + 16 * vv.len()).sum()
    }
}

/// One event a stream delivers: which item (of the batch or the
/// catch-up), the dots it newly covers, and the position after it (its
/// token).
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub index: usize,
    pub dots: Vec<DotRange>,
    pub position: StreamPosition,
}

impl StreamPosition {
    /// Deliver one state of `key` if it adds anything; `then` runs on the
    /// position after the state is recorded (raises that hold from there).
    fn deliver_one(
        &mut self,
        index: usize,
        key: &[u8],
        clock: &VersionVector,
        then: impl FnOnce(&mut StreamPosition),
    ) -> Result<Option<Delivery>, PositionFull> {
        let dots = self.new_dots(key, clock);
        if dots.is_empty() {
            then(self);
            return Ok(None);
        }
        self.record(key, clock)?;
        then(self);
        Ok(Some(Delivery { index, dots, position: self.clone() }))
    }

    /// The events of one durable batch for a stream watching `prefix`, in
    /// install order. The last event's position already includes the
    /// batch's final prefix (nothing the stream watches changes after it
    /// in this batch). On `Err` nothing is returned and the position is as
    /// before the batch: the caller closes the stream as lagged with it.
    pub fn apply_batch(&mut self, prefix: &[u8], batch: &ChangeBatch) -> Result<Vec<Delivery>, PositionFull> {
        let matching: Vec<usize> = batch
            .items
            .iter()
            .enumerate()
            .filter(|(_, it)| it.key.starts_with(prefix) && !self.covers(&it.key, it.entry.clock()))
            .map(|(i, _)| i)
            .collect();
        let last = matching.last().copied();
        let before = self.clone();
        let mut out = Vec::with_capacity(matching.len());
        for (i, it) in batch.items.iter().enumerate() {
            if last.is_some_and(|l| i > l) {
                break;
            }
            if matching.binary_search(&i).is_err() {
                self.raise_all(&it.raises);
                continue;
            }
            let delivered = self.deliver_one(i, &it.key, it.entry.clock(), |p| {
                p.raise_all(&it.raises);
                if Some(i) == last {
                    for later in &batch.items[i + 1..] {
                        p.raise_all(&later.raises);
                    }
                    p.raise_to(&batch.prefix);
                }
            });
            match delivered {
                Ok(d) => out.extend(d),
                Err(e) => {
                    *self = before;
                    return Err(e);
                }
            }
        }
        self.raise_to(&batch.prefix);
        Ok(out)
    }

    /// The events of a catch-up, in key order; the last one's position
    /// includes the catch-up's prefix.
    pub fn apply_catch_up(&mut self, catch_up: &CatchUp) -> Result<Vec<Delivery>, PositionFull> {
        let mut out = Vec::with_capacity(catch_up.items.len());
        let last = catch_up.items.len().saturating_sub(1);
        for (i, (key, entry)) in catch_up.items.iter().enumerate() {
            out.extend(self.deliver_one(i, key, entry.clock(), |p| {
                if i == last {
                    p.raise_to(&catch_up.prefix);
                }
            })?);
        }
        self.raise_to(&catch_up.prefix);
        Ok(out)
    }

    fn raise_all(&mut self, raises: &[(NodeId, u64)]) {
        for &(n, c) in raises {
            self.raise(n, c);
        }
    }
}

/// What a catch-up found: the keys whose state the position lacks, in key
/// order, and the namespace's contiguous prefix at that moment (the stream
/// raises its position to it after delivering `items`).
#[derive(Clone, Debug, PartialEq)]
pub struct CatchUp {
    pub items: Vec<(Key, Entry)>,
    pub prefix: VersionVector,
}

/// Why a catch-up could not be served now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatchUpError {
    /// This node has not yet seen everything the position covers; `missing`
    /// lists, per origin, the highest counter it still lacks.
    #[error("this node has not caught up with the stream position yet")]
    Behind { missing: VersionVector },
    /// More keys differ than a position can carry; the client re-reads
    /// (snapshot) and continues from the snapshot's position.
    #[error("the position is more than {POSITION_KEYS_MAX} keys behind")]
    GapTooLarge,
    /// Tombstones this position may not have delivered were collected.
    #[error("the deletions after this position were collected")]
    Compacted,
}

impl Namespace {
    /// The catch-up of a stream at `from` watching keys under `prefix`:
    /// every key whose state covers a write `from` lacks.
    ///
    /// Cost: proportional to the index entries above `from`'s prefix (the
    /// gap), as for anti-entropy.
    pub fn catch_up(&self, prefix: &[u8], from: &StreamPosition) -> Result<CatchUp, CatchUpError> {
        let contiguous = self.seen().contiguous();
        let mut missing = VersionVector::new();
        for (n, c) in from.prefix.iter() {
            if contiguous.get(n) < c {
                missing.raise(n, c);
            }
        }
        for (key, vv) in &from.above {
            let have = self.get(key).map(|e| e.clock());
            for (n, c) in vv.iter() {
                if contiguous.get(n) < c && have.is_none_or(|h| h.get(n) < c) {
                    missing.raise(n, c);
                }
            }
        }
        if !missing.is_empty() {
            return Err(CatchUpError::Behind { missing });
        }
        if !self.collected_floor().le(&from.prefix) {
            return Err(CatchUpError::Compacted);
        }
        let mut keys: BTreeSet<&Key> = BTreeSet::new();
        let mut walked = 0usize;
        for (_origin, per) in self.index_above(&from.prefix) {
            for key in per {
                walked += 1;
                if walked > CATCH_UP_WALK_MAX {
                    return Err(CatchUpError::GapTooLarge);
                }
                if !key.starts_with(prefix) || keys.contains(key) {
                    continue;
                }
                let Some(entry) = self.get(key) else { continue };
                if from.covers(key, entry.clock()) {
                    continue;
                }
                if keys.len() >= POSITION_KEYS_MAX {
                    return Err(CatchUpError::GapTooLarge);
                }
                keys.insert(key);
            }
        }
        let mut items = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        let mut position = from.clone();
        for key in keys {
            let Some(entry) = self.get(key) else { continue };
            bytes += key.len() + entry.canonical_bytes().len();
            if bytes > CATCH_UP_BYTES_MAX && !items.is_empty() {
                return Err(CatchUpError::GapTooLarge);
            }
            position.record(key, entry.clock()).map_err(|_| CatchUpError::GapTooLarge)?;
            items.push((key.clone(), entry.clone()));
        }
        Ok(CatchUp { items, prefix: contiguous.clone() })
    }

    /// The position of a stream that starts now, having delivered this
    /// node's whole state under `prefix` (it watches changes from here on).
    pub fn position_now(&self, prefix: &[u8]) -> Result<StreamPosition, PositionFull> {
        let prefix_now = self.seen().contiguous().clone();
        let mut position = StreamPosition { prefix: prefix_now.clone(), above: BTreeMap::new() };
        let mut walked = 0usize;
        for (_, per) in self.index_above(&prefix_now) {
            for key in per {
                walked += 1;
                if walked > CATCH_UP_WALK_MAX {
                    return Err(PositionFull);
                }
                if !key.starts_with(prefix) {
                    continue;
                }
                if let Some(entry) = self.get(key) {
                    position.record(key, entry.clock())?;
                }
            }
        }
        Ok(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_entries(pairs.iter().map(|&(n, c)| (NodeId(n), c)))
    }

    #[test]
    fn new_dots_are_the_clock_minus_the_position() {
        let mut p = StreamPosition::origin();
        p.raise(NodeId(1), 4);
        assert_eq!(
            p.new_dots(b"k", &vv(&[(1, 7), (2, 2)])),
            vec![DotRange { node: NodeId(1), first: 5, last: 7 }, DotRange { node: NodeId(2), first: 1, last: 2 }]
        );
        p.record(b"k", &vv(&[(1, 7), (2, 2)])).unwrap();
        assert!(p.covers(b"k", &vv(&[(1, 7), (2, 2)])));
        assert!(!p.covers(b"j", &vv(&[(1, 5)])), "another key's dots above the prefix are not delivered");
        assert_eq!(p.new_dots(b"k", &vv(&[(1, 9)])), vec![DotRange { node: NodeId(1), first: 8, last: 9 }]);
        p.raise(NodeId(1), 7);
        assert_eq!(p.above.get(b"k".as_slice()), Some(&vv(&[(2, 2)])), "the raise drops what the prefix covers");
        p.raise(NodeId(2), 3);
        assert!(p.above.is_empty());
    }

    #[test]
    fn a_full_position_refuses_a_new_key_and_changes_nothing() {
        let mut p = StreamPosition::origin();
        for i in 0..POSITION_KEYS_MAX {
            p.record(format!("k{i}").as_bytes(), &vv(&[(1, i as u64 + 1)])).unwrap();
        }
        let before = p.clone();
        assert_eq!(p.record(b"one-more", &vv(&[(1, 1)])), Err(PositionFull));
        assert_eq!(p, before);
        // A key already listed may still grow.
        p.record(b"k0", &vv(&[(1, 9)])).unwrap();
        // Below the prefix nothing is listed at all.
        p.raise(NodeId(1), 10_000);
        p.record(b"one-more", &vv(&[(1, 1)])).unwrap();
        assert!(p.above.is_empty());
    }

    fn write(ns: &mut Namespace, key: &[u8], op: crate::crdt::Op, node: u64) {
        let me = NodeId(node);
        let dot = ns.next_dot(me).unwrap();
        let mut entry = ns.get(key).cloned().unwrap_or_else(|| Entry::empty(ns.value_type()));
        let ts = crate::hlc::Timestamp { physical_us: dot.counter, logical: 0, node: me };
        entry.apply(&op, dot, ts).unwrap();
        ns.seen_mut().insert(dot);
        ns.install(key.to_vec(), entry);
    }

    #[test]
    fn a_position_from_before_a_collected_delete_is_refused_as_compacted_and_one_after_it_is_served() {
        use crate::crdt::{Op, ValueType};
        let mut ns = Namespace::new("n".into(), ValueType::Lww);
        write(&mut ns, b"k", Op::Put { value: b"v".to_vec(), context: None }, 1);
        write(&mut ns, b"k", Op::Delete { context: None }, 1);
        write(&mut ns, b"j", Op::Put { value: b"w".to_vec(), context: None }, 1);
        let before = StreamPosition::origin();
        assert!(ns.catch_up(b"", &before).is_ok(), "nothing collected yet");
        // A completed GC epoch proving node 1's first two writes stable.
        ns.gc.completed = Some((vv(&[(1, 2)]), VersionVector::new()));
        let collected = ns.collect_garbage(16);
        assert_eq!(collected, vec![(b"k".to_vec(), None)], "the tombstone of k is collected");
        assert_eq!(ns.catch_up(b"", &before), Err(CatchUpError::Compacted), "the delete of k cannot be delivered");
        let mut after = StreamPosition::origin();
        after.raise(NodeId(1), 2);
        let c = ns.catch_up(b"", &after).expect("a position past the collected delete is served");
        assert_eq!(c.items.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![b"j".to_vec()]);
    }

    #[test]
    fn the_collected_floor_survives_a_restart_and_a_damaged_record_counts_as_everything_collected() {
        use crate::crdt::ValueType;
        use crate::node::{Node, NodeConfig};
        use crate::persist::{self, RecoveryImage};
        let mut seen = crate::causal::SeenSet::new();
        for c in 1..=5 {
            seen.insert(crate::causal::Dot { node: NodeId(2), counter: c });
        }
        let record = persist::namespace_record(ValueType::Lww, crate::wire::WireSeen::from(&seen));
        let image = |floor: Vec<u8>| -> RecoveryImage {
            let mut image = RecoveryImage::new();
            image
                .entry(persist::NAMESPACES_SPACE.to_string())
                .or_default()
                .insert(b"n".to_vec(), persist::encode_namespace_record(&record));
            image
                .entry(persist::META_SPACE.to_string())
                .or_default()
                .insert(format!("{}n", persist::GC_FLOOR_PREFIX).into_bytes(), floor);
            image
        };
        let node = Node::recover(NodeId(1), NodeConfig::default(), 1, &image(persist::encode_gc_floor(&vv(&[(2, 3)]))))
            .unwrap();
        assert_eq!(node.namespace("n").unwrap().collected_floor(), &vv(&[(2, 3)]));
        let mut damaged = persist::encode_gc_floor(&vv(&[(2, 3)]));
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let node = Node::recover(NodeId(1), NodeConfig::default(), 1, &image(damaged)).unwrap();
        assert_eq!(node.namespace("n").unwrap().collected_floor(), &vv(&[(2, 5)]), "the whole seen prefix");
    }
}
