//! Causal metadata: dots, version vectors and the per-namespace seen set.
//!
//! A **dot** `(node, counter)` names one write. Each node numbers its writes
//! to a namespace densely from 1, so "node n has issued c writes" is a single
//! integer. A **version vector** maps nodes to counters; as the causal context
//! of one key it means "this state reflects every write of node n on this key
//! up to counter vv[n]", as in dotted version vectors and the DVV sets built
//! on them (see `docs/design/replication.md`, "References"). The **seen set**
//! is the namespace-wide summary of which dots a node has incorporated: a
//! contiguous prefix per origin plus a bounded set of out-of-order exceptions.

use crate::types::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One write: the `counter`-th write of `node` to a namespace (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub node: NodeId,
    pub counter: u64,
}

impl std::fmt::Display for Dot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({},{})", self.node, self.counter)
    }
}

/// A version vector. Absent entries are 0.
///
/// Stored as a vector of `(node, counter)` pairs sorted by node, with no
/// zero entries and no repeated node, so that equal vectors are equal
/// structurally and encode to equal bytes. A sorted vector costs 16 bytes
/// per entry (a `BTreeMap` about three times that), which is what lets a
/// simulated 2,000-node cluster, whose vectors have thousands of entries,
/// fit in memory. Decoding normalizes through [`VersionVector::from_entries`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct VersionVector(Vec<(NodeId, u64)>);

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs: Vec<(NodeId, u64)> = Vec::deserialize(deserializer)?;
        Ok(VersionVector::from_entries(pairs))
    }
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, node: NodeId) -> u64 {
        match self.0.binary_search_by_key(&node, |&(n, _)| n) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// Raise `node`'s entry to at least `counter`.
    pub fn raise(&mut self, node: NodeId, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.0.binary_search_by_key(&node, |&(n, _)| n) {
            Ok(i) => {
                if self.0[i].1 < counter {
                    self.0[i].1 = counter;
                }
            }
            Err(i) => self.0.insert(i, (node, counter)),
        }
    }

    /// Whether the dot is covered: `dot.counter <= self[dot.node]`.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.node)
    }

    /// Pointwise maximum (the join of the version-vector lattice), by a
    /// linear merge of the two sorted vectors.
    pub fn merge(&mut self, other: &VersionVector) {
        if other.0.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len().max(other.0.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            match a.0.cmp(&b.0) {
                std::cmp::Ordering::Less => {
                    out.push(a);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(b);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push((a.0, a.1.max(b.1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&self.0[i..]);
        out.extend_from_slice(&other.0[j..]);
        self.0 = out;
    }

    /// Pointwise `self <= other`.
    pub fn le(&self, other: &VersionVector) -> bool {
        self.0.iter().all(|&(n, c)| c <= other.get(n))
    }

    /// Pointwise minimum, keeping only nodes present in both.
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        VersionVector(
            self.0.iter().filter_map(|&(n, c)| Some((n, c.min(other.get(n)))).filter(|&(_, m)| m > 0)).collect(),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Build from any pairs (wire, disk), restoring the invariants: sorted,
    /// one entry per node (the maximum), no zero entries.
    pub fn from_entries(entries: impl IntoIterator<Item = (NodeId, u64)>) -> Self {
        let mut pairs: Vec<(NodeId, u64)> = entries.into_iter().filter(|&(_, c)| c > 0).collect();
        pairs.sort_unstable();
        let mut out: Vec<(NodeId, u64)> = Vec::with_capacity(pairs.len());
        for (n, c) in pairs {
            match out.last_mut() {
                Some(last) if last.0 == n => last.1 = last.1.max(c),
                _ => out.push((n, c)),
            }
        }
        VersionVector(out)
    }

    pub(crate) fn has_zero_entry(&self) -> bool {
        self.0.iter().any(|&(_, c)| c == 0)
    }
}

/// Exceptions kept per origin before the seen set gives up on the highest
/// ones. Dropping an exception only makes the summary smaller than the truth,
/// which costs a redundant transfer at the next anti-entropy round and never
/// loses data.
pub const SEEN_EXCEPTIONS_PER_ORIGIN_MAX: usize = 4096;

/// Which dots of one namespace a node has incorporated.
///
/// Invariant (the one anti-entropy relies on): if the seen set contains dot
/// `(o, c)` and that write was on key `k`, the node's entry for `k` has
/// `clock[o] >= c` — or `k` was a tombstone collected as causally stable.
/// So a peer's entry whose every clock entry is contained here is dominated
/// by our state and need not be sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenSet {
    contiguous: VersionVector,
    exceptions: BTreeMap<NodeId, BTreeSet<u64>>,
}

impl SeenSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The contiguous prefix: every dot `(n, c)` with `c <= contiguous[n]` is seen.
    pub fn contiguous(&self) -> &VersionVector {
        &self.contiguous
    }

    pub fn contains(&self, dot: Dot) -> bool {
        self.contiguous.contains(dot) || self.exceptions.get(&dot.node).is_some_and(|s| s.contains(&dot.counter))
    }

    /// Whether every entry of a key's clock is seen here.
    pub fn covers(&self, clock: &VersionVector) -> bool {
        clock.iter().all(|(node, counter)| self.contains(Dot { node, counter }))
    }

    /// Mark one dot seen. Returns false if it already was.
    pub fn insert(&mut self, dot: Dot) -> bool {
        if dot.counter == 0 || self.contains(dot) {
            return false;
        }
        let base = self.contiguous.get(dot.node);
        if dot.counter == base + 1 {
            self.contiguous.raise(dot.node, dot.counter);
            self.absorb(dot.node);
        } else {
            let set = self.exceptions.entry(dot.node).or_default();
            set.insert(dot.counter);
            while set.len() > SEEN_EXCEPTIONS_PER_ORIGIN_MAX {
                set.pop_last();
            }
        }
        true
    }

    /// Mark every dot of `other` seen (used only when a peer has sent us
    /// every entry it holds that we had not seen; see the invariant).
    pub fn merge(&mut self, other: &SeenSet) {
        self.contiguous.merge(&other.contiguous);
        for (&node, set) in &other.exceptions {
            let mine = self.exceptions.entry(node).or_default();
            mine.extend(set.iter().copied());
        }
        let nodes: Vec<NodeId> = self.exceptions.keys().copied().collect();
        for node in nodes {
            self.absorb(node);
        }
    }

    /// Move exceptions that became contiguous into the prefix and enforce bounds.
    fn absorb(&mut self, node: NodeId) {
        let Some(set) = self.exceptions.get_mut(&node) else { return };
        let mut base = self.contiguous.get(node);
        // Exceptions at or below the prefix are redundant.
        while let Some(&first) = set.first() {
            if first <= base {
                set.pop_first();
            } else if first == base + 1 {
                set.pop_first();
                base += 1;
            } else {
                break;
            }
        }
        while set.len() > SEEN_EXCEPTIONS_PER_ORIGIN_MAX {
            set.pop_last();
        }
        let empty = set.is_empty();
        self.contiguous.raise(node, base);
        if empty {
            self.exceptions.remove(&node);
        }
    }

    /// Forget any claim about `node` beyond `counter` (used to refuse a
    /// peer's claims about our own dots beyond what we issued).
    pub fn clamp_origin(&mut self, node: NodeId, counter: u64) {
        if self.contiguous.get(node) > counter {
            let mut vv = VersionVector::new();
            for (n, c) in self.contiguous.iter() {
                vv.raise(n, if n == node { counter } else { c });
            }
            self.contiguous = vv;
        }
        if let Some(set) = self.exceptions.get_mut(&node) {
            set.retain(|&c| c <= counter);
            if set.is_empty() {
                self.exceptions.remove(&node);
            }
        }
    }

    /// Exceptions above the contiguous prefix of `node`.
    pub fn exceptions(&self, node: NodeId) -> impl Iterator<Item = u64> + '_ {
        self.exceptions.get(&node).into_iter().flat_map(|s| s.iter().copied())
    }

    pub fn exception_count(&self) -> usize {
        self.exceptions.values().map(|s| s.len()).sum()
    }

    /// Rebuild from wire or disk data, restoring the normal form (no
    /// exception at or below the prefix, bounded exception sets).
    pub fn from_parts(contiguous: VersionVector, exceptions: BTreeMap<NodeId, BTreeSet<u64>>) -> Self {
        let mut s = SeenSet { contiguous, exceptions };
        let nodes: Vec<NodeId> = s.exceptions.keys().copied().collect();
        for node in nodes {
            s.absorb(node);
        }
        s
    }

    pub fn into_parts(self) -> (VersionVector, BTreeMap<NodeId, BTreeSet<u64>>) {
        (self.contiguous, self.exceptions)
    }

    pub fn parts(&self) -> (&VersionVector, &BTreeMap<NodeId, BTreeSet<u64>>) {
        (&self.contiguous, &self.exceptions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u64, c: u64) -> Dot {
        Dot { node: NodeId(n), counter: c }
    }

    #[test]
    fn out_of_order_dots_become_contiguous_when_the_gap_fills() {
        let mut s = SeenSet::new();
        assert!(s.insert(d(1, 2)));
        assert!(s.insert(d(1, 3)));
        assert_eq!(s.contiguous().get(NodeId(1)), 0);
        assert!(s.insert(d(1, 1)));
        assert_eq!(s.contiguous().get(NodeId(1)), 3);
        assert_eq!(s.exception_count(), 0);
        assert!(!s.insert(d(1, 2)), "a seen dot is not new");
    }

    #[test]
    fn merge_unions_prefixes_and_exceptions() {
        let mut a = SeenSet::new();
        a.insert(d(1, 1));
        a.insert(d(1, 3));
        let mut b = SeenSet::new();
        b.insert(d(1, 1));
        b.insert(d(1, 2));
        b.insert(d(2, 5));
        a.merge(&b);
        assert_eq!(a.contiguous().get(NodeId(1)), 3);
        assert!(a.contains(d(2, 5)));
        assert!(!a.contains(d(2, 4)));
    }

    #[test]
    fn exceptions_are_bounded_per_origin() {
        let mut s = SeenSet::new();
        for c in 0..(SEEN_EXCEPTIONS_PER_ORIGIN_MAX as u64 + 100) {
            s.insert(d(7, c + 2));
        }
        assert_eq!(s.exception_count(), SEEN_EXCEPTIONS_PER_ORIGIN_MAX);
        // Dropping the highest exceptions under-reports, never over-reports.
        assert!(!s.contains(d(7, SEEN_EXCEPTIONS_PER_ORIGIN_MAX as u64 + 90)));
    }
}
