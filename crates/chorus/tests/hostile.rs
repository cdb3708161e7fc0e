//! Hostile and heavy input against a real `chorus agent` (issue 13): a peer
//! with a valid certificate sending the largest valid push or corrupt
//! messages, a retried write, a slowloris crowd on the HTTP API, and more
//! requests and streams than the server's bounds
//! (`docs/design/http-api.md`, "Limits";
//! `docs/design/transport-and-membership.md`, "Quarantine").

mod common;

use chorus_core::wire::{ITEMS_PER_MESSAGE_MAX, Message, Push, PushItem};
use chorus_core::{Dot, Entry, NodeId, Op, Timestamp, ValueType};
use chorus_net::{NodeCredentials, PeerAddr, Transport, TransportConfig};
use common::*;
use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A peer with a certificate of the cluster's CA that speaks the real
/// transport and sends whatever the test builds: one valid push of the
/// most items a message may carry. The node must take it whole and keep
/// serving (before, its one batch exceeded the store's bound and the
/// daemon exited, again after every restart).
#[test]
fn one_valid_push_of_the_most_items_a_message_may_carry_is_applied_and_the_node_stays_up() {
    // Signing off: the crafter never joins SWIM, so the node could not know
    // its signing key and would refuse every item as of an unknown origin.
    // What this test pins is the size bound of one message and one batch.
    let mut c = Cluster::start(91, 1, "signing_enabled = false");
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
                proof: None,
            }
        })
        .collect();
    let frame = chorus_core::wire::encode(&Message::Push(Push { hops: 0, items, covered: Vec::new() }));
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

/// Connections of the slowloris crowd.
const CROWD: usize = 500;
/// The header timeout the crowd runs into.
const HEADER_TIMEOUT_MS: u64 = 2_000;
/// The crowd gives up after this long even if connections stay open.
const CROWD_DURATION_MAX: Duration = Duration::from_secs(12);
/// One byte per connection per this period.
const CROWD_BYTE_PERIOD: Duration = Duration::from_secs(1);

fn api_addr(agent: &Agent) -> String {
    agent.api.trim_start_matches("http://").to_owned()
}

/// What a connection of the crowd has seen so far.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Open,
    Closed,
}

