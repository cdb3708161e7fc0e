//! The HTTP/JSON API (axum). Only this module knows JSON: it has its own
//! request and response types and never serializes core structs
//! (STYLE §5). Routes and fields are documented in `docs/design/http-api.md`.

use crate::clock::ClockHandle;
use crate::runtime::{CallError, NodeHandle};
use crate::strong_api;
use crate::telemetry;
use crate::token;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_core::node::NamespaceError;
use chorus_core::{LocalWrite, Node, NodeId, Op, ReadValue, ValueType, WriteError, WriteReceipt};
use chorus_net::{MemberState, Membership};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
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
}

/// The router with every route of the API.
pub fn router(state: ApiState) -> Router {
    // Base64 inflates values by 4/3 and JSON escaping can double text; the
    // extra 64 KiB covers keys, contexts and field names.
    let body_max = state.info.value_bytes_max.saturating_mul(2).saturating_add(64 << 10);
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/status", get(status))
        .route("/v1/members", get(members))
        .route("/v1/ns", get(list_namespaces).post(create_namespace))
        .route("/v1/ns/{ns}", get(get_namespace))
        .route("/v1/ns/{ns}/scan", get(scan))
        .route("/v1/ns/{ns}/kv/{*key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/ns/{ns}/counter/{*key}", get(get_key).post(increment))
        .route("/v1/ns/{ns}/set/{*key}", get(get_key).post(set_op))
        .route("/v1/ns/{ns}/cas/{*key}", post(strong_api::cas))
        .route("/v1/ns/{ns}/txn", post(strong_api::txn))
        .route(
            "/v1/ns/{ns}/lock/{*name}",
            get(strong_api::lock_get).post(strong_api::lock_acquire).delete(strong_api::lock_release),
        )
        .route("/v1/ns/{ns}/watch", get(strong_api::watch))
        .route("/v1/leases", post(strong_api::lease_grant))
        .route("/v1/leases/{id}", get(strong_api::lease_get).delete(strong_api::lease_revoke))
        .route("/v1/leases/{id}/keepalive", post(strong_api::lease_keepalive))
        .route("/v1/raft", get(strong_api::raft_status))
        .route("/v1/raft/voters", post(strong_api::add_voter))
        .route("/v1/raft/voters/{name}", delete(strong_api::remove_voter))
        .fallback(not_found_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(state)
}

/// An API error: an HTTP status and `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Extra fields of the error object (e.g. the voters of `no_quorum`).
    details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Adds the fields of `details` (an object) to the error object.
    pub(crate) fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        if let Some(Value::Object(extra)) = self.details {
            body.extend(extra);
        }
        body.insert("error".into(), Value::String(self.code.to_string()));
        body.insert("message".into(), Value::String(self.message));
        (self.status, Json(Value::Object(body))).into_response()
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let code = match e {
            CallError::Timeout => "timeout",
            CallError::Stopped => "stopping",
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
    }
}

fn write_error(e: WriteError) -> ApiError {
    let message = e.to_string();
    match e {
        WriteError::NoSuchNamespace(_) => ApiError::new(StatusCode::NOT_FOUND, "no_such_namespace", message),
        WriteError::KeyTooLarge { .. } => ApiError::bad_request("key_too_large", message),
        WriteError::ValueTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", message),
        WriteError::Op(chorus_core::crdt::OpError::WrongType { .. }) => ApiError::bad_request("wrong_type", message),
        WriteError::Op(_) => ApiError::new(StatusCode::CONFLICT, "operation_refused", message),
        WriteError::Clock(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "clock_unsafe", message),
        WriteError::DotsExhausted => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "dots_exhausted", message),
        // The node stopped before taking the write: nothing changed.
        WriteError::Halted(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", message),
        // The write's batch failed: it may or may not survive.
        WriteError::PersistFailed(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "write_refused", message),
    }
}

