//! SWIM membership over real QUIC sockets on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chorus_net::{ClusterCa, MemberState, Membership, MembershipConfig, MembershipEvent, NodeIdentity, Transport};
use common::*;

const CONVERGE: Duration = Duration::from_secs(10);
/// The target is detection within 2 s; the assertion leaves headroom
/// for a loaded 2-core CI machine, and the measured time is printed.
const DETECT: Duration = Duration::from_secs(5);

struct Node {
    transport: Transport,
    membership: Membership,
    /// Application traffic; unused here but kept open.
    _incoming: tokio::sync::mpsc::Receiver<chorus_net::Incoming>,
}

/// The (never bound) API address node `name` advertises at `generation`:
/// distinct per name and per restart, so a test can tell whose it sees.
fn api_addr_of(name: &str, generation: u64) -> SocketAddr {
    let last = u16::from(name.bytes().last().unwrap_or(0)) % 100;
    SocketAddr::from(([127, 0, 0, 1], 20_000 + generation as u16 * 100 + last))
}

fn start(ca: &ClusterCa, name: &str, generation: u64, seeds: Vec<SocketAddr>) -> Node {
    let (transport, incoming) = bind(ca, name);
    let identity = NodeIdentity {
        name: name.to_owned(),
        addr: local(&transport),
        api_addr: Some(api_addr_of(name, generation)),
        generation,
        tier: 0,
        // A real card, so SWIM packets carry identities at their real size.
        signing_key: Some(ca.issue_signing_key(name).expect("signing key").card),
    };
    let config =
        MembershipConfig { rng_seed: Some(generation * 1000 + name.len() as u64), ..MembershipConfig::default() };
    let membership = Membership::start(transport.clone(), identity, seeds, config).expect("start membership");
    Node { transport, membership, _incoming: incoming }
}

/// Whether `node` sees exactly `expected` as (name, state, generation),
/// each with the API address that generation advertised.
fn sees(node: &Node, expected: &[(&str, MemberState, u64)]) -> bool {
    let members = node.membership.members();
    members.len() == expected.len()
        && members.iter().zip(expected).all(|(m, (name, state, generation))| {
            m.name == *name
                && m.state == *state
                && m.generation == *generation
                && m.api_addr == Some(api_addr_of(name, *generation))
        })
}

