//! Checkers for eventual namespaces, run after every fault is healed and
//! the cluster is quiet. They check the guarantees of eventual namespaces:
//! once the network heals and no new writes arrive, all reachable nodes hold
//! byte-identical state, and a write acknowledged by a node survives that
//! node's crash (`docs/design/fault-injection.md`, "Checkers (eventual
//! namespaces)").
//!
//! Like the checkers of black-box history testing (see
//! `docs/design/fault-injection.md`, "References"), they only look at what a
//! client could see: the history of invocations and completions, and the
//! final reads. An `unknown` operation may have taken effect at any time
//! after its invocation — even long after the client gave up, e.g. on a
//! paused node that resumes — or never, so it only ever *excuses* an
//! observation, never requires one.
//!
//! Strong namespaces (linearizable history, fencing tokens that only grow)
//! are checked by [`crate::strong_checker`] over the same [`Record`] history;
//! their violations use the kinds below too.

use crate::history::{ClientOp, Hlc, Outcome, Record};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Largest number of `unknown` increments on one counter for which the exact
/// subset-sum is computed; above it only the range is checked.
pub const SUBSET_SUM_UNKNOWN_MAX: usize = 4_096;
/// Largest span of reachable sums kept during the subset-sum.
pub const SUBSET_SUM_SPAN_MAX: usize = 1 << 20;

/// What one node answered for every key of the three namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeState {
    /// lww key → value (absent keys are deleted or never written).
    pub lww: BTreeMap<String, String>,
    /// counter key → value.
    pub counters: BTreeMap<String, i64>,
    /// set key → members.
    pub sets: BTreeMap<String, BTreeSet<String>>,
}

/// Which guarantee a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// Nodes did not reach identical state before the deadline.
    NotConverged,
    /// An acknowledged write (put or delete) is neither present nor
    /// superseded by a write with a higher timestamp.
    LostWrite,
    /// A value, member or count that no ok/unknown operation could produce.
    Phantom,
    /// A counter whose value is not the sum of the acknowledged increments
    /// plus some subset of the unknown ones.
    CounterMismatch,
    /// An acknowledged set add missing with no remove that could have
    /// observed it.
    LostAdd,
    /// A strong register's history has no linearization.
    NotLinearizable,
    /// The linearizability search gave up (counted as a violation: an
    /// unchecked history is not a passed one).
    Inconclusive,
    /// Two grants share a fencing token, or a later grant got a smaller one.
    FencingToken,
    /// A strong namespace could not be created, or read after the heal,
    /// with every node up and connected.
    StrongUnavailable,
}

/// One broken guarantee, with enough detail to find it in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub key: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} on {:?}: {}", self.kind, self.key, self.detail)
    }
}

