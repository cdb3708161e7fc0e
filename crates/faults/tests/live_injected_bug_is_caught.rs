//! The checkers catch a real lost acknowledged write on real processes.
//!
//! The daemon has no test knob that acknowledges before fsync, and this
//! crate may not change it, so the bug is injected from outside the same
//! way a lying disk would lose data: node 1 acknowledges writes while its
//! peers are down (so nothing has replicated them), is `kill -9`ed, and its
//! data directory is deleted before it restarts under the same name. That
//! is exactly what "acknowledged before fsync + crash" looks like to a
//! client. The control run does the same without deleting the directory
//! and must pass.

mod common;

use chorus_faults::checker::{self, ViolationKind};
use chorus_faults::cluster::Cluster;
use chorus_faults::history::{Op, Outcome};
use chorus_faults::net::Net;
use chorus_faults::run::{HEALTHY_DEADLINE, await_convergence, create_namespaces};
use chorus_faults::workers::perform;
use std::time::{Duration, Instant};

fn scenario(block: u8, wipe: bool) -> Vec<ViolationKind> {
    let bin = common::chorus_bin();
    let net = Net::loopback(3, block, "this test needs only process faults".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::prepare(&bin, &net, dir.path(), 300).expect("prepare");
    for i in 0..3 {
        cluster.start(i, 0).expect("start");
    }
    cluster.wait_all_alive(HEALTHY_DEADLINE).expect("cluster up");
    create_namespaces(&cluster).expect("namespaces");
    let t0 = Instant::now();
    let api = |c: &Cluster, i: usize| c.nodes[i].api.clone();
    let mut history = Vec::new();
    // Writes everyone sees: must survive either way.
    for op in [Op::Put { key: "k0".into(), value: "before".into() }, Op::Incr { key: "c0".into(), amount: 2 }] {
        history.push(perform(&cluster.admin, 0, 1, &api(&cluster, 1), op, t0));
    }
    let (_, states) = await_convergence(&cluster, Duration::from_secs(20));
    assert_eq!(states.len(), 3);
    // Peers down: node 0's next writes exist only on node 0's disk.
    cluster.kill9(1);
    cluster.kill9(2);
    for op in [
        Op::Put { key: "k0".into(), value: "only-on-node1".into() },
        Op::Incr { key: "c0".into(), amount: 5 },
        Op::Add { key: "s0".into(), member: "m0".into() },
    ] {
        let r = perform(&cluster.admin, 0, 0, &api(&cluster, 0), op, t0);
        assert_eq!(r.result, Outcome::Ok, "{r:?}");
        history.push(r);
    }
    cluster.kill9(0);
    if wipe {
        cluster.wipe_data(0).expect("wipe");
    }
    for i in 0..3 {
        cluster.start(i, 0).expect("restart");
    }
    cluster.wait_all_alive(HEALTHY_DEADLINE).expect("cluster back");
    let (agreed, states) = await_convergence(&cluster, Duration::from_secs(30));
    assert!(agreed, "nodes did not converge: {states:?}");
    let violations = checker::check_all(&history, &states[0].1);
    eprintln!("wipe={wipe}: {violations:#?}");
    violations.into_iter().map(|v| v.kind).collect()
}

#[test]
fn acknowledged_writes_lost_by_a_wiped_disk_are_caught_and_the_intact_control_passes() {
    let lost = scenario(96, true);
    assert!(lost.contains(&ViolationKind::LostWrite), "{lost:?}");
    assert!(lost.contains(&ViolationKind::CounterMismatch), "{lost:?}");
    assert!(lost.contains(&ViolationKind::LostAdd), "{lost:?}");
    let control = scenario(97, false);
    assert!(control.is_empty(), "{control:?}");
}
