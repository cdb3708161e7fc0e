//! Issue 4's daemon test: partition a 3-node cluster, write different keys
//! on both sides while broadcasts cannot cross, heal, and every node must
//! converge through anti-entropy alone (no write happens after the heal, so
//! nothing else could carry the keys across).

mod common;

use chorus_faults::cluster::Cluster;
use chorus_faults::run::{HEALTHY_DEADLINE, build_net};
use std::time::{Duration, Instant};

const KEYS_PER_SIDE: usize = 20;

fn value_of(cluster: &Cluster, node: usize, key: &str) -> Option<String> {
    let url = format!("{}/v1/ns/default/kv/{key}", cluster.nodes[node].api);
    match cluster.admin.req("GET", &url, None) {
        Ok((200, body)) => body.get("value").and_then(|v| v.as_str()).map(str::to_string),
        _ => None,
    }
}

fn put(cluster: &Cluster, node: usize, key: &str, value: &str) {
    let url = format!("{}/v1/ns/default/kv/{key}", cluster.nodes[node].api);
    let body = serde_json::json!({ "value": value }).to_string();
    let (status, answer) = cluster.admin.req("PUT", &url, Some(&body)).expect("node answers");
    assert_eq!(status, 200, "put {key} on node {node}: {answer}");
}

#[test]
fn a_partitioned_three_node_cluster_converges_through_anti_entropy_after_heal() {
    let bin = common::chorus_bin();
    let net = build_net(3, true, 4_040_404);
    if !common::namespaces_or_skip(
        net.is_namespaces(),
        "a_partitioned_three_node_cluster_converges_through_anti_entropy_after_heal",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::prepare(&bin, &net, dir.path(), 300).expect("prepare");
    for i in 0..3 {
        cluster.start(i, 0).expect("start");
    }
    cluster.wait_all_alive(HEALTHY_DEADLINE).expect("cluster up");

    // Isolate node 0: the rule at node 0 drops everything to and from 1 and 2.
    net.cut(0, &[1, 2]).expect("partition");
    for i in 0..KEYS_PER_SIDE {
        put(&cluster, 0, &format!("left-{i}"), &format!("l{i}"));
        put(&cluster, 1, &format!("right-{i}"), &format!("r{i}"));
    }
    // The partition held: node 2 sees the right side's keys but not the left's.
    let deadline = Instant::now() + Duration::from_secs(30);
    while value_of(&cluster, 2, &format!("right-{}", KEYS_PER_SIDE - 1)).is_none() {
        assert!(Instant::now() < deadline, "node 2 never saw node 1's writes");
        std::thread::yield_now();
    }
    assert_eq!(value_of(&cluster, 2, "left-0"), None, "a write crossed the partition");
    assert_eq!(value_of(&cluster, 0, "right-0"), None, "a write crossed the partition");

    let errors = net.heal();
    assert!(errors.is_empty(), "heal: {errors:?}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let missing: Vec<(usize, String)> = (0..3)
            .flat_map(|n| {
                (0..KEYS_PER_SIDE).flat_map(move |i| {
                    [(n, format!("left-{i}"), format!("l{i}")), (n, format!("right-{i}"), format!("r{i}"))]
                })
            })
            .filter(|(n, k, v)| value_of(&cluster, *n, k).as_deref() != Some(v.as_str()))
            .map(|(n, k, _)| (n, k))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not converged 90 s after heal; missing {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