async fn not_found_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route; see docs/design/http-api.md")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
}

pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError::new(e.status(), "bad_body", e.body_text()))?;
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("bad_json", e.to_string()))
}

pub(crate) fn parse_query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
}

/// Bytes given either as UTF-8 text or as standard base64 (exactly one).
pub(crate) fn text_or_base64(text: Option<String>, b64: Option<String>, field: &str) -> Result<Vec<u8>, ApiError> {
    match (text, b64) {
        (Some(t), None) => Ok(t.into_bytes()),
        (None, Some(b)) => BASE64
            .decode(b.as_bytes())
            .map_err(|_| ApiError::bad_request("bad_base64", format!("`{field}_base64` is not standard base64"))),
        (Some(_), Some(_)) => {
            Err(ApiError::bad_request("bad_request", format!("give `{field}` or `{field}_base64`, not both")))
        }
        (None, None) => Err(ApiError::bad_request("bad_request", format!("missing `{field}` (or `{field}_base64`)"))),
    }
}

fn parse_context(token: Option<&str>) -> Result<Option<chorus_core::VersionVector>, ApiError> {
    token.map(|t| token::decode(t).map_err(|e| ApiError::bad_request("bad_context", e.to_string()))).transpose()
}

// ---------------------------------------------------------------- health

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    score: f64,
    reasons: Vec<String>,
    members_known: usize,
    members_reachable: usize,
    clock: HealthClock,
    /// Strong namespaces; absent when the cluster has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    strong: Option<HealthStrong>,
}

#[derive(Serialize)]
struct HealthStrong {
    /// Raft role: leader, follower, candidate, learner.
    state: String,
    leader: Option<String>,
    has_quorum: bool,
    voters: Vec<String>,
    reachable_voters: Vec<String>,
}

#[derive(Serialize)]
struct HealthClock {
    safe: bool,
    /// Measured cluster time minus the local OS clock, µs.
    offset_us: i64,
    max_offset_us: u64,
    peers_used: usize,
    reason: String,
}

/// Health from the clock service and the membership view:
/// `clock_unsafe` when the local clock is further than `max_offset_ms`
/// from cluster time (writes are refused; the reason names the offset),
/// else `no_quorum` when this node cannot reach a majority of the strong
/// namespaces' voters (its strong writes fail), else `partitioned` when
/// this node reaches fewer than half of the known members (itself
/// included, SPEC §5), `degraded` when any member is suspect or down.
fn health_of(s: &ApiState) -> HealthBody {
    let (membership, clock) = (&s.membership, &s.clock);
    let strong = s.strong.as_ref().map(|svc| {
        let status = svc.node.status();
        HealthStrong {
            state: status.state.clone(),
            leader: status.leader.map(|id| svc.name_of(id)),
            has_quorum: status.quorum.has_quorum,
            voters: svc.names_of(&status.quorum.voters),
            reachable_voters: svc.names_of(&status.quorum.reachable_voters),
        }
    });
    // A group not yet initialised has no voters: nothing to lose yet.
    let no_quorum = strong.as_ref().filter(|st| !st.voters.is_empty() && !st.has_quorum);
    let others = membership.members();
    let known = others.len() + 1;
    let reachable = 1 + others.iter().filter(|m| m.state == MemberState::Alive).count();
    let mut reasons: Vec<String> = others
        .iter()
        .filter(|m| m.state != MemberState::Alive)
        .map(|m| format!("member {} is {}", m.name, member_state(m.state)))
        .collect();
    let clock_status = clock.status();
    let mut score = reachable as f64 / known as f64;
    let status = if !clock_status.safe {
        reasons.insert(0, format!("clock_unsafe: {}", clock_status.reason));
        score = 0.0;
        "clock_unsafe"
    } else if let Some(st) = no_quorum {
        reasons.insert(
            0,
            format!("no_quorum: reachable voters {:?} of {:?}; strong writes fail", st.reachable_voters, st.voters),
        );
        score = 0.0;
        "no_quorum"
    } else if reachable * 2 < known {
        reasons.insert(0, format!("only {reachable} of {known} known members are reachable"));
        "partitioned"
    } else if reachable < known {
        "degraded"
    } else {
        "ok"
    };
    HealthBody {
        status,
        score,
        reasons,
        members_known: known,
        members_reachable: reachable,
        clock: HealthClock {
            safe: clock_status.safe,
            offset_us: clock_status.offset_us,
            max_offset_us: clock_status.max_offset_us,
            peers_used: clock_status.peers_used,
            reason: clock_status.reason,
        },
        strong,
    }
}

