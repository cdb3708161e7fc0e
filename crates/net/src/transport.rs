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
//! - **datagrams**: QUIC unreliable datagrams (RFC 9221), one byte of
//!   channel tag then the payload; SWIM uses them.
//!
//! Delivery is at most once: frames in flight when a connection dies are
//! lost, and a message that failed [`MESSAGE_SEND_ATTEMPTS_MAX`] times is
//! dropped and counted. Anti-entropy above this layer repairs the gaps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngExt;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::ca::{CaError, NodeCredentials, RevocationList, cert_serial_hex, validate_node_name};
use crate::frame::{self, FrameError};
use crate::tls::{self, SharedRevocations, TlsError};

/// Default largest frame payload (16 MiB).
pub const MAX_FRAME_BYTES_DEFAULT: u32 = 16 * 1024 * 1024;
/// Largest datagram payload accepted by `send_datagram`. QUIC datagrams must
/// fit one packet; quinn starts at a 1200-byte MTU (RFC 9000 §14) and the
/// packet and frame headers take up to ~60 bytes of it.
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
/// Longest quarantine.
const QUARANTINE_MAX: Duration = Duration::from_secs(300);
/// How long `shutdown` waits for connections to close.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// Datagram channel tags.
const DATAGRAM_CHANNEL_APP: u8 = 0;
const DATAGRAM_CHANNEL_MEMBERSHIP: u8 = 1;

/// QUIC application close / reset codes.
mod code {
    pub const SHUTDOWN: u32 = 0;
    pub const DUPLICATE: u32 = 1;
    pub const PROTOCOL_VIOLATION: u32 = 2;
    pub const QUARANTINED: u32 = 3;
    pub const NAME_MISMATCH: u32 = 4;
    pub const NO_RESPONSE: u32 = 5;
    pub const REVOKED: u32 = 6;
    pub const FORGOTTEN: u32 = 7;
}

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
    pub max_frame_bytes: u32,
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
    /// A connection with no traffic for this long is closed (RFC 9000 §10.1).
    pub idle_timeout_ms: u64,
    /// Keep-alive interval; must be well below `idle_timeout_ms`.
    pub keepalive_interval_ms: u64,
    /// First reconnect delay after a failed dial.
    pub reconnect_backoff_min_ms: u64,
    /// Cap of the exponentially growing reconnect delay.
    pub reconnect_backoff_max_ms: u64,
    /// Concurrent requests a peer may have open on one connection.
    pub concurrent_requests_max: u32,
}

impl TransportConfig {
    /// LAN defaults for a node called `node_name` bound on `bind_addr`.
    pub fn new(node_name: impl Into<String>, bind_addr: SocketAddr) -> Self {
        TransportConfig {
            bind_addr,
            node_name: node_name.into(),
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
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
        }
    }

