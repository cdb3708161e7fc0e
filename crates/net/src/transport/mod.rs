//! QUIC transport between chorus nodes.
//!
//! One QUIC connection per peer, authenticated both ways by the cluster CA
//! (see `tls`). On it ride three kinds of traffic:
//!
//! - **messages**: one long-lived unidirectional stream per connection and
//!   direction, carrying length-prefixed frames in send order. Senders
//!   enqueue on a bounded per-peer queue and never block; one task per peer
//!   drains it, so a slow or dead peer only fills its own queue.
//! - **requests**: one bidirectional stream per request (one frame each
//!   way), always with a deadline.
//! - **datagrams**: QUIC unreliable datagrams (the QUIC datagram extension;
//!   see `docs/design/transport-and-membership.md`, "References"), one byte
//!   of channel tag then the payload; SWIM uses them.
//!
//! Delivery is at most once: frames in flight when a connection dies are
//! lost, and a message that failed [`MESSAGE_SEND_ATTEMPTS_MAX`] times is
//! dropped and counted. Anti-entropy above this layer repairs the gaps.
//!
//! The code is split by concern; this module holds the settings, the
//! addressing types and the public [`Transport`] handle, and the submodules
//! hold the rest (see `docs/design/transport-and-membership.md`):
//!
//! - `error`: one error enum per operation (bind, send, request, datagram,
//!   dial);
//! - `stats`: the counters the daemon exports as metrics;
//! - `peers`: the peer table, the connection slot of each peer with its
//!   duplicate tie-break, quarantine and the reconnect backoff;
//! - `connection`: the tasks that dial, accept, read and write connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rand::RngExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::ca::{NodeCredentials, RevocationList, cert_serial_hex};
use crate::frame::{self, FrameError, FrameLimits};
use crate::tls::{self, SharedRevocations};

mod connection;
mod error;
mod peers;
mod stats;

pub use error::{BindError, DatagramError, DialError, RequestError, SendError};
pub use peers::QuarantineReason;
pub use stats::{PeerStats, PeerStatsSnapshot, TransportStats};

use connection::accept_loop;
use peers::Peer;
use stats::{add, bump};

/// Default largest frame payload (16 MiB).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 16 * 1024 * 1024;
/// Default budget of announced frame bytes one peer may have in flight
/// (being read) at once, over all its streams and connections (128 MiB).
pub const FRAME_BYTES_IN_FLIGHT_MAX_DEFAULT: u32 = 128 * 1024 * 1024;
/// Default time a frame may take from its first header byte to its last
/// payload byte (a 64 MiB frame at 10 MB/s takes under 7 s).
pub const FRAME_READ_DEADLINE_MS_DEFAULT: u64 = 30_000;
/// Bytes a peer may have sent on one connection that quinn holds unread
/// (QUIC connection-level flow control). Without it quinn would buffer up
/// to the per-stream window on every stream a peer opens.
const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Largest datagram payload accepted by `send_datagram`. QUIC datagrams must
/// fit one packet; quinn starts at a 1200-byte MTU (the smallest datagram
/// size QUIC requires every path to carry; see
/// `docs/design/transport-and-membership.md`, "References") and the packet
/// and frame headers take up to ~60 bytes of it.
pub const DATAGRAM_PAYLOAD_BYTES_MAX: usize = 1100;
/// How many times one message is retried over fresh connections before it
/// is dropped (a peer that keeps rejecting it must not wedge the queue).
pub const MESSAGE_SEND_ATTEMPTS_MAX: u32 = 3;
/// Most peers tracked at once; each costs a task and a queue.
pub const PEERS_MAX: usize = 4096;
/// Most handshakes in progress at once on the accepting side; more are
/// refused so a connection flood cannot exhaust memory.
const HANDSHAKES_CONCURRENT_MAX: usize = 256;
/// Most concurrent unidirectional streams a peer may open to us.
const UNI_STREAMS_MAX: u32 = 8;
/// Two connections to the same peer established within this window are a
/// simultaneous dial: both sides keep the one dialed by the smaller name.
/// Outside it, the newer connection wins (the peer probably restarted).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2);
/// A connection that lost the duplicate tie-break stays open this long so
/// frames already written on it are delivered.
const DUPLICATE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// First quarantine of a misbehaving peer; doubles per offence.
const QUARANTINE_BASE: Duration = Duration::from_secs(1);
/// Longest quarantine. A peer that behaves for this long after its
/// quarantine ended starts again from [`QUARANTINE_BASE`].
const QUARANTINE_MAX: Duration = Duration::from_secs(300);
/// How long `shutdown` waits for connections to close.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// Datagram channel tags.
const DATAGRAM_CHANNEL_APP: u8 = 0;
const DATAGRAM_CHANNEL_MEMBERSHIP: u8 = 1;

