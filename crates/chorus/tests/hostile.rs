//! What a peer or a client sends cannot stop a node or make a retry apply
//! twice (issue 13): real agents, real sockets, a real crafted peer.

mod common;

use chorus_core::wire::{ITEMS_PER_MESSAGE_MAX, Message, Push, PushItem};
use chorus_core::{Dot, Entry, NodeId, Op, Timestamp, ValueType};
use chorus_net::{NodeCredentials, PeerAddr, Transport, TransportConfig};
use common::{CONVERGE, Cluster, chorus, eventually};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// A peer with a certificate of the cluster's CA that speaks the real
/// transport and sends whatever the test builds: one valid push of the
/// most items a message may carry. The node must take it whole and keep
/// serving (before, its one batch exceeded the store's bound and the
/// daemon exited, again after every restart).
#[test]
fn one_valid_push_of_the_most_items_a_message_may_carry_is_applied_and_the_node_stays_up() {
    let mut c = Cluster::start(91, 1, "");
    let ca = c.dir.path().join("ca");
    let out = chorus(&["ca", "issue", "crafter", "--dir", ca.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let creds = NodeCredentials::load(&ca.join("crafter")).expect("crafter credentials");
    let crafter = NodeId::from_name("crafter");
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    let items: Vec<PushItem> = (0..ITEMS_PER_MESSAGE_MAX)
        .map(|i| {
            let dot = Dot { node: crafter, counter: i as u64 + 1 };
            let ts = Timestamp { physical_us: now_us, logical: i as u32, node: crafter };
            let mut entry = Entry::empty(ValueType::Lww);
            entry.apply(&Op::Put { value: format!("v{i}").into_bytes(), context: None }, dot, ts).expect("a valid put");
            PushItem {
                namespace: "default".into(),
                value_type: ValueType::Lww,
                dot,
                ts,
                key: format!("crafted-{i}").into_bytes(),
                entry,
            }
        })
        .collect();
    let frame = chorus_core::wire::encode(&Message::Push(Push { hops: 0, items }));
    let target: SocketAddr = c.agents[0].peer_addr.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut config = TransportConfig::new("crafter", "127.0.91.9:0".parse().unwrap());
        config.frame_bytes_max = chorus_core::limits::FRAME_BYTES_MAX as u32;
        let (transport, _incoming) = Transport::bind(config, &creds).expect("bind");
        let peer: PeerAddr = transport.identify(target).await.expect("the node accepts the crafter's certificate");
        transport.send(&peer, frame).expect("queued");
        // Keep the connection up until the node has taken the push.
        let last = format!("/v1/ns/default/kv/crafted-{}", ITEMS_PER_MESSAGE_MAX - 1);
        let node = c.agents[0].url(&last);
        let http = common::Http::new();
        let deadline = std::time::Instant::now() + CONVERGE;
        while std::time::Instant::now() < deadline {
            if http.get(&node).is_some_and(|(s, _)| s == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        transport.shutdown().await;
    });
    let a = &mut c.agents[0];
    assert!(a.running(), "the node must still run: {}", a.log_text());
    let (status, v) = c.http.get(&a.url(&format!("/v1/ns/default/kv/crafted-{}", ITEMS_PER_MESSAGE_MAX - 1))).unwrap();
    assert_eq!(status, 200, "the last item was applied: {v}");
    assert_eq!(c.http.get(&a.url("/v1/ns/default/kv/crafted-0")).unwrap().0, 200);
    let (_, health) = c.http.get(&a.url("/health")).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    // And it survives a restart (the batch was durable in pieces).
    a.kill9();
    a.start();
    a.wait_healthy(&c.http);
    let (_, ns) = c.http.get(&a.url("/v1/ns/default")).unwrap();
    assert!(ns["keys"].as_u64().unwrap_or(0) >= ITEMS_PER_MESSAGE_MAX as u64, "{ns}");
}

fn incr(c: &Cluster, key: &str, amount: i64, request_id: &str) -> (u16, Value) {
    let body = json!({ "amount": amount, "request_id": request_id }).to_string();
    c.http.req("POST", &c.agents[0].url(&format!("/v1/ns/hits/counter/{key}")), Some(&body)).expect("node answers")
}

/// A client whose write timed out retries with the same `request_id`; the
/// node answers with the first outcome and applies nothing — also after a
/// kill -9 between the two (the key is durable with the write).
#[test]
fn a_retried_increment_with_the_same_request_id_counts_once_even_across_a_kill_9() {
    let mut c = Cluster::start(92, 1, "");
    let (status, v) =
        c.http.req("POST", &c.agents[0].url("/v1/ns"), Some(r#"{"name":"hits","type":"counter"}"#)).unwrap();
    assert_eq!(status, 201, "{v}");
    let (status, first) = incr(&c, "visits", 5, "retry-me");
    assert_eq!(status, 200, "{first}");
    let (status, again) = incr(&c, "visits", 5, "retry-me");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["dot"], first["dot"], "the first outcome, not a second write");
    c.agents[0].kill9();
    c.agents[0].start();
    c.agents[0].wait_healthy(&c.http);
    let (status, after) = incr(&c, "visits", 5, "retry-me");
    assert_eq!((status, &after["dot"]), (200, &first["dot"]), "{after}");
    let read = eventually("the counter", CONVERGE, || c.agents[0].read(&c.http, "hits", "visits"));
    assert_eq!(read["value"], 5, "three sends of one increment count once: {read}");
    // A different write under the same key is refused, and changes nothing.
    let (status, v) = incr(&c, "other", 1, "retry-me");
    assert_eq!((status, v["error"].as_str()), (409, Some("request_id_reused")), "{v}");
    // The CLI sends a fresh key per command, and --request-id reuses one.
    let node = c.agents[0].api.clone();
    for _ in 0..2 {
        let out = chorus(&["incr", "cli", "2", "--ns", "hits", "--node", &node, "--request-id", "cli-once"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = chorus(&["incr", "cli", "3", "--ns", "hits", "--node", &node]);
    assert!(out.status.success());
    let read = eventually("the cli counter", CONVERGE, || c.agents[0].read(&c.http, "hits", "cli"));
    assert_eq!(read["value"], 5, "{read}");
}
