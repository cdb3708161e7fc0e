//! Clock probes between nodes: the wire format, the answering side, the
//! periodic prober and the join check (`docs/design/clock.md`, "Daemon
//! integration").
//!
//! A probe is an NTP-style exchange (NTP's on-wire protocol; see
//! `docs/design/clock.md`, "References") over chorus-net's request/response
//! streams (`Transport::request`, with a deadline), not over the replication
//! protocol: the requester stamps t1 with its raw OS clock, the responder
//! stamps t2 when it handles the request and t3 when it answers, both with
//! *its* raw OS clock, and the requester stamps t4 on the answer.
//! `chorus_clock::ClockService` turns the four stamps into an offset and a
//! delay.
//!
//! # Wire format (version 1, big-endian)
//!
//! Every request payload starts with a kind byte, so requests of other
//! kinds can share the stream type later ([`REQUEST_KIND_CLOCK_PROBE`]).
//!
//! ```text
//! probe (11 bytes):  kind=0x01 | version=1 | tier u8 | t1 u64
//! reply (27 bytes):  kind=0x01 | version=1 | tier u8 | t1 u64 (echo) | t2 u64 | t3 u64
//! ```
//!
//! The reply echoes t1 so a late answer cannot be paired with another
//! probe. The tier is the sender's declared tier; a responder does not
//! answer probes from tiers it may not talk to, and the requester's clock
//! service rejects (and counts) samples from such tiers.

use crate::clock::ClockHandle;
use crate::telemetry;
use chorus_clock::{PeerKey, ProbeTimestamps, select_cluster_time};
use chorus_core::NodeId;
use chorus_net::{MemberInfo, MemberState, PeerAddr, RequestError, Transport};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// First byte of a clock-probe request and of its reply.
pub const REQUEST_KIND_CLOCK_PROBE: u8 = 0x01;
/// Version of the probe encoding this build speaks.
pub const PROBE_VERSION: u8 = 1;
/// Length of an encoded probe.
pub const PROBE_BYTES: usize = 11;
/// Length of an encoded reply.
pub const REPLY_BYTES: usize = 27;
/// Probes in flight at most (one per peer, and at most this many peers).
pub const PROBES_IN_FLIGHT_MAX: usize = 256;
/// Samples taken from each seed by the join check.
pub const JOIN_PROBES_PER_SEED: usize = 5;
/// Pause between two join probes to the same seed.
const JOIN_PROBE_GAP: Duration = Duration::from_millis(40);
/// The whole join check (dial every seed, then probe it) ends within this.
pub const JOIN_CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// A probe's deadline: a reply later than this would be rejected by the
/// clock service anyway (`delay_max_us` = 2 s).
pub const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// A clock probe as sent by the requester.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub tier: u8,
    pub t1_us: u64,
}

/// The responder's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeReply {
    pub tier: u8,
    pub t1_us: u64,
    pub t2_us: u64,
    pub t3_us: u64,
}

/// Why probe bytes could not be decoded. Nothing is changed on error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeDecodeError {
    #[error("empty probe payload")]
    Empty,
    #[error("request kind {0:#04x} is not a clock probe")]
    WrongKind(u8),
    #[error("probe version {0} is not supported (this build speaks {PROBE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("probe payload is {got} bytes, expected {expected}")]
    Length { expected: usize, got: usize },
}

/// Why one probe exchange produced no timestamps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    #[error("request failed: {0}")]
    Request(#[from] RequestError),
    #[error("undecodable reply: {0}")]
    Decode(#[from] ProbeDecodeError),
    #[error("reply echoes t1 = {got}, the probe sent {sent}")]
    EchoMismatch { sent: u64, got: u64 },
}

pub fn encode_probe(p: &Probe) -> Vec<u8> {
    let mut out = Vec::with_capacity(PROBE_BYTES);
    out.extend_from_slice(&[REQUEST_KIND_CLOCK_PROBE, PROBE_VERSION, p.tier]);
    out.extend_from_slice(&p.t1_us.to_be_bytes());
    out
}

pub fn encode_reply(r: &ProbeReply) -> Vec<u8> {
    let mut out = Vec::with_capacity(REPLY_BYTES);
    out.extend_from_slice(&[REQUEST_KIND_CLOCK_PROBE, PROBE_VERSION, r.tier]);
    for t in [r.t1_us, r.t2_us, r.t3_us] {
        out.extend_from_slice(&t.to_be_bytes());
    }
    out
}

/// Checks kind, version and exact length; returns the tier byte and the
/// u64 fields.
fn decode_fields<const N: usize>(bytes: &[u8]) -> Result<(u8, [u64; N]), ProbeDecodeError> {
    let expected = 3 + 8 * N;
    let (&kind, rest) = bytes.split_first().ok_or(ProbeDecodeError::Empty)?;
    if kind != REQUEST_KIND_CLOCK_PROBE {
        return Err(ProbeDecodeError::WrongKind(kind));
    }
    if let Some(&version) = rest.first()
        && version != PROBE_VERSION
    {
        return Err(ProbeDecodeError::UnsupportedVersion(version));
    }
    if bytes.len() != expected {
        return Err(ProbeDecodeError::Length { expected, got: bytes.len() });
    }
    let mut fields = [0u64; N];
    for (i, chunk) in bytes[3..].chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        fields[i] = u64::from_be_bytes(word);
    }
    Ok((bytes[2], fields))
}