/// QUIC application close / reset codes. A peer refused because it is
/// quarantined sees its connection closed with [`QUARANTINED_CLOSE_CODE`].
mod code {
    pub const SHUTDOWN: u32 = 0;
    pub const DUPLICATE: u32 = 1;
    pub const PROTOCOL_VIOLATION: u32 = 2;
    pub const QUARANTINED: u32 = super::QUARANTINED_CLOSE_CODE;
    pub const NAME_MISMATCH: u32 = 4;
    pub const NO_RESPONSE: u32 = 5;
    pub const REVOKED: u32 = 6;
    pub const FORGOTTEN: u32 = 7;
    /// A stream stopped because its frame missed its deadline or did not
    /// fit the peer's in-flight budget.
    pub const FRAME_REFUSED: u32 = 8;
    /// A request stream reset by its sender because the request was
    /// abandoned (its timeout) before its frame was written whole.
    pub const CANCELLED: u32 = 9;
}

/// A request's send stream that is **reset**, not finished, when dropped
/// before [`RequestStream::finish`]. quinn finishes a dropped stream, so a
/// request abandoned by its timeout in the middle of writing its frame
/// would end the stream inside the frame: to the peer that is a frame cut
/// short (`FrameError::Truncated`), a framing violation it quarantines us
/// for (`docs/design/transport-and-membership.md`, "Quarantine"). A reset
/// stream is an ordinary read error there.
struct RequestStream(Option<quinn::SendStream>);

impl RequestStream {
    async fn write_frame(&mut self, payload: Bytes) -> Result<(), RequestError> {
        if let Some(send) = self.0.as_mut() {
            send.write_all_chunks(&mut [frame::header(payload.len()), payload]).await?;
        }
        Ok(())
    }

    /// The frame is whole: end the stream normally.
    fn finish(mut self) {
        if let Some(mut send) = self.0.take() {
            // The stream may already be reset by the peer; the response
            // read reports that.
            let _ = send.finish();
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if let Some(mut send) = self.0.take() {
            let _ = send.reset(varint(code::CANCELLED));
        }
    }
}

/// The QUIC application close code of a connection closed or refused
/// because its peer is quarantined; the close reason starts with
/// `quarantined`.
pub const QUARANTINED_CLOSE_CODE: u32 = 3;

fn varint(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(code)
}

/// Transport settings. Every bound is here or a named constant above.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// UDP address to bind (port 0 picks an ephemeral port).
    pub bind_addr: SocketAddr,
    /// This node's name; must equal the DNS name in its certificate.
    pub node_name: String,
    /// Largest frame payload sent or accepted.
    pub frame_bytes_max: u32,
    /// Bound of each peer's outgoing message queue.
    pub per_peer_queue_max: usize,
    /// Bound of the channel of [`Incoming`] events to the application.
    pub incoming_queue_max: usize,
    /// Datagrams held per peer while its connection is being set up.
    pub pending_datagrams_max: usize,
    /// How long an incoming request waits for the application's response.
    pub request_timeout_ms: u64,
    /// Deadline of a QUIC + TLS handshake.
    pub connect_timeout_ms: u64,
    /// A connection with no traffic for this long is closed (QUIC's idle
    /// timeout; see `docs/design/transport-and-membership.md`, "References").
    pub idle_timeout_ms: u64,
    /// Keep-alive interval; must be well below `idle_timeout_ms`.
    pub keepalive_interval_ms: u64,
    /// First reconnect delay after a failed dial.
    pub reconnect_backoff_min_ms: u64,
    /// Cap of the exponentially growing reconnect delay.
    pub reconnect_backoff_max_ms: u64,
    /// Concurrent requests a peer may have open on one connection.
    pub concurrent_requests_max: u32,
    /// Announced frame bytes one peer may have in flight (being read) at
    /// once, over all its streams; at least `frame_bytes_max`. A frame that
    /// does not fit gets its stream stopped at once (counted).
    pub frame_bytes_in_flight_max: u32,
    /// Time a frame may take from its first header byte to its last payload
    /// byte; a request's frame counts from the stream's opening. A stalled
    /// sender's stream is stopped (counted).
    pub frame_read_deadline_ms: u64,
}