/// Fewer than half of the known members reachable (SPEC §5).
pub fn is_partitioned(membership: &Membership) -> bool {
    let others = membership.members();
    let reachable = 1 + others.iter().filter(|m| m.state == MemberState::Alive).count();
    reachable * 2 < others.len() + 1
}

async fn health(State(s): State<ApiState>) -> Json<HealthBody> {
    Json(health_of(&s))
}

async fn metrics_text(State(s): State<ApiState>) -> Response {
    match &s.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder owns this process",
        )
        .into_response(),
    }
}

fn member_state(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
    }
}

#[derive(Serialize)]
struct MemberBody {
    name: String,
    node_id: String,
    addr: String,
    state: &'static str,
    generation: u64,
    tier: u8,
}

async fn members(State(s): State<ApiState>) -> Json<Value> {
    let me = MemberBody {
        name: s.info.name.clone(),
        node_id: s.info.node_id.to_string(),
        addr: s.info.peer_addr.to_string(),
        state: "alive",
        generation: s.info.generation,
        tier: s.info.tier,
    };
    let others: Vec<MemberBody> = s
        .membership
        .members()
        .into_iter()
        .map(|m| MemberBody {
            node_id: NodeId::from_name(&m.name).to_string(),
            name: m.name,
            addr: m.addr.to_string(),
            state: member_state(m.state),
            generation: m.generation,
            tier: m.tier,
        })
        .collect();
    Json(json!({ "self": me, "members": others }))
}

#[derive(Serialize)]
struct NamespaceBody {
    name: String,
    mode: &'static str,
    #[serde(rename = "type")]
    value_type: &'static str,
    keys: usize,
}

fn namespace_body(ns: &chorus_core::namespace::Namespace) -> NamespaceBody {
    NamespaceBody {
        name: ns.name().to_string(),
        mode: "eventual",
        value_type: ns.value_type().as_str(),
        keys: ns.len().saturating_sub(ns.tombstone_count()),
    }
}

async fn status(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let (mut namespaces, stats, hlc) = s
        .node
        .inspect(|node: &Node| {
            let ns: Vec<NamespaceBody> = node.namespaces().map(namespace_body).collect();
            (ns, node.stats().clone(), node.hlc_high_water())
        })
        .await?;
    namespaces.extend(strong_namespace_bodies(&s));
    let health = health_of(&s);
    let clock = clock_json(&s);
    let others = s.membership.members();
    let count = |st: MemberState| others.iter().filter(|m| m.state == st).count();
    Ok(Json(json!({
        "name": s.info.name,
        "node_id": s.info.node_id.to_string(),
        "cluster_name": s.info.cluster_name,
        "tier": s.info.tier,
        "generation": s.info.generation,
        "api_addr": s.info.api_addr.to_string(),
        "peer_addr": s.info.peer_addr.to_string(),
        "uptime_s": s.info.started.elapsed().as_secs(),
        "health": health,
        "members": { "alive": count(MemberState::Alive), "suspect": count(MemberState::Suspect), "down": count(MemberState::Down) },
        "namespaces": namespaces,
        "hlc": { "physical_us": hlc.physical_us, "logical": hlc.logical },
        "clock": clock,
        "strong": strong_api::status_json(&s),
        "stats": {
            "local_writes": stats.local_writes,
            "push_messages_sent": stats.push_messages_sent,
            "push_items_received": stats.push_items_received,
            "push_duplicates": stats.push_duplicates,
            "sync_rounds_started": stats.sync_rounds_started,
            "sync_entries_repaired": stats.sync_entries_repaired,
            "lww_overwrites": stats.lww_overwrites,
            "rejected_clock": stats.rejected_clock,
            "rejected_forged": stats.rejected_forged,
            "rejected_tier": stats.rejected_tier,
            "rejected_type": stats.rejected_type,
            "tombstones_collected": stats.tombstones_collected,
        },
    })))
}

