//! The simulator's checkers: one function per invariant. Each returns the
//! violations it found as human-readable strings (empty: the invariant holds).

use chorus_core::crdt::{Entry, ValueType};
use chorus_core::{Dot, Node, Timestamp};
use std::collections::{BTreeMap, BTreeSet};

/// Checker names: every violation in a report starts with one of them.
pub const CONVERGENCE: &str = "convergence";
pub const ACKED_WRITES_SURVIVE: &str = "acked_writes_survive";
pub const SEEN_IMPLIES_REFLECTED: &str = "seen_implies_reflected";
pub const DOTS_UNIQUE: &str = "dots_unique";
pub const HLC_MONOTONE: &str = "hlc_monotone";
/// A write was acknowledged before its batch was on the node's disk.
pub const ACK_BEFORE_DURABLE: &str = "ack_before_durable";
/// A message claimed an own dot of the sender that was not yet on its disk.
pub const SENT_BEFORE_DURABLE: &str = "sent_before_durable";
/// One own dot was exposed (pushed or acknowledged) for two different writes.
pub const DOT_REUSED: &str = "dot_reused";
pub const RECOVERY: &str = "recovery";
pub const DECODE: &str = "decode";
pub const VALID_WRITE_REFUSED: &str = "valid_write_refused";
/// A node reported an honest peer as misbehaving (all simulated nodes are honest).
pub const FALSE_ALARM: &str = "false_alarm";

/// What an acknowledged client write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Put(Vec<u8>),
    Delete,
    Increment(i64),
    Add(Vec<u8>),
    Remove(Vec<u8>),
}

/// A write whose durable acknowledgement reached the client.
#[derive(Clone, Debug)]
pub struct AckedWrite {
    pub node: usize,
    pub namespace: String,
    pub namespace_type: ValueType,
    pub key: Vec<u8>,
    pub kind: WriteKind,
    pub dot: Dot,
    pub ts: Timestamp,
    pub at_us: u64,
}

/// A write whose client never learned the outcome (its node crashed or
/// halted with the write's batch in flight): it may or may not have been
/// applied, and both are correct.
#[derive(Clone, Debug)]
pub struct MaybeWrite {
    pub namespace: String,
    pub key: Vec<u8>,
    pub kind: WriteKind,
    pub at_us: u64,
}

/// Counter increments of unknown outcome, per key, beyond which any total
/// in their range is accepted (the subset sums would be too many to list).
const MAYBE_INCREMENTS_LISTED_MAX: usize = 12;

/// An acknowledged delete (`None`) or set-member removal, with its time.
type Removal<'a> = (u64, Option<&'a [u8]>);

/// Every node holds the same live state for every namespace, and has seen
/// the same writes.
pub fn convergence(nodes: &[&Node]) -> Vec<String> {
    let Some(first) = nodes.first() else { return Vec::new() };
    let mut out = Vec::new();
    let names: Vec<String> = first.namespaces().map(|n| n.name().to_string()).collect();
    for other in &nodes[1..] {
        let theirs: Vec<String> = other.namespaces().map(|n| n.name().to_string()).collect();
        if theirs != names {
            out.push(format!("node {} has namespaces {theirs:?}, node {} has {names:?}", other.id(), first.id()));
        }
    }
    for name in &names {
        let seen = first.namespace(name).map(|n| n.seen());
        let lagging = nodes.iter().filter(|n| n.namespace(name).map(|x| x.seen()) != seen).count();
        if lagging > 0 {
            out.push(format!(
                "namespace {name}: {lagging} of {} nodes have seen other writes than node {}",
                nodes.len(),
                first.id()
            ));
        }
        let reference = first.namespace(name).map(|n| n.live_digest());
        let differing: Vec<String> = nodes
            .iter()
            .filter(|n| n.namespace(name).map(|x| x.live_digest()) != reference)
            .map(|n| n.id().to_string())
            .collect();
        if !differing.is_empty() {
            let example = nodes
                .iter()
                .find(|n| n.namespace(name).map(|x| x.live_digest()) != reference)
                .and_then(|n| first_difference(first, n, name))
                .unwrap_or_default();
            out.push(format!(
                "namespace {name}: {} of {} nodes differ from node {} (e.g. {:?}){example}",
                differing.len(),
                nodes.len(),
                first.id(),
                &differing[..differing.len().min(3)]
            ));
        }
    }
    out
}

