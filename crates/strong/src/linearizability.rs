//! A linearizability checker for histories of register operations.
//!
//! The search is Wing and Gong's with Lowe's memoization (the papers are in
//! `docs/design/strong.md`, "References"): repeatedly pick an operation that
//! may take effect next (one invoked before every pending operation's
//! completion), apply it to the sequential model, and backtrack on a
//! mismatch; a configuration (set of linearized operations as a bitset, model
//! state) already explored is never explored again. Histories are split per
//! key first (a register per key composes: Herlihy and Wing's locality, and
//! Horn and Kroening's P-compositionality), which keeps each search small.
//!
//! Operations whose outcome the client could not learn (a timeout) are
//! recorded as [`Outcome::Unknown`]: they may have taken effect at any
//! moment after their invocation, or never. The search treats them as never
//! completing: they may be linearized anywhere after invocation but need not
//! be. Operations that definitely failed ([`Outcome::Fail`]) are dropped.

use std::collections::{BTreeMap, HashSet};

/// Most configurations one key's search may visit before giving up with
/// [`CheckError::Inconclusive`]. Bounds the test's time on pathological
/// histories (the problem is NP-complete in general).
pub const SEARCH_STEPS_MAX: usize = 2_000_000;

/// What a client asked a register to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    /// Read the value.
    Read,
    /// Set the value.
    Write(Vec<u8>),
    /// Set `new` if the value is `expected` (`None`: absent).
    Cas {
        /// Expected value.
        expected: Option<Vec<u8>>,
        /// New value.
        new: Vec<u8>,
    },
}

/// What the client learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read returned this value (`None`: absent).
    Read(Option<Vec<u8>>),
    /// A write was acknowledged.
    Written,
    /// A compare-and-swap was answered: swapped or not.
    Cas(bool),
    /// The operation definitely did not take effect.
    Fail,
    /// The outcome is unknown (timeout, connection lost): it may or may not
    /// have taken effect.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it (informational; each client is sequential).
    pub process: u64,
    /// The register.
    pub key: Vec<u8>,
    /// The request.
    pub op: RegisterOp,
    /// When it was invoked (any monotonic unit, e.g. µs since the test began).
    pub invoke: u64,
    /// When the response arrived (ignored for `Unknown`).
    pub complete: u64,
    /// The response.
    pub outcome: Outcome,
}

/// Why a history was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No linearization of this key's operations exists.
    #[error("history of key {key:?} is not linearizable ({ops} operations)")]
    NotLinearizable {
        /// The key (lossy UTF-8).
        key: String,
        /// Number of operations of that key considered.
        ops: usize,
    },
    /// The search hit [`SEARCH_STEPS_MAX`] for this key.
    #[error("search for key {key:?} gave up after {steps} steps")]
    Inconclusive {
        /// The key.
        key: String,
        /// Steps taken.
        steps: usize,
    },
    /// An operation's outcome does not fit its kind (e.g. `Read` with `Cas`),
    /// or it completed before it was invoked.
    #[error("malformed operation of process {process}")]
    Malformed {
        /// The process.
        process: u64,
    },
}

