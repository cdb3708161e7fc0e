//! Change streams (`GET /v1/watch`), snapshots (`GET /v1/ns/{ns}/snapshot`)
//! and session tokens on real agents (issue 14, acceptance (a)–(f);
//! `docs/design/fault-injection.md`, "Watch checkers").
//!
//! Every eventual test records the dot of each acknowledged write and the
//! lines of each stream, and hands them to
//! [`chorus_faults::watch_checker::check_chain`]: every acknowledged write
//! covered by exactly one event of its key over the streams a client
//! chained by resuming, per-key order never backwards. Waits are polls with
//! deadlines; the tests run one at a time (each starts its own agents and
//! the machine has two cores).

mod common;
#[path = "common/watch.rs"]
mod watch;

use chorus_faults::cluster::{Cluster, Http};
use chorus_faults::net::Net;
use chorus_faults::run::{HEALTHY_DEADLINE, build_net};
use chorus_faults::strong::{self, NS_STRONG};
use chorus_faults::watch_checker::{
    AckedWrite, WatchViolation, WatchViolationKind, check_chain, is_data_event, last_events, up_to_token,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use watch::{Opened, Stream, open_ndjson, open_ndjson_path, open_websocket, wait_for};

/// Deadline for a stream to deliver what was written.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(15);
/// Deadline for a partitioned node to catch up after the heal.
const HEAL_DEADLINE: Duration = Duration::from_secs(25);
/// The eventual namespace of these tests.
const NS: &str = "w";

/// The tests of this file run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running cluster; fields drop in order (agents before their network).
struct Live {
    client: Client,
    cluster: Cluster,
    net: Net,
    _dir: tempfile::TempDir,
}

/// The nodes' APIs, as a client sees them (cheap to clone into threads).
#[derive(Clone)]
struct Client {
    admin: Http,
    apis: Vec<String>,
}

/// Three agents (node `i` has the extra environment `env` entries for `i`),
/// each with `extra_config` appended to its configuration. `None` when the
/// test needs namespaces and skips (outside CI) without them.
fn live(
    test: &str,
    seed: u64,
    needs_namespaces: bool,
    extra_config: &str,
    env: &[(usize, &str, &str)],
) -> Option<Live> {
    let bin = common::chorus_bin();
    let net = build_net(3, true, seed);
    if needs_namespaces && !common::namespaces_or_skip(net.is_namespaces(), test) {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::prepare(&bin, &net, dir.path(), 300).expect("prepare");
    for n in &cluster.nodes {
        let mut config = std::fs::read_to_string(&n.config).expect("read config");
        config.push_str(extra_config);
        std::fs::write(&n.config, config).expect("write config");
    }
    for i in 0..3 {
        let mine: Vec<(&str, &str)> = env.iter().filter(|e| e.0 == i).map(|e| (e.1, e.2)).collect();
        cluster.start_with_env(i, 0, &mine).expect("start");
    }
    cluster.wait_all_alive(HEALTHY_DEADLINE).expect("cluster up");
    let client = Client { admin: cluster.admin.clone(), apis: cluster.nodes.iter().map(|n| n.api.clone()).collect() };
    Some(Live { client, cluster, net, _dir: dir })
}

impl Client {
    fn api(&self, i: usize) -> &str {
        &self.apis[i]
    }

    fn create_eventual(&self, ns: &str) {
        let body = json!({ "name": ns, "type": "lww" }).to_string();
        let (s, v) = self.admin.req("POST", &format!("{}/v1/ns", self.api(0)), Some(&body)).expect("create");
        assert!(s == 200 || s == 201, "create {ns}: {s} {v}");
    }

    /// PUT through node `i`; the write must be acknowledged.
    fn put(&self, i: usize, key: &str, value: &str) -> (AckedWrite, Value) {
        let body = json!({ "value": value }).to_string();
        let url = format!("{}/v1/ns/{NS}/kv/{key}", self.api(i));
        let (s, v) = self.admin.req("PUT", &url, Some(&body)).expect("put answered");
        assert_eq!(s, 200, "PUT {key} on node {}: {v}", i + 1);
        (AckedWrite::from_answer(NS, key, &v).expect("the answer names the write's dot"), v)
    }

    fn delete(&self, i: usize, key: &str) -> AckedWrite {
        let url = format!("{}/v1/ns/{NS}/kv/{key}", self.api(i));
        let (s, v) = self.admin.req("DELETE", &url, None).expect("delete answered");
        assert_eq!(s, 200, "DELETE {key} on node {}: {v}", i + 1);
        AckedWrite::from_answer(NS, key, &v).expect("the answer names the write's dot")
    }

    /// GET with an optional `Chorus-Session` header: status, body and the
    /// answer's `Chorus-Session` header.
    fn get(&self, i: usize, key: &str, session: Option<&str>) -> (u16, Value, Option<String>) {
        self.get_in(i, NS, key, session)
    }

    fn get_in(&self, i: usize, ns: &str, key: &str, session: Option<&str>) -> (u16, Value, Option<String>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.get(&format!("{}/v1/ns/{ns}/kv/{key}", self.api(i)));
        if let Some(t) = session {
            req = req.header("Chorus-Session", t);
        }
        let mut r = req.call().expect("GET answered");
        let header = r.headers().get("chorus-session").and_then(|v| v.to_str().ok()).map(str::to_string);
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), header)
    }

    /// Wait until node `i` has seen everything `session` covers (a read
    /// with it answers 200), e.g. before the only other holder dies.
    fn wait_seen(&self, i: usize, key: &str, session: &str) {
        wait_for(&format!("node {} to see the session", i + 1), DELIVERY_DEADLINE, || {
            (self.get(i, key, Some(session)).0 == 200).then_some(())
        });
    }

    /// The number of streams node `i` closed as lagged.
    fn lagged_total(&self, i: usize) -> u64 {
        let (_, text) = self.admin.req("GET", &format!("{}/metrics", self.api(i)), None).expect("metrics");
        let text = text.as_str().unwrap_or_default().to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("chorus_watch_lagged_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .map_or(0, |n| n as u64)
    }

    /// A strong PUT through node `i` (forwarded to the leader); its answer.
    fn strong_put(&self, i: usize, key: &str, value: &str) -> Value {
        let body = json!({ "value": value }).to_string();
        let url = format!("{}/v1/ns/{NS_STRONG}/kv/{key}", self.api(i));
        let (s, v) = self.admin.req("PUT", &url, Some(&body)).expect("strong put answered");
        assert_eq!(s, 200, "strong PUT {key} on node {}: {v}", i + 1);
        v
    }

    /// Resume a watch of [`NS`] on node `i` from `token`, retrying while
    /// the node answers 503 `watch_behind` (it waits `session_wait_ms`
    /// each time).
    fn resume(&self, i: usize, token: &str, deadline: Duration) -> Stream {
        self.resume_in(i, NS, token, deadline)
    }

    fn resume_in(&self, i: usize, ns: &str, token: &str, deadline: Duration) -> Stream {
        wait_for(&format!("node {} to serve the resume", i + 1), deadline, || {
            match open_ndjson(self.api(i), ns, "", Some(token), false) {
                Opened::Stream(s) => Some(s),
                Opened::Refused(503, v) if v["error"] == "watch_behind" => None,
                Opened::Refused(s, v) => panic!("resume on node {}: {s} {v}", i + 1),
            }
        })
    }
}

/// Writes on node `i`: `ops` puts (every `delete_every`-th op a delete, 0
/// = none) over keys `{prefix}0..{prefix}{keys}`; `done` counts them.
fn writer(
    client: &Client,
    i: usize,
    prefix: &str,
    keys: usize,
    ops: usize,
    delete_every: usize,
    done: &AtomicUsize,
) -> Vec<AckedWrite> {
    let mut acked = Vec::new();
    for op in 0..ops {
        let key = format!("{prefix}{}", op % keys);
        if delete_every > 0 && op % delete_every == delete_every - 1 {
            acked.push(client.delete(i, &key));
        } else {
            acked.push(client.put(i, &key, &format!("n{}-{op}", i + 1)).0);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    acked
}

/// Writers on several nodes at once (every 7th op a delete); every
/// acknowledged write.
fn write_concurrently(client: &Client, nodes: &[usize], prefix: &str, keys: usize, ops: usize) -> Vec<AckedWrite> {
    let done = &AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> =
            nodes.iter().map(|&i| s.spawn(move || writer(client, i, prefix, keys, ops, 7, done))).collect();
        handles.into_iter().flat_map(|h| h.join().expect("writer")).collect()
    })
}

fn gaps(v: &[WatchViolation]) -> Vec<&AckedWrite> {
    v.iter().filter(|v| v.kind == WatchViolationKind::Gap).filter_map(|v| v.write.as_ref()).collect()
}

/// Wait until the chain (all but the last stream fixed, the last one still
/// growing) covers every acknowledged write except `excused`, then return
/// the checker's verdict over it.
fn check_when_delivered(
    what: &str,
    acked: &[AckedWrite],
    fixed: &[&[Value]],
    last: &Stream,
    excused: &[AckedWrite],
) -> (Vec<WatchViolation>, Vec<Value>) {
    let lines = wait_for(what, DELIVERY_DEADLINE, || {
        let lines = last.lines.snapshot();
        let mut chain = fixed.to_vec();
        chain.push(&lines);
        let v = check_chain(acked, &chain);
        gaps(&v).iter().all(|g| excused.contains(g)).then_some(lines)
    });
    let mut chain = fixed.to_vec();
    chain.push(&lines);
    (check_chain(acked, &chain), lines)
}

fn data_events(lines: &[Value]) -> usize {
    lines.iter().filter(|l| is_data_event(l)).count()
}

#[test]
fn a_watcher_on_node_2_sees_every_write_of_nodes_1_and_3_once_in_key_order_over_ndjson_and_websocket() {
    let _serial = serial();
    let Some(live) = live("watch_a", 1_400_001, false, "", &[]) else { return };
    let c = &live.client;
    c.create_eventual(NS);
    let ndjson = open_ndjson(c.api(1), NS, "", None, false).stream("watch on node 2");
    let ws = open_websocket(c.api(1), NS, "", None);
    let acked = write_concurrently(c, &[0, 2], "k", 6, 40);
    let (v, lines) = check_when_delivered("the NDJSON stream to cover every write", &acked, &[], &ndjson, &[]);
    assert_eq!(v, vec![], "NDJSON stream on node 2");
    let (v, ws_lines) = check_when_delivered("the WebSocket stream to cover every write", &acked, &[], &ws, &[]);
    assert_eq!(v, vec![], "WebSocket stream on node 2");
    assert!(data_events(&ws_lines) >= 6, "the WebSocket delivered events: {ws_lines:?}");
    // The writes of two nodes on six keys: some events cover several
    // writes of their key (overwritten before delivery), none is repeated.
    assert!(data_events(&lines) <= acked.len());

    // Writes stopped and every one was delivered: the last event of each
    // key is node 2's state of it.
    for (stream, lines) in [("NDJSON", &lines), ("WebSocket", &ws_lines)] {
        let last = last_events(&[lines]);
        let keys: BTreeSet<&str> = acked.iter().map(|w| w.key.as_str()).collect();
        for key in keys {
            let event = last.get(&(NS.to_string(), key.to_string())).expect("every written key has an event");
            let (status, state, _) = c.get(1, key, None);
            match status {
                404 => assert_eq!(event["type"], "delete", "{stream}: {key} is deleted on node 2: {event}"),
                200 => {
                    assert_eq!(event["type"], "put", "{stream}: {key}: {event} vs {state}");
                    assert_eq!(event["value"], state["value"], "{stream}: {key}: {event} vs {state}");
                    assert_eq!(event["context"], state["context"], "{stream}: {key}: {event} vs {state}");
                }
                s => panic!("GET {key} on node 2: {s} {state}"),
            }
        }
    }
}

/// What [`kill_and_resume`] saw.
struct KillAndResume {
    violations: Vec<WatchViolation>,
    /// Node 1's first writes, one at a time: its n-th data event is the
    /// n-th of them.
    local: Vec<AckedWrite>,
    first_events: usize,
    second_events: usize,
}

/// Scenario (b), optionally with node 1 dropping its `drop`-th data event
/// (`CHORUS_TEST_WATCH_DROP_EVENT`): a watcher on node 1, writes on nodes 1
/// and 3, kill -9 of node 1 while node 3 keeps writing, resume on node 2
/// from the last token received, check over the chain.
fn kill_and_resume(test: &str, seed: u64, drop: Option<u64>) -> KillAndResume {
    let drop_env = drop.map(|n| n.to_string()).unwrap_or_default();
    let env: Vec<(usize, &str, &str)> =
        drop.map(|_| (0, "CHORUS_TEST_WATCH_DROP_EVENT", drop_env.as_str())).into_iter().collect();
    let mut live = live(test, seed, false, "", &env).expect("no namespaces needed");
    let c = live.client.clone();
    c.create_eventual(NS);
    let first = open_ndjson(c.api(0), NS, "", None, false).stream("watch on node 1");
    // Node 1's own writes first, one at a time, each on a key of its own:
    // the stream is node 1's only one, so its n-th data event is the n-th
    // of these writes.
    let local: Vec<AckedWrite> = (0..8).map(|n| c.put(0, &format!("d{n}"), "v").0).collect();
    let excused: Vec<AckedWrite> =
        drop.and_then(|n| usize::try_from(n).ok()).and_then(|n| local.get(n - 1).cloned()).into_iter().collect();
    let mut acked = local.clone();
    acked.extend(write_concurrently(&c, &[0, 2], "k", 5, 20));
    check_when_delivered("node 1's stream to cover the first writes", &acked, &[], &first, &excused);
    // Node 1 is about to die: node 2 must hold its writes for anyone to
    // deliver them afterwards.
    let (w, answer) = c.put(0, "d-last", "v");
    acked.push(w);
    c.wait_seen(1, "d-last", answer["session"].as_str().expect("session"));

    let done = AtomicUsize::new(0);
    let (late, first_lines, token, second) = std::thread::scope(|s| {
        let node3 = s.spawn(|| writer(&c, 2, "k", 5, 40, 0, &done));
        wait_for("node 3 to be writing", DELIVERY_DEADLINE, || (done.load(Ordering::Relaxed) >= 10).then_some(()));
        live.cluster.kill9(0);
        wait_for("node 1's stream to end with its node", DELIVERY_DEADLINE, || first.ended().then_some(()));
        let token = first.lines.last_token().expect("node 1's stream sent a token");
        let first_lines = first.close();
        let second = c.resume(1, &token, DELIVERY_DEADLINE);
        (node3.join().expect("node 3's writer"), first_lines, token, second)
    });
    acked.extend(late);
    let first_cut = up_to_token(&first_lines, &token).expect("the resume token is one of the stream's");
    let (violations, second_lines) =
        check_when_delivered("the resumed stream to cover every write", &acked, &[first_cut], &second, &excused);
    KillAndResume { violations, local, first_events: data_events(first_cut), second_events: data_events(&second_lines) }
}

#[test]
fn a_watch_resumed_on_node_2_after_kill_9_of_node_1_covers_every_acknowledged_write_exactly_once() {
    let _serial = serial();
    let r = kill_and_resume("watch_b", 1_400_002, None);
    assert_eq!(r.violations, vec![], "over the union of node 1's and node 2's streams");
    assert!(r.first_events >= r.local.len(), "node 1's stream delivered its writes");
    assert!(r.second_events > 0, "node 2's stream delivered node 3's later writes");
}

/// The data event node 1 drops in the knob test.
const DROPPED_EVENT: u64 = 5;

#[test]
fn the_watch_checker_reports_exactly_one_gap_naming_the_write_whose_event_node_1_dropped() {
    let _serial = serial();
    let r = kill_and_resume("watch_drop", 1_400_003, Some(DROPPED_EVENT));
    eprintln!("violations with event {DROPPED_EVENT} of node 1 dropped:\n{:#?}", r.violations);
    let dropped = r.local[DROPPED_EVENT as usize - 1].clone();
    assert_eq!(
        r.violations.iter().map(|v| (v.kind, v.write.clone())).collect::<Vec<_>>(),
        vec![(WatchViolationKind::Gap, Some(dropped))],
        "{:#?}",
        r.violations
    );
    assert!(r.second_events > 0, "node 2's stream delivered node 3's later writes");
}

#[test]
fn a_watch_resumed_across_a_partition_answers_watch_behind_then_after_heal_covers_every_write_once() {
    let _serial = serial();
    let Some(live) = live(
        "a_watch_resumed_across_a_partition_answers_watch_behind_then_after_heal_covers_every_write_once",
        1_400_004,
        true,
        "",
        &[],
    ) else {
        return;
    };
    let c = &live.client;
    c.create_eventual(NS);
    let first = open_ndjson(c.api(0), NS, "", None, false).stream("watch on node 1");
    let mut acked = write_concurrently(c, &[0, 1, 2], "k", 6, 10);
    check_when_delivered("node 1's stream to cover the writes before the partition", &acked, &[], &first, &[]);

    // Node 3 alone; both sides write the same keys.
    live.net.cut(2, &[0, 1]).expect("cut node 3");
    live.net.cut(0, &[2]).expect("cut node 3");
    live.net.cut(1, &[2]).expect("cut node 3");
    let majority = write_concurrently(c, &[0, 1], "k", 6, 10);
    let alone = write_concurrently(c, &[2], "k", 6, 10);
    acked.extend(majority);
    acked.extend(alone.clone());
    let (v, _) = check_when_delivered("node 1's stream to cover its side's writes", &acked, &[], &first, &alone);
    let missing: BTreeSet<&AckedWrite> = gaps(&v).into_iter().collect();
    assert_eq!(missing, alone.iter().collect(), "node 1's stream lacks exactly node 3's writes: {v:#?}");
    let token = first.lines.last_token().expect("a token");
    let first_lines = first.close();
    let first_cut = up_to_token(&first_lines, &token).expect("the resume token is one of the stream's");

    // Node 3 has not seen what the token covers: it waits, then refuses;
    // it never streams from an older position.
    match open_ndjson(c.api(2), NS, "", Some(&token), false) {
        Opened::Refused(503, body) => {
            assert_eq!(body["error"], "watch_behind", "{body}");
            let missing = body["missing"].as_array().expect("the missing position is listed");
            assert!(!missing.is_empty(), "{body}");
        }
        Opened::Refused(status, body) => panic!("resume on cut-off node 3: {status} {body}"),
        Opened::Stream(s) => panic!("cut-off node 3 served a position it has not seen: {:?}", s.close()),
    }

    assert!(live.net.heal().is_empty(), "heal");
    let second = c.resume(2, &token, HEAL_DEADLINE);
    let (v, second_lines) =
        check_when_delivered("the resumed stream to cover every write", &acked, &[first_cut], &second, &[]);
    assert_eq!(v, vec![], "over the union of node 1's stream and node 3's after the heal");
    assert!(data_events(&second_lines) > 0, "node 3's stream delivered its own partition writes");
}

#[test]
fn a_slow_ndjson_consumer_is_closed_with_lagged_and_resumes_from_its_token_without_a_gap() {
    let _serial = serial();
    let Some(live) = live("watch_d", 1_400_005, false, "", &[]) else { return };
    let c = &live.client;
    c.create_eventual(NS);
    // Never read: the socket buffers fill, then the stream's 64 lines, then
    // its 256 batches in the hub.
    let slow = open_ndjson(c.api(1), NS, "", None, true).stream("watch on node 2");
    let big = "x".repeat(32 << 10);
    let lagged_before = c.lagged_total(1);
    let mut acked = Vec::new();
    while c.lagged_total(1) == lagged_before {
        assert!(acked.len() < 4_000, "node 2 never closed the stalled stream as lagged");
        for _ in 0..16 {
            let n = acked.len();
            acked.push(c.put(1, &format!("s{}", n % 16), &format!("{n}-{big}")).0);
        }
    }
    eprintln!("the stalled stream lagged after {} writes of {} bytes", acked.len(), big.len());
    slow.set_paused(false);
    wait_for("the lagged stream to end", DELIVERY_DEADLINE, || slow.ended().then_some(()));
    let first = slow.close();
    let last = first.last().expect("lines");
    assert_eq!(last["type"], "lagged", "the stream ends with lagged: {last}");
    let token = last["token"].as_str().expect("lagged carries a token").to_string();
    let behind = check_chain(&acked, &[&first]);
    assert!(!gaps(&behind).is_empty(), "the lagged stream had not delivered every write (else nothing is tested)");

    let second = c.resume(1, &token, DELIVERY_DEADLINE);
    for m in 0..10 {
        acked.push(c.put(1, &format!("s{m}"), "after").0);
    }
    let (v, _) = check_when_delivered("the resumed stream to cover every write", &acked, &[&first], &second, &[]);
    assert_eq!(v, vec![], "over the lagged stream and its resume");
}

#[test]
fn a_strong_resume_older_than_the_kept_history_gets_reset_compacted_and_a_recent_one_resumes_in_order() {
    let _serial = serial();
    let Some(live) = live("watch_e", 1_400_006, false, "strong_watch_history_events_max = 16\n", &[]) else {
        return;
    };
    let c = &live.client;
    strong::create_namespace(&c.admin, &c.apis).expect("strong namespace");
    let first = open_ndjson(c.api(0), NS_STRONG, "", None, false).stream("strong watch on node 1");
    c.strong_put(0, "r0", "old");
    let old = wait_for("the first strong event", DELIVERY_DEADLINE, || {
        first.lines.snapshot().into_iter().find(is_data_event)
    });
    assert_eq!(old["value"], "old", "{old}");
    let old_token = old["token"].as_str().expect("token").to_string();
    drop(first);
    for n in 0..40 {
        c.strong_put(0, &format!("r{}", n % 4), &format!("v{n}"));
    }
    wait_for("node 2 to apply the last write", DELIVERY_DEADLINE, || {
        let (s, v, _) = c.get_in(1, NS_STRONG, "r3?stale=true", None);
        (s == 200 && v["value"] == "v39").then_some(())
    });

    // 41 events since, 16 kept: the old position cannot be served.
    let stale = open_ndjson(c.api(1), NS_STRONG, "", Some(&old_token), false).stream("resume from the old token");
    wait_for("the compacted stream to end", DELIVERY_DEADLINE, || stale.ended().then_some(()));
    let lines = stale.close();
    assert_eq!(lines.len(), 1, "one reset, no data before it: {lines:?}");
    assert_eq!(lines[0]["type"], "reset", "{lines:?}");
    assert_eq!(lines[0]["reason"], "compacted", "{lines:?}");
    assert!(lines[0]["token"].is_string(), "{lines:?}");

    // Control: a position within the kept history resumes, in order.
    let recent = open_ndjson(c.api(0), NS_STRONG, "", None, false).stream("strong watch on node 1");
    let revisions: Vec<u64> =
        (0..3).map(|n| c.strong_put(0, "r9", &format!("late{n}"))["revision"].as_u64().expect("revision")).collect();
    let events = wait_for("three strong events", DELIVERY_DEADLINE, || {
        let e: Vec<Value> = recent.lines.snapshot().into_iter().filter(is_data_event).collect();
        (e.len() >= 3).then_some(e)
    });
    drop(recent);
    let from = events[0]["token"].as_str().expect("token").to_string();
    let resumed = c.resume_in(2, NS_STRONG, &from, DELIVERY_DEADLINE);
    let later = wait_for("the two later events on node 3", DELIVERY_DEADLINE, || {
        let e: Vec<Value> = resumed.lines.snapshot().into_iter().filter(is_data_event).collect();
        (e.len() >= 2).then_some(e)
    });
    let got: Vec<(u64, Value)> =
        later.iter().map(|e| (e["revision"].as_u64().unwrap_or(0), e["value"].clone())).collect();
    assert_eq!(got, vec![(revisions[1], json!("late1")), (revisions[2], json!("late2"))]);
    assert!(resumed.lines.snapshot().iter().all(|l| l["type"] != "reset"), "no reset within the kept history");
}

#[test]
fn a_read_with_the_session_of_a_write_on_a_node_cut_off_from_it_answers_session_behind_never_the_old_value() {
    let _serial = serial();
    let Some(live) = live(
        "a_read_with_the_session_of_a_write_on_a_node_cut_off_from_it_answers_session_behind_never_the_old_value",
        1_400_007,
        true,
        "",
        &[],
    ) else {
        return;
    };
    let c = &live.client;
    c.create_eventual(NS);
    c.put(0, "cfg", "old");
    wait_for("node 3 to hold the old value", DELIVERY_DEADLINE, || {
        let (s, v, _) = c.get(2, "cfg", None);
        (s == 200 && v["value"] == "old").then_some(())
    });
    live.net.cut(2, &[0, 1]).expect("cut node 3");
    live.net.cut(0, &[2]).expect("cut node 3");
    live.net.cut(1, &[2]).expect("cut node 3");
    let (_, written) = c.put(0, "cfg", "new");
    let session = written["session"].as_str().expect("the write answers a session").to_string();

    let (status, body, _) = c.get(2, "cfg", Some(&session));
    assert_eq!(status, 503, "node 3 has not seen the write: {body}");
    assert_eq!(body["error"], "session_behind", "{body}");
    assert!(body.get("value").is_none(), "no value at all, old or new: {body}");
    assert!(!body["missing"]["dots"].as_array().expect("missing dots").is_empty(), "{body}");
    // Without the session node 3 serves its replica, which is old: the
    // session is what kept the old value from this client.
    let (status, body, header) = c.get(2, "cfg", None);
    assert_eq!((status, &body["value"]), (200, &json!("old")), "{body}");
    assert_eq!(header.as_deref(), body["session"].as_str(), "the session is in the header and the body");

    assert!(live.net.heal().is_empty(), "heal");
    wait_for("node 3 to serve the session after the heal", HEAL_DEADLINE, || {
        let (status, body, _) = c.get(2, "cfg", Some(&session));
        match status {
            503 if body["error"] == "session_behind" => None,
            200 => {
                assert_eq!(body["value"], "new", "a read with the session after the heal: {body}");
                Some(())
            }
            s => panic!("read with the session on node 3: {s} {body}"),
        }
    });
}

#[test]
fn a_websocket_watch_resumed_on_another_node_from_its_last_token_covers_every_write_once() {
    let _serial = serial();
    let Some(live) = live("watch_ws_resume", 1_400_009, false, "", &[]) else { return };
    let c = &live.client;
    c.create_eventual(NS);
    let first = open_websocket(c.api(1), NS, "", None);
    let mut acked = write_concurrently(c, &[0, 2], "k", 5, 15);
    check_when_delivered("the first WebSocket to cover the first writes", &acked, &[], &first, &[]);
    let token = first.lines.last_token().expect("the WebSocket sent a token");
    let first_lines = first.close();
    let first_cut = up_to_token(&first_lines, &token).expect("the resume token is one of the stream's");
    // Written while no stream is open, then while the resumed one is.
    acked.extend(write_concurrently(c, &[0, 1], "k", 5, 10));
    let second = open_websocket(c.api(0), NS, "", Some(&token));
    acked.extend(write_concurrently(c, &[1, 2], "k", 5, 10));
    let (v, second_lines) =
        check_when_delivered("the resumed WebSocket to cover every write", &acked, &[first_cut], &second, &[]);
    assert_eq!(v, vec![], "over the WebSocket on node 2 and its resume on node 1");
    assert!(data_events(&second_lines) > 0, "the resumed WebSocket delivered the later writes");
}

/// A snapshot's state lines as the events a stream would have sent: each
/// line covers the dots of its `context` above the key's previous line
/// (as ranges `[node, first, last]`, like an event's `dots`). The `end`
/// line is kept, so the chain can be cut at its token.
fn snapshot_as_events(lines: &[Value]) -> Vec<Value> {
    let mut seen: std::collections::BTreeMap<String, chorus_core::VersionVector> = Default::default();
    lines
        .iter()
        .map(|line| {
            if !is_data_event(line) {
                return line.clone();
            }
            let key = line["key"].as_str().expect("a state line names its key").to_string();
            let context = line["context"].as_str().expect("a state line carries its context");
            let clock = chorus_daemon::token::decode(context).expect("the context decodes");
            let before = seen.remove(&key).unwrap_or_default();
            let dots: Vec<Value> = clock
                .iter()
                .filter(|&(node, c)| c > before.get(node))
                .map(|(node, c)| json!([node.to_string(), before.get(node) + 1, c]))
                .collect();
            seen.insert(key, clock);
            let mut event = line.clone();
            event["dots"] = dots.into();
            event
        })
        .collect()
}

#[test]
fn a_snapshot_read_under_concurrent_writes_then_a_watch_from_its_token_on_another_node_covers_every_write_once() {
    let _serial = serial();
    let Some(live) = live("watch_snapshot", 1_400_008, false, "", &[]) else { return };
    let c = &live.client;
    c.create_eventual(NS);
    // More keys than one snapshot page (1,000), with values large enough
    // that a reader which does not read blocks the first page in the
    // node's send (the socket buffers hold far less than 1,200 × 4 KiB).
    let big = "x".repeat(4 << 10);
    let done = AtomicUsize::new(0);
    let mut acked: Vec<AckedWrite> = std::thread::scope(|s| {
        let hs: Vec<_> = [(0, "a"), (2, "b")]
            .into_iter()
            .map(|(i, prefix)| {
                let big = &big;
                s.spawn(move || (0..600).map(|n| c.put(i, &format!("{prefix}{n}"), big).0).collect::<Vec<_>>())
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().expect("writer")).collect()
    });
    // Node 2 (the snapshot) and node 3 (the watch) hold all of it first.
    let (w, answer) = c.put(0, "a-last", "v");
    acked.push(w);
    let session = answer["session"].as_str().expect("session").to_string();
    c.wait_seen(1, "a-last", &session);
    c.wait_seen(2, "a-last", &session);

    // The snapshot on node 2, read by a reader that waits while nodes 1
    // and 3 overwrite keys of both pages; then it reads to the end and a
    // watch resumes from the end's token on node 3 while they still write.
    let snapshot =
        open_ndjson_path(c.api(1), &format!("/v1/ns/{NS}/snapshot?prefix="), true).stream("snapshot on node 2");
    let (during, snapshot_lines, second) = std::thread::scope(|s| {
        let w1 = s.spawn(|| writer(c, 0, "a", 300, 300, 0, &done));
        let w3 = s.spawn(|| writer(c, 2, "b", 300, 300, 0, &done));
        wait_for("writes while the snapshot is held", DELIVERY_DEADLINE, || {
            (done.load(Ordering::Relaxed) >= 60).then_some(())
        });
        snapshot.set_paused(false);
        wait_for("the snapshot to end", DELIVERY_DEADLINE, || snapshot.ended().then_some(()));
        let lines = snapshot.close();
        let end = lines.last().expect("snapshot lines").clone();
        assert_eq!(end["type"], "end", "the snapshot ends with its token: {end}");
        let token = end["token"].as_str().expect("the end line carries a token").to_string();
        let second = c.resume(2, &token, DELIVERY_DEADLINE);
        let mut during = w1.join().expect("writer on node 1");
        during.extend(w3.join().expect("writer on node 3"));
        (during, lines, second)
    });
    acked.extend(during);
    // After the snapshot: overwrites and deletes through node 1.
    acked.extend(writer(c, 0, "a", 50, 60, 3, &done));

    let as_events = snapshot_as_events(&snapshot_lines);
    let states = snapshot_lines.iter().filter(|l| is_data_event(l)).count();
    let keys: BTreeSet<&str> = snapshot_lines.iter().filter_map(|l| l["key"].as_str()).collect();
    eprintln!(
        "snapshot: {states} state lines for {} keys ({} sent again after a change), end {}",
        keys.len(),
        states - keys.len(),
        snapshot_lines.last().map(Value::to_string).unwrap_or_default()
    );
    assert!(keys.len() > 1_200, "the snapshot holds every key written before it: {}", keys.len());
    assert!(states > keys.len(), "keys already sent were changed while the snapshot ran and sent again");
    let (v, stream_lines) = check_when_delivered(
        "the watch from the snapshot's token to cover every later write",
        &acked,
        &[&as_events],
        &second,
        &[],
    );
    assert_eq!(v, vec![], "over the snapshot on node 2 and the watch on node 3 from its token");
    assert!(data_events(&stream_lines) > 0, "the watch delivered the writes after the snapshot");

    // Every key's last state over snapshot + watch is node 3's.
    let last = last_events(&[&as_events, &stream_lines]);
    for w in &acked {
        let event = last.get(&(NS.to_string(), w.key.clone())).expect("every written key has a state");
        let (status, state, _) = c.get(2, &w.key, None);
        match status {
            404 => assert_eq!(event["type"], "delete", "{}: deleted on node 3: {event}", w.key),
            200 => assert_eq!(
                (&event["value"], &event["context"]),
                (&state["value"], &state["context"]),
                "{}: the last state delivered vs node 3's",
                w.key
            ),
            s => panic!("GET {} on node 3: {s} {state}", w.key),
        }
    }
}
