//! Client workers: a few threads, each a seeded stream of writes against
//! random nodes over HTTP with short time-outs, every op recorded in the
//! history. Bounded by an op count and a stop flag.

use crate::cluster::{Http, NoAnswer};
use crate::history::{ClientOp, HistoryLog, Hlc, Outcome, Record};
use crate::rng::Rng;
use crate::strong::{LOCK_WAIT_MS, NS_STRONG};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Namespace names and types the workers write to.
pub const NS_LWW: &str = "flww";
pub const NS_COUNTER: &str = "fctr";
pub const NS_SET: &str = "fset";
/// Key spaces are small so writes collide (that is where bugs live).
pub const LWW_KEYS: u64 = 6;
pub const COUNTER_KEYS: u64 = 3;
pub const SET_KEYS: u64 = 2;
pub const SET_MEMBERS: u64 = 6;
/// Pause between a worker's ops, spreading them over the fault timeline.
pub const OP_PAUSE: Duration = Duration::from_millis(4);

/// One worker's parameters.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: u32,
    pub seed: u64,
    /// Base URLs of the nodes' APIs.
    pub apis: Vec<String>,
    pub ops_max: usize,
    pub timeout: Duration,
}

/// Run until `stop` or `ops_max`; returns how many ops were recorded.
pub fn run_worker(cfg: &WorkerConfig, stop: &AtomicBool, t0: Instant, log: &HistoryLog) -> usize {
    let mut rng = Rng::new(cfg.seed).fork(0x3000 + u64::from(cfg.id));
    let http = Http::new(cfg.timeout);
    let mut done = 0;
    while done < cfg.ops_max && !stop.load(Ordering::Relaxed) {
        let node = rng.below(cfg.apis.len() as u64) as usize;
        let roll = rng.below(100);
        let op = if roll < 42 {
            ClientOp::Put { key: format!("k{}", rng.below(LWW_KEYS)), value: format!("w{}-{done}", cfg.id) }
        } else if roll < 50 {
            ClientOp::Delete { key: format!("k{}", rng.below(LWW_KEYS)) }
        } else if roll < 75 {
            let amount = if rng.chance(20) { -rng.range_i64(1, 3) } else { rng.range_i64(1, 5) };
            ClientOp::Incr { key: format!("c{}", rng.below(COUNTER_KEYS)), amount }
        } else {
            let (key, member) = (format!("s{}", rng.below(SET_KEYS)), format!("m{}", rng.below(SET_MEMBERS)));
            if roll < 92 { ClientOp::Add { key, member } } else { ClientOp::Remove { key, member } }
        };
        // A history line that cannot be written is still kept in memory.
        let _ = log.push(perform(&http, cfg.id, node, &cfg.apis[node], op, t0));
        done += 1;
        std::thread::sleep(OP_PAUSE);
    }
    done
}

/// The HTTP request of `op` against the node at `api`: (method, url, body).
pub fn request_of(api: &str, op: &ClientOp) -> (&'static str, String, Option<String>) {
    match op {
        ClientOp::Put { key, value } => {
            ("PUT", format!("{api}/v1/ns/{NS_LWW}/kv/{key}"), Some(json!({ "value": value }).to_string()))
        }
        ClientOp::Delete { key } => ("DELETE", format!("{api}/v1/ns/{NS_LWW}/kv/{key}"), None),
        ClientOp::Incr { key, amount } => {
            ("POST", format!("{api}/v1/ns/{NS_COUNTER}/counter/{key}"), Some(json!({ "amount": amount }).to_string()))
        }
        ClientOp::Add { key, member } | ClientOp::Remove { key, member } => {
            let verb = if matches!(op, ClientOp::Add { .. }) { "add" } else { "remove" };
            (
                "POST",
                format!("{api}/v1/ns/{NS_SET}/set/{key}"),
                Some(json!({ "op": verb, "member": member }).to_string()),
            )
        }
        ClientOp::LinRead { key } => ("GET", format!("{api}/v1/ns/{NS_STRONG}/kv/{key}"), None),
        ClientOp::LinWrite { key, value } => {
            ("PUT", format!("{api}/v1/ns/{NS_STRONG}/kv/{key}"), Some(json!({ "value": value }).to_string()))
        }
        ClientOp::LinCas { key, expected, value } => {
            let body = match expected {
                Some(e) => json!({ "expected": e, "value": value }),
                None => json!({ "value": value }),
            };
            ("POST", format!("{api}/v1/ns/{NS_STRONG}/cas/{key}"), Some(body.to_string()))
        }
        ClientOp::Lock { key, lease } => (
            "POST",
            format!("{api}/v1/ns/{NS_STRONG}/lock/{key}"),
            Some(json!({ "lease": lease, "wait_ms": LOCK_WAIT_MS }).to_string()),
        ),
    }
}

/// Send `op` to node `node` (at `api`) and return its history record;
/// times are nanoseconds since `t0`.
pub fn perform(http: &Http, worker: u32, node: usize, api: &str, op: ClientOp, t0: Instant) -> Record {
    let (method, url, body) = request_of(api, &op);
    let invoke_ns = t0.elapsed().as_nanos() as u64;
    let answer = http.req(method, &url, body.as_deref());
    let complete_ns = t0.elapsed().as_nanos() as u64;
    let (result, ts, error) = classify(answer);
    Record { worker, node, op, invoke_ns, complete_ns, result, ts, error, answer: None }
}

/// 200 → ok (with the receipt's timestamp); 4xx and 503 → fail (refused,
/// nothing changed: the API's rule, docs/design/http-api.md "Conventions",
/// which this makes the checkers hold the daemon to); 504 and other 5xx →
/// unknown (may have applied); no answer → fail only if the connection
/// never opened.
pub fn classify(answer: Result<(u16, Value), NoAnswer>) -> (Outcome, Option<Hlc>, Option<String>) {
    match answer {
        Ok((200, v)) => {
            let ts = serde_json::from_value::<Hlc>(v["timestamp"].clone()).ok();
            (Outcome::Ok, ts, None)
        }
        Ok((s, v)) if (400..500).contains(&s) || s == 503 => (Outcome::Fail, None, Some(format!("{s} {}", v["error"]))),
        Ok((s, v)) => (Outcome::Unknown, None, Some(format!("{s} {}", v["error"]))),
        Err(e) => (if e.definite { Outcome::Fail } else { Outcome::Unknown }, None, Some(e.reason)),
    }
}