pub fn decode_probe(bytes: &[u8]) -> Result<Probe, ProbeDecodeError> {
    let (tier, [t1_us]) = decode_fields::<1>(bytes)?;
    Ok(Probe { tier, t1_us })
}

pub fn decode_reply(bytes: &[u8]) -> Result<ProbeReply, ProbeDecodeError> {
    let (tier, [t1_us, t2_us, t3_us]) = decode_fields::<3>(bytes)?;
    Ok(ProbeReply { tier, t1_us, t2_us, t3_us })
}

/// The answer to a probe received at `t2_us` (raw OS clock), or `None` when
/// it must not be answered (undecodable, or from a tier we may not talk
/// to; both counted). t3 is read as late as possible.
pub fn answer(clock: &ClockHandle, local_tier: u8, from: &str, payload: &[u8], t2_us: u64) -> Option<Vec<u8>> {
    let probe = match decode_probe(payload) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(peer = from, error = %e, "undecodable clock probe");
            telemetry::probe_refused("undecodable");
            return None;
        }
    };
    if !chorus_clock::tiers_may_talk(local_tier, probe.tier) {
        telemetry::probe_refused("tier");
        return None;
    }
    let t3_us = clock.os_now_us().max(t2_us);
    Some(encode_reply(&ProbeReply { tier: local_tier, t1_us: probe.t1_us, t2_us, t3_us }))
}

/// The outcome of one probe exchange: the peer's tier and the stamps.
pub type ProbeOutcome = Result<(u8, ProbeTimestamps), ProbeError>;

/// One probe exchange with `peer`; returns the peer's declared tier and
/// the four timestamps.
pub async fn probe_once(
    transport: &Transport,
    clock: &ClockHandle,
    local_tier: u8,
    peer: &PeerAddr,
    timeout: Duration,
) -> ProbeOutcome {
    let t1_us = clock.os_now_us();
    let bytes = transport.request(peer, encode_probe(&Probe { tier: local_tier, t1_us }), timeout).await?;
    let t4_us = clock.os_now_us();
    let reply = decode_reply(&bytes)?;
    if reply.t1_us != t1_us {
        return Err(ProbeError::EchoMismatch { sent: t1_us, got: reply.t1_us });
    }
    Ok((reply.tier, ProbeTimestamps { t1_us, t2_us: reply.t2_us, t3_us: reply.t3_us, t4_us }))
}

/// The clock-service key of a peer: its node id.
pub fn peer_key(name: &str) -> PeerKey {
    PeerKey(NodeId::from_name(name).0)
}

fn feed(clock: &ClockHandle, name: &str, outcome: ProbeOutcome) {
    match outcome {
        Ok((tier, ts)) => match clock.sample(peer_key(name), tier, ts) {
            Ok(_) => telemetry::probe_done("sampled"),
            Err(e) => {
                tracing::debug!(peer = name, error = %e, "clock sample rejected");
                telemetry::probe_done("sample_rejected");
            }
        },
        Err(e) => {
            tracing::debug!(peer = name, error = %e, "clock probe failed");
            telemetry::probe_done("failed");
        }
    }
}