/// Whether the server closed `stream` (EOF or reset); drains any answer.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn a_slowloris_crowd_is_closed_by_the_header_timeout_while_puts_keep_succeeding() {
    let started = Instant::now();
    let c = Cluster::start(95, 1, &format!("http_header_timeout_ms = {HEADER_TIMEOUT_MS}"));
    let node = &c.agents[0];
    let addr = api_addr(node);

    let request = b"PUT /v1/ns/default/kv/slow HTTP/1.1\r\nHost: chorus\r\nContent-Type: application/json\r\n";
    let mut crowd: Vec<TcpStream> = (0..CROWD)
        .map(|_| {
            let s = TcpStream::connect(&addr).expect("crowd connects");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let crowd_started = Instant::now();
    let crowd_done = Arc::new(AtomicBool::new(false));
    let done = crowd_done.clone();
    let crowd_thread = std::thread::spawn(move || {
        let mut fate = vec![Fate::Open; crowd.len()];
        let mut sent = 0;
        while crowd_started.elapsed() < CROWD_DURATION_MAX && fate.contains(&Fate::Open) {
            for (i, stream) in crowd.iter_mut().enumerate() {
                if fate[i] == Fate::Closed {
                    continue;
                }
                let byte = request[sent % request.len()];
                if stream.write(&[byte]).is_err() || closed_by_server(stream) {
                    fate[i] = Fate::Closed;
                }
            }
            sent += 1;
            // Pacing the attack (one byte per connection per period), not
            // waiting for a result.
            std::thread::sleep(CROWD_BYTE_PERIOD);
        }
        done.store(true, Ordering::Release);
        (fate.iter().filter(|f| **f == Fate::Closed).count(), crowd_started.elapsed())
    });

    // While the crowd is connected, an honest client keeps writing.
    let mut latencies = Vec::new();
    let mut i = 0;
    while !crowd_done.load(Ordering::Acquire) {
        let t = Instant::now();
        let answer = c.http.req(
            "PUT",
            &node.url(&format!("/v1/ns/default/kv/k{i}")),
            Some(&json!({ "value": "v" }).to_string()),
        );
        latencies.push(t.elapsed());
        let (status, body) = answer.expect("the node answers within the client's 5 s deadline");
        assert_eq!(status, 200, "put {i} during the crowd: {body}");
        i += 1;
    }
    let (closed, crowd_ran) = crowd_thread.join().expect("crowd thread");
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!(
        "slowloris: {closed}/{CROWD} crowd connections closed by the server within {:.1} s; {} puts during the crowd, \
         latency p50 {:?}, p99 {:?}, max {:?}; test {:.1} s",
        crowd_ran.as_secs_f64(),
        latencies.len(),
        quantile(0.5),
        quantile(0.99),
        quantile(1.0),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(closed, CROWD, "the header timeout closes every connection of the crowd");
    assert!(latencies.len() >= 10, "puts kept being served while the crowd was connected: {}", latencies.len());
}

/// Sends a request line and headers on a fresh connection and returns it.
fn raw_request(addr: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(head.as_bytes()).expect("send head");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    s
}

/// Reads until the status line is complete and returns the status code.
fn read_status(s: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 1];
    while !got.ends_with(b"\r\n") {
        let n = s.read(&mut buf).expect("read status line");
        assert!(n > 0, "connection closed before a status line: {:?}", String::from_utf8_lossy(&got));
        got.push(buf[0]);
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status line {line:?}"))
}

/// Reads until `needle` has arrived; panics if the stream ends first.
fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("reading for {needle:?}: {e}"));
        assert!(n > 0, "the stream ended before {needle:?}: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn requests_over_the_in_flight_bound_get_503_overloaded_slow_ones_504_and_watch_streams_are_bounded_apart() {
    let started = Instant::now();
    let c = Cluster::start(
        96,
        1,
        "strong_voters = [\"node1\"]\nrequest_timeout_ms = 1000\nhttp_request_timeout_ms = 1500\n\
         http_requests_in_flight_max = 2\nhttp_streams_open_max = 2",
    );
    let node = &c.agents[0];
    let addr = api_addr(node);
    eventually("the strong namespace to be created", CONVERGE, || {
        let body = json!({ "name": "s", "mode": "strong" }).to_string();
        c.http.req("POST", &node.url("/v1/ns"), Some(&body)).filter(|(s, _)| *s == 200 || *s == 201)
    });

    // Two requests whose bodies never come hold both in-flight places.
    let slow_head = "PUT /v1/ns/default/kv/slow HTTP/1.1\r\nHost: chorus\r\nContent-Type: application/json\r\n\
                     Content-Length: 100\r\n\r\n";
    let mut slow: Vec<TcpStream> = (0..2).map(|_| raw_request(&addr, slow_head)).collect();
    let (status, body) = eventually("a request to be refused as overloaded", CONVERGE, || {
        c.http.get(&node.url("/health")).filter(|(s, _)| *s == 503)
    });
    assert_eq!((status, body["error"].as_str()), (503, Some("overloaded")), "{body}");
    let refused_put = c.http.req("PUT", &node.url("/v1/ns/default/kv/x"), Some(r#"{"value":"v"}"#)).expect("answer");
    assert_eq!((refused_put.0, refused_put.1["error"].as_str()), (503, Some("overloaded")), "{}", refused_put.1);

    // The slow requests are cut at http_request_timeout_ms with 504.
    for s in &mut slow {
        assert_eq!(read_status(s), 504);
        read_until(s, "\"timeout\"");
    }
    node.put(&c.http, "default", "after", "v");

    // Watch streams count apart: two are open while requests still pass,
    // and the third is refused with too_many_streams.
    let watch_head = "GET /v1/ns/s/watch HTTP/1.1\r\nHost: chorus\r\n\r\n";
    let mut watches: Vec<TcpStream> = (0..2).map(|_| raw_request(&addr, watch_head)).collect();
    for w in &mut watches {
        assert_eq!(read_status(w), 200);
    }
    let opened = Instant::now();
    let (status, body) = c.http.get(&node.url("/v1/ns/s/watch")).expect("answer");
    assert_eq!((status, body["error"].as_str()), (503, Some("too_many_streams")), "{body}");
    for i in 0..3 {
        let (status, body) = c.http.get(&node.url("/v1/status")).expect("answer");
        assert_eq!(status, 200, "request {i} beside two open watch streams: {body}");
    }
    // Outlive the request timeout, then show the streams still deliver.
    std::thread::sleep(Duration::from_millis(1_500).saturating_sub(opened.elapsed()) + Duration::from_millis(500));
    node.put(&c.http, "s", "event", "after-the-request-timeout");
    for w in &mut watches {
        read_until(w, "after-the-request-timeout");
    }
    // A closed stream gives its place back.
    drop(watches.pop());
    eventually("a watch to open once one was closed", CONVERGE, || {
        let mut w = raw_request(&addr, watch_head);
        (read_status(&mut w) == 200).then_some(())
    });
    eprintln!("limits test {:.1} s", started.elapsed().as_secs_f64());
}

fn metric(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse::<f64>().ok().map(|v| v as u64))
}

#[test]
fn a_peer_sending_a_bad_checksum_or_an_undecodable_message_is_disconnected_and_refused_as_quarantined() {
    use chorus_core::wire::{self, Message, SyncRequest};
    let started = Instant::now();
    let c = Cluster::start(97, 1, "");
    let node = &c.agents[0];
    // A peer with a valid certificate of the cluster's CA.
    let ca = c.dir.path().join("ca");
    let out = chorus(&["ca", "issue", "mallory", "--dir", ca.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "ca issue: {}", String::from_utf8_lossy(&out.stderr));
    let creds = chorus_net::NodeCredentials::load(&ca.join("mallory")).expect("mallory's credentials");
    let peer_addr: std::net::SocketAddr = node.peer_addr.parse().expect("peer addr");

    let mut bad_checksum = wire::encode(&Message::SyncRequest(SyncRequest { summaries: Vec::new() }));
    *bad_checksum.last_mut().expect("a checksum") ^= 0x01;
    let undecodable = b"this is not a chorus message".to_vec();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (endpoint, client) = raw_client(&creds);
        for (payload, reason) in [(bad_checksum, "bad_checksum"), (undecodable, "undecodable")] {
            // Served until it misbehaves (the previous quarantine may still
            // be running: wait for a connection that stays up).
            let conn = eventually_async("a connection the node accepts", || async {
                let conn = endpoint.connect_with(client.clone(), peer_addr, "node1").ok()?.await.ok()?;
                let closed = tokio::time::timeout(Duration::from_millis(300), conn.closed()).await;
                closed.is_err().then_some(conn)
            })
            .await;
            let mut stream = conn.open_uni().await.expect("open a message stream");
            stream.write_all(&frame(&payload)).await.expect("send the bad message");
            let close = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("disconnected");
            assert_eq!(
                application_close(&close),
                Some((chorus_net::QUARANTINED_CLOSE_CODE, format!("quarantined: {reason}"))),
                "{close}"
            );
            // Reconnecting now is refused because of the quarantine.
            let again = endpoint.connect_with(client.clone(), peer_addr, "node1").expect("connect").await;
            let refusal = match again {
                Ok(conn) => tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("refused"),
                Err(e) => e,
            };
            assert_eq!(
                application_close(&refusal),
                Some((chorus_net::QUARANTINED_CLOSE_CODE, "quarantined".to_owned())),
                "{refusal}"
            );
        }
        endpoint.close(0u32.into(), b"done");
    });

    // Both offences are counted under their reason.
    let counted = eventually("both quarantines in /metrics", CONVERGE, || {
        let (_, text) = c.http.get(&node.url("/metrics"))?;
        let text = text.as_str()?.to_owned();
        let checksum = metric(&text, "chorus_peer_quarantines_total{reason=\"bad_checksum\"}")?;
        let undecodable = metric(&text, "chorus_peer_quarantines_total{reason=\"undecodable\"}")?;
        (checksum >= 1 && undecodable >= 1).then_some((checksum, undecodable))
    });
    assert_eq!(counted, (1, 1));
    eprintln!("quarantine test {:.1} s", started.elapsed().as_secs_f64());
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after 20 s.
async fn eventually_async<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + CONVERGE;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn raw_client(creds: &chorus_net::NodeCredentials) -> (quinn::Endpoint, quinn::ClientConfig) {
    let revocations = Arc::new(std::sync::RwLock::new(chorus_net::RevocationList::default()));
    let tls = chorus_net::tls::client_config(creds, revocations, false).expect("client tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let client = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    (endpoint, client)
}

fn application_close(error: &quinn::ConnectionError) -> Option<(u32, String)> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => Some((
            u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX),
            String::from_utf8_lossy(&close.reason).into_owned(),
        )),
        _ => None,
    }
}