/// The `clock` object of `/v1/status` (see `docs/design/clock.md`,
/// "Daemon integration"). Offsets are µs; peer offsets are (peer clock −
/// our OS clock), ours is (cluster time − our OS clock).
fn clock_json(s: &ApiState) -> Value {
    let snap = s.clock.snapshot();
    let names: std::collections::HashMap<u64, String> =
        s.membership.members().into_iter().map(|m| (NodeId::from_name(&m.name).0, m.name)).collect();
    let peers: Vec<Value> = snap
        .peers
        .iter()
        .map(|p| {
            json!({
                "name": names.get(&p.peer.0).cloned().unwrap_or_else(|| NodeId(p.peer.0).to_string()),
                "tier": p.tier,
                "offset_us": p.offset_us,
                "offset_predicted_60s_us": p.offset_predicted_60s_us,
                "delay_us": p.delay_us,
                "error_bound_us": p.error_bound_us,
                "drift_ppm": p.drift_ppm,
                "drift_exceeds_tolerance": p.drift_exceeds_tolerance,
                "falseticker": p.falseticker,
                "excluded": p.excluded,
                "stale": p.stale,
                "samples": p.samples_in_window,
                "drift_points": p.drift_points,
                "sample_age_us": p.sample_age_us,
            })
        })
        .collect();
    let st = &snap.status;
    let state = if !st.safe {
        "unsafe"
    } else if st.peers_used == 0 {
        "unchecked"
    } else {
        "ok"
    };
    let c = &snap.counters;
    json!({
        "state": state,
        "safe": st.safe,
        "reason": st.reason,
        "offset_us": st.offset_us,
        "corrected_offset_us": st.corrected_offset_us,
        "max_offset_us": st.max_offset_us,
        "peers_used": st.peers_used,
        "drift_ppm": snap.estimate.as_ref().and_then(|e| e.drift_ppm),
        "drift_alarm": st.drift_alarm,
        "correction": {
            "correction_us": snap.correction.correction_us,
            "target_us": snap.correction.target_us,
            "rate_ppm": snap.correction.rate_ppm,
            "slew_rate_max_ppm": snap.correction.slew_rate_max_ppm,
        },
        "samples": {
            "accepted": c.samples_accepted,
            "rejected_tier": c.samples_rejected_tier,
            "rejected_invalid": c.samples_rejected_invalid,
            "rejected_peer_limit": c.samples_rejected_peer_limit,
            "held_as_spike": c.samples_held_as_spike,
        },
        "peers": peers,
    })
}

// ------------------------------------------------------------ namespaces

async fn list_namespaces(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let mut list: Vec<NamespaceBody> =
        s.node.inspect(|node: &Node| node.namespaces().map(namespace_body).collect()).await?;
    list.extend(strong_namespace_bodies(&s));
    Ok(Json(json!({ "namespaces": list })))
}

/// Strong namespaces as this node's replica knows them.
fn strong_namespace_bodies(s: &ApiState) -> Vec<NamespaceBody> {
    let Some(svc) = &s.strong else { return Vec::new() };
    svc.namespaces()
        .into_iter()
        .map(|(name, keys)| NamespaceBody { name, mode: "strong", value_type: "lww", keys: keys as usize })
        .collect()
}