    fn validate(&self) -> Result<(), BindError> {
        let invalid = |what: &str| Err(BindError::InvalidConfig(what.to_owned()));
        if self.max_frame_bytes == 0 {
            return invalid("max_frame_bytes must be > 0");
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
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return invalid("timeouts must be > 0");
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

/// Why `bind` failed. Nothing is left running on failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A configuration value is out of range.
    #[error("invalid transport config: {0}")]
    InvalidConfig(String),
    /// The credentials do not parse or do not name this node.
    #[error("credentials: {0}")]
    Credentials(#[from] CaError),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The socket could not be bound.
    #[error("bind: {0}")]
    Io(#[from] std::io::Error),
}

/// Why `send` failed. The message was not enqueued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The peer's queue is full (it is slow or unreachable); counted.
    #[error("queue to peer {0} is full")]
    QueueFull(String),
    /// The payload exceeds `max_frame_bytes`.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer name is invalid, is this node, or too many peers exist.
    #[error("invalid peer {0}")]
    InvalidPeer(String),
    /// The transport was shut down.
    #[error("transport is shut down")]
    Shutdown,
}

/// Why `request` failed. The request may or may not have been processed
/// by the peer, except for `TooLarge`, `InvalidPeer`, `Unreachable` and
/// `Shutdown`, which were not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The payload exceeds `max_frame_bytes`.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer name is invalid or is this node.
    #[error("invalid peer {0}")]
    InvalidPeer(String),
    /// No connection could be made (dial failed or backing off).
    #[error("peer {0} is unreachable")]
    Unreachable(String),
    /// The deadline passed.
    #[error("request timed out")]
    Timeout,
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing the request failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading the response failed or it was malformed.
    #[error("response: {0}")]
    Frame(#[from] FrameError),
    /// The peer dropped the request without answering.
    #[error("peer gave no response")]
    NoResponse,
    /// The transport was shut down.
    #[error("transport is shut down")]
    Shutdown,
}

/// Why `send_datagram` failed. Nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// Larger than [`DATAGRAM_PAYLOAD_BYTES_MAX`] or the path allows.
    #[error("datagram of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer name is invalid or is this node.
    #[error("invalid peer {0}")]
    InvalidPeer(String),
    /// quinn refused the datagram.
    #[error("send: {0}")]
    Send(#[from] quinn::SendDatagramError),
    /// The transport was shut down.
    #[error("transport is shut down")]
    Shutdown,
}

/// Why dialing failed (also used by [`Transport::identify`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// quinn refused to start the connection.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed (bad certificate, refused, lost).
    #[error("handshake: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    /// The handshake did not finish within `connect_timeout_ms`.
    #[error("handshake timed out")]
    Timeout,
    /// The certificate names someone other than the peer dialed.
    #[error("expected peer {expected} but its certificate says {actual}")]
    NameMismatch {
        /// The name dialed.
        expected: String,
        /// The name in the certificate.
        actual: String,
    },
    /// The address belongs to this very node.
    #[error("dialed ourselves")]
    SelfDial,
    /// The peer is quarantined for misbehaving.
    #[error("peer {0} is quarantined")]
    Quarantined(String),
    /// The transport was shut down.
    #[error("transport is shut down")]
    Shutdown,
}

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

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// The connection currently used for a peer.
#[derive(Clone)]
struct Slot {
    conn: quinn::Connection,
    since: Instant,
    dialed_by_us: bool,
}

/// What request waiters watch: the slot, and a counter of failed dials so
/// they can give up early instead of waiting for their deadline.
#[derive(Clone, Default)]
struct ConnState {
    slot: Option<Slot>,
    dial_failures: u64,
}

impl ConnState {
    fn live(&self) -> Option<quinn::Connection> {
        self.slot.as_ref().filter(|s| s.conn.close_reason().is_none()).map(|s| s.conn.clone())
    }
}

struct Peer {
    name: String,
    addr: Mutex<SocketAddr>,
    queue: mpsc::Sender<Bytes>,
    state: watch::Sender<ConnState>,
    pending_datagrams: Mutex<VecDeque<Bytes>>,
    /// Wakes the driver when a datagram or request needs a connection.
    demand: tokio::sync::Notify,
    waiters: AtomicUsize,
    /// Dialing is not attempted for request waiters before this instant.
    backoff_until: Mutex<Option<Instant>>,
    stop: watch::Sender<bool>,
    stats: Arc<PeerStats>,
}

impl Peer {
    fn addr(&self) -> SocketAddr {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> Option<quinn::Connection> {
        self.state.borrow().live()
    }

    fn wants_connection(&self) -> bool {
        let pending = !self.pending_datagrams.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        (pending || self.waiters.load(Ordering::Acquire) > 0) && self.live().is_none()
    }
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
    quarantine: Mutex<HashMap<String, (Instant, u32)>>,
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
            .max_concurrent_uni_streams(UNI_STREAMS_MAX.into());
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
        let max = self.inner.config.max_frame_bytes as usize;
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
        let max = self.inner.config.max_frame_bytes;
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
            let (mut send, mut recv) = conn.open_bi().await?;
            let len = payload.len();
            send.write_all_chunks(&mut [frame::header(len), payload]).await?;
            // The stream may already be reset by the peer; the read below
            // reports that.
            let _ = send.finish();
            inner.count_sent(&peer.stats, len);
            match frame::read_frame(&mut recv, max).await {
                Ok(Some(response)) => {
                    inner.count_received(&peer.stats, response.len());
                    Ok(response)
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

/// The "equal jitter" backoff of Brooker, "Exponential Backoff And Jitter"
/// (AWS Architecture Blog, 2015): half the exponential delay is fixed, half
/// random, so retries spread out without ever retrying immediately.
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(config: &TransportConfig) -> Self {
        Backoff {
            min: Duration::from_millis(config.reconnect_backoff_min_ms),
            max: Duration::from_millis(config.reconnect_backoff_max_ms),
            attempt: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Inner {
    fn count_sent(&self, peer: &PeerStats, len: usize) {
        bump(&self.stats.frames_sent);
        add(&self.stats.bytes_sent, len);
        bump(&peer.frames_sent);
        add(&peer.bytes_sent, len);
    }

    fn count_received(&self, peer: &PeerStats, len: usize) {
        bump(&self.stats.frames_received);
        add(&self.stats.bytes_received, len);
        bump(&peer.frames_received);
        add(&peer.bytes_received, len);
    }

    /// The peer entry for `addr.name`, created (with its driver task) on
    /// first use; a changed address is recorded for the next dial.
    fn peer(self: &Arc<Self>, addr: &PeerAddr) -> Result<Arc<Peer>, ()> {
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
        });
        peers.insert(addr.name.clone(), peer.clone());
        drop(peers);
        tokio::spawn(peer_driver(self.clone(), peer.clone(), queue_rx));
        Ok(peer)
    }

    fn quarantined(&self, name: &str) -> bool {
        let quarantine = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        quarantine.get(name).is_some_and(|(until, _)| Instant::now() < *until)
    }

    /// Quarantines a misbehaving peer for a period that doubles per offence
    /// (SPEC §8) and closes its connection.
    fn punish(&self, name: &str, conn: &quinn::Connection, reason: &FrameError) {
        bump(&self.stats.frame_errors);
        let mut quarantine = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        let entry = quarantine.entry(name.to_owned()).or_insert((Instant::now(), 0));
        let period = QUARANTINE_BASE.saturating_mul(1u32 << entry.1.min(16)).min(QUARANTINE_MAX);
        entry.0 = Instant::now() + period;
        entry.1 = entry.1.saturating_add(1);
        drop(quarantine);
        warn!(peer = name, error = %reason, quarantine_ms = period.as_millis() as u64,
            "peer broke the framing protocol; closing and quarantining");
        conn.close(varint(code::PROTOCOL_VIOLATION), b"protocol violation");
    }

    /// Dials `addr`. With `expected` the server must prove that name; with
    /// `None` any CA-signed name is accepted (seed dialing).
    async fn dial(&self, expected: Option<&str>, addr: SocketAddr) -> Result<quinn::Connection, DialError> {
        if let Some(name) = expected
            && self.quarantined(name)
        {
            return Err(DialError::Quarantined(name.to_owned()));
        }
        let (config, server_name) = match expected {
            Some(name) => (self.client_config.clone(), name),
            None => (self.seed_client_config.clone(), "seed.chorus.invalid"),
        };
        let connecting = self.endpoint.connect_with(config, addr, server_name)?;
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                bump(&self.stats.handshake_failures);
                return Err(DialError::Handshake(e));
            }
            Err(_) => {
                bump(&self.stats.handshake_failures);
                return Err(DialError::Timeout);
            }
        };
        if let Some(expected) = expected {
            // The verifier already matched the name against the SNI; this
            // re-check guards against a verifier misconfiguration.
            let actual = tls::peer_node_name(&conn).unwrap_or_default();
            if actual != expected {
                conn.close(varint(code::NAME_MISMATCH), b"name mismatch");
                return Err(DialError::NameMismatch { expected: expected.to_owned(), actual });
            }
        }
        bump(&self.stats.connections_established);
        Ok(conn)
    }

    /// Makes `conn` the peer's connection unless a better one exists, and
    /// starts serving it either way (the peer may use it until it closes).
    fn register(self: &Arc<Self>, peer: &Arc<Peer>, conn: quinn::Connection, dialed_by_us: bool) {
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
    async fn connection_for(&self, peer: &Arc<Peer>) -> Result<quinn::Connection, RequestError> {
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

    async fn deliver(&self, event: Incoming) {
        // Waiting here applies back-pressure to this one stream through
        // QUIC flow control; the bound is `incoming_queue_max`.
        if self.incoming.send(event).await.is_err() {
            bump(&self.stats.incoming_dropped);
        }
    }
}

/// Owns one peer's outgoing queue: dials on demand with backoff, writes
/// queued messages on a long-lived unidirectional stream, flushes held
/// datagrams once connected.
async fn peer_driver(inner: Arc<Inner>, peer: Arc<Peer>, mut queue: mpsc::Receiver<Bytes>) {
    let mut stop = peer.stop.subscribe();
    let mut backoff = Backoff::new(&inner.config);
    let mut held: Option<(Bytes, u32)> = None;
    let mut stream: Option<(usize, quinn::SendStream)> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if held.is_none() && !peer.wants_connection() {
            tokio::select! {
                message = queue.recv() => match message {
                    Some(message) => held = Some((message, 0)),
                    None => return,
                },
                _ = peer.demand.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }

        let conn = match peer.live() {
            Some(conn) => conn,
            None => match inner.dial(Some(&peer.name), peer.addr()).await {
                Ok(conn) => {
                    backoff.reset();
                    inner.register(&peer, conn.clone(), true);
                    // register may have kept an existing connection instead.
                    peer.live().unwrap_or(conn)
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    debug!(peer = %peer.name, error = %e, delay_ms = delay.as_millis() as u64, "dial failed");
                    *peer.backoff_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + delay);
                    peer.state.send_modify(|s| s.dial_failures += 1);
                    if matches!(e, DialError::NameMismatch { .. } | DialError::Quarantined(_)) {
                        // Retrying the message would hit the same wall.
                        if held.take().is_some() {
                            bump(&inner.stats.messages_dropped);
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            },
        };

        let pending: Vec<Bytes> = peer.pending_datagrams.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for datagram in pending {
            let len = datagram.len().saturating_sub(1);
            if conn.send_datagram(datagram).is_ok() {
                bump(&inner.stats.datagrams_sent);
                add(&peer.stats.bytes_sent, len);
            } else {
                bump(&inner.stats.datagrams_dropped);
            }
        }

        let Some((message, attempts)) = held.take() else {
            continue;
        };
        match write_message(&conn, &mut stream, &message).await {
            Ok(()) => inner.count_sent(&peer.stats, message.len()),
            Err(e) => {
                stream = None;
                let attempts = attempts + 1;
                debug!(peer = %peer.name, error = %e, attempts, "message write failed");
                // Force a fresh connection next time around.
                conn.close(varint(code::SHUTDOWN), b"write failed");
                if attempts >= MESSAGE_SEND_ATTEMPTS_MAX {
                    bump(&inner.stats.messages_dropped);
                } else {
                    held = Some((message, attempts));
                }
            }
        }
    }
}

async fn write_message(
    conn: &quinn::Connection,
    stream: &mut Option<(usize, quinn::SendStream)>,
    message: &Bytes,
) -> Result<(), RequestError> {
    if stream.as_ref().map(|(id, _)| *id) != Some(conn.stable_id()) {
        if let Some((_, mut old)) = stream.take() {
            let _ = old.finish();
        }
        *stream = Some((conn.stable_id(), conn.open_uni().await?));
    }
    if let Some((_, send)) = stream.as_mut() {
        send.write_all_chunks(&mut [frame::header(message.len()), message.clone()]).await?;
    }
    Ok(())
}

async fn accept_loop(inner: Arc<Inner>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_CONCURRENT_MAX));
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            bump(&inner.stats.handshake_failures);
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            accept_one(inner, incoming).await;
        });
    }
}

async fn accept_one(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let timeout = Duration::from_millis(inner.config.connect_timeout_ms);
    let conn = match incoming.accept() {
        Ok(connecting) => match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                bump(&inner.stats.handshake_failures);
                debug!(error = %e, "incoming handshake failed");
                return;
            }
            Err(_) => {
                bump(&inner.stats.handshake_failures);
                return;
            }
        },
        Err(e) => {
            bump(&inner.stats.handshake_failures);
            debug!(error = %e, "incoming connection refused");
            return;
        }
    };
    let Some(name) = tls::peer_node_name(&conn) else {
        bump(&inner.stats.handshake_failures);
        conn.close(varint(code::NAME_MISMATCH), b"no name");
        return;
    };
    if inner.quarantined(&name) {
        conn.close(varint(code::QUARANTINED), b"quarantined");
        return;
    }
    let addr = PeerAddr { name, addr: conn.remote_address() };
    let Ok(peer) = inner.peer(&addr) else {
        conn.close(varint(code::NAME_MISMATCH), b"refused");
        return;
    };
    bump(&inner.stats.connections_established);
    inner.register(&peer, conn, false);
}

/// Reads everything the peer opens on `conn` until it closes.
async fn serve_connection(inner: Arc<Inner>, peer: Arc<Peer>, conn: quinn::Connection) {
    let from = PeerId { name: peer.name.clone(), addr: conn.remote_address() };
    let mut stop = peer.stop.subscribe();
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(read_messages(inner.clone(), peer.clone(), conn.clone(), from.clone(), recv));
                }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(answer_request(inner.clone(), peer.clone(), conn.clone(), from.clone(), send, recv));
                }
                Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(datagram) => inner.receive_datagram(&peer, &from, datagram),
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => {
                conn.close(varint(code::FORGOTTEN), b"forgotten");
                break;
            }
        }
    }
    // Clear the slot if it still holds this (now dead) connection.
    peer.state.send_if_modified(|state| {
        if state.slot.as_ref().is_some_and(|s| s.conn.stable_id() == conn.stable_id()) {
            state.slot = None;
            true
        } else {
            false
        }
    });
}

