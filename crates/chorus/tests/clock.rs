//! The clock service in real processes (issue 6; `docs/design/clock.md`,
//! "Daemon integration"): nodes probe each other's clocks, a node whose
//! clock is too far off refuses to join or, once measured, refuses writes.
//! Clocks are skewed with the testing knob `CHORUS_TEST_CLOCK_OFFSET_MS`.

mod common;

use common::{CONVERGE, Cluster, eventually};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const OFFSET_ENV: &str = "CHORUS_TEST_CLOCK_OFFSET_MS";
/// Probe often so that a few samples exist quickly.
const FAST_PROBES: &str = "clock_probe_interval_ms = 200";

/// The `clock.peers` entry for `peer` in `/v1/status` of the node at `url`.
fn clock_peer(c: &Cluster, status_url: &str, peer: &str) -> Option<Value> {
    let (_, v) = c.http.get(status_url)?;
    v["clock"]["peers"].as_array()?.iter().find(|p| p["name"] == peer).cloned()
}

/// The value of a Prometheus sample line `name{labels} value`.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[test]
fn a_node_whose_clock_is_two_seconds_ahead_refuses_to_join_and_says_why() {
    let mut c = Cluster::start(71, 1, FAST_PROBES);
    let ca = c.dir.path().join("ca");
    let mut late = c.add_node(2, &ca, FAST_PROBES);
    late.start_with_env(&[(OFFSET_ENV, "2000")]);
    let child = late.child.as_mut().expect("started");
    let status = eventually("the skewed node to exit", CONVERGE, || child.try_wait().ok().flatten());
    assert!(!status.success(), "a node 2 s off must exit non-zero, got {status}");
    let log = std::fs::read_to_string(&late.log).unwrap();
    assert!(log.contains("refusing to join"), "{log}");
    assert!(log.contains("max_offset_ms = 500"), "{log}");
    // The message names the measured offset: cluster time − local ≈ −2000 ms.
    let after = log.split("local clock is ").nth(1).expect("offset in the message");
    let measured_ms: f64 = after.split(" ms").next().unwrap().trim().parse().expect("a number of ms");
    eprintln!("injected +2000 ms; the refusing node measured {measured_ms} ms (cluster − local)");
    assert!((measured_ms + 2000.0).abs() < 200.0, "measured {measured_ms} ms for an injected +2000 ms: {log}");
    // It never became a member, and the cluster still takes writes.
    assert!(c.agents[0].members(&c.http).is_empty(), "{:?}", c.agents[0].members(&c.http));
    c.agents[0].put(&c.http, "default", "still-writable", "yes");
    c.agents.push(late);
}

#[test]
fn a_node_200_ms_ahead_joins_and_its_peer_measures_the_offset_within_ten_percent() {
    let mut c = Cluster::start(72, 1, FAST_PROBES);
    let ca = c.dir.path().join("ca");
    let mut skewed = c.add_node(2, &ca, FAST_PROBES);
    skewed.start_with_env(&[(OFFSET_ENV, "200")]);
    skewed.wait_healthy(&c.http);
    c.agents.push(skewed);
    c.wait_all_alive();

    // node1 sees node2's clock about 200 ms ahead once a few samples exist.
    let status_url = c.agents[0].url("/v1/status");
    let peer = eventually("node1 to have 3 clock samples of node2", CONVERGE, || {
        clock_peer(&c, &status_url, "node2").filter(|p| p["samples"].as_u64().unwrap_or(0) >= 3)
    });
    let offset_us = peer["offset_us"].as_i64().unwrap();
    eprintln!("injected +200 ms; node1 measured node2 at {offset_us} µs: {peer}");
    assert!((offset_us - 200_000).abs() <= 20_000, "node1 measured node2 at {offset_us} µs, injected +200 ms: {peer}");
    assert_eq!(peer["tier"], 0);
    assert_eq!(peer["falseticker"], false);
    assert!(peer["delay_us"].as_i64().unwrap() >= 0);

    // The same number is a Prometheus gauge with a `peer` label.
    let (text, gauge) = eventually("the per-peer offset gauge", CONVERGE, || {
        let (_, text) = c.http.get(&c.agents[0].url("/metrics"))?;
        let text = text.as_str()?.to_string();
        let gauge = metric(&text, "chorus_clock_peer_offset_seconds{peer=\"node2\"}")?;
        Some((text, gauge))
    });
    assert!((gauge - 0.2).abs() <= 0.02, "gauge {gauge} s: {text}");
    assert!(metric(&text, "chorus_clock_peer_delay_seconds{peer=\"node2\"}").is_some(), "{text}");
    assert!(metric(&text, "chorus_clock_peer_falseticker{peer=\"node2\"}").is_some(), "{text}");
    assert!(metric(&text, "chorus_clock_correction_seconds").is_some(), "{text}");

    // node2 sees node1 about 200 ms behind, is within the bound, and writes.
    let status_url2 = c.agents[1].url("/v1/status");
    let back = eventually("node2 to have a clock sample of node1", CONVERGE, || clock_peer(&c, &status_url2, "node1"));
    let back_us = back["offset_us"].as_i64().unwrap();
    assert!((back_us + 200_000).abs() <= 20_000, "node2 measured node1 at {back_us} µs: {back}");
    let (_, status2) = c.http.get(&status_url2).unwrap();
    assert_eq!(status2["clock"]["safe"], true, "{status2}");
    c.agents[1].put(&c.http, "default", "skewed-but-fine", "yes");

    // `chorus status` prints the per-peer clock table.
    let out = common::chorus(&["status", "--node", &c.agents[0].api]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("clock:") && text.contains("node2") && text.contains("offset_ms"), "{text}");
}

