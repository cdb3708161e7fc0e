//! Strong-namespace workload: register workers doing linearizable reads,
//! writes and compare-and-swaps on a few keys of namespace [`NS_STRONG`], and
//! fencing workers that take lock [`LOCK_NAME`] under short leases. Every op
//! is a [`Record`] of the run's history; the checks are in
//! [`crate::strong_checker`]. See `docs/design/fault-injection.md`.
//!
//! Classification (docs/design/http-api.md, "Strong namespaces"): an
//! answer means nothing changed only when it is a 4xx (`not_found` on a
//! read is a *successful* read of "absent") or a 503 whose `error` is
//! `no_quorum`, `no_leader` or `not_leader`; a 504 `timeout`, any other 5xx,
//! a connection lost after sending or a client time-out may have applied,
//! so it is `unknown` (an indeterminate operation; see
//! `docs/design/fault-injection.md`, "References").

use crate::cluster::{Http, NoAnswer};
use crate::history::{Answer, ClientOp, HistoryLog, Outcome, Record};
use crate::rng::Rng;
use crate::workers::{OP_PAUSE, WorkerConfig, request_of};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The strong namespace of the workload.
pub const NS_STRONG: &str = "lin";
/// Registers `r0..r7`. The linearizability search is exponential in the
/// unknown writes of one key, so ops are spread over enough keys that each
/// has only a handful.
pub const STRONG_KEYS: u64 = 8;
/// The lock the fencing workers contend for.
pub const LOCK_NAME: &str = "fence";
/// TTL of the fencing workers' leases: short, so a grant whose release was
/// lost frees the lock soon.
pub const LEASE_TTL_MS: u64 = 1_500;
/// How long a lock request waits for a busy lock (the daemon polls).
pub const LOCK_WAIT_MS: u64 = 1_000;
/// Client time-out of strong requests: above the agents' request time-out
/// (2 s, cluster.rs), so the daemon's own `no_quorum`/`no_leader`/`timeout`
/// answers arrive instead of a client-side give-up (which is `unknown`).
pub const STRONG_OP_TIMEOUT: Duration = Duration::from_millis(3_000);
/// Deadline for the Raft group to elect a leader and create the namespace,
/// and for every node to list it.
pub const STRONG_CREATE_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for the final reads after the heal.
pub const FINAL_READ_DEADLINE: Duration = Duration::from_secs(30);
/// Worker ids: eventual workers are `0..`, register workers
/// `REGISTER_WORKER_BASE..`, fencing workers `FENCE_WORKER_BASE..`, the
/// final reads `FINAL_READER`.
pub const REGISTER_WORKER_BASE: u32 = 100;
pub const FENCE_WORKER_BASE: u32 = 200;
pub const FINAL_READER: u32 = 300;
/// 503 errors after which nothing changed.
pub const NOTHING_CHANGED_503: [&str; 3] = ["no_quorum", "no_leader", "not_leader"];

/// The voters of an `n`-node cluster: the first three names (one when the
/// cluster is smaller; Raft groups have 1, 3, 5 or 7 voters).
pub fn voter_names(n: usize) -> Vec<String> {
    let voters = if n >= 3 { 3 } else { n.min(1) };
    (0..voters).map(|i| format!("node{}", i + 1)).collect()
}