async fn get_namespace(State(s): State<ApiState>, Path(ns): Path<String>) -> Result<Json<NamespaceBody>, ApiError> {
    let name = ns.clone();
    let found = s.node.inspect(move |node: &Node| node.namespace(&name).map(namespace_body)).await?;
    if let Some(body) = found {
        return Ok(Json(body));
    }
    strong_namespace_bodies(&s).into_iter().find(|b| b.name == ns).map(Json).ok_or_else(|| no_such_namespace(&ns))
}

fn no_such_namespace(ns: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_such_namespace", format!("namespace {ns:?} does not exist"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateNamespaceRequest {
    name: String,
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(rename = "type", default = "default_type")]
    value_type: String,
}

fn default_mode() -> String {
    "eventual".into()
}

fn default_type() -> String {
    "lww".into()
}

async fn create_namespace(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NamespaceBody>), ApiError> {
    let req: CreateNamespaceRequest = parse_body(body)?;
    let value_type = ValueType::parse(&req.value_type).ok_or_else(|| {
        ApiError::bad_request("bad_type", format!("unknown type {:?}: use lww, mv, counter or set", req.value_type))
    })?;
    match req.mode.as_str() {
        "eventual" => {
            if let Some(svc) = &s.strong
                && svc.is_strong_linearizable(&req.name).await.unwrap_or(false)
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "mode_conflict",
                    format!("{:?} already exists as a strong namespace", req.name),
                ));
            }
        }
        "strong" => return create_strong_namespace(&s, req.name, value_type).await,
        other => {
            return Err(ApiError::bad_request("bad_mode", format!("unknown mode {other:?}: use eventual or strong")));
        }
    }
    match s.node.create_namespace(req.name.clone(), value_type).await? {
        Ok(outcome) if !outcome.unconfirmed.is_empty() => Err(unconfirmed_error(&s, &req.name, &outcome.unconfirmed)),
        Ok(_) => Ok((
            StatusCode::CREATED,
            Json(NamespaceBody { name: req.name, mode: "eventual", value_type: value_type.as_str(), keys: 0 }),
        )),
        Err(e @ NamespaceError::TypeConflict { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "type_conflict", e.to_string()))
        }
        Err(e @ NamespaceError::InvalidName(_)) => Err(ApiError::bad_request("bad_namespace_name", e.to_string())),
        Err(e) => Err(ApiError::bad_request("namespace_refused", e.to_string())),
    }
}

/// 504: the namespace was created here (and wherever the announcement
/// reached), but these live members did not confirm within
/// `namespace_confirm_timeout_ms`.
fn unconfirmed_error(s: &ApiState, name: &str, unconfirmed: &[NodeId]) -> ApiError {
    let names: std::collections::HashMap<NodeId, String> =
        s.membership.members().into_iter().map(|m| (NodeId::from_name(&m.name), m.name)).collect();
    let missing: Vec<String> =
        unconfirmed.iter().map(|id| names.get(id).cloned().unwrap_or_else(|| id.to_string())).collect();
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!("namespace {name:?} was created on this node, but members {missing:?} did not confirm it in time"),
    )
    .with_details(json!({ "unconfirmed": missing }))
}

async fn create_strong_namespace(
    s: &ApiState,
    name: String,
    value_type: ValueType,
) -> Result<(StatusCode, Json<NamespaceBody>), ApiError> {
    let svc = strong_api::service(s)?;
    if value_type != ValueType::Lww {
        return Err(ApiError::bad_request(
            "bad_type",
            "strong namespaces hold plain values with revisions: use type lww (the default)",
        ));
    }
    if !chorus_core::node::valid_namespace_name(&name) {
        return Err(ApiError::bad_request(
            "bad_namespace_name",
            format!("invalid namespace name {name:?}: 1-128 of [A-Za-z0-9_.-]"),
        ));
    }
    let name2 = name.clone();
    if s.node.inspect(move |node: &Node| node.namespace(&name2).is_some()).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "mode_conflict",
            format!("{name:?} already exists as an eventual namespace"),
        ));
    }
    let created = svc.create_namespace(&name).await.map_err(|e| strong_api::strong_error(svc, e))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(NamespaceBody { name, mode: "strong", value_type: "lww", keys: 0 })))
}

