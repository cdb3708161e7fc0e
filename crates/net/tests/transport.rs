//! Transport tests over real QUIC sockets on 127.0.0.1.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chorus_net::transport::{DialError, RequestError, SendError};
use chorus_net::{ClusterCa, Incoming, PeerAddr, QuarantineReason, RevocationList, Transport};
use common::*;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn two_transports_exchange_messages_requests_and_datagrams() {
    let ca = ClusterCa::generate("test").expect("ca");
    let (a, _a_rx) = bind(&ca, "alpha");
    let (b, mut b_rx) = bind(&ca, "beta");
    let b_addr = addr_of(&b);

    // Messages arrive in order, attributed to the authenticated sender.
    for i in 0..10u8 {
        a.send(&b_addr, vec![i; 100]).expect("send");
    }
    for i in 0..10u8 {
        match next(&mut b_rx, WAIT).await {
            Incoming::Message { from, payload } => {
                assert_eq!(from.name, "alpha");
                assert_eq!(from.addr, local(&a));
                assert_eq!(payload, Bytes::from(vec![i; 100]));
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }

    // A request gets the responder's answer.
    let responder = tokio::spawn(async move {
        match next(&mut b_rx, WAIT).await {
            Incoming::Request { from, payload, respond } => {
                assert_eq!(from.name, "alpha");
                let mut answer = payload.to_vec();
                answer.reverse();
                respond.send(Bytes::from(answer)).expect("respond");
            }
            other => panic!("expected a request, got {other:?}"),
        }
        b_rx
    });
    let answer = a.request(&b_addr, &b"ping"[..], WAIT).await.expect("request answered");
    assert_eq!(answer, Bytes::from_static(b"gnip"));
    let mut b_rx = responder.await.expect("responder");

    // Datagrams are unreliable, so resend until one arrives.
    let mut got = None;
    for _ in 0..50 {
        a.send_datagram(&b_addr, b"hello").expect("datagram");
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(100), b_rx.recv()).await {
            got = Some(event);
            break;
        }
    }
    match got {
        Some(Incoming::Datagram { from, payload }) => {
            assert_eq!(from.name, "alpha");
            assert_eq!(payload, Bytes::from_static(b"hello"));
        }
        other => panic!("expected a datagram, got {other:?}"),
    }

    // One connection carried it all, and the counters saw it.
    let stats = a.stats().peers_snapshot();
    let beta = stats.get("beta").expect("beta stats");
    assert_eq!(beta.frames_sent, 11);
    assert_eq!(beta.bytes_sent, 1000 + 4 + 5);
    assert_eq!(b.stats().frames_received.load(Ordering::Relaxed), 11);

    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(a.send(&b_addr, &b"late"[..]), Err(SendError::Shutdown));
}

#[tokio::test]
async fn a_request_the_peer_drops_fails_with_no_response_and_a_silent_peer_times_out() {
    let ca = ClusterCa::generate("test").expect("ca");
    let (a, _a_rx) = bind(&ca, "alpha");
    let (b, mut b_rx) = bind(&ca, "beta");
    let b_addr = addr_of(&b);

    let dropper = tokio::spawn(async move {
        let first = next(&mut b_rx, WAIT).await;
        drop(first);
        // Keep the second request's responder alive but never answer.
        let second = next(&mut b_rx, WAIT).await;
        (b_rx, second)
    });
    let dropped = a.request(&b_addr, &b"one"[..], WAIT).await;
    assert!(matches!(dropped, Err(RequestError::NoResponse)), "{dropped:?}");
    let silent = a.request(&b_addr, &b"two"[..], Duration::from_millis(300)).await;
    assert!(matches!(silent, Err(RequestError::Timeout)), "{silent:?}");
    let _keep = dropper.await.expect("dropper");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_node_with_a_certificate_from_another_ca_cannot_connect_or_send() {
    let ca = ClusterCa::generate("test").expect("ca");
    let rogue_ca = ClusterCa::generate("test").expect("rogue ca");
    let (a, mut a_rx) = bind(&ca, "alpha");
    // Same name, same cluster name, different CA.
    let (mallory, _m_rx) = bind(&rogue_ca, "beta");
    let a_addr = addr_of(&a);

    mallory.send(&a_addr, &b"let me in"[..]).expect("enqueue");
    let result = mallory.request(&a_addr, &b"hi"[..], WAIT).await;
    assert!(matches!(result, Err(RequestError::Unreachable(_))), "{result:?}");
    assert!(eventually(WAIT, || async { a.stats().handshake_failures.load(Ordering::Relaxed) >= 1 }).await);
    assert!(!a.is_connected("beta"));
    assert!(a_rx.try_recv().is_err(), "nothing may reach the application");
    a.shutdown().await;
    mallory.shutdown().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_cannot_connect() {
    let ca = ClusterCa::generate("test").expect("ca");
    let (a, mut a_rx) = bind(&ca, "alpha");

    // A plain QUIC client that trusts the CA but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca.cert_pem().as_bytes()).expect("ca der");
    roots.add(ca_der).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![chorus_net::tls::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client(LOCALHOST.parse().expect("addr")).expect("client");
    let connecting = endpoint.connect_with(client_config, local(&a), "alpha").expect("connect");

    // TLS 1.3 lets the client finish before the server rejects its
    // (missing) certificate, so the connection may briefly look up; it must
    // then be closed and no stream may be served.
    match tokio::time::timeout(WAIT, connecting).await {
        Ok(Err(_)) => {}
        Ok(Ok(conn)) => {
            let reason = tokio::time::timeout(WAIT, conn.closed()).await.expect("server closes the connection");
            assert!(!matches!(reason, quinn::ConnectionError::LocallyClosed));
        }
        Err(_) => panic!("handshake neither failed nor finished"),
    }
    assert!(eventually(WAIT, || async { a.stats().handshake_failures.load(Ordering::Relaxed) >= 1 }).await);
    assert_eq!(a.stats().connections_established.load(Ordering::Relaxed), 0);
    assert!(a_rx.try_recv().is_err());
    a.shutdown().await;
}

#[tokio::test]
async fn a_revoked_node_cannot_connect_and_revoking_cuts_a_live_connection() {
    let ca = ClusterCa::generate("test").expect("ca");
    let mut revoked = RevocationList::default();
    revoked.names.insert("mallory".into());
    let (a, mut a_rx) = Transport::bind_with_revocations(config("alpha"), &creds(&ca, "alpha"), revoked).expect("bind");
    let (mallory, _m_rx) = bind(&ca, "mallory");
    let beta_creds = creds(&ca, "beta");
    let (b, _b_rx) = Transport::bind(config("beta"), &beta_creds).expect("bind");
    let a_addr = addr_of(&a);

    // With TLS 1.3 the client may finish its half of the handshake before
    // the server rejects its certificate, so the failure can surface as a
    // lost connection rather than a failed dial; either way nothing gets in.
    let result = mallory.request(&a_addr, &b"hi"[..], WAIT).await;
    assert!(result.is_err(), "{result:?}");
    assert!(eventually(WAIT, || async { a.stats().handshake_failures.load(Ordering::Relaxed) >= 1 }).await);
    assert!(a_rx.try_recv().is_err());
    // alpha also refuses to dial the revoked node.
    let result = a.request(&addr_of(&mallory), &b"hi"[..], WAIT).await;
    assert!(matches!(result, Err(RequestError::Unreachable(_))), "{result:?}");

    // beta connects fine, until its serial is revoked.
    b.send(&a_addr, &b"before"[..]).expect("send");
    match next(&mut a_rx, WAIT).await {
        Incoming::Message { from, .. } => assert_eq!(from.name, "beta"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(a.is_connected("beta"));
    let mut list = RevocationList::default();
    list.names.insert("mallory".into());
    list.serials_hex.insert(beta_creds.serial_hex().expect("serial"));
    a.set_revocations(list);
    assert!(eventually(WAIT, || async { !a.is_connected("beta") && !b.is_connected("alpha") }).await);
    let result = b.request(&a_addr, &b"after"[..], WAIT).await;
    assert!(result.is_err(), "{result:?}");
    for t in [a, b, mallory] {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn dialing_a_peer_under_the_wrong_name_fails() {
    let ca = ClusterCa::generate("test").expect("ca");
    let (a, _a_rx) = bind(&ca, "alpha");
    let (b, _b_rx) = bind(&ca, "beta");
    let wrong = PeerAddr { name: "gamma".into(), addr: local(&b) };
    let result = a.request(&wrong, &b"hi"[..], WAIT).await;
    assert!(matches!(result, Err(RequestError::Unreachable(_))), "{result:?}");
    // identify learns the real name.
    let learned = a.identify(local(&b)).await.expect("identify");
    assert_eq!(learned.name, "beta");
    let self_dial = a.identify(local(&a)).await;
    assert!(matches!(self_dial, Err(DialError::SelfDial)), "{self_dial:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_is_rejected_and_the_receiver_keeps_serving_others() {
    let ca = ClusterCa::generate("test").expect("ca");
    let mut small = config("alpha");
    small.frame_bytes_max = 1024;
    let (a, mut a_rx) = Transport::bind(small, &creds(&ca, "alpha")).expect("bind");
    let (big, _big_rx) = bind(&ca, "bigmouth");
    let (c, _c_rx) = bind(&ca, "gamma");
    let a_addr = addr_of(&a);

    big.send(&a_addr, vec![7u8; 4096]).expect("sender allows 16 MiB");
    assert!(eventually(WAIT, || async { a.stats().frame_errors.load(Ordering::Relaxed) == 1 }).await);
    // The sender is quarantined: it cannot reconnect for now.
    let again = big.request(&a_addr, &b"small"[..], Duration::from_millis(500)).await;
    assert!(again.is_err(), "{again:?}");

    c.send(&a_addr, &b"still here"[..]).expect("send");
    match next(&mut a_rx, WAIT).await {
        Incoming::Message { from, payload } => {
            assert_eq!(from.name, "gamma");
            assert_eq!(payload, Bytes::from_static(b"still here"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // A frame over our own limit is refused before it is queued.
    assert!(matches!(a.send(&addr_of(&c), vec![0u8; 2048]), Err(SendError::TooLarge { .. })));
    for t in [a, big, c] {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn a_full_per_peer_queue_returns_queue_full_and_other_peers_are_unaffected() {
    let ca = ClusterCa::generate("test").expect("ca");
    let mut cfg = config("alpha");
    cfg.per_peer_queue_max = 4;
    let (a, _a_rx) = Transport::bind(cfg, &creds(&ca, "alpha")).expect("bind");
    let (b, mut b_rx) = bind(&ca, "beta");

    // A UDP socket that swallows everything: a dead peer.
    let black_hole = std::net::UdpSocket::bind(LOCALHOST).expect("udp");
    let dead = PeerAddr { name: "dead".into(), addr: black_hole.local_addr().expect("addr") };
    let mut full = 0;
    for _ in 0..20 {
        match a.send(&dead, &b"x"[..]) {
            Ok(()) => {}
            Err(SendError::QueueFull(name)) => {
                assert_eq!(name, "dead");
                full += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // At most the queue plus the one message the driver holds fit.
    assert!(full >= 15, "only {full} sends were refused");
    assert_eq!(a.stats().queue_full_drops.load(Ordering::Relaxed), full);

    let started = std::time::Instant::now();
    a.send(&addr_of(&b), &b"fast lane"[..]).expect("send to live peer");
    match next(&mut b_rx, WAIT).await {
        Incoming::Message { payload, .. } => assert_eq!(payload, Bytes::from_static(b"fast lane")),
        other => panic!("unexpected {other:?}"),
    }
    // Well under the dead peer's 1 s handshake timeout.
    assert!(started.elapsed() < Duration::from_millis(900));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_quarantined_peer_is_disconnected_refused_with_the_quarantine_code_and_counted_by_reason() {
    let ca = ClusterCa::generate("test").expect("ca");
    let (a, _a_rx) = bind(&ca, "alpha");
    let a_addr = local(&a);
    let (endpoint, client_config) = raw_client(&creds(&ca, "beta"));
    let first =
        endpoint.connect_with(client_config.clone(), a_addr, "alpha").expect("connect").await.expect("handshake");
    assert!(eventually(WAIT, || async { a.is_connected("beta") }).await, "alpha registered beta's connection");

    let period = a.quarantine("beta", QuarantineReason::BadChecksum);
    assert_eq!(period, Duration::from_secs(1));
    assert!(a.is_quarantined("beta"));
    // The live connection is closed, saying why.
    let closed = tokio::time::timeout(WAIT, first.closed()).await.expect("closed");
    assert_eq!(
        application_close(&closed),
        Some((chorus_net::QUARANTINED_CLOSE_CODE, "quarantined: bad_checksum".to_owned()))
    );
    // A new connection is refused because of the quarantine.
    let again = endpoint.connect_with(client_config.clone(), a_addr, "alpha").expect("connect").await;
    let refusal = match again {
        Ok(conn) => tokio::time::timeout(WAIT, conn.closed()).await.expect("closed"),
        Err(e) => e,
    };
    assert_eq!(application_close(&refusal), Some((chorus_net::QUARANTINED_CLOSE_CODE, "quarantined".to_owned())));

    // Once the quarantine ends the peer is served again; a second offence
    // doubles the period. Each reason has its own counter.
    assert!(eventually(WAIT, || async { !a.is_quarantined("beta") }).await);
    let back = endpoint.connect_with(client_config, a_addr, "alpha").expect("connect").await.expect("handshake");
    assert!(eventually(WAIT, || async { a.is_connected("beta") }).await, "served again after the quarantine");
    assert_eq!(a.quarantine("beta", QuarantineReason::Undecodable), Duration::from_secs(2));
    let closed = tokio::time::timeout(WAIT, back.closed()).await.expect("closed");
    assert_eq!(
        application_close(&closed),
        Some((chorus_net::QUARANTINED_CLOSE_CODE, "quarantined: undecodable".to_owned()))
    );
    let counts: Vec<u64> = QuarantineReason::ALL.iter().map(|r| a.stats().quarantines(*r)).collect();
    assert_eq!(counts, vec![0, 1, 1, 0, 0], "framing, bad_checksum, undecodable, forged_dots, bad_signature");
    assert_eq!(QuarantineReason::BadSignature.as_str(), "bad_signature");
    endpoint.close(0u32.into(), b"done");
    a.shutdown().await;
}

/// A request abandoned by its timeout while its frame is still being
/// written is the sender's own decision, not a broken frame: the stream is
/// reset, and the receiver neither counts a framing error nor quarantines
/// the sender (docs/design/transport-and-membership.md, "Quarantine").
/// Before, quinn finished the dropped stream, the receiver read a frame cut
/// short (`Truncated`) and quarantined an honest peer; found by a strong
/// snapshot soak where openraft's 50 ms AppendEntries timeout cut 1 MB
/// appends.
#[tokio::test]
async fn a_request_abandoned_mid_frame_by_its_timeout_does_not_get_the_sender_quarantined() {
    const ABANDONED: u64 = 8;
    let ca = ClusterCa::generate("test").expect("ca");
    let (a, _a_rx) = bind(&ca, "alpha");
    let (b, mut b_rx) = bind(&ca, "beta");
    let b_addr = addr_of(&b);
    let answers = tokio::spawn(async move {
        while let Some(incoming) = b_rx.recv().await {
            if let Incoming::Request { respond, .. } = incoming {
                let _ = respond.send(Bytes::from_static(b"ok"));
            }
        }
    });
    // Connected first, so the timeouts below cut the write, not the dial.
    let first = a.request(&b_addr, &b"hello"[..], WAIT).await;
    assert_eq!(first.expect("first request").as_ref(), b"ok");
    let large = Bytes::from(vec![7u8; chorus_net::transport::FRAME_BYTES_MAX_DEFAULT as usize]);
    let mut timed_out = 0;
    for k in 0..ABANDONED {
        let cut = Duration::from_millis(1 + 3 * k);
        if let Err(RequestError::Timeout) = a.request(&b_addr, large.clone(), cut).await {
            timed_out += 1;
        }
    }
    assert!(timed_out > 0, "no 16 MiB request was cut by a timeout of 1 to 22 ms");
    let after = a.request(&b_addr, &b"still friends"[..], WAIT).await;
    assert!(matches!(&after, Ok(answer) if answer.as_ref() == b"ok"), "after the abandoned requests: {after:?}");
    let framing = b.stats().quarantines(QuarantineReason::Framing);
    let frame_errors = b.stats().frame_errors.load(Ordering::Relaxed);
    assert_eq!((framing, frame_errors), (0, 0), "beta punished alpha for {timed_out} abandoned requests");
    assert!(!b.is_quarantined("alpha"));
    answers.abort();
    a.shutdown().await;
    b.shutdown().await;
}

/// A revoked node that dials again must go through a full handshake: a
/// resumed TLS session skips certificate verification, and a node holding
/// a ticket from before its revocation got back in that way (the daemon's
/// revocation test saw the revoked node stay alive in SWIM). Both sides
/// dial and redial for a while; nothing from the revoked node arrives.
#[tokio::test]
async fn a_revoked_node_gets_no_connection_back_by_resuming_an_old_session() {
    let ca = ClusterCa::generate("test").expect("ca");
    let (a, mut a_rx) = bind(&ca, "alpha");
    let (b, mut b_rx) = bind(&ca, "beta");
    let (a_addr, b_addr) = (addr_of(&a), addr_of(&b));
    // Connections both ways, so each side holds whatever tickets it got.
    b.send(&a_addr, &b"hello"[..]).expect("send");
    assert!(matches!(next(&mut a_rx, WAIT).await, Incoming::Message { .. }));
    a.send(&b_addr, &b"hello"[..]).expect("send");
    assert!(matches!(next(&mut b_rx, WAIT).await, Incoming::Message { .. }));
    let mut list = RevocationList::default();
    list.names.insert("beta".into());
    a.set_revocations(list);
    assert!(eventually(WAIT, || async { !a.is_connected("beta") && !b.is_connected("alpha") }).await);
    // Ten redials, each a send and a request that waits for its answer
    // (bounded by its own timeout): every one needs a new handshake.
    for _ in 0..10 {
        let _ = b.send(&a_addr, &b"after"[..]);
        let _ = b.request(&a_addr, &b"after"[..], Duration::from_millis(300)).await;
    }
    if let Ok(incoming) = a_rx.try_recv() {
        panic!("alpha received from a revoked node: {incoming:?}");
    }
    assert!(!a.is_connected("beta"));
    a.shutdown().await;
    b.shutdown().await;
}
