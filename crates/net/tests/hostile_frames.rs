//! A peer with a valid certificate that announces huge frames on many
//! streams and then stalls must cost the receiver only a bounded amount of
//! memory, and its stalled frames must be dropped after their deadline
//! (`docs/design/transport-and-membership.md`, "3. Wire formats").
//!
//! This file holds a single test on purpose: it measures the process's
//! resident memory, which other tests running in parallel would disturb.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_net::{ClusterCa, Incoming, Transport};
use common::*;

/// Streams the attacker opens, each announcing [`ANNOUNCED_BYTES`].
const STREAMS: usize = 200;
/// What each stream's header announces: the daemon's frame maximum.
const ANNOUNCED_BYTES: u32 = 64 << 20;
/// Payload bytes the attacker actually sends on each stream before stalling.
const SENT_PER_STREAM: usize = 512 << 10;
/// The receiver's frame deadline in this test.
const DEADLINE_MS: u64 = 1_500;

static PAYLOAD: [u8; SENT_PER_STREAM] = [0x5a; SENT_PER_STREAM];

fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_announcing_huge_frames_cost_only_bounded_memory_and_stalled_frames_are_dropped_at_their_deadline() {
    let started = Instant::now();
    let ca = ClusterCa::generate("test").expect("ca");
    let mut cfg = config("victim");
    cfg.frame_bytes_max = ANNOUNCED_BYTES;
    cfg.frame_read_deadline_ms = DEADLINE_MS;
    let (victim, mut victim_rx) = Transport::bind(cfg, &creds(&ca, "victim")).expect("bind victim");
    let victim_addr = addr_of(&victim);
    let (honest, _honest_rx) = bind(&ca, "honest");

    // The victim answers every request it gets, so a served request shows
    // it still works.
    tokio::spawn(async move {
        while let Some(event) = victim_rx.recv().await {
            if let Incoming::Request { payload, respond, .. } = event {
                let _ = respond.send(payload);
            }
        }
    });
    let answer = honest.request(&victim_addr, &b"warm up"[..], Duration::from_secs(5)).await.expect("warm-up");
    assert_eq!(answer, Bytes::from_static(b"warm up"));

    // The attacker: a plain quinn client holding a valid node certificate.
    let (endpoint, client_config) = raw_client(&creds(&ca, "mallory"));
    let conn = endpoint
        .connect_with(client_config, victim_addr.addr, "victim")
        .expect("connect")
        .await
        .expect("handshake with a valid certificate");

    let rss_before = vm_rss_bytes();
    let payload = Bytes::from_static(&PAYLOAD);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (mut send, recv) = conn.open_bi().await.expect("open stream");
        let stream_payload = payload.clone();
        streams.push(tokio::spawn(async move {
            // Writes to a stream the victim refused fail; that is expected.
            let _ = send.write_all(&ANNOUNCED_BYTES.to_be_bytes()).await;
            let _ = send.write_chunk(stream_payload).await;
            // Stall: never finish the frame. The victim must stop the stream.
            let stopped = tokio::time::timeout(Duration::from_secs(20), send.stopped()).await;
            drop(recv);
            matches!(stopped, Ok(Ok(Some(_))))
        }));
    }

    // Sample the victim's resident memory until every stream was refused.
    let mut rss_peak = rss_before;
    let refused = || {
        victim.stats().frame_read_deadlines.load(Ordering::Relaxed)
            + victim.stats().frame_budget_refusals.load(Ordering::Relaxed)
    };
    let end = Instant::now() + Duration::from_secs(15);
    while refused() < STREAMS as u64 && Instant::now() < end {
        rss_peak = rss_peak.max(vm_rss_bytes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rss_peak = rss_peak.max(vm_rss_bytes());
    let mut stopped = 0;
    for stream in streams {
        if stream.await.expect("stream task") {
            stopped += 1;
        }
    }

    let growth = rss_peak.saturating_sub(rss_before);
    let sent = (STREAMS * SENT_PER_STREAM) as u64;
    let announced = STREAMS as u64 * u64::from(ANNOUNCED_BYTES);
    let deadlines = victim.stats().frame_read_deadlines.load(Ordering::Relaxed);
    let over_budget = victim.stats().frame_budget_refusals.load(Ordering::Relaxed);
    eprintln!(
        "RSS before {} MiB, peak {} MiB, growth {} MiB; announced {} MiB, sent {} MiB; \
         {deadlines} frames dropped at their deadline, {over_budget} refused over budget, {stopped} streams stopped; \
         {:.1} s",
        rss_before >> 20,
        rss_peak >> 20,
        growth >> 20,
        announced >> 20,
        sent >> 20,
        started.elapsed().as_secs_f64()
    );
    // The bound is the in-flight budget's share actually sent plus quinn's
    // connection receive window: well under half of what was sent, and a
    // vanishing fraction of what was announced.
    assert!(growth < sent / 2, "the victim's RSS grew by {} MiB for {} MiB sent", growth >> 20, sent >> 20);
    assert_eq!(deadlines + over_budget, STREAMS as u64, "every stalled frame is dropped and counted");
    assert!(deadlines >= 1, "the frames admitted to the budget were dropped at their deadline");
    assert_eq!(stopped, STREAMS, "the attacker saw every stream stopped");

    // The victim still serves an honest peer.
    let answer = honest.request(&victim_addr, &b"still here"[..], Duration::from_secs(5)).await.expect("served");
    assert_eq!(answer, Bytes::from_static(b"still here"));
    endpoint.close(0u32.into(), b"done");
    honest.shutdown().await;
    victim.shutdown().await;
}