impl Inner {
    fn receive_datagram(&self, peer: &Peer, from: &PeerId, datagram: Bytes) {
        bump(&self.stats.datagrams_received);
        let Some((&channel, _)) = datagram.split_first() else {
            bump(&self.stats.datagrams_dropped);
            return;
        };
        let payload = datagram.slice(1..);
        add(&peer.stats.bytes_received, payload.len());
        match channel {
            DATAGRAM_CHANNEL_APP => {
                let event = Incoming::Datagram { from: from.clone(), payload };
                if self.incoming.try_send(event).is_err() {
                    bump(&self.stats.datagrams_dropped);
                }
            }
            DATAGRAM_CHANNEL_MEMBERSHIP => {
                let sink = self.membership.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let delivered = sink.is_some_and(|tx| tx.try_send((from.clone(), payload)).is_ok());
                if !delivered {
                    bump(&self.stats.datagrams_dropped);
                }
            }
            _ => bump(&self.stats.datagrams_dropped),
        }
    }
}

async fn read_messages(
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    conn: quinn::Connection,
    from: PeerId,
    mut recv: quinn::RecvStream,
) {
    loop {
        match frame::read_frame(&mut recv, inner.config.max_frame_bytes).await {
            Ok(Some(payload)) => {
                inner.count_received(&peer.stats, payload.len());
                inner.deliver(Incoming::Message { from: from.clone(), payload }).await;
            }
            Ok(None) => return,
            Err(e) if e.is_protocol_violation() => {
                inner.punish(&peer.name, &conn, &e);
                return;
            }
            Err(e) => {
                debug!(peer = %peer.name, error = %e, "message stream ended");
                return;
            }
        }
    }
}

