//! The peer table: one entry per peer with its bounded outgoing queue, the
//! slot of its current connection and its held datagrams; the quarantine of
//! misbehaving peers; and the reconnect backoff a peer's driver uses.
//! Keeping this state apart from the tasks that move bytes makes the rules
//! about which connection a peer uses (the duplicate tie-break of a
//! simultaneous dial) readable in one place; see
//! `docs/design/transport-and-membership.md`, section 2 (duplicates,
//! reconnect backoff) and section 3 (quarantine).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, warn};

use super::connection::{peer_driver, serve_connection};
use super::stats::{PeerStats, bump};
use super::{
    DUPLICATE_CLOSE_GRACE, DUPLICATE_WINDOW, Inner, PEERS_MAX, PeerAddr, QUARANTINE_BASE, QUARANTINE_MAX, RequestError,
    TransportConfig, code, varint,
};
use crate::ca::validate_node_name;
use crate::frame::FrameError;

/// The connection currently used for a peer.
#[derive(Clone)]
pub(super) struct Slot {
    pub(super) conn: quinn::Connection,
    since: Instant,
    dialed_by_us: bool,
}

/// What request waiters watch: the slot, and a counter of failed dials so
/// they can give up early instead of waiting for their deadline.
#[derive(Clone, Default)]
pub(super) struct ConnState {
    pub(super) slot: Option<Slot>,
    pub(super) dial_failures: u64,
}

impl ConnState {
    pub(super) fn live(&self) -> Option<quinn::Connection> {
        self.slot.as_ref().filter(|s| s.conn.close_reason().is_none()).map(|s| s.conn.clone())
    }
}

pub(super) struct Peer {
    pub(super) name: String,
    addr: Mutex<SocketAddr>,
    pub(super) queue: mpsc::Sender<Bytes>,
    pub(super) state: watch::Sender<ConnState>,
    pub(super) pending_datagrams: Mutex<VecDeque<Bytes>>,
    /// Wakes the driver when a datagram or request needs a connection.
    pub(super) demand: tokio::sync::Notify,
    waiters: AtomicUsize,
    /// Dialing is not attempted for request waiters before this instant.
    pub(super) backoff_until: Mutex<Option<Instant>>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) stats: Arc<PeerStats>,
    /// Announced bytes of the frames being read from this peer, over all
    /// its streams and connections, are held from here
    /// (`frame_bytes_in_flight_max` permits).
    pub(super) frame_budget: Arc<Semaphore>,
}

/// Why a peer is quarantined. Each reason has its own counter
/// ([`TransportStats::quarantines`](super::TransportStats::quarantines))
/// and metric label ([`as_str`](Self::as_str)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuarantineReason {
    /// An oversized or truncated frame (found by the transport itself).
    Framing,
    /// A message whose checksum does not match its body.
    BadChecksum,
    /// A message that does not decode or breaks the protocol's limits.
    Undecodable,
    /// Entries or seen sets claiming writes of ours we never issued.
    ForgedDots,
    /// Data its origin did not sign, or seen claims no signature backs.
    BadSignature,
}

impl QuarantineReason {
    /// Every reason, in counter order.
    pub const ALL: [QuarantineReason; 5] = [
        QuarantineReason::Framing,
        QuarantineReason::BadChecksum,
        QuarantineReason::Undecodable,
        QuarantineReason::ForgedDots,
        QuarantineReason::BadSignature,
    ];

    /// The metric label: `framing`, `bad_checksum`, `undecodable`,
    /// `forged_dots`, `bad_signature`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::Framing => "framing",
            QuarantineReason::BadChecksum => "bad_checksum",
            QuarantineReason::Undecodable => "undecodable",
            QuarantineReason::ForgedDots => "forged_dots",
            QuarantineReason::BadSignature => "bad_signature",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            QuarantineReason::Framing => 0,
            QuarantineReason::BadChecksum => 1,
            QuarantineReason::Undecodable => 2,
            QuarantineReason::ForgedDots => 3,
            QuarantineReason::BadSignature => 4,
        }
    }
}

