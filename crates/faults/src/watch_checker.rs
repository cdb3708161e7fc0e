//! The checker of eventual-namespace change streams (`GET /v1/watch`,
//! issue 14; `docs/design/fault-injection.md`, "Watch checkers").
//!
//! Input: the acknowledged writes (namespace, key and the write's dot, as
//! the write's answer names it) and one *chain* of streams: the events a
//! client received on its first stream, cut at the event whose token it
//! resumed from, then those of the stream it resumed, and so on. The
//! guarantee is stated on dots: every acknowledged write's dot is covered
//! by exactly one event **of its key** in the union of the chain, and for
//! each key the events never go backwards. An event covers dot `(n, c)` of
//! its key when one of its `dots` ranges `[n, first, last]` has
//! `first <= c <= last`; ranges may span counters of other keys' writes
//! (the dots of one origin are numbered per namespace), so only
//! `(key, dot)` pairs of acknowledged writes count for gaps and duplicates.
//!
//! Like the other checkers it looks only at what a client saw. It is run
//! once writes have stopped and the last stream has caught up: before that
//! a missing event is only late.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A write the cluster acknowledged, named by its dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AckedWrite {
    pub ns: String,
    pub key: String,
    /// The origin node, in hex as the API spells it.
    pub node: String,
    pub counter: u64,
}

impl AckedWrite {
    /// The write named by an eventual write's answer (`"dot": {"node",
    /// "counter"}`), or `None` when the answer carries no dot.
    pub fn from_answer(ns: &str, key: &str, answer: &Value) -> Option<AckedWrite> {
        let dot = answer.get("dot")?;
        Some(AckedWrite {
            ns: ns.to_string(),
            key: key.to_string(),
            node: dot.get("node")?.as_str()?.to_ascii_lowercase(),
            counter: dot.get("counter")?.as_u64()?,
        })
    }
}

/// Which guarantee a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchViolationKind {
    /// An acknowledged write whose dot no event of its key covers.
    Gap,
    /// An acknowledged write whose dot two events of its key cover.
    Duplicate,
    /// An event of a key whose range for some origin starts at or below
    /// the end of an earlier event's range for that origin on that key:
    /// the key's delivered states went backwards (or repeated).
    Backwards,
    /// A data event without a readable `ns`, `key` or `dots`.
    Malformed,
}

/// One broken guarantee, with enough detail to find it in the streams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchViolation {
    pub kind: WatchViolationKind,
    pub ns: String,
    pub key: String,
    /// The write concerned (gaps and duplicates).
    pub write: Option<AckedWrite>,
    pub detail: String,
}

impl std::fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} on {}/{}: {}", self.kind, self.ns, self.key, self.detail)
    }
}

/// Where an event is in the chain: stream number and line number (from 0,
/// counting control events too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventAt {
    pub stream: usize,
    pub line: usize,
}

impl std::fmt::Display for EventAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream {} line {}", self.stream, self.line)
    }
}

/// A data event's `dots`, read: `(node hex, first, last)`.
fn ranges(event: &Value) -> Option<Vec<(String, u64, u64)>> {
    event
        .get("dots")?
        .as_array()?
        .iter()
        .map(|r| {
            let r = r.as_array()?;
            let node = r.first()?.as_str()?.to_ascii_lowercase();
            let first = r.get(1)?.as_u64()?;
            let last = r.get(2)?.as_u64()?;
            Some((node, first, last))
        })
        .collect()
}

/// Whether a line is a data event (`put` or `delete`) rather than a
/// control event (`lagged`, `reset`, `progress`, `end`, …).
pub fn is_data_event(line: &Value) -> bool {
    matches!(line.get("type").and_then(Value::as_str), Some("put" | "delete"))
}

/// The lines of a stream up to and including the first one whose `token`
/// is `token`: what a client that resumed from that token had consumed.
/// `None` when no line carries it (the chain is not what the caller thinks).
pub fn up_to_token<'a>(lines: &'a [Value], token: &str) -> Option<&'a [Value]> {
    let at = lines.iter().position(|l| l.get("token").and_then(Value::as_str) == Some(token))?;
    lines.get(..=at)
}