async fn answer_request(
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    conn: quinn::Connection,
    from: PeerId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let payload = match frame::read_frame(&mut recv, inner.config.max_frame_bytes).await {
        Ok(Some(payload)) => payload,
        Ok(None) => return,
        Err(e) if e.is_protocol_violation() => {
            inner.punish(&peer.name, &conn, &e);
            return;
        }
        Err(_) => return,
    };
    inner.count_received(&peer.stats, payload.len());
    let (respond, response) = oneshot::channel();
    inner.deliver(Incoming::Request { from, payload, respond }).await;
    let timeout = Duration::from_millis(inner.config.request_timeout_ms);
    match tokio::time::timeout(timeout, response).await {
        Ok(Ok(response)) if response.len() <= inner.config.max_frame_bytes as usize => {
            let len = response.len();
            if send.write_all_chunks(&mut [frame::header(len), response]).await.is_ok() {
                inner.count_sent(&peer.stats, len);
                let _ = send.finish();
            }
        }
        Ok(Ok(response)) => {
            warn!(peer = %peer.name, len = response.len(), "response exceeds max_frame_bytes; not sent");
            let _ = send.reset(varint(code::NO_RESPONSE));
        }
        _ => {
            let _ = send.reset(varint(code::NO_RESPONSE));
        }
    }
}
