//! Writes signed by their origin, in real processes
//! (`docs/design/signing.md`, "Testing"). The only path between node2
//! (tier 0) and node3 (tier 2) is node1 (tier 1), a relay built with the
//! `test-knobs` feature that alters everything third nodes wrote before
//! forwarding it: LWW values, counter contributions and seen entries. Every
//! forged item must be refused by both honest nodes, the relay quarantined
//! for `bad_signature`, and the honest state unchanged; the relay's own
//! writes, which it signs honestly, still arrive.

mod common;

use common::{CONVERGE, Cluster, eventually, metric, metrics};

fn counter(c: &Cluster, i: usize, key: &str) -> Option<i64> {
    c.http
        .get(&c.agents[i].url(&format!("/v1/ns/hits/counter/{key}")))
        .filter(|(s, _)| *s == 200)
        .and_then(|(_, v)| v["value"].as_i64())
}

fn lww(c: &Cluster, i: usize, key: &str) -> Option<String> {
    c.agents[i].read(&c.http, "default", key).and_then(|v| v["value"].as_str().map(str::to_owned))
}

fn increment(c: &Cluster, i: usize, key: &str, amount: i64) {
    let url = c.agents[i].url(&format!("/v1/ns/hits/counter/{key}"));
    let (status, v) = c.http.req("POST", &url, Some(&format!("{{\"amount\":{amount}}}"))).expect("answer");
    assert_eq!(status, 200, "{v}");
}

#[test]
fn a_relay_that_forges_third_nodes_writes_is_refused_by_every_honest_node_and_quarantined() {
    let mut c = Cluster::prepare(131, 3, "clock_probe_interval_ms = 200");
    for (agent, tier) in c.agents.iter().zip([1, 0, 2]) {
        agent.append_config(&format!("tier = {tier}"));
    }
    c.agents[0].start_with_env(&[("CHORUS_TEST_RELAY_FORGE", "1")]);
    c.agents[1].start();
    c.agents[2].start();
    for a in &mut c.agents {
        a.wait_healthy(&c.http);
    }
    c.wait_all_alive();

    // The relay's own writes are honest and signed: they reach both ends.
    c.agents[0].put(&c.http, "default", "from-relay", "relay");
    for i in [1, 2] {
        eventually(&format!("node{} to read the relay's own write", i + 1), CONVERGE, || {
            lww(&c, i, "from-relay").filter(|v| v == "relay")
        });
    }
    let (status, v) =
        c.http.req("POST", &c.agents[1].url("/v1/ns"), Some(r#"{"name":"hits","type":"counter"}"#)).unwrap();
    assert_eq!(status, 201, "{v}");
    eventually("the counter namespace to reach node3", CONVERGE, || {
        c.http.get(&c.agents[2].url("/v1/ns/hits")).filter(|(s, _)| *s == 200)
    });

    // Each end writes; the relay forges all of it on the way to the other.
    c.agents[1].put(&c.http, "default", "from-2", "honest-2");
    c.agents[2].put(&c.http, "default", "from-3", "honest-3");
    increment(&c, 1, "clicks", 5);
    increment(&c, 2, "clicks", 7);

    // Each end refuses forged items more than once: before the quarantine,
    // and again when the relay is back after it (pushes and anti-entropy
    // deltas each count). The relay is the ends' only data peer, so their
    // own rounds may stop meanwhile: nothing here counts rounds.
    for i in [1usize, 2] {
        eventually(&format!("node{} to refuse both forged items and quarantine the relay", i + 1), CONVERGE, || {
            let m = metrics(&c, i);
            (metric(&m, "chorus_rejected_total{reason=\"bad_signature\"}") >= 2.0
                && metric(&m, "chorus_peer_quarantines_total{reason=\"bad_signature\"}") > 0.0)
                .then_some(())
        });
    }

    // Nothing forged was applied anywhere honest, and each end's own state
    // is what it wrote.
    assert_eq!(lww(&c, 1, "from-2").as_deref(), Some("honest-2"));
    assert_eq!(lww(&c, 2, "from-3").as_deref(), Some("honest-3"));
    assert_ne!(lww(&c, 2, "from-2").as_deref(), Some("forged"), "node3 applied a forged value");
    assert_ne!(lww(&c, 1, "from-3").as_deref(), Some("forged"), "node2 applied a forged value");
    for i in [1, 2] {
        let v = counter(&c, i, "clicks").unwrap_or(0);
        assert!(v == 5 || v == 7 || v == 12, "node{}: counter {v} holds a forged contribution", i + 1);
    }
    assert_eq!(counter(&c, 1, "clicks"), Some(5), "node2's own contribution changed");
    assert_eq!(counter(&c, 2, "clicks"), Some(7), "node3's own contribution changed");
    // Every origin's key was known (learned from SWIM, checked against the
    // CA): the refusals were for bad signatures, not missing keys.
    for i in [1, 2] {
        let m = metrics(&c, i);
        assert_eq!(metric(&m, "chorus_rejected_total{reason=\"unknown_origin\"}"), 0.0, "node{}: {m}", i + 1);
        assert!(metric(&m, "chorus_signatures_verified_total") > 0.0);
    }
}