/// No acknowledged write is lost: each is present, or superseded by a
/// causally-later or LWW-later write, per its type's semantics.
///
/// `collected` names the keys this node collected as stable tombstones: a
/// later write to such a key starts a fresh clock, so for them a write is
/// "reflected" by its value semantics rather than by the clock.
///
/// `maybe` lists writes of unknown outcome: each may or may not be present
/// (a maybe-delete can explain an absent value, a maybe-increment a counter
/// total off by it).
pub fn acked_writes_survive(
    node: &Node,
    acked: &[AckedWrite],
    maybe: &[MaybeWrite],
    collected: &BTreeSet<(String, Vec<u8>)>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut counter_sums: BTreeMap<(&str, &[u8]), i128> = BTreeMap::new();
    // Keys that saw an acknowledged delete/remove at or after a given time
    // (an absent key or member is then a legitimate outcome).
    let mut removals: BTreeMap<(&str, &[u8]), Vec<Removal>> = BTreeMap::new();
    let mut maybe_increments: BTreeMap<(&str, &[u8]), Vec<i64>> = BTreeMap::new();
    // LWW keys with a delete of unknown outcome (its timestamp is unknown,
    // so it may beat any put).
    let mut maybe_lww_deletes: BTreeSet<(&str, &[u8])> = BTreeSet::new();
    for w in maybe {
        match &w.kind {
            WriteKind::Delete => {
                removals.entry((&w.namespace, &w.key)).or_default().push((w.at_us, None));
                maybe_lww_deletes.insert((&w.namespace, &w.key));
            }
            WriteKind::Remove(m) => {
                removals.entry((&w.namespace, &w.key)).or_default().push((w.at_us, Some(m)));
            }
            WriteKind::Increment(a) => maybe_increments.entry((&w.namespace, &w.key)).or_default().push(*a),
            _ => {}
        }
    }
    for w in acked {
        match &w.kind {
            WriteKind::Delete => {
                removals.entry((&w.namespace, &w.key)).or_default().push((w.at_us, None));
            }
            WriteKind::Remove(m) => {
                removals.entry((&w.namespace, &w.key)).or_default().push((w.at_us, Some(m)));
            }
            WriteKind::Increment(a) => *counter_sums.entry((&w.namespace, &w.key)).or_default() += i128::from(*a),
            _ => {}
        }
    }
    let removed_after = |w: &AckedWrite, member: Option<&[u8]>| {
        removals
            .get(&(w.namespace.as_str(), w.key.as_slice()))
            .is_some_and(|list| list.iter().any(|(at, m)| *at >= w.at_us && (m.is_none() || *m == member)))
    };
    for w in acked {
        let entry = node.namespace(&w.namespace).and_then(|ns| ns.get(&w.key));
        let gced = collected.contains(&(w.namespace.clone(), w.key.clone()));
        let reflected = |clock: &chorus_core::VersionVector, member: Option<&[u8]>| {
            clock.contains(w.dot) || (gced && removed_after(w, member))
        };
        let lost = match (&w.kind, entry) {
            (WriteKind::Put(v), Some(Entry::Lww(r))) => r.ts < w.ts || (r.ts == w.ts && r.value.as_ref() != Some(v)),
            // LWW: only a delete with a greater timestamp may hide a put,
            // whenever it was issued (a node whose clock runs ahead issues
            // later timestamps earlier in real time).
            (WriteKind::Put(_), None) if w.namespace_type == ValueType::Lww => {
                !maybe_lww_deletes.contains(&(w.namespace.as_str(), w.key.as_slice()))
                    && !acked.iter().any(|d| {
                        d.kind == WriteKind::Delete && d.namespace == w.namespace && d.key == w.key && d.ts > w.ts
                    })
            }
            (WriteKind::Put(_), None) => !removed_after(w, None),
            (WriteKind::Delete, Some(Entry::Lww(r))) => r.ts < w.ts,
            (WriteKind::Put(v), Some(Entry::Mv(r))) => {
                !reflected(&r.clock, None) || r.siblings.iter().any(|s| s.dot == w.dot && s.value.as_ref() != Some(v))
            }
            (WriteKind::Delete, Some(Entry::Mv(r))) => !r.clock.contains(w.dot) && !gced,
            (WriteKind::Add(m), Some(Entry::Set(s))) => {
                !reflected(&s.clock, Some(m)) || (!s.members.contains_key(m) && !removed_after(w, Some(m)))
            }
            (WriteKind::Add(m), None) => !removed_after(w, Some(m)),
            (WriteKind::Remove(_), Some(Entry::Set(s))) => !s.clock.contains(w.dot) && !gced,
            (WriteKind::Increment(_), Some(Entry::Counter(c))) => !c.clock.contains(w.dot),
            (WriteKind::Increment(_), None) => true,
            (WriteKind::Delete | WriteKind::Remove(_), None) => false,
            (_, Some(e)) => {
                out.push(format!("key {:?} holds a {:?} entry, unexpected for {:?}", w.key, e.value_type(), w.kind));
                false
            }
        };
        if lost {
            out.push(format!(
                "node {}: acknowledged {:?} of {}/{} (dot {}, ts {}, written on node index {}) is lost; entry: {}",
                node.id(),
                w.kind,
                w.namespace,
                String::from_utf8_lossy(&w.key),
                w.dot,
                w.ts,
                w.node,
                entry.map(describe).unwrap_or_else(|| "absent".into())
            ));
        }
    }
    for (&(ns, key), &sum) in &counter_sums {
        let got = match node.namespace(ns).and_then(|n| n.get(key)) {
            Some(e @ Entry::Counter(_)) => match e.read() {
                chorus_core::ReadValue::Counter(v) => i128::from(v),
                _ => 0,
            },
            _ => 0,
        };
        let extra = maybe_increments.get(&(ns, key)).map(Vec::as_slice).unwrap_or(&[]);
        if !possible_total(sum, extra, got) {
            out.push(format!(
                "node {}: counter {ns}/{} reads {got}, acknowledged increments sum to {sum} (and {} of unknown outcome: {extra:?})",
                node.id(),
                String::from_utf8_lossy(key),
                extra.len()
            ));
        }
    }
    out
}

