//! The HTTP/JSON API (axum). Only this module knows JSON: it has its own
//! request and response types and never serializes core structs, so the wire
//! and disk formats can change without breaking clients (JSON is deliberately
//! absent from the core: `docs/ARCHITECTURE.md`, "Architecture invariants").
//! Routes and fields are documented in `docs/design/http-api.md`.
//!
//! * [`router`] — the one route table; every route that names a namespace
//!   first asks [`namespaces::resolve_mode`] which mode the namespace has,
//!   then hands the request to that mode's handler, which parses the body
//!   with its own request type.
//! * [`eventual`] — key, counter and set routes of eventual namespaces.
//! * [`strong`] — strong namespaces: keys, CAS, transactions, leases, locks,
//!   watch, `/v1/raft`.
//! * [`namespaces`] — the mode resolver and the namespace routes
//!   (list, get, create).
//! * [`status`] — `/health`, `/metrics`, `/v1/status`, `/v1/members`.
//! * [`limits`] — the request timeout, the in-flight and open-stream
//!   bounds: the layers [`router`] puts on request and streaming routes.
//! * [`auth`] — the table of what each route needs from a caller's token,
//!   the layer that checks it, and the token routes.
//! * [`error`] — [`ApiError`], the mapping of core and Raft errors to codes,
//!   and the body and query parsing helpers.

pub mod auth;
pub mod error;
pub mod eventual;
pub mod limits;
pub mod namespaces;
pub mod router;
pub mod session;
pub mod status;
pub mod strong;
pub mod watch;

pub use error::ApiError;
pub use limits::HttpLimits;
pub use namespaces::{EventualNames, Mode, resolve_mode};
pub use router::router;
pub use status::is_partitioned;

use crate::clock::ClockHandle;
use crate::runtime::NodeHandle;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_core::NodeId;
use chorus_net::Membership;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Keys one scan returns at most (the default is [`SCAN_LIMIT_DEFAULT`]).
pub const SCAN_LIMIT_MAX: usize = 1000;
pub const SCAN_LIMIT_DEFAULT: usize = 100;

/// Facts about this node that do not change while it runs.
#[derive(Debug)]
pub struct NodeInfo {
    pub name: String,
    pub node_id: NodeId,
    pub cluster_name: String,
    pub tier: u8,
    pub generation: u64,
    /// The bound HTTP address (the real port when configured as 0).
    pub api_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub value_bytes_max: usize,
    pub started: Instant,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub node: NodeHandle,
    pub membership: Membership,
    pub clock: Arc<ClockHandle>,
    pub info: Arc<NodeInfo>,
    pub metrics: Option<PrometheusHandle>,
    /// Strong namespaces (Raft); `None` when the cluster has no `strong_voters`.
    pub strong: Option<Arc<crate::strong::StrongService>>,
    /// Eventual namespaces the API has already found in the node, so that
    /// resolving a namespace's mode costs no round trip to the node task.
    pub eventual_names: EventualNames,
    /// Durable change batches for watch streams.
    pub watch_hub: Arc<crate::watch_hub::WatchHub>,
    /// `session_wait_ms`: how long a session read or a resumed watch waits
    /// for this node to catch up.
    pub session_wait: std::time::Duration,
    /// Client tokens: this node's table and whether auth is on.
    pub auth: Arc<crate::auth::Auth>,
}

/// A value as JSON: text when it is UTF-8 (else `null`), always also base64.
pub(crate) fn bytes_fields(out: &mut serde_json::Map<String, Value>, field: &str, bytes: &[u8]) {
    out.insert(field.to_string(), std::str::from_utf8(bytes).map_or(Value::Null, |t| Value::String(t.to_string())));
    out.insert(format!("{field}_base64"), Value::String(BASE64.encode(bytes)));
}

/// A list of values as two JSON arrays, `field` (text or `null`) and `field_base64`.
pub(crate) fn list_fields(out: &mut serde_json::Map<String, Value>, field: &str, items: &[Vec<u8>]) {
    let text: Vec<Value> =
        items.iter().map(|b| std::str::from_utf8(b).map_or(Value::Null, |t| Value::String(t.to_string()))).collect();
    let b64: Vec<Value> = items.iter().map(|b| Value::String(BASE64.encode(b))).collect();
    out.insert(field.to_string(), Value::Array(text));
    out.insert(format!("{field}_base64"), Value::Array(b64));
}