/// The periodic prober: every `interval`, one probe to each live member
/// whose tier we may talk to and that has no probe outstanding; then a
/// selection round (`ClockHandle::refresh`) and the clock metrics.
pub async fn run_prober(
    clock: Arc<ClockHandle>,
    transport: Transport,
    mut members: watch::Receiver<Arc<Vec<MemberInfo>>>,
    local_tier: u8,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let timeout = interval.min(PROBE_TIMEOUT_MAX);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut probes: JoinSet<(String, ProbeOutcome)> = JoinSet::new();
    let mut known: HashMap<PeerKey, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(done) = probes.join_next() => {
                if let Ok((name, outcome)) = done {
                    in_flight.remove(&name);
                    feed(&clock, &name, outcome);
                }
                continue;
            }
            _ = shutdown.changed() => return,
        }
        let view = members.borrow_and_update().clone();
        let live: Vec<&MemberInfo> = view.iter().filter(|m| m.state == MemberState::Alive).collect();
        // Forget peers that are gone or down, so their stale estimate
        // neither votes nor shows in the metrics.
        let live_keys: HashSet<PeerKey> = live.iter().map(|m| peer_key(&m.name)).collect();
        known.retain(|key, _| {
            let keep = live_keys.contains(key);
            if !keep {
                clock.forget(*key);
            }
            keep
        });
        for m in live {
            known.insert(peer_key(&m.name), m.name.clone());
            if !chorus_clock::tiers_may_talk(local_tier, m.tier)
                || in_flight.contains(&m.name)
                || in_flight.len() >= PROBES_IN_FLIGHT_MAX
            {
                continue;
            }
            in_flight.insert(m.name.clone());
            let (transport, clock, peer) = (transport.clone(), clock.clone(), m.peer_addr());
            probes.spawn(async move {
                let outcome = probe_once(&transport, &clock, local_tier, &peer, timeout).await;
                (peer.name, outcome)
            });
        }
        let status = clock.refresh();
        if !status.safe {
            tracing::warn!(reason = %status.reason, "clock unsafe: local writes are refused");
        }
        telemetry::clock(&clock.snapshot(), &known);
    }
}

/// What the join check found.
#[derive(Clone, Debug, PartialEq)]
pub enum JoinCheck {
    /// No seed answered a probe (e.g. the first node of a cluster): the
    /// local clock is unchecked until peers can be probed.
    Unchecked,
    /// The seeds' clocks agree with ours within `offset_max_ms`.
    Checked { offset_us: i64, seeds: usize },
}

/// Why a node refuses to join.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "refusing to join the cluster: local clock is {offset_ms:.3} ms ({offset_us} µs as cluster time minus local \
     clock) from the seeds' clocks [{detail}], beyond max_offset_ms = {offset_max_ms}; fix the OS clock \
     (NTP/chrony) and restart"
)]
pub struct JoinRefused {
    pub offset_us: i64,
    pub offset_ms: f64,
    pub offset_max_ms: u64,
    pub detail: String,
}