/// Whether `got` is `acked` plus the sum of some subset of `maybe`.
fn possible_total(acked: i128, maybe: &[i64], got: i128) -> bool {
    if maybe.len() > MAYBE_INCREMENTS_LISTED_MAX {
        let low: i128 = maybe.iter().filter(|&&a| a < 0).map(|&a| i128::from(a)).sum();
        let high: i128 = maybe.iter().filter(|&&a| a > 0).map(|&a| i128::from(a)).sum();
        return (acked + low..=acked + high).contains(&got);
    }
    let mut sums: BTreeSet<i128> = std::iter::once(acked).collect();
    for &a in maybe {
        let next: Vec<i128> = sums.iter().map(|s| s + i128::from(a)).collect();
        sums.extend(next);
    }
    sums.contains(&got)
}

/// The seen-set invariant anti-entropy relies on: if a node claims to have
/// seen an acknowledged write's dot, its entry for that key reflects it.
pub fn seen_implies_reflected(
    node: &Node,
    acked: &[AckedWrite],
    collected: &BTreeSet<(String, Vec<u8>)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for w in acked {
        if collected.contains(&(w.namespace.clone(), w.key.clone())) {
            continue;
        }
        let Some(ns) = node.namespace(&w.namespace) else { continue };
        if !ns.seen().contains(w.dot) {
            continue;
        }
        if let Some(e) = ns.get(&w.key)
            && !e.clock().contains(w.dot)
        {
            out.push(format!(
                "node {} claims dot {} of {}/{} seen but its entry does not reflect it: {}",
                node.id(),
                w.dot,
                w.namespace,
                String::from_utf8_lossy(&w.key),
                describe(e)
            ));
        }
    }
    out
}

/// Acknowledged writes never share a dot (a reused dot would make two
/// different writes indistinguishable to every replica).
pub fn dots_unique(acked: &[AckedWrite]) -> Vec<String> {
    let mut seen: BTreeMap<(&str, Dot), usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, w) in acked.iter().enumerate() {
        if let Some(j) = seen.insert((&w.namespace, w.dot), i) {
            out.push(format!("dot {} in {} was issued to two acknowledged writes (#{j} and #{i})", w.dot, w.namespace));
        }
    }
    out
}

/// The namespaces every simulated cluster starts with, one per value type.
pub fn standard_namespaces() -> [(&'static str, ValueType); 4] {
    [("lww", ValueType::Lww), ("mv", ValueType::Mv), ("counter", ValueType::Counter), ("set", ValueType::Set)]
}

fn describe(e: &Entry) -> String {
    let mut s = format!("{e:?}");
    if s.len() > 600 {
        s.truncate(600);
        s.push('…');
    }
    s
}

/// The first key whose live state differs between two nodes, described.
fn first_difference(a: &Node, b: &Node, namespace: &str) -> Option<String> {
    let (na, nb) = (a.namespace(namespace)?, b.namespace(namespace)?);
    let live = |e: &&Entry| !e.is_tombstone();
    let keys: BTreeSet<&Vec<u8>> = na.entries().chain(nb.entries()).map(|(k, _)| k).collect();
    for k in keys {
        let (ea, eb) = (na.get(k).filter(live), nb.get(k).filter(live));
        if ea.map(|e| e.semantic_bytes()) != eb.map(|e| e.semantic_bytes()) {
            return Some(format!(
                "; key {:?}: node {} has {} / node {} has {}; seen {:?} vs {:?}",
                String::from_utf8_lossy(k),
                a.id(),
                na.get(k).map(describe).unwrap_or_else(|| "nothing".into()),
                b.id(),
                nb.get(k).map(describe).unwrap_or_else(|| "nothing".into()),
                na.seen(),
                nb.seen()
            ));
        }
    }
    None
}