#[test]
fn a_node_that_started_unchecked_refuses_writes_once_its_clock_is_measured_off() {
    // node2 starts first, 2 s ahead: its seed (node1) is not up, so its
    // clock is unchecked and it starts. Then node1, node3 and node4
    // (correct clocks) start; once node2 measures them it must refuse
    // writes. Four nodes, because selection tolerates f = ⌊(n−1)/3⌋ bad
    // clocks: with three, one bad clock makes every node unsafe (see
    // docs/design/clock.md).
    let mut c = Cluster::prepare(73, 4, FAST_PROBES);
    c.agents[1].start_with_env(&[(OFFSET_ENV, "2000")]);
    c.agents[1].wait_healthy(&c.http);
    let (_, s) = c.http.get(&c.agents[1].url("/v1/status")).unwrap();
    assert_eq!(s["clock"]["state"], "unchecked", "{s}");
    assert!(s["clock"]["reason"].as_str().unwrap().contains("local clock is unchecked"), "{s}");
    for i in [0, 2, 3] {
        c.agents[i].start();
    }
    for i in [0, 2, 3] {
        c.agents[i].wait_healthy(&c.http);
    }
    c.wait_all_alive();

    let health = eventually("node2 to report clock_unsafe", CONVERGE, || {
        c.http.get(&c.agents[1].url("/health")).map(|(_, h)| h).filter(|h| h["status"] == "clock_unsafe")
    });
    let reason = health["reasons"][0].as_str().unwrap();
    assert!(reason.contains("max_offset_ms = 500"), "{health}");
    let offset_us = health["clock"]["offset_us"].as_i64().unwrap();
    assert!(offset_us < -500_000, "node2 is 2 s ahead: cluster − local must be below −500 ms, got {offset_us}");

    let body = json!({ "value": "x" }).to_string();
    let (code, v) = c.http.req("PUT", &c.agents[1].url("/v1/ns/default/kv/k"), Some(&body)).unwrap();
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"], "clock_unsafe", "{v}");
    assert!(v["message"].as_str().unwrap().contains("ms"), "{v}");

    // With three correct clocks against one wrong one, node1 flags node2
    // and stays writable.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (_, s) = c.http.get(&c.agents[0].url("/v1/status")).unwrap();
        let ok = s["clock"]["safe"] == true && s["clock"]["peers_used"] == 3;
        let flagged =
            s["clock"]["peers"].as_array().unwrap().iter().any(|p| p["name"] == "node2" && p["falseticker"] == true);
        if ok && flagged {
            break;
        }
        assert!(Instant::now() < deadline, "node1 never settled safe with node2 flagged: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.agents[0].put(&c.http, "default", "k", "from-node1");
}