/// Check one chain of streams (see the module documentation) against the
/// acknowledged writes. Violations come sorted by kind, then key.
pub fn check_chain(acked: &[AckedWrite], chain: &[&[Value]]) -> Vec<WatchViolation> {
    let mut violations = Vec::new();
    // (ns, key) → (node → ranges with where they came from), in chain order.
    type Ranges = BTreeMap<String, Vec<(u64, u64, EventAt)>>;
    let mut per_key: BTreeMap<(String, String), Ranges> = BTreeMap::new();
    for (stream, lines) in chain.iter().enumerate() {
        for (line, event) in lines.iter().enumerate() {
            if !is_data_event(event) {
                continue;
            }
            let at = EventAt { stream, line };
            let ns = event.get("ns").and_then(Value::as_str);
            let key = event.get("key").and_then(Value::as_str);
            let (Some(ns), Some(key), Some(rs)) = (ns, key, ranges(event)) else {
                violations.push(WatchViolation {
                    kind: WatchViolationKind::Malformed,
                    ns: ns.unwrap_or_default().to_string(),
                    key: key.unwrap_or_default().to_string(),
                    write: None,
                    detail: format!("{at}: {event}"),
                });
                continue;
            };
            let by_node = per_key.entry((ns.to_string(), key.to_string())).or_default();
            for (node, first, last) in rs {
                let seen = by_node.entry(node.clone()).or_default();
                if let Some(&(_, prev_last, prev_at)) = seen.iter().max_by_key(|(_, l, _)| *l)
                    && first <= prev_last
                {
                    violations.push(WatchViolation {
                        kind: WatchViolationKind::Backwards,
                        ns: ns.to_string(),
                        key: key.to_string(),
                        write: None,
                        detail: format!(
                            "{at} covers {node} {first}..={last}, but {prev_at} already covered up to {prev_last}"
                        ),
                    });
                }
                seen.push((first, last, at));
            }
        }
    }
    for w in acked {
        let covering: Vec<EventAt> = per_key
            .get(&(w.ns.clone(), w.key.clone()))
            .and_then(|by_node| by_node.get(&w.node))
            .map(|rs| rs.iter().filter(|(f, l, _)| *f <= w.counter && w.counter <= *l).map(|r| r.2).collect())
            .unwrap_or_default();
        let (kind, detail) = match covering.as_slice() {
            [] => (WatchViolationKind::Gap, format!("write ({}, {}) is covered by no event", w.node, w.counter)),
            [_] => continue,
            more => (
                WatchViolationKind::Duplicate,
                format!(
                    "write ({}, {}) is covered by {} events: {}",
                    w.node,
                    w.counter,
                    more.len(),
                    more.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ),
            ),
        };
        violations.push(WatchViolation { kind, ns: w.ns.clone(), key: w.key.clone(), write: Some(w.clone()), detail });
    }
    violations.sort_by(|a, b| (a.kind, &a.ns, &a.key).cmp(&(b.kind, &b.ns, &b.key)));
    violations
}