// ------------------------------------------------------------------ reads

/// A value as JSON: text when it is UTF-8, always also base64.
pub(crate) fn bytes_fields(out: &mut serde_json::Map<String, Value>, field: &str, bytes: &[u8]) {
    out.insert(field.to_string(), std::str::from_utf8(bytes).map_or(Value::Null, |t| Value::String(t.to_string())));
    out.insert(format!("{field}_base64"), Value::String(BASE64.encode(bytes)));
}

fn list_fields(out: &mut serde_json::Map<String, Value>, field: &str, items: &[Vec<u8>]) {
    let text: Vec<Value> =
        items.iter().map(|b| std::str::from_utf8(b).map_or(Value::Null, |t| Value::String(t.to_string()))).collect();
    let b64: Vec<Value> = items.iter().map(|b| Value::String(BASE64.encode(b))).collect();
    out.insert(field.to_string(), Value::Array(text));
    out.insert(format!("{field}_base64"), Value::Array(b64));
}

/// The JSON of one read: `type`, the value fields of that type, `context`.
fn read_json(key: &[u8], value: &ReadValue, context: &chorus_core::VersionVector) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("key".into(), Value::String(String::from_utf8_lossy(key).into_owned()));
    match value {
        ReadValue::Lww(v) => {
            out.insert("type".into(), "lww".into());
            match v {
                Some(v) => bytes_fields(&mut out, "value", v),
                None => {
                    out.insert("value".into(), Value::Null);
                }
            }
        }
        ReadValue::Mv(vs) => {
            out.insert("type".into(), "mv".into());
            list_fields(&mut out, "values", vs);
        }
        ReadValue::Counter(n) => {
            out.insert("type".into(), "counter".into());
            out.insert("value".into(), Value::from(*n));
        }
        ReadValue::Set(ms) => {
            out.insert("type".into(), "set".into());
            list_fields(&mut out, "members", ms);
        }
    }
    out.insert("context".into(), Value::String(token::encode(context)));
    Value::Object(out)
}

async fn get_key(
    State(s): State<ApiState>,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<strong_api::ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    if let Some(svc) = strong_api::strong_namespace(&s, &ns) {
        return strong_api::get(&svc, &ns, &key, q).await;
    }
    let (ns2, key2) = (ns.clone(), key.clone());
    let found = s
        .node
        .inspect(move |node: &Node| {
            if node.namespace(&ns2).is_none() {
                return Err(());
            }
            Ok(node.get(&ns2, key2.as_bytes()).map(|r| read_json(key2.as_bytes(), &r.value, &r.context)))
        })
        .await?;
    match found {
        Err(()) => match strong_after_miss(&s, &ns).await {
            Some(svc) => strong_api::get(&svc, &ns, &key, q).await,
            None => {
                telemetry::read_answered("no_namespace");
                Err(no_such_namespace(&ns))
            }
        },
        Ok(None) => {
            telemetry::read_answered("not_found");
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("key {key:?} not found in namespace {ns:?}")))
        }
        Ok(Some(mut v)) => {
            telemetry::read_answered("ok");
            if let Value::Object(o) = &mut v {
                o.insert("namespace".into(), Value::String(ns));
            }
            Ok(Json(v).into_response())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
    /// Strong namespaces: serve from this node's replica.
    #[serde(default)]
    stale: bool,
}

