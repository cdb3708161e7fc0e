//! Checks of strong namespaces (`docs/design/fault-injection.md`), over the
//! same client history as the eventual checkers:
//!
//! * **Linearizability** of the registers `r0..r7`: the history is handed
//!   to `chorus_strong::linearizability` (Wing & Gong's search with Lowe's
//!   memoization, one key at a time — Herlihy & Wing's locality). `unknown`
//!   ops may take effect at any time after invocation or never; `fail` ops
//!   are dropped. A search that hits its step bound is *inconclusive*,
//!   which is reported as a violation, not a pass.
//! * **Fencing tokens**: tokens of acknowledged grants are unique, and a
//!   grant that completed before another was invoked has the smaller token
//!   (a resource can only refuse a stale holder if tokens grow in real-time
//!   order; see `docs/design/fault-injection.md`, "References").

use crate::checker::{Violation, ViolationKind};
use crate::history::{Answer, ClientOp, Outcome, Record};
use chorus_strong::linearizability::{self as lin, CheckError, Operation, RegisterOp};
use std::collections::BTreeMap;

/// What the strong checks saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StrongStats {
    /// Register ops (reads, writes, CAS), every outcome.
    pub register_ops: usize,
    /// Register ops with an unknown outcome.
    pub unknown: usize,
    /// Most unknown writes/CAS on one key (what the search cost grows with).
    pub unknown_per_key_max: usize,
    /// Keys whose search was inconclusive.
    pub inconclusive: usize,
    /// Lock requests, and how many were acknowledged grants.
    pub lock_requests: usize,
    pub grants: usize,
}

/// The register op of a record, if it is one.
fn register_op(r: &Record) -> Option<Operation> {
    let (key, op) = match &r.op {
        ClientOp::LinRead { key } => (key, RegisterOp::Read),
        ClientOp::LinWrite { key, value } => (key, RegisterOp::Write(value.clone().into_bytes())),
        ClientOp::LinCas { key, expected, value } => (
            key,
            RegisterOp::Cas {
                expected: expected.as_ref().map(|e| e.clone().into_bytes()),
                new: value.clone().into_bytes(),
            },
        ),
        _ => return None,
    };
    let outcome = match (r.result, &r.answer, &op) {
        (Outcome::Fail, ..) => lin::Outcome::Fail,
        (Outcome::Unknown, ..) => lin::Outcome::Unknown,
        (Outcome::Ok, Some(Answer::Read(v)), RegisterOp::Read) => {
            lin::Outcome::Read(v.as_ref().map(|v| v.clone().into_bytes()))
        }
        (Outcome::Ok, _, RegisterOp::Write(_)) => lin::Outcome::Written,
        (Outcome::Ok, Some(Answer::Cas(b)), RegisterOp::Cas { .. }) => lin::Outcome::Cas(*b),
        // An ok record without its answer: nothing was learnt.
        (Outcome::Ok, ..) => lin::Outcome::Unknown,
    };
    // Microseconds, rounded outwards: intervals only widen, which can hide
    // a violation shorter than 1 µs but never invent one.
    Some(Operation {
        process: u64::from(r.worker),
        key: key.clone().into_bytes(),
        op,
        invoke: r.invoke_ns / 1_000,
        complete: r.complete_ns.div_ceil(1_000),
        outcome,
    })
}

/// Linearizability of every register, one search per key (so every bad key
/// is reported, not only the first).
pub fn check_linearizable(history: &[Record]) -> (Vec<Violation>, StrongStats) {
    let mut stats = StrongStats::default();
    let mut by_key: BTreeMap<Vec<u8>, Vec<Operation>> = BTreeMap::new();
    for op in history.iter().filter_map(register_op) {
        stats.register_ops += 1;
        stats.unknown += usize::from(op.outcome == lin::Outcome::Unknown);
        by_key.entry(op.key.clone()).or_default().push(op);
    }
    let mut out = Vec::new();
    for (key, ops) in by_key {
        let key = String::from_utf8_lossy(&key).into_owned();
        let unknown_writes =
            ops.iter().filter(|o| o.outcome == lin::Outcome::Unknown && o.op != RegisterOp::Read).count();
        stats.unknown_per_key_max = stats.unknown_per_key_max.max(unknown_writes);
        let Err(e) = lin::check_registers(&ops) else { continue };
        let (kind, detail) = match &e {
            CheckError::Inconclusive { steps, .. } => {
                stats.inconclusive += 1;
                (
                    ViolationKind::Inconclusive,
                    format!(
                        "linearizability search inconclusive after {steps} steps ({} ops, {unknown_writes} unknown writes): not a pass",
                        ops.len()
                    ),
                )
            }
            CheckError::NotLinearizable { ops: n, .. } => (
                ViolationKind::NotLinearizable,
                format!("no linearization of the register's {n} ops ({unknown_writes} unknown writes)"),
            ),
            other => (ViolationKind::NotLinearizable, format!("malformed history: {other}")),
        };
        out.push(Violation { kind, key, detail });
    }
    (out, stats)
}

