//! Three voters on loopback QUIC with redb: the acceptance behaviours of
//! strong namespaces.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chorus_strong::kv::{Compare, CompareOp, CompareTarget, KvCommand, KvError, KvResponse, LockMode, TxnOp};
use chorus_strong::{Query, QueryResult, StrongError, StrongNode};
use common::{Cluster, default_tune};

fn value_of(kv: Option<chorus_strong::kv::KeyValue>) -> u64 {
    kv.and_then(|kv| String::from_utf8(kv.value).ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn grant(node: &StrongNode, ttl_ms: u64) -> u64 {
    let now_ms = chorus_strong::WallClock::now_ms(&chorus_strong::SystemClock);
    match node.write(KvCommand::LeaseGrant { ttl_ms, now_ms }).await {
        Ok(KvResponse::Lease { lease, .. }) => lease,
        other => panic!("lease grant failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_counter_under_concurrent_clients_ends_exactly_right() {
    let cluster = Cluster::start(3, default_tune).await;
    let clients = 6u64;
    let increments = 10u64;
    let successes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..clients {
        // Two clients per node: followers forward to the leader.
        let node = cluster.node(client % 3 + 1).clone();
        let successes = Arc::clone(&successes);
        tasks.push(tokio::spawn(async move {
            for _ in 0..increments {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    assert!(Instant::now() < deadline, "client {client} starved");
                    let current = node.read(b"counter", true).await.expect("linearizable read");
                    let expected = current.map(|kv| kv.value);
                    let next = (value_of_bytes(&expected) + 1).to_string().into_bytes();
                    let cas = KvCommand::CompareAndSwap { key: b"counter".to_vec(), expected, value: next };
                    match node.write(cas).await.expect("cas") {
                        KvResponse::CompareAndSwap { succeeded: true, .. } => {
                            successes.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        KvResponse::CompareAndSwap { succeeded: false, .. } => continue,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    assert_eq!(successes.load(Ordering::SeqCst), clients * increments);
    for id in 1..=3 {
        let read = cluster.node(id).read(b"counter", true).await.expect("final read");
        assert_eq!(value_of(read), clients * increments, "node {id}");
    }
    cluster.shutdown().await;
}

fn value_of_bytes(value: &Option<Vec<u8>>) -> u64 {
    value.as_ref().and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactions_ops_all_apply_or_none_do() {
    let cluster = Cluster::start(3, default_tune).await;
    let node = cluster.node(2).clone();
    let put = |key: &str, value: &str, lease| TxnOp::Put { key: key.into(), value: value.into(), lease };
    // One op refers to a lease that does not exist: nothing may apply.
    let doomed = KvCommand::Txn {
        compares: vec![],
        success: vec![put("a", "100", None), put("b", "100", Some(999))],
        failure: vec![],
    };
    assert_eq!(node.write(doomed).await, Err(StrongError::Rejected(KvError::LeaseNotFound(999))));
    assert_eq!(node.read(b"a", true).await.expect("read"), None);
    node.write(KvCommand::Txn {
        compares: vec![],
        success: vec![put("a", "100", None), put("b", "100", None)],
        failure: vec![],
    })
    .await
    .expect("seed accounts");
    // Concurrent transfers guarded by mod revisions: the sum never changes.
    let mut tasks = Vec::new();
    for client in 0..3u64 {
        let node = cluster.node(client + 1).clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 8 {
                let page = node
                    .query(Query::Range { start: b"a".to_vec(), end: Some(b"c".to_vec()), limit: 10 }, true)
                    .await
                    .expect("range");
                let QueryResult::Range(kvs) = page.result else { panic!("range answer") };
                let (a, b) = (&kvs[0], &kvs[1]);
                let (va, vb) = (value_of(Some(a.clone())), value_of(Some(b.clone())));
                let guard = |kv: &chorus_strong::kv::KeyValue| Compare {
                    key: kv.key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(kv.mod_revision),
                };
                let txn = KvCommand::Txn {
                    compares: vec![guard(a), guard(b)],
                    success: vec![
                        TxnOp::Put { key: b"a".to_vec(), value: (va - 1).to_string().into_bytes(), lease: None },
                        TxnOp::Put { key: b"b".to_vec(), value: (vb + 1).to_string().into_bytes(), lease: None },
                    ],
                    failure: vec![],
                };
                if let KvResponse::Txn { succeeded: true, .. } = node.write(txn).await.expect("txn") {
                    done += 1;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let a = value_of(node.read(b"a", true).await.expect("a"));
    let b = value_of(node.read(b"b", true).await.expect("b"));
    assert_eq!((a, b), (76, 124));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_and_fencing_tokens_grow_even_when_a_paused_holders_lease_expires() {
    let cluster = Cluster::start(3, default_tune).await;
    let lock = b"resource".to_vec();
    let acquire = |lease| KvCommand::LockAcquire { name: lock.clone(), lease, mode: LockMode::Exclusive };

    // Holder A takes the lock under a short lease, then "pauses": no keep-alives.
    let a_node = cluster.node(1).clone();
    let a_lease = grant(&a_node, 600).await;
    let Ok(KvResponse::LockGranted { fencing_token: a_token }) = a_node.write(acquire(a_lease)).await else {
        panic!("A could not take a free lock")
    };
    // B (on another node) is refused while A's lease lives, then takes over.
    let b_node = cluster.node(3).clone();
    let b_lease = grant(&b_node, 10_000).await;
    let first = b_node.write(acquire(b_lease)).await.expect("B try");
    assert_eq!(first, KvResponse::LockBusy { holders: vec![a_lease] });
    let started = Instant::now();
    let b_token = loop {
        assert!(started.elapsed() < Duration::from_secs(10), "A's lease never expired");
        let holders = b_node.query(Query::Lock { name: lock.clone() }, true).await.expect("lock query");
        if let QueryResult::Lock(Some(state)) = &holders.result {
            assert_eq!(state.holders.len(), 1, "two exclusive holders at once");
        }
        match b_node.write(acquire(b_lease)).await.expect("B acquire") {
            KvResponse::LockGranted { fencing_token } => break fencing_token,
            KvResponse::LockBusy { holders } => assert_eq!(holders, vec![a_lease]),
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(b_token > a_token, "token {b_token} after {a_token}");
    // A wakes up: its lease is gone, so it can neither renew nor re-take the lock.
    let now_ms = chorus_strong::WallClock::now_ms(&chorus_strong::SystemClock);
    assert_eq!(
        a_node.write(KvCommand::LeaseKeepAlive { lease: a_lease, now_ms }).await,
        Err(StrongError::Rejected(KvError::LeaseNotFound(a_lease)))
    );
    assert!(a_node.write(acquire(a_lease)).await.is_err());

    // Many clients contend; each grant must find the critical section empty
    // and carry a token above every earlier grant's.
    b_node.write(KvCommand::LockRelease { name: lock.clone(), lease: b_lease }).await.expect("release");
    let inside = Arc::new(AtomicU64::new(0));
    let last_token = Arc::new(AtomicU64::new(b_token));
    let mut tasks = Vec::new();
    for client in 0..4u64 {
        let node = cluster.node(client % 3 + 1).clone();
        let (inside, last_token, lock) = (Arc::clone(&inside), Arc::clone(&last_token), lock.clone());
        tasks.push(tokio::spawn(async move {
            let lease = grant(&node, 10_000).await;
            let mut held = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            while held < 3 {
                assert!(Instant::now() < deadline, "client {client} starved");
                let command = KvCommand::LockAcquire { name: lock.clone(), lease, mode: LockMode::Exclusive };
                match node.write(command).await.expect("acquire") {
                    KvResponse::LockGranted { fencing_token } => {
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                        let previous = last_token.swap(fencing_token, Ordering::SeqCst);
                        assert!(fencing_token > previous, "token {fencing_token} after {previous}");
                        inside.fetch_sub(1, Ordering::SeqCst);
                        node.write(KvCommand::LockRelease { name: lock.clone(), lease }).await.expect("release");
                        held += 1;
                    }
                    KvResponse::LockBusy { .. } => tokio::task::yield_now().await,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_deletes_the_keys_bound_to_it() {
    let cluster = Cluster::start(3, default_tune).await;
    let node = cluster.node(2).clone();
    let lease = grant(&node, 500).await;
    node.write(KvCommand::Put { key: b"ephemeral".to_vec(), value: b"x".to_vec(), lease: Some(lease) })
        .await
        .expect("put");
    node.write(KvCommand::Put { key: b"durable".to_vec(), value: b"y".to_vec(), lease: None }).await.expect("put");
    assert!(node.read(b"ephemeral", true).await.expect("read").is_some());
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(10), "bound key outlived its lease");
        if node.read(b"ephemeral", true).await.expect("read").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("lease of 500 ms expired after {} ms", started.elapsed().as_millis());
    assert!(node.read(b"durable", true).await.expect("read").is_some());
    assert!(matches!(node.query(Query::Lease { lease }, true).await.expect("lease").result, QueryResult::Lease(None)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_and_writes_resume_after_the_leader_stops() {
    let mut cluster = Cluster::start(3, default_tune).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let survivor = if leader == 1 { 2 } else { 1 };
    cluster
        .node(survivor)
        .write(KvCommand::Put { key: b"k".to_vec(), value: b"before".to_vec(), lease: None })
        .await
        .expect("write");
    let stopped = Instant::now();
    cluster.stop(leader).await;
    let node = cluster.node(survivor).clone();
    loop {
        assert!(stopped.elapsed() < Duration::from_secs(15), "no write succeeded after failover");
        let put = KvCommand::Put { key: b"k".to_vec(), value: b"after".to_vec(), lease: None };
        if node.write(put).await.is_ok() {
            break;
        }
    }
    let failover = stopped.elapsed();
    println!("failover (leader stop -> next successful write): {} ms", failover.as_millis());
    let new_leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    assert_eq!(node.read(b"k", true).await.expect("read").map(|kv| kv.value), Some(b"after".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minority_side_refuses_writes_with_no_quorum_quickly() {
    let mut cluster = Cluster::start(3, default_tune).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let stopped = Instant::now();
    // Keep the leader alone: it is the node most tempted to accept writes.
    for id in 1..=3 {
        if id != leader {
            cluster.stop(id).await;
        }
    }
    let node = cluster.node(leader).clone();
    let refusal = loop {
        assert!(stopped.elapsed() < Duration::from_secs(10), "minority kept accepting writes");
        let started = Instant::now();
        let put = KvCommand::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: None };
        match node.write(put).await {
            Err(error @ StrongError::NoQuorum { .. }) => break (error, started.elapsed()),
            _ => continue,
        }
    };
    println!(
        "minority detected {} ms after the peers began stopping; refusal took {} ms",
        stopped.elapsed().as_millis(),
        refusal.1.as_millis()
    );
    assert_eq!(refusal.0, StrongError::NoQuorum { reachable_voters: vec![leader], voters: vec![1, 2, 3] });
    assert!(refusal.1 < Duration::from_millis(100), "refusal took {:?}", refusal.1);
    assert!(!node.quorum_status().has_quorum);
    assert!(matches!(node.read(b"k", true).await, Err(StrongError::NoQuorum { .. })));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_with_its_request_id_after_a_leader_change_applies_once() {
    let mut cluster = Cluster::start(3, default_tune).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let survivor = if leader == 1 { 2 } else { 1 };
    let keyed = |value: &str| KvCommand::Idempotent {
        request_id: b"req-1".to_vec(),
        at_ms: 0,
        window_ms: 1,
        command: Box::new(KvCommand::Put { key: b"k".to_vec(), value: value.into(), lease: None }),
    };
    let first = cluster.node(leader).write(keyed("v")).await.expect("first write");
    let KvResponse::Put { revision, .. } = first else { panic!("put answer expected, got {first:?}") };
    // The answer is lost and the leader dies; the client retries elsewhere.
    cluster.stop(leader).await;
    let node = cluster.node(survivor).clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    let retried = loop {
        assert!(Instant::now() < deadline, "no leader took the retry");
        if let Ok(answer) = node.write(keyed("v")).await {
            break answer;
        }
    };
    assert_eq!(retried, KvResponse::Replayed { first: Box::new(first), values_elided: false });
    let kv = node.read(b"k", true).await.expect("read").expect("the key exists");
    assert_eq!((kv.version, kv.mod_revision), (1, revision), "the retry wrote the key a second time");
    // The same request_id for a different write is refused.
    assert_eq!(node.write(keyed("other")).await, Err(StrongError::Rejected(KvError::RequestIdReused)));
    cluster.shutdown().await;
}

/// A leader stopped with the rest of its group comes back leading the same
/// term: its vote is stored as committed, so openraft resumes leadership
/// without an election and proposes no new no-op. The committed index it
/// stored lags the last acknowledged write (it is written with the next
/// append, `docs/design/strong.md`, "Reads after a restart"), so openraft's
/// read barrier alone (no-op or committed, whichever is later) would let a
/// linearizable read miss that write. Each round restarts the leader first
/// and asks it to read while the followers come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_in_its_own_term_reads_every_acknowledged_write() {
    const ROUNDS: usize = 4;
    let mut cluster = Cluster::start(3, default_tune).await;
    let mut resumed = 0;
    for round in 0..ROUNDS {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let key = format!("k{round}").into_bytes();
        let value = format!("v{round}").into_bytes();
        let put = KvCommand::Put { key: key.clone(), value: value.clone(), lease: None };
        cluster.node(leader).write(put).await.expect("put");
        let term = cluster.node(leader).status().term;
        for id in 1..=3 {
            cluster.stop(id).await;
        }
        cluster.restart(leader).await;
        let node = cluster.node(leader).clone();
        let read_key = key.clone();
        let read = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match node.read(&read_key, true).await {
                    Ok(found) => return found.map(|kv| kv.value),
                    Err(e) => assert!(Instant::now() < deadline, "no linearizable read within 20 s: {e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        for id in 1..=3 {
            if id != leader {
                cluster.restart(id).await;
            }
        }
        let got = read.await.expect("read task");
        assert_eq!(got, Some(value), "round {round}: the write acknowledged before the restart");
        // Only this node can lead `term`: if the term did not move, the read
        // was answered by the leader that resumed it.
        let status = cluster.node(leader).status();
        if status.state == "leader" && status.term == term {
            resumed += 1;
        }
    }
    println!("the restarted leader resumed its term in {resumed} of {ROUNDS} rounds");
    assert!(resumed > 0, "no round exercised a leader resuming its own term");
    cluster.shutdown().await;
}
