//! The linearizability checker catches a real stale read on real agents.
//!
//! Four nodes: three Raft voters and node 4, a learner. Node 4 is cut off
//! after it has replicated `r0 = old`; then `r0 = new` is acknowledged by
//! the majority. A `stale=true` read on node 4 still answers `old` — fine
//! for a read that asked for staleness, but a violation when recorded as a
//! linearizable read, and the checker must say so. The control history
//! (the same writes, the linearizable read answered by the majority) must
//! pass.

mod common;

use chorus_faults::checker::ViolationKind;
use chorus_faults::cluster::Cluster;
use chorus_faults::history::{Answer, ClientOp, Outcome, Record};
use chorus_faults::run::{HEALTHY_DEADLINE, build_net, create_namespaces};
use chorus_faults::strong::{self, NS_STRONG};
use chorus_faults::strong_checker::check_linearizable;
use std::time::{Duration, Instant};

fn stale_value(cluster: &Cluster, node: usize) -> Option<String> {
    let url = format!("{}/v1/ns/{NS_STRONG}/kv/r0?stale=true", cluster.nodes[node].api);
    match cluster.admin.req("GET", &url, None) {
        Ok((200, v)) => v["value"].as_str().map(str::to_string),
        _ => None,
    }
}

fn write(cluster: &Cluster, node: usize, value: &str, t0: Instant) -> Record {
    let op = ClientOp::LinWrite { key: "r0".into(), value: value.into() };
    let r = strong::perform(&cluster.admin, 0, node, &cluster.nodes[node].api, op, t0);
    assert_eq!(r.result, Outcome::Ok, "{r:?}");
    r
}

#[test]
fn a_stale_read_from_a_cut_off_learner_is_not_linearizable_and_the_majority_read_is() {
    let bin = common::chorus_bin();
    let net = build_net(4, true, 5_050_505);
    if !common::namespaces_or_skip(
        net.is_namespaces(),
        "a_stale_read_from_a_cut_off_learner_is_not_linearizable_and_the_majority_read_is",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::prepare(&bin, &net, dir.path(), 300).expect("prepare");
    for i in 0..4 {
        cluster.start(i, 0).expect("start");
    }
    cluster.wait_all_alive(HEALTHY_DEADLINE).expect("cluster up");
    create_namespaces(&cluster).expect("namespaces").expect("strong namespace ready");
    let t0 = Instant::now();
    let mut history = vec![write(&cluster, 0, "old", t0)];
    let deadline = Instant::now() + Duration::from_secs(30);
    while stale_value(&cluster, 3).as_deref() != Some("old") {
        assert!(Instant::now() < deadline, "the learner never replicated r0");
        std::thread::sleep(Duration::from_millis(20));
    }

    net.cut(3, &[0, 1, 2]).expect("cut the learner");
    for o in 0..3 {
        net.cut(o, &[3]).expect("cut the learner");
    }
    history.push(write(&cluster, 0, "new", t0));
    let invoke_ns = t0.elapsed().as_nanos() as u64;
    let stale = stale_value(&cluster, 3);
    let complete_ns = t0.elapsed().as_nanos() as u64;
    assert_eq!(stale.as_deref(), Some("old"), "the cut-off learner should still hold the old value");
    let stale_read = Record {
        worker: 1,
        node: 3,
        op: ClientOp::LinRead { key: "r0".into() },
        invoke_ns,
        complete_ns,
        result: Outcome::Ok,
        ts: None,
        error: None,
        answer: Some(Answer::Read(stale)),
    };
    let majority_read =
        strong::perform(&cluster.admin, 1, 1, &cluster.nodes[1].api, ClientOp::LinRead { key: "r0".into() }, t0);
    assert_eq!(majority_read.answer, Some(Answer::Read(Some("new".into()))), "{majority_read:?}");
    assert!(net.heal().is_empty(), "heal");

    let mut control = history.clone();
    control.push(majority_read);
    let (violations, stats) = check_linearizable(&control);
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(stats.register_ops, 3);

    history.push(stale_read);
    let (violations, _) = check_linearizable(&history);
    eprintln!("{violations:#?}");
    assert_eq!(violations.iter().map(|v| v.kind).collect::<Vec<_>>(), vec![ViolationKind::NotLinearizable]);
    assert_eq!(violations[0].key, "r0");
}