/// Create [`NS_STRONG`] (retrying while the group has no leader) and wait
/// until every node lists it. Returns how long it took, or why not.
pub fn create_namespace(http: &Http, apis: &[String]) -> Result<Duration, String> {
    let started = Instant::now();
    let end = started + STRONG_CREATE_DEADLINE;
    let body = json!({ "name": NS_STRONG, "mode": "strong" }).to_string();
    let mut attempt = 0usize;
    loop {
        // Any node: learners forward to the leader.
        let api = &apis[attempt % apis.len()];
        attempt += 1;
        let last = match http.req("POST", &format!("{api}/v1/ns"), Some(&body)) {
            Ok((200 | 201, _)) => break,
            Ok((s, v)) if s >= 500 => format!("{s} {v}"),
            Ok((s, v)) => return Err(format!("creating strong namespace {NS_STRONG}: {s} {v}")),
            Err(e) => e.reason,
        };
        if Instant::now() >= end {
            return Err(format!("no strong namespace after {STRONG_CREATE_DEADLINE:?}: last answer {last}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for api in apis {
        loop {
            let listed = http
                .req("GET", &format!("{api}/v1/ns"), None)
                .ok()
                .and_then(|(_, v)| {
                    v["namespaces"]
                        .as_array()
                        .map(|a| a.iter().any(|x| x["name"] == NS_STRONG && x["mode"] == "strong"))
                })
                .unwrap_or(false);
            if listed {
                break;
            }
            if Instant::now() >= end {
                return Err(format!("{api} never listed strong namespace {NS_STRONG}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(started.elapsed())
}

/// Outcome, answer and error text of a strong request's HTTP answer.
pub fn classify(op: &ClientOp, answer: Result<(u16, Value), NoAnswer>) -> (Outcome, Option<Answer>, Option<String>) {
    let err = |s: u16, v: &Value| Some(format!("{s} {}", v["error"]));
    match answer {
        Ok((200, v)) => {
            let parsed = match op {
                ClientOp::LinRead { .. } => v["value"].as_str().map(|s| Answer::Read(Some(s.to_string()))),
                ClientOp::LinCas { .. } => v["succeeded"].as_bool().map(Answer::Cas),
                ClientOp::Lock { .. } => v["fencing_token"].as_u64().map(Answer::Token),
                _ => None,
            };
            match (op, parsed) {
                (ClientOp::LinWrite { .. }, _) => (Outcome::Ok, None, None),
                (_, Some(a)) => (Outcome::Ok, Some(a), None),
                // Done, but the answer is unreadable: treat it as unknown.
                (_, None) => (Outcome::Unknown, None, Some(format!("200 with an unreadable answer: {v}"))),
            }
        }
        Ok((404, v)) if matches!(op, ClientOp::LinRead { .. }) && v["error"] == "not_found" => {
            (Outcome::Ok, Some(Answer::Read(None)), None)
        }
        Ok((s, v)) if (400..500).contains(&s) => (Outcome::Fail, None, err(s, &v)),
        Ok((503, v)) if NOTHING_CHANGED_503.iter().any(|e| v["error"] == *e) => (Outcome::Fail, None, err(503, &v)),
        Ok((s, v)) => (Outcome::Unknown, None, err(s, &v)),
        Err(e) => (if e.definite { Outcome::Fail } else { Outcome::Unknown }, None, Some(e.reason)),
    }
}

/// Send strong `op` to node `node` (at `api`) and return its record.
pub fn perform(http: &Http, worker: u32, node: usize, api: &str, op: ClientOp, t0: Instant) -> Record {
    let (method, url, body) = request_of(api, &op);
    let invoke_ns = t0.elapsed().as_nanos() as u64;
    let answer = http.req(method, &url, body.as_deref());
    let complete_ns = t0.elapsed().as_nanos() as u64;
    let (result, answer, error) = classify(&op, answer);
    Record { worker, node, op, invoke_ns, complete_ns, result, ts: None, error, answer }
}

/// A register worker: 40 % reads, 35 % writes, 25 % compare-and-swaps
/// (expecting the last value this worker saw on the key, so some succeed)
/// on random keys against random nodes, until `stop` or `ops_max`. Values
/// are unique (`s<worker>-<n>`). Returns how many ops were recorded.
pub fn run_register_worker(cfg: &WorkerConfig, stop: &AtomicBool, t0: Instant, log: &HistoryLog) -> usize {
    let worker = REGISTER_WORKER_BASE + cfg.id;
    let mut rng = Rng::new(cfg.seed).fork(0x5000 + u64::from(cfg.id));
    let http = Http::new(cfg.timeout);
    let mut seen: Vec<Option<String>> = vec![None; STRONG_KEYS as usize];
    let mut done = 0;
    while done < cfg.ops_max && !stop.load(Ordering::Relaxed) {
        let node = rng.below(cfg.apis.len() as u64) as usize;
        let k = rng.below(STRONG_KEYS) as usize;
        let key = format!("r{k}");
        let value = format!("s{worker}-{done}");
        let roll = rng.below(100);
        let op = if roll < 40 {
            ClientOp::LinRead { key }
        } else if roll < 75 {
            ClientOp::LinWrite { key, value }
        } else {
            ClientOp::LinCas { key, expected: seen[k].clone(), value }
        };
        let r = perform(&http, worker, node, &cfg.apis[node], op, t0);
        match (&r.op, r.result, &r.answer) {
            (ClientOp::LinRead { .. }, Outcome::Ok, Some(Answer::Read(v))) => seen[k] = v.clone(),
            (ClientOp::LinWrite { value, .. }, Outcome::Ok, _)
            | (ClientOp::LinCas { value, .. }, Outcome::Ok, Some(Answer::Cas(true))) => seen[k] = Some(value.clone()),
            _ => {}
        }
        // A history line that cannot be written is still kept in memory.
        let _ = log.push(r);
        done += 1;
        std::thread::sleep(OP_PAUSE);
    }
    done
}

/// A fencing worker: grant a lease of [`LEASE_TTL_MS`], acquire
/// [`LOCK_NAME`] under it (waiting ≤ [`LOCK_WAIT_MS`]), record the grant
/// and its fencing token, release. Lease grants and releases are not
/// recorded (the checks need only the grants). Returns how many lock
/// requests were recorded; `ops_max` bounds the attempts.
pub fn run_fence_worker(cfg: &WorkerConfig, stop: &AtomicBool, t0: Instant, log: &HistoryLog) -> usize {
    let worker = FENCE_WORKER_BASE + cfg.id;
    let mut rng = Rng::new(cfg.seed).fork(0x6000 + u64::from(cfg.id));
    let http = Http::new(cfg.timeout);
    let lease_body = json!({ "ttl_ms": LEASE_TTL_MS }).to_string();
    let (mut attempts, mut recorded) = (0, 0);
    while attempts < cfg.ops_max && !stop.load(Ordering::Relaxed) {
        attempts += 1;
        let node = rng.below(cfg.apis.len() as u64) as usize;
        let api = &cfg.apis[node];
        let lease = match http.req("POST", &format!("{api}/v1/leases"), Some(&lease_body)) {
            Ok((201, v)) => v["lease"].as_u64(),
            _ => None,
        };
        let Some(lease) = lease else {
            std::thread::sleep(OP_PAUSE * 10);
            continue;
        };
        let r = perform(&http, worker, node, api, ClientOp::Lock { key: LOCK_NAME.into(), lease }, t0);
        let granted = r.result != Outcome::Fail;
        let _ = log.push(r);
        recorded += 1;
        if granted {
            // Best effort: a lost release is freed when the lease expires.
            let _ = http.req("DELETE", &format!("{api}/v1/ns/{NS_STRONG}/lock/{LOCK_NAME}?lease={lease}"), None);
        }
        std::thread::sleep(OP_PAUSE);
    }
    recorded
}

/// After the heal: one linearizable read of every register (retrying on
/// any node until one answers, bounded by [`FINAL_READ_DEADLINE`]), so an
/// acknowledged write lost by a crash or a leader change shows up even if
/// no worker read the key afterwards. Returns the reads, or the keys that
/// could not be read.
pub fn final_reads(apis: &[String], t0: Instant) -> Result<Vec<Record>, String> {
    let http = Http::new(STRONG_OP_TIMEOUT);
    let end = Instant::now() + FINAL_READ_DEADLINE;
    let mut out = Vec::new();
    let mut attempt = 0usize;
    for k in 0..STRONG_KEYS {
        loop {
            let node = attempt % apis.len();
            attempt += 1;
            let r = perform(&http, FINAL_READER, node, &apis[node], ClientOp::LinRead { key: format!("r{k}") }, t0);
            if r.result == Outcome::Ok {
                out.push(r);
                break;
            }
            if Instant::now() >= end {
                return Err(format!(
                    "strong register r{k} unreadable {FINAL_READ_DEADLINE:?} after the heal: {:?}",
                    r.error
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> ClientOp {
        ClientOp::LinRead { key: "r0".into() }
    }

    #[test]
    fn strong_answers_are_classified_as_the_http_api_documents() {
        let c = |op: &ClientOp, s: u16, v: Value| classify(op, Ok((s, v))).0;
        let write = ClientOp::LinWrite { key: "r0".into(), value: "v".into() };
        assert_eq!(classify(&read(), Ok((404, json!({"error": "not_found"})))).1, Some(Answer::Read(None)));
        assert_eq!(c(&read(), 404, json!({"error": "no_such_namespace"})), Outcome::Fail);
        for e in NOTHING_CHANGED_503 {
            assert_eq!(c(&write, 503, json!({ "error": e })), Outcome::Fail, "{e}");
        }
        assert_eq!(c(&write, 503, json!({"error": "stopping"})), Outcome::Unknown);
        assert_eq!(c(&write, 504, json!({"error": "timeout"})), Outcome::Unknown);
        assert_eq!(c(&write, 502, json!({"error": "protocol"})), Outcome::Unknown);
        assert_eq!(c(&write, 200, json!({"revision": 3})), Outcome::Ok);
        let lock = ClientOp::Lock { key: LOCK_NAME.into(), lease: 1 };
        assert_eq!(classify(&lock, Ok((200, json!({"fencing_token": 9})))).1, Some(Answer::Token(9)));
        assert_eq!(c(&lock, 409, json!({"error": "lock_busy"})), Outcome::Fail);
        // A 200 without the token cannot be checked: unknown, not ok.
        assert_eq!(c(&lock, 200, json!({})), Outcome::Unknown);
        let lost = NoAnswer { definite: false, reason: "timed out".into() };
        assert_eq!(classify(&write, Err(lost)).0, Outcome::Unknown);
    }

    #[test]
    fn three_of_five_nodes_vote_and_tiny_clusters_have_one_voter() {
        assert_eq!(voter_names(5), vec!["node1", "node2", "node3"]);
        assert_eq!(voter_names(2), vec!["node1"]);
    }
}