/// The first difference between two nodes' states, if any.
pub fn first_difference(a: &NodeState, b: &NodeState) -> Option<String> {
    fn diff<V: PartialEq + std::fmt::Debug>(
        what: &str,
        a: &BTreeMap<String, V>,
        b: &BTreeMap<String, V>,
    ) -> Option<String> {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        keys.into_iter()
            .find(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{what} {k:?}: {:?} vs {:?}", a.get(k), b.get(k)))
    }
    diff("lww", &a.lww, &b.lww)
        .or_else(|| diff("counter", &a.counters, &b.counters))
        .or_else(|| diff("set", &a.sets, &b.sets))
}

/// Identical state on every node (names are for the message).
pub fn check_convergence(states: &[(String, NodeState)]) -> Vec<Violation> {
    let Some((first_name, first)) = states.first() else { return Vec::new() };
    states
        .iter()
        .skip(1)
        .filter_map(|(name, s)| {
            first_difference(first, s).map(|d| Violation {
                kind: ViolationKind::NotConverged,
                key: String::new(),
                detail: format!("{first_name} vs {name}: {d}"),
            })
        })
        .collect()
}

/// Every check against one (converged) state.
pub fn check_all(history: &[Record], state: &NodeState) -> Vec<Violation> {
    let mut v = check_lww(history, &state.lww);
    v.extend(check_counters(history, &state.counters));
    v.extend(check_sets(history, &state.sets));
    v
}

fn possibly_applied(r: &Record) -> bool {
    r.result != Outcome::Fail
}

/// LWW registers. Values are unique per run, so the final value names the
/// write `F` that won. The receipt of an acknowledged write carries its HLC
/// timestamp, and LWW keeps the greatest (physical, logical, node). So:
///
/// * a final value must come from an ok or unknown put (else `Phantom`);
/// * if `F` is acknowledged, no acknowledged write on the key may have a
///   greater timestamp (else that write was lost: `LostWrite`);
/// * if the key is absent, some ok/unknown delete must be able to beat the
///   acknowledged put with the greatest timestamp: an unknown delete
///   (timestamp unseen) or an ok delete with a greater timestamp;
/// * if `F` is unknown its timestamp is unseen and it may beat anything, so
///   only its existence is checked.
///
/// Real-time order is not used: with skewed clocks (within `max_offset`)
/// LWW legitimately lets an earlier write beat a later one.
pub fn check_lww(history: &[Record], finals: &BTreeMap<String, String>) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in history {
        if matches!(r.op, ClientOp::Put { .. } | ClientOp::Delete { .. }) {
            by_key.entry(r.op.key()).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for key in finals.keys() {
        if !by_key.contains_key(key.as_str()) {
            out.push(Violation {
                kind: ViolationKind::Phantom,
                key: key.clone(),
                detail: format!("value {:?} on a key nobody wrote", finals[key]),
            });
        }
    }
    for (key, writes) in by_key {
        let acked: Vec<(&Record, &Hlc)> =
            writes.iter().filter(|r| r.result == Outcome::Ok).filter_map(|r| r.ts.as_ref().map(|t| (*r, t))).collect();
        match finals.get(key) {
            Some(value) => {
                let winner = writes.iter().find(|r| matches!(&r.op, ClientOp::Put { value: v, .. } if v == value));
                let Some(winner) = winner.filter(|r| possibly_applied(r)) else {
                    out.push(Violation {
                        kind: ViolationKind::Phantom,
                        key: key.to_string(),
                        detail: format!("final value {value:?} was never written by an ok/unknown put"),
                    });
                    continue;
                };
                if let (Outcome::Ok, Some(wts)) = (winner.result, winner.ts.as_ref())
                    && let Some((lost, lts)) = acked.iter().filter(|(_, t)| *t > wts).max_by_key(|(_, t)| *t)
                {
                    out.push(Violation {
                        kind: ViolationKind::LostWrite,
                        key: key.to_string(),
                        detail: format!(
                            "acknowledged {:?} at {lts:?} is lost: final value {value:?} has the older {wts:?}",
                            lost.op
                        ),
                    });
                }
            }
            None => {
                let newest_put =
                    acked.iter().filter(|(r, _)| matches!(r.op, ClientOp::Put { .. })).max_by_key(|(_, t)| *t);
                if let Some((put, pts)) = newest_put {
                    let excused = writes.iter().any(|r| {
                        matches!(r.op, ClientOp::Delete { .. })
                            && match r.result {
                                Outcome::Unknown => true,
                                Outcome::Ok => r.ts.as_ref().is_none_or(|t| t > pts),
                                Outcome::Fail => false,
                            }
                    });
                    if !excused {
                        out.push(Violation {
                            kind: ViolationKind::LostWrite,
                            key: key.to_string(),
                            detail: format!(
                                "acknowledged {:?} at {pts:?} is lost: key is absent and no delete can be newer",
                                put.op
                            ),
                        });
                    }
                }
            }
        }
    }
    out
}

/// PN-counters: final = Σ ok amounts + Σ of some subset of unknown amounts.
/// Missing counters read as 0.
pub fn check_counters(history: &[Record], finals: &BTreeMap<String, i64>) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, (i64, Vec<i64>)> = BTreeMap::new();
    for r in history {
        if let ClientOp::Incr { key, amount } = &r.op {
            let e = by_key.entry(key.as_str()).or_default();
            match r.result {
                Outcome::Ok => e.0 = e.0.saturating_add(*amount),
                Outcome::Unknown => e.1.push(*amount),
                Outcome::Fail => {}
            }
        }
    }
    let mut out = Vec::new();
    for (key, value) in finals {
        if !by_key.contains_key(key.as_str()) && *value != 0 {
            out.push(Violation {
                kind: ViolationKind::Phantom,
                key: key.clone(),
                detail: format!("counter is {value} but nobody incremented it"),
            });
        }
    }
    for (key, (acked, unknown)) in by_key {
        let value = finals.get(key).copied().unwrap_or(0);
        let low = acked + unknown.iter().filter(|a| **a < 0).sum::<i64>();
        let high = acked + unknown.iter().filter(|a| **a > 0).sum::<i64>();
        let reachable = if value < low || value > high {
            false
        } else {
            subset_sum_reaches(&unknown, value - acked).unwrap_or(true)
        };
        if !reachable {
            out.push(Violation {
                kind: ViolationKind::CounterMismatch,
                key: key.to_string(),
                detail: format!(
                    "final {value}, acknowledged sum {acked}, {} unknown increments {unknown:?} allow only [{low}, {high}] (subset sums)",
                    unknown.len()
                ),
            });
        }
    }
    out
}

/// Whether some subset of `amounts` sums to `target`; `None` when the
/// problem is above the bounds (then the caller falls back to the range).
pub fn subset_sum_reaches(amounts: &[i64], target: i64) -> Option<bool> {
    if amounts.len() > SUBSET_SUM_UNKNOWN_MAX {
        return None;
    }
    let low: i64 = amounts.iter().filter(|a| **a < 0).sum();
    let high: i64 = amounts.iter().filter(|a| **a > 0).sum();
    if target < low || target > high {
        return Some(false);
    }
    let span = usize::try_from(high - low).ok()?.checked_add(1)?;
    if span > SUBSET_SUM_SPAN_MAX {
        return None;
    }
    // reach[i] == sum low + i is reachable.
    let mut reach = vec![false; span];
    reach[(-low) as usize] = true;
    for &a in amounts {
        let mut next = reach.clone();
        for (i, r) in reach.iter().enumerate() {
            if *r {
                let j = i as i64 + a;
                if (0..span as i64).contains(&j) {
                    next[j as usize] = true;
                }
            }
        }
        reach = next;
    }
    Some(reach[(target - low) as usize])
}

/// OR-sets (add wins). A remove without context removes the adds its node
/// has observed when it is applied; it can observe an add only if it is
/// applied after the add was, so a remove that *completed* before the add
/// was *invoked* cannot remove it. Hence an acknowledged add `A` of `m` must
/// be present unless some remove of `m` on that key is unknown (it may
/// apply at any later time) or ok with `complete > A.invoke`. Every final
/// member must come from an ok/unknown add.
pub fn check_sets(history: &[Record], finals: &BTreeMap<String, BTreeSet<String>>) -> Vec<Violation> {
    let mut adds: BTreeMap<(&str, &str), Vec<&Record>> = BTreeMap::new();
    let mut removes: BTreeMap<(&str, &str), Vec<&Record>> = BTreeMap::new();
    for r in history {
        match &r.op {
            ClientOp::Add { key, member } => adds.entry((key, member)).or_default().push(r),
            ClientOp::Remove { key, member } => removes.entry((key, member)).or_default().push(r),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (key, members) in finals {
        for m in members {
            let justified =
                adds.get(&(key.as_str(), m.as_str())).is_some_and(|v| v.iter().any(|r| possibly_applied(r)));
            if !justified {
                out.push(Violation {
                    kind: ViolationKind::Phantom,
                    key: key.clone(),
                    detail: format!("member {m:?} present but never added by an ok/unknown add"),
                });
            }
        }
    }
    for ((key, member), list) in &adds {
        let present = finals.get(*key).is_some_and(|s| s.contains(*member));
        if present {
            continue;
        }
        let rms = removes.get(&(*key, *member)).map(Vec::as_slice).unwrap_or(&[]);
        for add in list.iter().filter(|r| r.result == Outcome::Ok) {
            let excused = rms.iter().any(|r| match r.result {
                Outcome::Unknown => true,
                Outcome::Ok => r.complete_ns > add.invoke_ns,
                Outcome::Fail => false,
            });
            if !excused {
                out.push(Violation {
                    kind: ViolationKind::LostAdd,
                    key: key.to_string(),
                    detail: format!(
                        "acknowledged add of {member:?} (invoked at {} ns, worker {}) is missing and no remove could have observed it",
                        add.invoke_ns, add.worker
                    ),
                });
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: ClientOp, invoke: u64, complete: u64, result: Outcome, ts: Option<u64>) -> Record {
        Record {
            worker: 0,
            node: 0,
            op,
            invoke_ns: invoke,
            complete_ns: complete,
            result,
            ts: ts.map(|p| Hlc { physical_us: p, logical: 0, node: "0000000000000001".into() }),
            error: None,
            answer: None,
        }
    }
    fn put(k: &str, v: &str, i: u64, c: u64, res: Outcome, ts: Option<u64>) -> Record {
        rec(ClientOp::Put { key: k.into(), value: v.into() }, i, c, res, ts)
    }
    fn del(k: &str, i: u64, c: u64, res: Outcome, ts: Option<u64>) -> Record {
        rec(ClientOp::Delete { key: k.into() }, i, c, res, ts)
    }
    fn lww(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
    fn kinds(v: &[Violation]) -> Vec<ViolationKind> {
        v.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn the_newest_acknowledged_put_as_final_value_passes() {
        let h = vec![put("k", "a", 0, 1, Outcome::Ok, Some(10)), put("k", "b", 2, 3, Outcome::Ok, Some(20))];
        assert!(check_lww(&h, &lww(&[("k", "b")])).is_empty());
    }

    #[test]
    fn a_final_value_older_than_an_acknowledged_put_is_a_lost_write() {
        let h = vec![put("k", "a", 0, 1, Outcome::Ok, Some(10)), put("k", "b", 2, 3, Outcome::Ok, Some(20))];
        assert_eq!(kinds(&check_lww(&h, &lww(&[("k", "a")]))), vec![ViolationKind::LostWrite]);
    }

    #[test]
    fn an_acknowledged_put_missing_from_the_final_state_is_caught() {
        let h = vec![put("k", "a", 0, 1, Outcome::Ok, Some(10))];
        assert_eq!(kinds(&check_lww(&h, &lww(&[]))), vec![ViolationKind::LostWrite]);
        // A failed delete excuses nothing; an unknown one excuses it.
        let mut h2 = h.clone();
        h2.push(del("k", 2, 3, Outcome::Fail, None));
        assert_eq!(kinds(&check_lww(&h2, &lww(&[]))), vec![ViolationKind::LostWrite]);
        h2.push(del("k", 4, 5, Outcome::Unknown, None));
        assert!(check_lww(&h2, &lww(&[])).is_empty());
    }

    #[test]
    fn an_acknowledged_delete_older_than_the_put_does_not_excuse_an_absent_key() {
        let h = vec![del("k", 0, 1, Outcome::Ok, Some(5)), put("k", "a", 2, 3, Outcome::Ok, Some(10))];
        assert_eq!(kinds(&check_lww(&h, &lww(&[]))), vec![ViolationKind::LostWrite]);
        let h = vec![put("k", "a", 2, 3, Outcome::Ok, Some(10)), del("k", 4, 5, Outcome::Ok, Some(15))];
        assert!(check_lww(&h, &lww(&[])).is_empty());
    }

    #[test]
    fn an_unknown_put_may_win_over_anything_but_a_failed_or_unwritten_value_may_not() {
        let h = vec![put("k", "a", 0, 1, Outcome::Ok, Some(10)), put("k", "u", 2, 3, Outcome::Unknown, None)];
        assert!(check_lww(&h, &lww(&[("k", "u")])).is_empty());
        let h = vec![put("k", "a", 0, 1, Outcome::Ok, Some(10)), put("k", "f", 2, 3, Outcome::Fail, None)];
        assert_eq!(kinds(&check_lww(&h, &lww(&[("k", "f")]))), vec![ViolationKind::Phantom]);
        assert_eq!(kinds(&check_lww(&h, &lww(&[("k", "zzz")]))), vec![ViolationKind::Phantom]);
        assert_eq!(kinds(&check_lww(&h, &lww(&[("k", "a"), ("other", "x")]))), vec![ViolationKind::Phantom]);
    }

    #[test]
    fn counters_accept_exactly_the_acknowledged_sum_plus_a_subset_of_unknowns() {
        let inc = |a: i64, res| rec(ClientOp::Incr { key: "c".into(), amount: a }, 0, 1, res, None);
        let h = vec![
            inc(5, Outcome::Ok),
            inc(3, Outcome::Ok),
            inc(4, Outcome::Unknown),
            inc(10, Outcome::Unknown),
            inc(7, Outcome::Fail),
        ];
        let at = |v: i64| check_counters(&h, &[("c".to_string(), v)].into_iter().collect());
        for ok in [8, 12, 18, 22] {
            assert!(at(ok).is_empty(), "{ok}");
        }
        for bad in [7, 9, 15, 23, 25] {
            assert_eq!(kinds(&at(bad)), vec![ViolationKind::CounterMismatch], "{bad}");
        }
        // A lost acknowledged increment: missing counter reads 0.
        assert_eq!(kinds(&check_counters(&h, &BTreeMap::new())), vec![ViolationKind::CounterMismatch]);
    }

    #[test]
    fn subset_sum_handles_negative_amounts() {
        assert_eq!(subset_sum_reaches(&[-3, 5, 2], 4), Some(true));
        assert_eq!(subset_sum_reaches(&[-3, 5, 2], 1), Some(false));
        assert_eq!(subset_sum_reaches(&[], 0), Some(true));
    }

    #[test]
    fn a_missing_acknowledged_add_is_caught_unless_a_remove_could_have_seen_it() {
        let add = |i, c, res| rec(ClientOp::Add { key: "s".into(), member: "m".into() }, i, c, res, None);
        let rm = |i, c, res| rec(ClientOp::Remove { key: "s".into(), member: "m".into() }, i, c, res, None);
        let empty: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let full: BTreeMap<String, BTreeSet<String>> =
            [("s".to_string(), ["m".to_string()].into_iter().collect())].into_iter().collect();
        assert_eq!(kinds(&check_sets(&[add(10, 20, Outcome::Ok)], &empty)), vec![ViolationKind::LostAdd]);
        // A remove that completed before the add began cannot remove it.
        assert_eq!(
            kinds(&check_sets(&[rm(0, 5, Outcome::Ok), add(10, 20, Outcome::Ok)], &empty)),
            vec![ViolationKind::LostAdd]
        );
        assert!(check_sets(&[add(10, 20, Outcome::Ok), rm(15, 30, Outcome::Ok)], &empty).is_empty());
        assert!(check_sets(&[rm(0, 5, Outcome::Unknown), add(10, 20, Outcome::Ok)], &empty).is_empty());
        assert!(check_sets(&[add(10, 20, Outcome::Ok)], &full).is_empty());
        assert_eq!(kinds(&check_sets(&[add(10, 20, Outcome::Fail)], &full)), vec![ViolationKind::Phantom]);
    }

    #[test]
    fn diverged_nodes_are_reported_with_the_first_difference() {
        let mut a = NodeState::default();
        a.lww.insert("k".into(), "v".into());
        let b = NodeState::default();
        let v = check_convergence(&[("n1".into(), a.clone()), ("n2".into(), b), ("n3".into(), a)]);
        assert_eq!(kinds(&v), vec![ViolationKind::NotConverged]);
        assert!(v[0].detail.contains("n2") && v[0].detail.contains("\"k\""), "{}", v[0].detail);
    }
}