async fn scan(
    State(s): State<ApiState>,
    Path(ns): Path<String>,
    q: Result<Query<ScanQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    let limit = q.limit.unwrap_or(SCAN_LIMIT_DEFAULT);
    if limit == 0 || limit > SCAN_LIMIT_MAX {
        return Err(ApiError::bad_request("bad_limit", format!("limit must be in 1..={SCAN_LIMIT_MAX}")));
    }
    if let Some(svc) = strong_api::strong_namespace(&s, &ns) {
        return strong_api::scan(&svc, &ns, &q.prefix, q.after.as_deref(), limit, q.stale).await;
    }
    let ns2 = ns.clone();
    let (prefix, after, stale) = (q.prefix.clone(), q.after.clone(), q.stale);
    let page = s
        .node
        .inspect(move |node: &Node| {
            let namespace = node.namespace(&ns2)?;
            let mut items = Vec::new();
            let mut last: Option<Vec<u8>> = None;
            // Tombstones are skipped but still count towards the page, so
            // one page's work stays bounded by `limit`.
            for (k, e) in namespace.scan(q.prefix.as_bytes(), q.after.as_deref().map(str::as_bytes), limit) {
                last = Some(k.clone());
                if !e.is_tombstone() {
                    items.push(read_json(k, &e.read(), e.clock()));
                }
            }
            let next = if last.is_some() && namespace.scan(q.prefix.as_bytes(), last.as_deref(), 1).next().is_some() {
                last.map(|k| String::from_utf8_lossy(&k).into_owned())
            } else {
                None
            };
            Some((items, next))
        })
        .await?;
    let Some((items, next)) = page else {
        return match strong_after_miss(&s, &ns).await {
            Some(svc) => strong_api::scan(&svc, &ns, &prefix, after.as_deref(), limit, stale).await,
            None => Err(no_such_namespace(&ns)),
        };
    };
    telemetry::read_answered("ok");
    Ok(Json(json!({ "namespace": ns, "items": items, "next": next })).into_response())
}

// ----------------------------------------------------------------- writes

#[derive(Serialize)]
struct WriteBody {
    namespace: String,
    key: String,
    dot: DotBody,
    timestamp: TimestampBody,
    context: String,
}

#[derive(Serialize)]
struct DotBody {
    node: String,
    counter: u64,
}

#[derive(Serialize)]
struct TimestampBody {
    physical_us: u64,
    logical: u32,
    node: String,
}