/// For each key of the chain, its last data event (what a client that
/// applied the events in order holds for it).
pub fn last_events<'a>(chain: &[&'a [Value]]) -> BTreeMap<(String, String), &'a Value> {
    let mut last = BTreeMap::new();
    for lines in chain {
        for event in lines.iter().filter(|e| is_data_event(e)) {
            if let (Some(ns), Some(key)) =
                (event.get("ns").and_then(Value::as_str), event.get("key").and_then(Value::as_str))
            {
                last.insert((ns.to_string(), key.to_string()), event);
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "00000000000000aa";
    const B: &str = "00000000000000bb";

    fn w(key: &str, node: &str, counter: u64) -> AckedWrite {
        AckedWrite { ns: "n".into(), key: key.into(), node: node.into(), counter }
    }
    fn ev(key: &str, dots: &[(&str, u64, u64)], token: &str) -> Value {
        let dots: Vec<Value> = dots.iter().map(|(n, f, l)| json!([n, f, l])).collect();
        json!({ "ns": "n", "key": key, "type": "put", "value": "v", "dots": dots, "token": token })
    }
    fn kinds(v: &[WatchViolation]) -> Vec<WatchViolationKind> {
        v.iter().map(|v| v.kind).collect()
    }

    /// Two keys, writes by two origins; `x` written twice by A before its
    /// first delivery (one event covers both), `y`'s range spans A's
    /// counter 2, which is `x`'s write (only (key, dot) pairs count).
    fn acked() -> Vec<AckedWrite> {
        vec![w("x", A, 1), w("y", A, 3), w("x", A, 2), w("x", B, 1), w("y", A, 4)]
    }

    /// The same history split over two streams, the first resumed from the
    /// token of its third line (a progress event) and a line after it that
    /// the client never consumed.
    fn clean_chain() -> (Vec<Value>, Vec<Value>) {
        let first = vec![
            ev("x", &[(A, 1, 2)], "t1"),
            ev("y", &[(A, 1, 3)], "t2"),
            json!({ "type": "progress", "ns": "n", "token": "t3" }),
            ev("x", &[(B, 1, 1)], "t4-not-consumed"),
        ];
        let second = vec![ev("x", &[(B, 1, 1)], "u1"), ev("y", &[(A, 4, 4)], "u2")];
        (first, second)
    }

    #[test]
    fn a_clean_resumed_history_passes_and_its_last_events_are_the_final_states() {
        let (first, second) = clean_chain();
        let first = up_to_token(&first, "t3").expect("token present");
        assert_eq!(first.len(), 3, "the unconsumed line after the resume token is cut");
        let chain = [first, second.as_slice()];
        assert_eq!(check_chain(&acked(), &chain), vec![]);
        let last = last_events(&chain);
        assert_eq!(last[&("n".to_string(), "x".to_string())]["token"], "u1");
        assert_eq!(last[&("n".to_string(), "y".to_string())]["token"], "u2");
    }

    #[test]
    fn a_write_no_event_of_its_key_covers_is_a_gap() {
        let (first, second) = clean_chain();
        // The second stream lost y's last event: dot (A, 4) of y. x's range
        // covering A up to 2 does not count for y.
        let second = &second[..1];
        let chain = [up_to_token(&first, "t3").expect("token"), second];
        let v = check_chain(&acked(), &chain);
        assert_eq!(kinds(&v), vec![WatchViolationKind::Gap]);
        assert_eq!(v[0].write, Some(w("y", A, 4)));
        // A range of another key covering the counter does not close a gap.
        let other_key = [ev("x", &[(A, 1, 9)], "a")];
        let v = check_chain(&[w("y", A, 5)], &[&other_key]);
        assert_eq!(kinds(&v), vec![WatchViolationKind::Gap]);
    }

    #[test]
    fn a_write_covered_by_two_events_is_a_duplicate_and_the_repeat_goes_backwards() {
        let (first, second) = clean_chain();
        // The client resumed from the token of a line it consumed after all
        // (no cut): x's write by B is delivered by both streams.
        let chain = [first.as_slice(), second.as_slice()];
        let v = check_chain(&acked(), &chain);
        assert_eq!(kinds(&v), vec![WatchViolationKind::Duplicate, WatchViolationKind::Backwards]);
        assert_eq!(v[0].write, Some(w("x", B, 1)));
        assert!(v[0].detail.contains("stream 0 line 3") && v[0].detail.contains("stream 1 line 0"), "{}", v[0]);
    }

    #[test]
    fn an_older_state_after_a_newer_one_of_the_same_key_goes_backwards() {
        // x's events cover A 1, then A 3, then A 2: an older state after a
        // newer one. Every acknowledged write is still covered once (A 2 was
        // never acknowledged), so only the order is broken.
        let chain = [ev("x", &[(A, 1, 1)], "a"), ev("x", &[(A, 3, 3)], "b"), ev("x", &[(A, 2, 2)], "c")];
        let v = check_chain(&[w("x", A, 1), w("x", A, 3)], &[&chain]);
        assert_eq!(kinds(&v), vec![WatchViolationKind::Backwards]);
        assert!(v[0].detail.contains("2..=2") && v[0].detail.contains("up to 3"), "{}", v[0]);
        // Per key only: the same range on another key is fine.
        let chain = [ev("x", &[(A, 1, 3)], "a"), ev("y", &[(A, 1, 3)], "b")];
        assert_eq!(check_chain(&[w("x", A, 1), w("y", A, 2)], &[&chain]), vec![]);
    }

    #[test]
    fn a_data_event_without_dots_is_malformed_and_its_writes_are_gaps() {
        let chain = [json!({ "ns": "n", "key": "x", "type": "put", "token": "a" })];
        let v = check_chain(&[w("x", A, 1)], &[&chain]);
        assert_eq!(kinds(&v), vec![WatchViolationKind::Gap, WatchViolationKind::Malformed]);
    }

    #[test]
    fn an_answer_with_a_dot_names_the_write() {
        let answer = json!({ "dot": { "node": "00000000000000AA", "counter": 7 }, "session": "s" });
        assert_eq!(AckedWrite::from_answer("n", "x", &answer), Some(w("x", A, 7)));
        assert_eq!(AckedWrite::from_answer("n", "x", &json!({ "error": "no" })), None);
    }
}