/// Fencing tokens of acknowledged grants: unique, and increasing in
/// real-time order (grant A completed before grant B was invoked ⇒
/// token(A) < token(B)). One violation per offending later grant.
pub fn check_fencing(history: &[Record]) -> (Vec<Violation>, StrongStats) {
    let mut stats = StrongStats::default();
    let mut grants: Vec<(&Record, &str, u64)> = Vec::new();
    for r in history {
        if let ClientOp::Lock { key, .. } = &r.op {
            stats.lock_requests += 1;
            if let (Outcome::Ok, Some(Answer::Token(t))) = (r.result, &r.answer) {
                grants.push((r, key, *t));
            }
        }
    }
    stats.grants = grants.len();
    let mut out = Vec::new();
    let mut by_token: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for (r, _, t) in &grants {
        by_token.entry(*t).or_default().push(r);
    }
    for (t, rs) in by_token.iter().filter(|(_, rs)| rs.len() > 1) {
        let who: Vec<String> =
            rs.iter().map(|r| format!("worker {} lease {:?} at {} ns", r.worker, lease_of(r), r.invoke_ns)).collect();
        out.push(Violation {
            kind: ViolationKind::FencingToken,
            key: lock_of(rs[0]).to_string(),
            detail: format!("fencing token {t} granted {} times: {}", rs.len(), who.join("; ")),
        });
    }
    for (b, lock, tb) in &grants {
        let earlier =
            grants.iter().filter(|(a, _, ta)| a.complete_ns < b.invoke_ns && ta >= tb).max_by_key(|(_, _, ta)| *ta);
        if let Some((a, _, ta)) = earlier {
            out.push(Violation {
                kind: ViolationKind::FencingToken,
                key: lock.to_string(),
                detail: format!(
                    "grant to lease {:?} (worker {}, invoked at {} ns) got token {tb}, but a grant to lease {:?} (worker {}) that completed earlier at {} ns got {ta}",
                    lease_of(b),
                    b.worker,
                    b.invoke_ns,
                    lease_of(a),
                    a.worker,
                    a.complete_ns
                ),
            });
        }
    }
    (out, stats)
}

fn lease_of(r: &Record) -> Option<u64> {
    match r.op {
        ClientOp::Lock { lease, .. } => Some(lease),
        _ => None,
    }
}

fn lock_of(r: &Record) -> &str {
    r.op.key()
}