/// Checks that `history` is linearizable for a set of registers that all
/// start absent. Every key is checked on its own.
pub fn check_registers(history: &[Operation]) -> Result<(), CheckError> {
    let mut per_key: BTreeMap<&[u8], Vec<Candidate>> = BTreeMap::new();
    for operation in history {
        let kind_fits = matches!(
            (&operation.op, &operation.outcome),
            (_, Outcome::Fail | Outcome::Unknown)
                | (RegisterOp::Read, Outcome::Read(_))
                | (RegisterOp::Write(_), Outcome::Written)
                | (RegisterOp::Cas { .. }, Outcome::Cas(_))
        );
        let known = !matches!(operation.outcome, Outcome::Unknown);
        if !kind_fits || (known && operation.complete < operation.invoke) {
            return Err(CheckError::Malformed { process: operation.process });
        }
        match (&operation.op, &operation.outcome) {
            // No effect, nothing learnt: no constraint.
            (_, Outcome::Fail) | (RegisterOp::Read, Outcome::Unknown) => continue,
            _ => {}
        }
        let complete = if known { operation.complete } else { u64::MAX };
        per_key.entry(&operation.key).or_default().push(Candidate {
            op: operation.op.clone(),
            outcome: operation.outcome.clone(),
            invoke: operation.invoke,
            complete,
        });
    }
    for (key, ops) in per_key {
        check_one_register(&ops).map_err(|failure| {
            let key = String::from_utf8_lossy(key).into_owned();
            match failure {
                SearchFailure::NoLinearization => CheckError::NotLinearizable { key, ops: ops.len() },
                SearchFailure::TooManySteps(steps) => CheckError::Inconclusive { key, steps },
            }
        })?;
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Candidate {
    op: RegisterOp,
    outcome: Outcome,
    invoke: u64,
    /// `u64::MAX` for operations that may never complete.
    complete: u64,
}

enum SearchFailure {
    NoLinearization,
    TooManySteps(usize),
}

/// The sequential register: the state after applying `candidate` to
/// `state`, or `None` if the recorded outcome contradicts the model.
fn step(state: &Option<Vec<u8>>, candidate: &Candidate) -> Option<Option<Vec<u8>>> {
    match (&candidate.op, &candidate.outcome) {
        (RegisterOp::Read, Outcome::Read(value)) => (value == state).then(|| state.clone()),
        (RegisterOp::Write(value), _) => Some(Some(value.clone())),
        (RegisterOp::Cas { expected, new }, Outcome::Cas(true)) => (expected == state).then(|| Some(new.clone())),
        (RegisterOp::Cas { expected, .. }, Outcome::Cas(false)) => (expected != state).then(|| state.clone()),
        // Unknown outcome: the model decides.
        (RegisterOp::Cas { expected, new }, _) => {
            Some(if expected == state { Some(new.clone()) } else { state.clone() })
        }
        (RegisterOp::Read, _) => None,
    }
}

fn check_one_register(ops: &[Candidate]) -> Result<(), SearchFailure> {
    let words = ops.len().div_ceil(64);
    let must_linearize: Vec<bool> = ops.iter().map(|op| op.complete != u64::MAX).collect();
    let required = must_linearize.iter().filter(|&&m| m).count();
    // (linearized bitset, register state, how many required ops are in the set)
    let mut stack: Vec<(Vec<u64>, Option<Vec<u8>>, usize)> = vec![(vec![0; words], None, 0)];
    let mut seen: HashSet<(Vec<u64>, Option<Vec<u8>>)> = HashSet::new();
    let mut steps = 0usize;
    while let Some((done, state, done_required)) = stack.pop() {
        if done_required == required {
            return Ok(());
        }
        steps += 1;
        if steps > SEARCH_STEPS_MAX {
            return Err(SearchFailure::TooManySteps(steps));
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // An operation may go next only if it was invoked before every
        // not-yet-linearized operation completed.
        let horizon = (0..ops.len()).filter(|&i| !is_done(i)).map(|i| ops[i].complete).min().unwrap_or(u64::MAX);
        for (i, candidate) in ops.iter().enumerate() {
            if is_done(i) || candidate.invoke > horizon {
                continue;
            }
            let Some(next_state) = step(&state, candidate) else { continue };
            let mut next = done.clone();
            next[i / 64] |= 1 << (i % 64);
            if seen.insert((next.clone(), next_state.clone())) {
                let next_required = done_required + usize::from(must_linearize[i]);
                stack.push((next, next_state, next_required));
            }
        }
    }
    Err(SearchFailure::NoLinearization)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, op: RegisterOp, invoke: u64, complete: u64, outcome: Outcome) -> Operation {
        Operation { process, key: b"x".to_vec(), op, invoke, complete, outcome }
    }

    fn w(v: &str) -> RegisterOp {
        RegisterOp::Write(v.as_bytes().to_vec())
    }

    fn r(v: Option<&str>) -> Outcome {
        Outcome::Read(v.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn accepts_a_valid_concurrent_history() {
        // p1 writes 1 over [0,10]; p2 reads concurrently and may see 1 or absent;
        // p3 writes 2 over [5,15]; p4 reads 2 after both writes finished.
        let history = vec![
            op(1, w("1"), 0, 10, Outcome::Written),
            op(2, RegisterOp::Read, 1, 3, r(None)),
            op(3, w("2"), 5, 15, Outcome::Written),
            op(2, RegisterOp::Read, 4, 12, r(Some("1"))),
            op(4, RegisterOp::Read, 16, 20, r(Some("2"))),
            op(1, RegisterOp::Cas { expected: Some(b"2".to_vec()), new: b"3".to_vec() }, 21, 25, Outcome::Cas(true)),
            op(2, RegisterOp::Cas { expected: Some(b"2".to_vec()), new: b"4".to_vec() }, 22, 26, Outcome::Cas(false)),
            op(3, RegisterOp::Read, 27, 28, r(Some("3"))),
        ];
        assert_eq!(check_registers(&history), Ok(()));
    }

    #[test]
    fn rejects_a_stale_read_after_a_completed_write() {
        let history = vec![
            op(1, w("1"), 0, 10, Outcome::Written),
            op(1, w("2"), 11, 20, Outcome::Written),
            // Invoked after the write of 2 completed, yet sees 1.
            op(2, RegisterOp::Read, 21, 30, r(Some("1"))),
        ];
        assert!(matches!(check_registers(&history), Err(CheckError::NotLinearizable { .. })));
    }

    #[test]
    fn rejects_two_successful_cas_from_the_same_expected_value() {
        let cas = |p, new: &str| {
            op(
                p,
                RegisterOp::Cas { expected: Some(b"0".to_vec()), new: new.as_bytes().to_vec() },
                10,
                20,
                Outcome::Cas(true),
            )
        };
        let history = vec![op(1, w("0"), 0, 5, Outcome::Written), cas(1, "a"), cas(2, "b")];
        assert!(matches!(check_registers(&history), Err(CheckError::NotLinearizable { .. })));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        // The timed-out write of 2 is seen by a read long after the timeout...
        let late = vec![
            op(1, w("1"), 0, 5, Outcome::Written),
            op(2, w("2"), 6, 0, Outcome::Unknown),
            op(3, RegisterOp::Read, 100, 110, r(Some("2"))),
        ];
        assert_eq!(check_registers(&late), Ok(()));
        // ...or never.
        let never = vec![
            op(1, w("1"), 0, 5, Outcome::Written),
            op(2, w("2"), 6, 0, Outcome::Unknown),
            op(3, RegisterOp::Read, 100, 110, r(Some("1"))),
        ];
        assert_eq!(check_registers(&never), Ok(()));
        // But not before it was invoked.
        let early = vec![op(3, RegisterOp::Read, 0, 2, r(Some("2"))), op(2, w("2"), 6, 0, Outcome::Unknown)];
        assert!(matches!(check_registers(&early), Err(CheckError::NotLinearizable { .. })));
        // And a failed write never takes effect.
        let failed = vec![op(2, w("2"), 0, 1, Outcome::Fail), op(3, RegisterOp::Read, 5, 6, r(Some("2")))];
        assert!(matches!(check_registers(&failed), Err(CheckError::NotLinearizable { .. })));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut history = vec![op(1, w("1"), 0, 10, Outcome::Written)];
        let mut other = op(2, RegisterOp::Read, 20, 30, r(None));
        other.key = b"y".to_vec();
        history.push(other);
        assert_eq!(check_registers(&history), Ok(()));
        history.push(op(3, RegisterOp::Read, 20, 30, r(None)));
        assert!(matches!(check_registers(&history), Err(CheckError::NotLinearizable { key, .. }) if key == "x"));
    }

    #[test]
    fn malformed_operations_are_reported() {
        let history = vec![op(7, RegisterOp::Read, 0, 1, Outcome::Written)];
        assert_eq!(check_registers(&history), Err(CheckError::Malformed { process: 7 }));
    }

    #[test]
    fn many_concurrent_operations_are_checked_quickly() {
        // 8 processes × 40 sequential writes and reads of their own last value
        // on one key, overlapping: a real search with a large frontier.
        let mut history = Vec::new();
        for p in 0..8u64 {
            for i in 0..40u64 {
                let t = i * 100 + p;
                let value = format!("{p}-{i}");
                history.push(op(p, w(&value), t, t + 30, Outcome::Written));
            }
        }
        history.push(op(99, RegisterOp::Read, 10_000, 10_001, r(Some("7-39"))));
        assert_eq!(check_registers(&history), Ok(()));
    }
}
