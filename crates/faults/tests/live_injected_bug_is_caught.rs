//! The checkers catch a real lost acknowledged write on real processes.
//!
//! Two injected bugs, each against a control that must pass: the daemon's
//! `CHORUS_TEST_ACK_BEFORE_FSYNC=1` knob (answers clients before their
//! writes are durable) combined with `kill -9`, and a data directory deleted
//! behind the node's back (a lying disk). In both, node 1 acknowledges
//! writes while its peers are down, so nothing has replicated them.

mod common;

use chorus_faults::checker::{self, ViolationKind};
use chorus_faults::cluster::Cluster;
use chorus_faults::history::{ClientOp, Outcome};
use chorus_faults::net::Net;
use chorus_faults::run::{HEALTHY_DEADLINE, await_convergence, create_namespaces};
use chorus_faults::workers::perform;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    WipedDisk,
    AckBeforeFsync,
}

fn scenario(block: u8, bug: Bug) -> Vec<ViolationKind> {
    let bin = common::chorus_bin();
    let net = Net::loopback(3, block, "this test needs only process faults".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::prepare(&bin, &net, dir.path(), 300).expect("prepare");
    for i in 0..3 {
        let knob: &[(&str, &str)] =
            if i == 0 && bug == Bug::AckBeforeFsync { &[("CHORUS_TEST_ACK_BEFORE_FSYNC", "1")] } else { &[] };
        cluster.start_with_env(i, 0, knob).expect("start");
    }
    cluster.wait_all_alive(HEALTHY_DEADLINE).expect("cluster up");
    // The strong namespace is created too; whether it is ready does not
    // matter to these eventual-namespace scenarios.
    let _strong_ready = create_namespaces(&cluster).expect("namespaces");
    let t0 = Instant::now();
    let api = |c: &Cluster, i: usize| c.nodes[i].api.clone();
    let mut history = Vec::new();
    // Writes everyone sees: must survive either way.
    for op in
        [ClientOp::Put { key: "k0".into(), value: "before".into() }, ClientOp::Incr { key: "c0".into(), amount: 2 }]
    {
        history.push(perform(&cluster.admin, 0, 1, &api(&cluster, 1), op, t0));
    }
    let (_, states) = await_convergence(&cluster, Duration::from_secs(20));
    assert_eq!(states.len(), 3);
    // Peers down: node 0's next writes exist only on node 0's disk.
    cluster.kill9(1);
    cluster.kill9(2);
    for op in [
        ClientOp::Put { key: "k0".into(), value: "only-on-node1".into() },
        ClientOp::Incr { key: "c0".into(), amount: 5 },
        ClientOp::Add { key: "s0".into(), member: "m0".into() },
    ] {
        let r = perform(&cluster.admin, 0, 0, &api(&cluster, 0), op, t0);
        assert_eq!(r.result, Outcome::Ok, "{r:?}");
        history.push(r);
    }
    // With the knob the writes are still held back (up to 2 s): the crash
    // lands inside that window.
    cluster.kill9(0);
    if bug == Bug::WipedDisk {
        cluster.wipe_data(0).expect("wipe");
    }
    for i in 0..3 {
        cluster.start(i, 0).expect("restart");
    }
    cluster.wait_all_alive(HEALTHY_DEADLINE).expect("cluster back");
    let (agreed, states) = await_convergence(&cluster, Duration::from_secs(30));
    assert!(agreed, "nodes did not converge: {states:?}");
    let violations = checker::check_all(&history, &states[0].1);
    eprintln!("bug={bug:?}: {violations:#?}");
    violations.into_iter().map(|v| v.kind).collect()
}

#[test]
fn acknowledged_writes_lost_by_a_wiped_disk_are_caught_and_the_intact_control_passes() {
    let lost = scenario(96, Bug::WipedDisk);
    assert!(lost.contains(&ViolationKind::LostWrite), "{lost:?}");
    assert!(lost.contains(&ViolationKind::CounterMismatch), "{lost:?}");
    assert!(lost.contains(&ViolationKind::LostAdd), "{lost:?}");
    let control = scenario(97, Bug::None);
    assert!(control.is_empty(), "{control:?}");
}

#[test]
fn acknowledging_before_fsync_with_kill_9_loses_writes_and_the_checker_catches_it() {
    let lost = scenario(98, Bug::AckBeforeFsync);
    assert!(lost.contains(&ViolationKind::LostWrite), "{lost:?}");
    assert!(lost.contains(&ViolationKind::CounterMismatch), "{lost:?}");
    assert!(lost.contains(&ViolationKind::LostAdd), "{lost:?}");
}
