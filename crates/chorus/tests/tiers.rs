//! Tiers in real processes (`docs/design/clock.md`, "Tiers"): a node of tier
//! t exchanges data (replication messages and clock probes) only with tiers
//! t-1..t+1. SWIM membership stays cluster-wide.

mod common;

use common::{CONVERGE, Cluster, eventually, metric, metrics};
use serde_json::Value;

#[test]
fn a_tier_0_and_a_tier_2_node_never_exchange_data_yet_a_write_converges_through_tier_1() {
    // node1 (the seed) is tier 1, node2 tier 0, node3 tier 2.
    let mut c = Cluster::prepare(74, 3, "clock_probe_interval_ms = 200");
    for (agent, tier) in c.agents.iter().zip([1, 0, 2]) {
        agent.append_config(&format!("tier = {tier}"));
    }
    for a in &mut c.agents {
        a.start();
    }
    for a in &mut c.agents {
        a.wait_healthy(&c.http);
    }
    // Membership is cluster-wide and carries every member's tier: node2
    // knows node3 is alive (so it could send to it) and that it is tier 2.
    c.wait_all_alive();
    let tier_of = |members: &[Value], name: &str| members.iter().find(|m| m["name"] == name).map(|m| m["tier"].clone());
    assert_eq!(tier_of(&c.agents[1].members(&c.http), "node3"), Some(Value::from(2)));
    assert_eq!(tier_of(&c.agents[2].members(&c.http), "node2"), Some(Value::from(0)));
    assert_eq!(tier_of(&c.agents[0].members(&c.http), "node2"), Some(Value::from(0)));

    // Writes on either end reach the other end, through tier 1 only.
    c.agents[1].put(&c.http, "default", "from-tier-0", "a");
    c.agents[2].put(&c.http, "default", "from-tier-2", "b");
    eventually("tier 2 to read the tier-0 write", CONVERGE, || c.agents[2].read(&c.http, "default", "from-tier-0"));
    eventually("tier 0 to read the tier-2 write", CONVERGE, || c.agents[1].read(&c.http, "default", "from-tier-2"));
    // A namespace created on tier 0 (which starts an immediate sync with
    // live peers) also spreads only through tier 1.
    let (status, v) =
        c.http.req("POST", &c.agents[1].url("/v1/ns"), Some(r#"{"name":"tiered","type":"counter"}"#)).unwrap();
    assert_eq!(status, 201, "{v}");
    eventually("the namespace to reach tier 2", CONVERGE, || {
        c.http.get(&c.agents[2].url("/v1/ns/tiered")).filter(|(s, _)| *s == 200)
    });

    // Let a few more anti-entropy rounds (300 ms) and probe rounds
    // (200 ms) pass, then count what flowed where.
    let m1 = metrics(&c, 0);
    eventually("node1 to have synced with both ends", CONVERGE, || {
        let m = metrics(&c, 0);
        let from2 = metric(&m, "chorus_peer_messages_received_total{peer=\"node2\"}");
        let from3 = metric(&m, "chorus_peer_messages_received_total{peer=\"node3\"}");
        (from2 > metric(&m1, "chorus_peer_messages_received_total{peer=\"node2\"}")
            && from3 > metric(&m1, "chorus_peer_messages_received_total{peer=\"node3\"}"))
        .then_some(())
    });
    let (m2, m3) = (metrics(&c, 1), metrics(&c, 2));
    for (text, me, other) in [(&m2, "node2", "node3"), (&m3, "node3", "node2")] {
        let sent = metric(text, &format!("chorus_peer_messages_sent_total{{peer=\"{other}\"}}"));
        let received = metric(text, &format!("chorus_peer_messages_received_total{{peer=\"{other}\"}}"));
        assert_eq!((sent, received), (0.0, 0.0), "{me} exchanged replication messages with {other} directly");
        let via = metric(text, "chorus_peer_messages_received_total{peer=\"node1\"}");
        assert!(via > 0.0, "{me} received nothing from tier 1: {text}");
        assert_eq!(metric(text, "chorus_rejected_total{reason=\"tier\"}"), 0.0, "{me} had to reject a tier: {text}");
        assert_eq!(metric(text, "chorus_clock_probes_refused_total{reason=\"tier\"}"), 0.0, "{me}: {text}");
    }

    // Clock probes follow the same rule: node1 measures both ends, the
    // ends measure node1 only.
    let peers_of = |i: usize| -> Vec<String> {
        let (_, s) = c.http.get(&c.agents[i].url("/v1/status")).unwrap();
        s["clock"]["peers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(peers_of(1), vec!["node1".to_string()]);
    assert_eq!(peers_of(2), vec!["node1".to_string()]);
    eventually("node1 to have clock samples of both ends", CONVERGE, || (peers_of(0).len() == 2).then_some(()));
}
