//! chorus-net: the I/O layer between chorus nodes.
//!
//! - [`ca`]: the cluster CA, node certificates, revocation.
//! - [`tls`]: rustls configurations for mutual TLS (ring provider only).
//! - [`transport`]: QUIC connections, framed messages, requests, datagrams.
//! - [`membership`]: SWIM membership (foca) over the transport's datagrams.
//!
//! Payloads are opaque bytes here; the protocol core never sees a socket.
//! See `docs/design/transport-and-membership.md`.

pub mod ca;
pub mod frame;
pub mod membership;
pub mod tls;
pub mod transport;

pub use ca::{
    CaError, ClusterCa, NodeCredentials, REVOCATIONS_FILE, RevocationList, SignedRevocations, SigningCard,
    SigningCredentials, load_revocations, load_signed_revocations, save_revocations, verify_revocations,
    verify_signing_card,
};
pub use membership::{
    MemberInfo, MemberState, Membership, MembershipConfig, MembershipError, MembershipEvent, NodeIdentity,
};
pub use transport::{
    BindError, DatagramError, DialError, Incoming, PeerAddr, PeerId, QUARANTINED_CLOSE_CODE, QuarantineReason,
    RequestError, SendError, Transport, TransportConfig, TransportStats,
};