/// Before joining, measure the seeds' clocks: a node never joins with a clock
/// beyond `max_offset_ms` (`docs/design/clock.md`, "Safety").
///
/// Every seed (except our own addresses) is dialled and probed
/// [`JOIN_PROBES_PER_SEED`] times, all within [`JOIN_CHECK_DEADLINE`]. The
/// samples go into the clock service as usual. The verdict uses a
/// selection over the **seeds' intervals only**: the joining node's own
/// clock is what is being checked, so it must not vote (with one seed, the
/// service's own status would average our clock with the seed's and halve
/// the measured offset).
pub async fn join_check(
    clock: &Arc<ClockHandle>,
    transport: &Transport,
    seeds: &[SocketAddr],
    own: &[SocketAddr],
    local_tier: u8,
    offset_max_ms: u64,
) -> Result<JoinCheck, JoinRefused> {
    let deadline = tokio::time::Instant::now() + JOIN_CHECK_DEADLINE;
    let mut tasks: JoinSet<Option<String>> = JoinSet::new();
    for &addr in seeds.iter().filter(|a| !own.contains(a)) {
        let (transport, clock) = (transport.clone(), clock.clone());
        tasks.spawn(async move {
            let peer = match tokio::time::timeout_at(deadline, transport.identify(addr)).await {
                Ok(Ok(peer)) => peer,
                Ok(Err(e)) => {
                    tracing::info!(seed = %addr, error = %e, "seed unreachable for the clock check");
                    return None;
                }
                Err(_) => return None,
            };
            for i in 0..JOIN_PROBES_PER_SEED {
                if i > 0 {
                    tokio::time::sleep(JOIN_PROBE_GAP).await;
                }
                let timeout = deadline.saturating_duration_since(tokio::time::Instant::now()).min(PROBE_TIMEOUT_MAX);
                if timeout.is_zero() {
                    break;
                }
                let outcome = probe_once(&transport, &clock, local_tier, &peer, timeout).await;
                feed(&clock, &peer.name, outcome);
            }
            Some(peer.name)
        });
    }
    let mut probed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(name)) = done {
            probed.push(name);
        }
    }
    let reports = clock.peer_reports();
    let mut intervals = Vec::new();
    let mut detail = Vec::new();
    for name in &probed {
        if let Some(r) = reports.iter().find(|r| r.peer == peer_key(name) && !r.stale) {
            intervals.push(chorus_clock::ClockInterval { offset_us: r.offset_us, error_us: r.error_bound_us });
            detail.push(format!(
                "{name}: {:+.3} ms ± {:.3} ms",
                r.offset_us as f64 / 1000.0,
                r.error_bound_us as f64 / 1000.0
            ));
        }
    }
    clock.refresh();
    let offset_max_us = i64::try_from(offset_max_ms.saturating_mul(1000)).unwrap_or(i64::MAX);
    let Some(selection) = select_cluster_time(&intervals, offset_max_us) else {
        return Ok(JoinCheck::Unchecked);
    };
    if selection.offset_us.saturating_abs() > offset_max_us {
        return Err(JoinRefused {
            offset_us: selection.offset_us,
            offset_ms: selection.offset_us as f64 / 1000.0,
            offset_max_ms,
            detail: detail.join(", "),
        });
    }
    Ok(JoinCheck::Checked { offset_us: selection.offset_us, seeds: intervals.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_replies_round_trip() {
        let p = Probe { tier: 3, t1_us: u64::MAX - 7 };
        assert_eq!(decode_probe(&encode_probe(&p)), Ok(p));
        let r = ProbeReply { tier: 8, t1_us: 1, t2_us: 2, t3_us: u64::MAX };
        assert_eq!(decode_reply(&encode_reply(&r)), Ok(r));
    }

    #[test]
    fn probes_from_a_tier_we_may_not_talk_to_are_not_answered() {
        let os: Arc<dyn crate::Clock> = Arc::new(crate::SystemClock::default());
        let clock = ClockHandle::new(os, chorus_clock::ClockConfig::default()).unwrap();
        let from_tier = |tier| encode_probe(&Probe { tier, t1_us: 5 });
        assert!(answer(&clock, 0, "far", &from_tier(2), 10).is_none());
        assert!(answer(&clock, 0, "bad", b"\x01\x01", 10).is_none());
        let reply = decode_reply(&answer(&clock, 0, "near", &from_tier(1), 10).unwrap()).unwrap();
        assert_eq!((reply.tier, reply.t1_us, reply.t2_us), (0, 5, 10));
        assert!(reply.t3_us >= reply.t2_us);
    }

    #[test]
    fn malformed_probes_are_errors_not_panics() {
        assert_eq!(decode_probe(&[]), Err(ProbeDecodeError::Empty));
        assert_eq!(decode_probe(&[7, 1, 0]), Err(ProbeDecodeError::WrongKind(7)));
        assert_eq!(decode_probe(&[REQUEST_KIND_CLOCK_PROBE, 9]), Err(ProbeDecodeError::UnsupportedVersion(9)));
        assert_eq!(
            decode_probe(&[REQUEST_KIND_CLOCK_PROBE, PROBE_VERSION, 0, 1]),
            Err(ProbeDecodeError::Length { expected: PROBE_BYTES, got: 4 })
        );
        // A reply is not a probe and vice versa: the lengths differ.
        let reply = encode_reply(&ProbeReply { tier: 0, t1_us: 1, t2_us: 2, t3_us: 3 });
        assert!(decode_probe(&reply).is_err());
        let probe = encode_probe(&Probe { tier: 0, t1_us: 1 });
        assert!(decode_reply(&probe).is_err());
        // Every prefix and every single-byte corruption decodes or errors.
        for len in 0..reply.len() {
            assert!(decode_reply(&reply[..len]).is_err());
        }
        for i in 0..reply.len() {
            for b in [0u8, 1, 0x7f, 0xff] {
                let mut bad = reply.clone();
                bad[i] = b;
                let _ = decode_reply(&bad);
                let _ = decode_probe(&bad);
            }
        }
    }
}