impl TransportConfig {
    /// LAN defaults for a node called `node_name` bound on `bind_addr`.
    pub fn new(node_name: impl Into<String>, bind_addr: SocketAddr) -> Self {
        TransportConfig {
            bind_addr,
            node_name: node_name.into(),
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            per_peer_queue_max: 1024,
            incoming_queue_max: 4096,
            pending_datagrams_max: 64,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
            idle_timeout_ms: 6_000,
            keepalive_interval_ms: 1_500,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 5_000,
            concurrent_requests_max: 256,
            frame_bytes_in_flight_max: FRAME_BYTES_IN_FLIGHT_MAX_DEFAULT,
            frame_read_deadline_ms: FRAME_READ_DEADLINE_MS_DEFAULT,
        }
    }

    fn validate(&self) -> Result<(), BindError> {
        let invalid = |what: &str| Err(BindError::InvalidConfig(what.to_owned()));
        if self.frame_bytes_max == 0 {
            return invalid("frame_bytes_max must be > 0");
        }
        if self.per_peer_queue_max == 0 || self.incoming_queue_max == 0 || self.pending_datagrams_max == 0 {
            return invalid("queue bounds must be > 0");
        }
        if self.keepalive_interval_ms == 0 || self.keepalive_interval_ms >= self.idle_timeout_ms {
            return invalid("keepalive_interval_ms must be in 1..idle_timeout_ms");
        }
        if self.reconnect_backoff_min_ms == 0 || self.reconnect_backoff_min_ms > self.reconnect_backoff_max_ms {
            return invalid("reconnect backoff must satisfy 0 < min <= max");
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 || self.frame_read_deadline_ms == 0 {
            return invalid("timeouts must be > 0");
        }
        if self.frame_bytes_in_flight_max < self.frame_bytes_max {
            return invalid("frame_bytes_in_flight_max must be at least frame_bytes_max");
        }
        Ok(())
    }
}

/// A peer to talk to: the name its certificate must carry, and where it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    /// Node name (DNS SAN of its certificate).
    pub name: String,
    /// Its transport's UDP address.
    pub addr: SocketAddr,
}

/// The authenticated sender of incoming traffic: `name` comes from its
/// verified certificate, `addr` from the connection.
pub type PeerId = PeerAddr;

/// Traffic from peers, delivered in arrival order per stream.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A message sent with [`Transport::send`].
    Message {
        /// Authenticated sender.
        from: PeerId,
        /// The frame payload.
        payload: Bytes,
    },
    /// A request sent with [`Transport::request`]. Answer through
    /// `respond` within `request_timeout_ms`; dropping it tells the
    /// requester there will be no answer.
    Request {
        /// Authenticated sender.
        from: PeerId,
        /// The request payload.
        payload: Bytes,
        /// Where the response goes.
        respond: oneshot::Sender<Bytes>,
    },
    /// A datagram sent with [`Transport::send_datagram`].
    Datagram {
        /// Authenticated sender.
        from: PeerId,
        /// The datagram payload.
        payload: Bytes,
    },
}

struct Inner {
    config: TransportConfig,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    seed_client_config: quinn::ClientConfig,
    revocations: SharedRevocations,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    incoming: mpsc::Sender<Incoming>,
    membership: Mutex<Option<mpsc::Sender<(PeerId, Bytes)>>>,
    quarantine: Mutex<HashMap<String, peers::Quarantine>>,
    stats: Arc<TransportStats>,
    shutdown: watch::Sender<bool>,
    /// Fault injection: outgoing datagrams dropped per 1000.
    datagram_loss_permille: AtomicU64,
}

