//! Why transport operations fail: one error enum per operation (bind, send,
//! request, datagram, dial), so a caller matches only the cases its call can
//! produce. Where it matters, an enum's doc says what a failure leaves
//! behind: nothing enqueued, nothing sent, or a request the peer may have
//! processed. They live apart from the transport so the `Transport` API
//! reads without them; the failure cases they report are listed in
//! `docs/design/transport-and-membership.md`, section 6.

use crate::ca::CaError;
use crate::frame::FrameError;
use crate::tls::TlsError;

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
    /// The payload exceeds `frame_bytes_max`.
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
    /// The payload exceeds `frame_bytes_max`.
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
    /// Larger than [`DATAGRAM_PAYLOAD_BYTES_MAX`](super::DATAGRAM_PAYLOAD_BYTES_MAX) or the path allows.
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

/// Why dialing failed (also used by [`Transport::identify`](super::Transport::identify)).
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
