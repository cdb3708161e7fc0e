//! Records a history of concurrent register operations against three
//! voters while the leader is stopped and restarted, and checks it with the
//! Wing–Gong–Lowe checker.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_strong::kv::{KvCommand, KvResponse};
use chorus_strong::linearizability::{Operation, Outcome, RegisterOp, check_registers};
use chorus_strong::{StrongConfig, StrongError, StrongNode};
use common::Cluster;
use openraft::async_runtime::WatchReceiver;

fn small_snapshots(config: &mut StrongConfig) {
    // Snapshot and purge often, so the restarted node catches up through
    // snapshot installation as well as the log.
    config.snapshot_every_entries = 50;
    config.log_kept_behind_snapshot = 5;
}

/// Definitely-not-applied errors are `Fail`; everything else is `Unknown`.
fn failed_outcome(error: &StrongError) -> Outcome {
    match error {
        StrongError::NotLeader { .. }
        | StrongError::NoQuorum { .. }
        | StrongError::NoLeader
        | StrongError::Rejected(_) => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

async fn run_op(node: &StrongNode, key: &[u8], op: &RegisterOp) -> Outcome {
    match op {
        RegisterOp::Read => match node.read(key, true).await {
            Ok(kv) => Outcome::Read(kv.map(|kv| kv.value)),
            Err(_) => Outcome::Fail,
        },
        RegisterOp::Write(value) => {
            match node.write(KvCommand::Put { key: key.to_vec(), value: value.clone(), lease: None }).await {
                Ok(_) => Outcome::Written,
                Err(e) => failed_outcome(&e),
            }
        }
        RegisterOp::Cas { expected, new } => {
            let cas = KvCommand::CompareAndSwap { key: key.to_vec(), expected: expected.clone(), value: new.clone() };
            match node.write(cas).await {
                Ok(KvResponse::CompareAndSwap { succeeded, .. }) => Outcome::Cas(succeeded),
                Ok(_) => Outcome::Unknown,
                Err(e) => failed_outcome(&e),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_recorded_across_a_leader_restart_are_linearizable() {
    let mut cluster = Cluster::start(3, small_snapshots).await;
    let epoch = Instant::now();
    let history = Arc::new(Mutex::new(Vec::<Operation>::new()));
    let nodes: Arc<Mutex<Vec<StrongNode>>> =
        Arc::new(Mutex::new(cluster.live().iter().map(|id| cluster.node(*id).clone()).collect()));
    let run_for = Duration::from_millis(3_500);
    let mut clients = Vec::new();
    for process in 0..4u64 {
        let (history, nodes) = (Arc::clone(&history), Arc::clone(&nodes));
        clients.push(tokio::spawn(async move {
            // A small deterministic generator per client (no global RNG).
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ process;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut i = 0u64;
            while epoch.elapsed() < run_for {
                let roll = next();
                // Four registers: the check is exponential in the unknown
                // outcomes per key (a timed-out write may take effect at
                // any later point), so spreading them keeps it small.
                let key = vec![b'w' + (roll % 4) as u8];
                let value = format!("{process}-{i}").into_bytes();
                let op = match (roll >> 8) % 3 {
                    0 => RegisterOp::Read,
                    1 => RegisterOp::Write(value),
                    _ => {
                        let expected = format!("{}-{}", (roll >> 16) % 4, i.saturating_sub(1)).into_bytes();
                        RegisterOp::Cas { expected: Some(expected), new: value }
                    }
                };
                let node = {
                    let nodes = nodes.lock().expect("nodes");
                    nodes[(roll >> 24) as usize % nodes.len()].clone()
                };
                let invoke = epoch.elapsed().as_micros() as u64;
                let outcome = run_op(&node, &key, &op).await;
                let complete = epoch.elapsed().as_micros() as u64;
                history.lock().expect("history").push(Operation { process, key, op, invoke, complete, outcome });
                i += 1;
            }
        }));
    }
    // Stop the leader mid-run, then bring it back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    nodes.lock().expect("nodes").retain(|node| node.id() != leader);
    cluster.stop(leader).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cluster.restart(leader).await;
    nodes.lock().expect("nodes").push(cluster.node(leader).clone());
    for client in clients {
        client.await.expect("client");
    }

    let history = history.lock().expect("history").clone();
    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|op| f(&op.outcome)).count();
    let ok = count(|o| !matches!(o, Outcome::Fail | Outcome::Unknown));
    let unknown = count(|o| matches!(o, Outcome::Unknown));
    let failed = count(|o| matches!(o, Outcome::Fail));
    println!("history: {} ops ({ok} ok, {failed} failed, {unknown} unknown)", history.len());
    assert!(ok > 50, "too few successful operations to mean anything: {ok}");
    let checked = Instant::now();
    check_registers(&history).expect("linearizable");
    println!("checked in {} ms", checked.elapsed().as_millis());

    // The restarted node catches up with the others.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied: Vec<Option<u64>> =
            cluster.live().iter().map(|id| cluster.node(*id).status().last_applied).collect();
        if applied.iter().all(|a| *a == applied[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "restarted node did not catch up: {applied:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Snapshots were built and the log compacted on every node.
    for id in cluster.live() {
        let metrics = cluster.node(id).raft().metrics().borrow_watched().clone();
        assert!(metrics.snapshot.is_some() && metrics.purged.is_some(), "node {id}: no snapshot or purge");
    }
    let restarted = cluster.node(leader).clone();
    assert_eq!(
        restarted.read(b"x", false).await.expect("stale read"),
        cluster.node(cluster.wait_for_leader(Duration::from_secs(5)).await).read(b"x", true).await.expect("read")
    );
    cluster.shutdown().await;
}