async fn do_write(s: &ApiState, ns: String, key: String, op: Op) -> Result<Json<WriteBody>, ApiError> {
    let started = Instant::now();
    let op_name = op.name();
    if !s.clock.is_safe() {
        // SPEC §6: a node whose clock is too far from cluster time must not
        // stamp new writes with it.
        telemetry::write_answered(op_name, "clock_unsafe", started.elapsed().as_secs_f64());
        let status = s.clock.status();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "clock_unsafe",
            format!("write refused: {}", status.reason),
        ));
    }
    let write = LocalWrite { namespace: ns.clone(), key: key.clone().into_bytes(), op };
    let result = s.node.write(write).await;
    let elapsed = started.elapsed().as_secs_f64();
    let receipt: WriteReceipt = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            telemetry::write_answered(op_name, "refused", elapsed);
            return Err(write_error(e));
        }
        Err(e) => {
            telemetry::write_answered(op_name, "unavailable", elapsed);
            return Err(e.into());
        }
    };
    telemetry::write_answered(op_name, "ok", elapsed);
    Ok(Json(WriteBody {
        namespace: ns,
        key,
        dot: DotBody { node: receipt.dot.node.to_string(), counter: receipt.dot.counter },
        timestamp: TimestampBody {
            physical_us: receipt.ts.physical_us,
            logical: receipt.ts.logical,
            node: receipt.ts.node.to_string(),
        },
        context: token::encode(&receipt.context),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRequest {
    value: Option<String>,
    value_base64: Option<String>,
    context: Option<String>,
}

async fn put_key(
    State(s): State<ApiState>,
    Path((ns, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Some(svc) = strong_api::strong_namespace(&s, &ns) {
        return strong_api::put(&svc, &ns, &key, body).await;
    }
    let bytes = body.map_err(|e| ApiError::new(e.status(), "bad_body", e.body_text()))?;
    match put_eventual(&s, &ns, &key, bytes.clone()).await {
        Err(e) if e.code == "no_such_namespace" || e.code == "bad_json" => match strong_after_miss(&s, &ns).await {
            Some(svc) => strong_api::put(&svc, &ns, &key, Ok(bytes)).await,
            None => Err(e),
        },
        other => other,
    }
}

async fn put_eventual(s: &ApiState, ns: &str, key: &str, bytes: Bytes) -> Result<Response, ApiError> {
    let req: PutRequest = parse_body(Ok(bytes))?;
    let value = text_or_base64(req.value, req.value_base64, "value")?;
    let context = parse_context(req.context.as_deref())?;
    let op = Op::Put { value, context };
    do_write(s, ns.to_string(), key.to_string(), op).await.map(IntoResponse::into_response)
}

/// After this node's eventual side found no such namespace: a strong
/// namespace created on another node a moment ago may not have reached this
/// replica yet, so the leader is asked (only on this miss path).
async fn strong_after_miss(s: &ApiState, ns: &str) -> Option<Arc<crate::strong::StrongService>> {
    let svc = s.strong.as_ref()?;
    svc.is_strong_linearizable(ns).await.unwrap_or(false).then(|| svc.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    context: Option<String>,
}

async fn delete_key(
    State(s): State<ApiState>,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    if let Some(svc) = strong_api::strong_namespace(&s, &ns) {
        if q.context.is_some() {
            return Err(ApiError::bad_request("bad_request", "strong namespaces take no `context`"));
        }
        return strong_api::delete(&svc, &ns, &key).await;
    }
    let context = parse_context(q.context.as_deref())?;
    match do_write(&s, ns.clone(), key.clone(), Op::Delete { context: context.clone() }).await {
        Ok(receipt) => Ok(receipt.into_response()),
        Err(e) if e.code == "no_such_namespace" && context.is_none() => match strong_after_miss(&s, &ns).await {
            Some(svc) => strong_api::delete(&svc, &ns, &key).await,
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Counters and sets are CRDTs of eventual namespaces.
fn refuse_strong(s: &ApiState, ns: &str) -> Result<(), ApiError> {
    if strong_api::strong_namespace(s, ns).is_some() {
        return Err(ApiError::bad_request(
            "wrong_type",
            format!("{ns:?} is a strong namespace of plain values: use put, cas or txn"),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementRequest {
    #[serde(default = "one")]
    amount: i64,
}

fn one() -> i64 {
    1
}

async fn increment(
    State(s): State<ApiState>,
    Path((ns, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteBody>, ApiError> {
    refuse_strong(&s, &ns)?;
    let req: IncrementRequest = parse_body(body)?;
    do_write(&s, ns, key, Op::Increment { amount: req.amount }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRequest {
    op: String,
    member: Option<String>,
    member_base64: Option<String>,
    context: Option<String>,
}

async fn set_op(
    State(s): State<ApiState>,
    Path((ns, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteBody>, ApiError> {
    refuse_strong(&s, &ns)?;
    let req: SetRequest = parse_body(body)?;
    let member = text_or_base64(req.member, req.member_base64, "member")?;
    let op = match req.op.as_str() {
        "add" => {
            if req.context.is_some() {
                return Err(ApiError::bad_request("bad_request", "`context` applies to remove only"));
            }
            Op::Add { member }
        }
        "remove" => Op::Remove { member, context: parse_context(req.context.as_deref())? },
        other => return Err(ApiError::bad_request("bad_op", format!("unknown set op {other:?}: use add or remove"))),
    };
    do_write(&s, ns, key, op).await
}
