//! The transport's counters: plain atomics, transport-wide and per peer,
//! that the daemon exports as metrics. Every drop the transport makes on
//! purpose (a full queue, a message out of retries, a bad frame, a datagram
//! without a connection) is counted here, so a bounded queue never loses
//! data silently (`docs/design/transport-and-membership.md`, section 4).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Inner;
use super::peers::QuarantineReason;

/// Per-peer counters.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Payload bytes sent (messages, requests, responses, datagrams).
    pub bytes_sent: AtomicU64,
    /// Payload bytes received.
    pub bytes_received: AtomicU64,
    /// Frames written.
    pub frames_sent: AtomicU64,
    /// Frames read.
    pub frames_received: AtomicU64,
    /// Messages refused because this peer's queue was full.
    pub queue_full_drops: AtomicU64,
}

/// Transport-wide counters: plain atomics the daemon exports as metrics.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Frames written on any stream.
    pub frames_sent: AtomicU64,
    /// Frames read on any stream.
    pub frames_received: AtomicU64,
    /// Payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Payload bytes received.
    pub bytes_received: AtomicU64,
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Datagrams received.
    pub datagrams_received: AtomicU64,
    /// Datagrams dropped (pending buffer full, incoming queue full, bad tag).
    pub datagrams_dropped: AtomicU64,
    /// `send` calls refused with `QueueFull`.
    pub queue_full_drops: AtomicU64,
    /// Messages dropped after `MESSAGE_SEND_ATTEMPTS_MAX` failed writes.
    pub messages_dropped: AtomicU64,
    /// Handshakes that failed, either side (bad cert, revoked, timeout).
    pub handshake_failures: AtomicU64,
    /// Oversized or truncated frames received (peer closed + quarantined).
    pub frame_errors: AtomicU64,
    /// Frames not complete within `frame_read_deadline_ms` of their first
    /// byte (or, for a request, of its stream's opening); their streams
    /// were stopped.
    pub frame_read_deadlines: AtomicU64,
    /// Frames whose announced length did not fit the peer's
    /// `frame_bytes_in_flight_max`; their streams were stopped.
    pub frame_budget_refusals: AtomicU64,
    /// Quarantines imposed, by [`QuarantineReason::index`]; read with
    /// [`TransportStats::quarantines`].
    pub(super) quarantines: [AtomicU64; QuarantineReason::ALL.len()],
    /// Connections established, either side.
    pub connections_established: AtomicU64,
    /// Incoming events dropped because the application queue was full.
    pub incoming_dropped: AtomicU64,
    peers: Mutex<HashMap<String, Arc<PeerStats>>>,
}

/// A copy of one peer's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStatsSnapshot {
    /// See [`PeerStats::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`PeerStats::bytes_received`].
    pub bytes_received: u64,
    /// See [`PeerStats::frames_sent`].
    pub frames_sent: u64,
    /// See [`PeerStats::frames_received`].
    pub frames_received: u64,
    /// See [`PeerStats::queue_full_drops`].
    pub queue_full_drops: u64,
}

impl TransportStats {
    /// Quarantines imposed for `reason` so far.
    pub fn quarantines(&self, reason: QuarantineReason) -> u64 {
        self.quarantines[reason.index()].load(Ordering::Relaxed)
    }

    /// The counters of peer `name`, created on first use.
    pub fn peer(&self, name: &str) -> Arc<PeerStats> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.entry(name.to_owned()).or_default().clone()
    }

    /// A copy of every peer's counters.
    pub fn peers_snapshot(&self) -> BTreeMap<String, PeerStatsSnapshot> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    PeerStatsSnapshot {
                        bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
                        bytes_received: s.bytes_received.load(Ordering::Relaxed),
                        frames_sent: s.frames_sent.load(Ordering::Relaxed),
                        frames_received: s.frames_received.load(Ordering::Relaxed),
                        queue_full_drops: s.queue_full_drops.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl Inner {
    pub(super) fn count_sent(&self, peer: &PeerStats, len: usize) {
        bump(&self.stats.frames_sent);
        add(&self.stats.bytes_sent, len);
        bump(&peer.frames_sent);
        add(&peer.bytes_sent, len);
    }

    pub(super) fn count_received(&self, peer: &PeerStats, len: usize) {
        bump(&self.stats.frames_received);
        add(&self.stats.bytes_received, len);
        bump(&peer.frames_received);
        add(&peer.bytes_received, len);
    }
}