fn others<'a>(all: &[(&'a str, MemberState, u64)], me: &str) -> Vec<(&'a str, MemberState, u64)> {
    all.iter().filter(|(n, _, _)| *n != me).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_converge_a_killed_node_is_declared_down_and_its_restart_replaces_it() {
    let ca = ClusterCa::generate("test").expect("ca");
    let seed = start(&ca, "n1", 1, vec![]);
    let seed_addr = local(&seed.transport);
    let mut nodes = vec![seed];
    for name in ["n2", "n3", "n4"] {
        nodes.push(start(&ca, name, 1, vec![seed_addr]));
    }
    let names = ["n1", "n2", "n3", "n4"];

    let all_alive: Vec<_> = names.iter().map(|n| (*n, MemberState::Alive, 1)).collect();
    let started = Instant::now();
    assert!(
        eventually(CONVERGE, || async {
            nodes.iter().zip(names).all(|(node, name)| sees(node, &others(&all_alive, name)))
        })
        .await,
        "no convergence: {:?}",
        nodes.iter().map(|n| n.membership.members()).collect::<Vec<_>>()
    );
    eprintln!("4 nodes converged in {:?}", started.elapsed());

    // Kill n4: its transport goes away without a leave.
    let mut events = nodes[0].membership.subscribe();
    let killed = nodes.pop().expect("n4");
    killed.transport.shutdown().await;
    let killed_at = Instant::now();
    let mut down = all_alive.clone();
    down[3].1 = MemberState::Down;
    assert!(
        eventually(DETECT, || async { nodes.iter().zip(names).all(|(node, name)| sees(node, &others(&down, name))) })
            .await,
        "n4 not declared down: {:?}",
        nodes.iter().map(|n| n.membership.members()).collect::<Vec<_>>()
    );
    eprintln!("killed node declared down by all in {:?}", killed_at.elapsed());
    let mut saw_down = false;
    while let Ok(event) = events.try_recv() {
        if let MembershipEvent::Down(id) = event {
            assert_eq!(id.name, "n4");
            saw_down = true;
        }
    }
    assert!(saw_down, "no Down event for n4");

    // Restart n4 with a higher generation on a new port: same name, one
    // entry, no ghost.
    nodes.push(start(&ca, "n4", 2, vec![seed_addr]));
    let mut rejoined = all_alive.clone();
    rejoined[3].2 = 2;
    assert!(
        eventually(CONVERGE, || async {
            nodes.iter().zip(names).all(|(node, name)| sees(node, &others(&rejoined, name)))
        })
        .await,
        "restart not absorbed: {:?}",
        nodes.iter().map(|n| n.membership.members()).collect::<Vec<_>>()
    );
    let n4 = nodes[0].membership.members().into_iter().find(|m| m.name == "n4").expect("n4");
    assert_eq!(n4.addr, local(&nodes[3].transport));
    assert_eq!(n4.api_addr, Some(api_addr_of("n4", 2)), "the restart's API address replaces the old one");

    for node in nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_is_seen_as_down_by_the_others() {
    let ca = ClusterCa::generate("test").expect("ca");
    let a = start(&ca, "la", 7, vec![]);
    let seed_addr = local(&a.transport);
    let b = start(&ca, "lb", 7, vec![seed_addr]);
    let c = start(&ca, "lc", 7, vec![seed_addr]);
    assert!(
        eventually(CONVERGE, || async {
            [&a, &b, &c].iter().all(|n| {
                let m = n.membership.members();
                m.len() == 2 && m.iter().all(|m| m.state == MemberState::Alive)
            })
        })
        .await
    );

    let left_at = Instant::now();
    c.membership.leave().await;
    let gone = |n: &Node| n.membership.members().iter().any(|m| m.name == "lc" && m.state == MemberState::Down);
    assert!(eventually(DETECT, || async { gone(&a) && gone(&b) }).await);
    eprintln!("graceful leave seen by all in {:?}", left_at.elapsed());
    // The others still see each other alive: the leave was not a failure.
    assert!(a.membership.members().iter().any(|m| m.name == "lb" && m.state == MemberState::Alive));
    for node in [a, b, c] {
        node.transport.shutdown().await;
    }
}

#[tokio::test]
async fn membership_refuses_an_identity_that_is_not_the_transport_node() {
    let ca = ClusterCa::generate("test").expect("ca");
    let (transport, _rx) = bind(&ca, "real");
    let identity = NodeIdentity {
        name: "fake".into(),
        addr: local(&transport),
        api_addr: None,
        generation: 1,
        tier: 0,
        signing_key: None,
    };
    let result = Membership::start(transport.clone(), identity, vec![], MembershipConfig::default());
    assert!(result.is_err());
    transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_datagram_loss_causes_no_false_down() {
    let ca = ClusterCa::generate("test").expect("ca");
    let a = start(&ca, "pa", 3, vec![]);
    let seed_addr = local(&a.transport);
    let b = start(&ca, "pb", 3, vec![seed_addr]);
    let c = start(&ca, "pc", 3, vec![seed_addr]);
    let nodes = [a, b, c];
    assert!(
        eventually(CONVERGE, || async {
            nodes.iter().all(|n| {
                let m = n.membership.members();
                m.len() == 2 && m.iter().all(|m| m.state == MemberState::Alive)
            })
        })
        .await
    );
    let mut events: Vec<_> = nodes.iter().map(|n| n.membership.subscribe()).collect();
    for node in &nodes {
        node.transport.set_datagram_loss_permille(50);
    }
    // Observe a window of ~12 probe periods plus suspicion timeouts: a
    // false positive would show up as a Down event or a Down member.
    let window_end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window_end {
        for node in &nodes {
            assert!(
                node.membership.members().iter().all(|m| m.state != MemberState::Down),
                "false positive: {:?}",
                node.membership.members()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped: u64 =
        nodes.iter().map(|n| n.transport.stats().datagrams_dropped.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert!(dropped > 0, "the loss injection dropped nothing");
    for rx in &mut events {
        while let Ok(event) = rx.try_recv() {
            assert!(!matches!(event, MembershipEvent::Down(_)), "false positive {event:?}");
        }
    }
    for node in nodes {
        node.transport.shutdown().await;
    }
}