/// Both strong checks.
pub fn check_strong(history: &[Record]) -> (Vec<Violation>, StrongStats) {
    let (mut v, mut stats) = check_linearizable(history);
    let (f, fs) = check_fencing(history);
    v.extend(f);
    stats.lock_requests = fs.lock_requests;
    stats.grants = fs.grants;
    (v, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        worker: u32,
        op: ClientOp,
        invoke_us: u64,
        complete_us: u64,
        result: Outcome,
        answer: Option<Answer>,
    ) -> Record {
        Record {
            worker,
            node: 0,
            op,
            invoke_ns: invoke_us * 1_000,
            complete_ns: complete_us * 1_000,
            result,
            ts: None,
            error: None,
            answer,
        }
    }
    fn grant(worker: u32, lease: u64, i: u64, c: u64, token: u64) -> Record {
        rec(worker, ClientOp::Lock { key: "fence".into(), lease }, i, c, Outcome::Ok, Some(Answer::Token(token)))
    }
    fn write(w: u32, v: &str, i: u64, c: u64, res: Outcome) -> Record {
        rec(w, ClientOp::LinWrite { key: "r0".into(), value: v.into() }, i, c, res, None)
    }
    fn read(w: u32, v: Option<&str>, i: u64, c: u64) -> Record {
        rec(w, ClientOp::LinRead { key: "r0".into() }, i, c, Outcome::Ok, Some(Answer::Read(v.map(str::to_string))))
    }
    fn kinds(v: &[Violation]) -> Vec<ViolationKind> {
        v.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn fencing_tokens_increasing_in_real_time_pass_and_overlapping_grants_may_be_in_any_order() {
        let h = vec![grant(200, 1, 0, 10, 5), grant(201, 2, 20, 30, 9), grant(200, 3, 40, 50, 12)];
        assert!(check_fencing(&h).0.is_empty());
        // Concurrent grants (neither completed before the other began).
        let h = vec![grant(200, 1, 0, 30, 9), grant(201, 2, 10, 40, 5)];
        assert!(check_fencing(&h).0.is_empty());
        // Failed and unknown requests carry no token and are ignored.
        let h = vec![
            grant(200, 1, 0, 10, 5),
            rec(201, ClientOp::Lock { key: "fence".into(), lease: 2 }, 20, 30, Outcome::Unknown, None),
        ];
        let (v, stats) = check_fencing(&h);
        assert!(v.is_empty());
        assert_eq!((stats.lock_requests, stats.grants), (2, 1));
    }

    #[test]
    fn an_equal_fencing_token_is_rejected() {
        let h = vec![grant(200, 1, 0, 10, 7), grant(201, 2, 5, 30, 7)];
        let v = check_fencing(&h).0;
        assert_eq!(kinds(&v), vec![ViolationKind::FencingToken]);
        assert!(v[0].detail.contains("granted 2 times"), "{}", v[0].detail);
    }

    #[test]
    fn a_later_grant_with_a_smaller_token_is_rejected() {
        let h = vec![grant(200, 1, 0, 10, 9), grant(201, 2, 20, 30, 4)];
        let v = check_fencing(&h).0;
        assert_eq!(kinds(&v), vec![ViolationKind::FencingToken]);
        assert!(v[0].detail.contains("got token 4") && v[0].detail.contains("got 9"), "{}", v[0].detail);
    }

    #[test]
    fn a_read_of_an_overwritten_value_is_not_linearizable_unless_a_write_was_unknown() {
        let ok = vec![write(100, "a", 0, 10, Outcome::Ok), read(101, Some("a"), 20, 30)];
        assert!(check_linearizable(&ok).0.is_empty());
        // b was acknowledged before the read began: reading a is stale.
        let stale = vec![
            write(100, "a", 0, 10, Outcome::Ok),
            write(100, "b", 20, 30, Outcome::Ok),
            read(101, Some("a"), 40, 50),
        ];
        assert_eq!(kinds(&check_linearizable(&stale).0), vec![ViolationKind::NotLinearizable]);
        // A value nobody wrote (a failed write) is a violation too.
        let phantom = vec![write(100, "a", 0, 10, Outcome::Fail), read(101, Some("a"), 20, 30)];
        assert_eq!(kinds(&check_linearizable(&phantom).0), vec![ViolationKind::NotLinearizable]);
        // An unknown write may take effect late: reading it is fine.
        let late =
            vec![write(100, "a", 0, 10, Outcome::Unknown), read(101, None, 20, 30), read(101, Some("a"), 40, 50)];
        let (v, stats) = check_linearizable(&late);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((stats.register_ops, stats.unknown, stats.unknown_per_key_max), (3, 1, 1));
    }

    #[test]
    fn compare_and_swap_answers_must_match_the_register() {
        let cas = |w, exp: Option<&str>, v: &str, i, c, swapped| {
            rec(
                w,
                ClientOp::LinCas { key: "r0".into(), expected: exp.map(str::to_string), value: v.into() },
                i,
                c,
                Outcome::Ok,
                Some(Answer::Cas(swapped)),
            )
        };
        let good =
            vec![cas(100, None, "a", 0, 10, true), cas(101, None, "b", 20, 30, false), read(100, Some("a"), 40, 50)];
        assert!(check_linearizable(&good).0.is_empty());
        // Two "create if absent" both succeeding in sequence is impossible.
        let bad = vec![cas(100, None, "a", 0, 10, true), cas(101, None, "b", 20, 30, true)];
        assert_eq!(kinds(&check_linearizable(&bad).0), vec![ViolationKind::NotLinearizable]);
    }
}