impl std::fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quarantined (or formerly quarantined) peer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quarantine {
    /// Refused until this instant.
    until: Instant,
    /// Offences so far; the next period is `QUARANTINE_BASE * 2^offences`.
    offences: u32,
}

impl Peer {
    pub(super) fn addr(&self) -> SocketAddr {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn live(&self) -> Option<quinn::Connection> {
        self.state.borrow().live()
    }

    pub(super) fn wants_connection(&self) -> bool {
        let pending = !self.pending_datagrams.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        (pending || self.waiters.load(Ordering::Acquire) > 0) && self.live().is_none()
    }
}

/// The "equal jitter" backoff (see `docs/design/transport-and-membership.md`,
/// "References"): half the exponential delay is fixed, half random, so
/// retries spread out without ever retrying immediately.
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(super) fn new(config: &TransportConfig) -> Self {
        Backoff {
            min: Duration::from_millis(config.reconnect_backoff_min_ms),
            max: Duration::from_millis(config.reconnect_backoff_max_ms),
            attempt: 0,
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Inner {
    /// The peer entry for `addr.name`, created (with its driver task) on
    /// first use; a changed address is recorded for the next dial.
    pub(super) fn peer(self: &Arc<Self>, addr: &PeerAddr) -> Result<Arc<Peer>, ()> {
        if addr.name == self.config.node_name || validate_node_name(&addr.name).is_err() {
            return Err(());
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peers.get(&addr.name) {
            let mut current = peer.addr.lock().unwrap_or_else(|e| e.into_inner());
            if *current != addr.addr {
                *current = addr.addr;
            }
            return Ok(peer.clone());
        }
        if peers.len() >= PEERS_MAX || *self.shutdown.borrow() {
            return Err(());
        }
        let (queue_tx, queue_rx) = mpsc::channel(self.config.per_peer_queue_max);
        let peer = Arc::new(Peer {
            name: addr.name.clone(),
            addr: Mutex::new(addr.addr),
            queue: queue_tx,
            state: watch::Sender::new(ConnState::default()),
            pending_datagrams: Mutex::new(VecDeque::new()),
            demand: tokio::sync::Notify::new(),
            waiters: AtomicUsize::new(0),
            backoff_until: Mutex::new(None),
            stop: watch::Sender::new(false),
            stats: self.stats.peer(&addr.name),
            frame_budget: Arc::new(Semaphore::new(self.config.frame_bytes_in_flight_max as usize)),
        });
        peers.insert(addr.name.clone(), peer.clone());
        drop(peers);
        tokio::spawn(peer_driver(self.clone(), peer.clone(), queue_rx));
        Ok(peer)
    }

    pub(super) fn quarantined(&self, name: &str) -> bool {
        let quarantine = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        quarantine.get(name).is_some_and(|q| Instant::now() < q.until)
    }

    /// Quarantines `name` for a period that doubles per offence (capped at
    /// `QUARANTINE_MAX`), counts it, and closes the peer's connection
    /// (`docs/design/transport-and-membership.md`, "Quarantine").
    pub(super) fn quarantine(&self, name: &str, reason: QuarantineReason) -> Duration {
        let now = Instant::now();
        let mut quarantine = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        if !quarantine.contains_key(name) && quarantine.len() >= PEERS_MAX {
            // Forget the peers whose quarantine ended first; the table
            // stays bounded even under a crowd of misbehaving names.
            quarantine.retain(|_, q| now < q.until);
            if quarantine.len() >= PEERS_MAX
                && let Some(first) = quarantine.iter().min_by_key(|(_, q)| q.until).map(|(n, _)| n.clone())
            {
                quarantine.remove(&first);
            }
        }
        let entry = quarantine.entry(name.to_owned()).or_insert(Quarantine { until: now, offences: 0 });
        if now > entry.until + QUARANTINE_MAX {
            // Behaved for a whole maximum period since the last one ended.
            entry.offences = 0;
        }
        let period = QUARANTINE_BASE.saturating_mul(1u32 << entry.offences.min(16)).min(QUARANTINE_MAX);
        entry.until = entry.until.max(now + period);
        entry.offences = entry.offences.saturating_add(1);
        drop(quarantine);
        bump(&self.stats.quarantines[reason.index()]);
        warn!(peer = name, %reason, quarantine_ms = period.as_millis() as u64, "peer misbehaved; disconnecting and quarantining it");
        let peer = self.peers.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        if let Some(conn) = peer.and_then(|p| p.live()) {
            let why = format!("quarantined: {reason}");
            conn.close(varint(code::QUARANTINED), why.as_bytes());
        }
        period
    }

    /// A framing violation on `conn`: closes it as a protocol violation and
    /// quarantines the peer.
    pub(super) fn punish(&self, name: &str, conn: &quinn::Connection, error: &FrameError) {
        bump(&self.stats.frame_errors);
        debug!(peer = name, %error, "peer broke the framing protocol");
        conn.close(varint(code::PROTOCOL_VIOLATION), b"protocol violation");
        self.quarantine(name, QuarantineReason::Framing);
    }

    /// Makes `conn` the peer's connection unless a better one exists, and
    /// starts serving it either way (the peer may use it until it closes).
    pub(super) fn register(self: &Arc<Self>, peer: &Arc<Peer>, conn: quinn::Connection, dialed_by_us: bool) {
        let now = Instant::now();
        let new = Slot { conn: conn.clone(), since: now, dialed_by_us };
        // In a simultaneous dial both sides must keep the same connection:
        // the one dialed by the lexicographically smaller name.
        let we_are_smaller = self.config.node_name < peer.name;
        let preferred = |slot: &Slot| slot.dialed_by_us == we_are_smaller;
        let mut loser = None;
        peer.state.send_modify(|state| match &state.slot {
            Some(existing)
                if existing.conn.close_reason().is_none() && existing.conn.stable_id() != conn.stable_id() =>
            {
                let simultaneous = now.duration_since(existing.since) < DUPLICATE_WINDOW;
                let keep_new = !simultaneous || (preferred(&new) && !preferred(existing));
                if keep_new {
                    loser = Some(existing.conn.clone());
                    state.slot = Some(new.clone());
                } else {
                    loser = Some(conn.clone());
                }
            }
            _ => state.slot = Some(new.clone()),
        });
        if let Some(loser) = loser {
            debug!(peer = %peer.name, "duplicate connection; closing the loser after a grace period");
            tokio::spawn(async move {
                tokio::time::sleep(DUPLICATE_CLOSE_GRACE).await;
                loser.close(varint(code::DUPLICATE), b"duplicate");
            });
        }
        peer.backoff_until.lock().unwrap_or_else(|e| e.into_inner()).take();
        tokio::spawn(serve_connection(self.clone(), peer.clone(), conn));
    }

    /// A live connection to `peer`, asking its driver to dial if needed.
    /// Fails fast while the peer is in reconnect backoff.
    pub(super) async fn connection_for(&self, peer: &Arc<Peer>) -> Result<quinn::Connection, RequestError> {
        if let Some(conn) = peer.live() {
            return Ok(conn);
        }
        let backing_off =
            peer.backoff_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|until| Instant::now() < until);
        if backing_off {
            return Err(RequestError::Unreachable(peer.name.clone()));
        }
        let mut rx = peer.state.subscribe();
        let failures_before = rx.borrow().dial_failures;
        peer.waiters.fetch_add(1, Ordering::AcqRel);
        struct Waiter<'a>(&'a AtomicUsize);
        impl Drop for Waiter<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiter = Waiter(&peer.waiters);
        peer.demand.notify_one();
        let mut shutdown = self.shutdown.subscribe();
        loop {
            {
                let state = rx.borrow_and_update();
                if let Some(conn) = state.live() {
                    return Ok(conn);
                }
                if state.dial_failures != failures_before {
                    return Err(RequestError::Unreachable(peer.name.clone()));
                }
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return Err(RequestError::Shutdown);
                },
                _ = shutdown.wait_for(|s| *s) => return Err(RequestError::Shutdown),
            }
        }
    }
}