/// A handle to the transport; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("node_name", &self.inner.config.node_name).finish_non_exhaustive()
    }
}

impl Inner {
    /// The bounds of reading one frame from `peer`.
    fn frame_limits(&self, peer: &Peer) -> FrameLimits {
        FrameLimits {
            frame_bytes_max: self.config.frame_bytes_max,
            deadline: Duration::from_millis(self.config.frame_read_deadline_ms),
            budget: peer.frame_budget.clone(),
            in_flight_max: self.config.frame_bytes_in_flight_max,
        }
    }
}

impl Transport {
    /// Binds the UDP socket and starts accepting connections. Must be
    /// called inside a tokio runtime. Returns the handle and the channel of
    /// incoming traffic (bounded by `incoming_queue_max`).
    pub fn bind(
        config: TransportConfig,
        creds: &NodeCredentials,
    ) -> Result<(Transport, mpsc::Receiver<Incoming>), BindError> {
        Self::bind_with_revocations(config, creds, RevocationList::default())
    }

    /// Like [`Transport::bind`] with an initial revocation list.
    pub fn bind_with_revocations(
        config: TransportConfig,
        creds: &NodeCredentials,
        revocations: RevocationList,
    ) -> Result<(Transport, mpsc::Receiver<Incoming>), BindError> {
        config.validate()?;
        let cert_name = creds.node_name()?;
        if cert_name != config.node_name {
            return Err(BindError::InvalidConfig(format!(
                "node_name {:?} differs from the certificate's name {cert_name:?}",
                config.node_name
            )));
        }
        let revocations: SharedRevocations = Arc::new(RwLock::new(revocations));

        let mut transport_config = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(config.idle_timeout_ms))
            .map_err(|_| BindError::InvalidConfig("idle_timeout_ms too large".into()))?;
        transport_config
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(Duration::from_millis(config.keepalive_interval_ms)))
            .max_concurrent_bidi_streams(config.concurrent_requests_max.into())
            .max_concurrent_uni_streams(UNI_STREAMS_MAX.into())
            .receive_window(CONNECTION_RECEIVE_WINDOW_BYTES.into());
        let transport_config = Arc::new(transport_config);

        let server_tls = tls::server_config(creds, revocations.clone())?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| BindError::InvalidConfig(format!("QUIC server TLS: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport_config.clone());

        let client_config = |any_name| -> Result<quinn::ClientConfig, BindError> {
            let tls = tls::client_config(creds, revocations.clone(), any_name)?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| BindError::InvalidConfig(format!("QUIC client TLS: {e}")))?;
            let mut client = quinn::ClientConfig::new(Arc::new(crypto));
            client.transport_config(transport_config.clone());
            Ok(client)
        };

        let endpoint = quinn::Endpoint::server(server_config, config.bind_addr)?;
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_queue_max);
        let inner = Arc::new(Inner {
            client_config: client_config(false)?,
            seed_client_config: client_config(true)?,
            config,
            endpoint,
            revocations,
            peers: Mutex::new(HashMap::new()),
            incoming: incoming_tx,
            membership: Mutex::new(None),
            quarantine: Mutex::new(HashMap::new()),
            stats: Arc::new(TransportStats::default()),
            shutdown: watch::Sender::new(false),
            datagram_loss_permille: AtomicU64::new(0),
        });
        tokio::spawn(accept_loop(inner.clone()));
        Ok((Transport { inner }, incoming_rx))
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.config.node_name
    }

    /// The bound UDP address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<TransportStats> {
        &self.inner.stats
    }

    /// Enqueues `payload` for `peer` without blocking. The connection is
    /// dialed lazily and reused; frames to one peer arrive in order unless a
    /// connection is lost in between (at-most-once delivery).
    pub fn send(&self, peer: &PeerAddr, payload: impl Into<Bytes>) -> Result<(), SendError> {
        let payload = payload.into();
        let max = self.inner.config.frame_bytes_max as usize;
        if payload.len() > max {
            return Err(SendError::TooLarge { len: payload.len(), max });
        }
        if self.is_shut_down() {
            return Err(SendError::Shutdown);
        }
        let peer = self.inner.peer(peer).map_err(|_| SendError::InvalidPeer(peer.name.clone()))?;
        match peer.queue.try_send(payload) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.inner.stats.queue_full_drops);
                bump(&peer.stats.queue_full_drops);
                Err(SendError::QueueFull(peer.name.clone()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Shutdown),
        }
    }

    /// Sends a request and waits for the response, at most `timeout`
    /// (which covers dialing, sending and the peer's processing).
    pub async fn request(
        &self,
        peer: &PeerAddr,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        let payload = payload.into();
        let max = self.inner.config.frame_bytes_max;
        if payload.len() > max as usize {
            return Err(RequestError::TooLarge { len: payload.len(), max: max as usize });
        }
        if self.is_shut_down() {
            return Err(RequestError::Shutdown);
        }
        let peer = self.inner.peer(peer).map_err(|_| RequestError::InvalidPeer(peer.name.clone()))?;
        let inner = self.inner.clone();
        let exchange = async move {
            let conn = inner.connection_for(&peer).await?;
            let (send, mut recv) = conn.open_bi().await?;
            let len = payload.len();
            let mut send = RequestStream(Some(send));
            send.write_frame(payload).await?;
            send.finish();
            inner.count_sent(&peer.stats, len);
            match frame::read_frame(&mut recv, &inner.frame_limits(&peer)).await {
                Ok(Some(response)) => {
                    inner.count_received(&peer.stats, response.payload.len());
                    Ok(response.payload)
                }
                Ok(None) | Err(FrameError::Read(quinn::ReadError::Reset(_))) => Err(RequestError::NoResponse),
                Err(e) => Err(RequestError::Frame(e)),
            }
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| RequestError::Timeout)?
    }

    /// Sends an unreliable datagram. If no connection exists yet, the
    /// datagram is held (up to `pending_datagrams_max`, oldest dropped
    /// first) and sent once the connection is up.
    pub fn send_datagram(&self, peer: &PeerAddr, payload: &[u8]) -> Result<(), DatagramError> {
        self.send_tagged_datagram(DATAGRAM_CHANNEL_APP, peer, payload)
    }

    pub(crate) fn send_membership_datagram(&self, peer: &PeerAddr, payload: &[u8]) -> Result<(), DatagramError> {
        self.send_tagged_datagram(DATAGRAM_CHANNEL_MEMBERSHIP, peer, payload)
    }

    /// Routes membership datagrams to `tx` instead of the application.
    pub(crate) fn set_membership_sink(&self, tx: Option<mpsc::Sender<(PeerId, Bytes)>>) {
        *self.inner.membership.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    fn send_tagged_datagram(&self, channel: u8, peer: &PeerAddr, payload: &[u8]) -> Result<(), DatagramError> {
        if payload.len() > DATAGRAM_PAYLOAD_BYTES_MAX {
            return Err(DatagramError::TooLarge { len: payload.len(), max: DATAGRAM_PAYLOAD_BYTES_MAX });
        }
        if self.is_shut_down() {
            return Err(DatagramError::Shutdown);
        }
        let peer = self.inner.peer(peer).map_err(|_| DatagramError::InvalidPeer(peer.name.clone()))?;
        let loss = self.inner.datagram_loss_permille.load(Ordering::Relaxed);
        if loss > 0 && rand::rng().random_range(0..1000u64) < loss {
            bump(&self.inner.stats.datagrams_dropped);
            return Ok(());
        }
        let mut data = Vec::with_capacity(payload.len() + 1);
        data.push(channel);
        data.extend_from_slice(payload);
        let data = Bytes::from(data);
        if let Some(conn) = peer.live() {
            let path_max = conn.max_datagram_size().unwrap_or(0);
            if data.len() > path_max {
                return Err(DatagramError::TooLarge { len: payload.len(), max: path_max.saturating_sub(1) });
            }
            conn.send_datagram(data)?;
            bump(&self.inner.stats.datagrams_sent);
            add(&peer.stats.bytes_sent, payload.len());
            return Ok(());
        }
        let mut pending = peer.pending_datagrams.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= self.inner.config.pending_datagrams_max {
            pending.pop_front();
            bump(&self.inner.stats.datagrams_dropped);
        }
        pending.push_back(data);
        drop(pending);
        peer.demand.notify_one();
        Ok(())
    }

    /// Dials `addr` accepting any unrevoked certificate signed by the
    /// cluster CA, and returns the name it proved. Used to join through a
    /// seed known only by address; the connection is kept for later use.
    pub async fn identify(&self, addr: SocketAddr) -> Result<PeerAddr, DialError> {
        if self.is_shut_down() {
            return Err(DialError::Shutdown);
        }
        let conn = self.inner.dial(None, addr).await?;
        let Some(name) = tls::peer_node_name(&conn) else {
            conn.close(varint(code::NAME_MISMATCH), b"no name");
            return Err(DialError::Handshake(quinn::ConnectionError::LocallyClosed));
        };
        if name == self.inner.config.node_name {
            conn.close(varint(code::NAME_MISMATCH), b"self");
            return Err(DialError::SelfDial);
        }
        let peer_addr = PeerAddr { name, addr };
        let peer = self.inner.peer(&peer_addr).map_err(|_| DialError::SelfDial)?;
        self.inner.register(&peer, conn, true);
        Ok(peer_addr)
    }

    /// Fault injection for tests and chaos drills: drop this fraction (per
    /// 1000, capped at 1000) of outgoing datagrams, as a lossy network would.
    pub fn set_datagram_loss_permille(&self, permille: u32) {
        self.inner.datagram_loss_permille.store(u64::from(permille.min(1000)), Ordering::Relaxed);
    }

    /// Whether a live connection to `name` exists right now.
    pub fn is_connected(&self, name: &str) -> bool {
        self.inner.peers.lock().unwrap_or_else(|e| e.into_inner()).get(name).is_some_and(|p| p.live().is_some())
    }

    /// Disconnects peer `name` and refuses it, on accept and on dial, for a
    /// period that doubles with each offence, from 1 s up to 300 s; counted
    /// per reason ([`TransportStats::quarantines`]). Returns the period.
    /// Use it when the peer proved itself broken or hostile: framing
    /// violations (the transport calls it itself), bad checksums,
    /// undecodable messages, forged dots
    /// (`docs/design/transport-and-membership.md`, "Quarantine").
    pub fn quarantine(&self, name: &str, reason: QuarantineReason) -> Duration {
        self.inner.quarantine(name, reason)
    }

    /// Whether peer `name` is quarantined right now.
    pub fn is_quarantined(&self, name: &str) -> bool {
        self.inner.quarantined(name)
    }

    /// Drops everything about peer `name`: its queue, connection and task.
    /// Use when membership declares it gone for good.
    pub fn forget_peer(&self, name: &str) {
        let peer = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        if let Some(peer) = peer {
            peer.stop.send_replace(true);
            if let Some(conn) = peer.live() {
                conn.close(varint(code::FORGOTTEN), b"forgotten");
            }
        }
    }

    /// Replaces the revocation list; connections to newly revoked peers are
    /// closed at once, and their future handshakes fail.
    pub fn set_revocations(&self, list: RevocationList) {
        *self.inner.revocations.write().unwrap_or_else(|e| e.into_inner()) = list.clone();
        let peers: Vec<Arc<Peer>> =
            self.inner.peers.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for peer in peers {
            let Some(conn) = peer.live() else { continue };
            let serial = peer_serial_hex(&conn).unwrap_or_default();
            if list.is_revoked(&peer.name, &serial) {
                conn.close(varint(code::REVOKED), b"revoked");
            }
        }
    }

    /// Closes every connection and stops all tasks, waiting briefly for the
    /// close to reach peers. Later calls fail with `Shutdown`.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let peers: Vec<Arc<Peer>> =
            self.inner.peers.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, p)| p).collect();
        for peer in peers {
            peer.stop.send_replace(true);
        }
        self.inner.endpoint.close(varint(code::SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(SHUTDOWN_DRAIN, self.inner.endpoint.wait_idle()).await;
    }

    fn is_shut_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }
}

fn peer_serial_hex(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok()?;
    cert_serial_hex(certs.first()?).ok()
}
