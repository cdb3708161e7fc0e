//! The one route table (what each route needs from a caller's token is in
//! [`auth::ROUTES`], checked on every request), and the routes that name a namespace: each asks
//! [`resolve_mode`] for the namespace's mode first, then hands the request
//! (body still unparsed) to that mode's handler in [`eventual`] or
//! [`strong`]. Routes that exist for one mode only answer the other mode's
//! namespaces with an error of their own (`wrong_type`, `no_such_namespace`).

use super::error::{ApiError, method_not_allowed, not_found_route, parse_query};
use super::limits::{HttpLimits, limit_request, limit_stream};
use super::namespaces::{self, Mode, find_mode, resolve_mode};
use super::strong::{ReadQuery, UnlockQuery, WatchQuery};
use super::{ApiState, SCAN_LIMIT_DEFAULT, SCAN_LIMIT_MAX, auth, eventual, session, status, strong};
use crate::strong::StrongService;
use crate::telemetry;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Router, middleware};
use serde::Deserialize;
use std::sync::Arc;

/// The router with every route of the API, each under its bounds
/// ([`limits`](super::limits)): request routes under the request timeout
/// and the in-flight count, streaming routes under the open-stream count.
pub fn router(state: ApiState, limits: HttpLimits) -> Router {
    // Base64 inflates values by 4/3 and JSON escaping can double text; the
    // extra 64 KiB covers keys, contexts and field names.
    let body_max = state.info.value_bytes_max.saturating_mul(2).saturating_add(64 << 10);
    request_routes()
        .layer(middleware::from_fn_with_state(limits.clone(), limit_request))
        .merge(streaming_routes().layer(middleware::from_fn_with_state(limits, limit_stream)))
        // Every route, before its limits: who may call it (`auth::ROUTES`).
        .layer(middleware::from_fn_with_state(state.clone(), auth::authorize))
        .fallback(not_found_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(state)
}

/// Routes whose answer is one response: they run under
/// `http_request_timeout_ms` and count toward `http_requests_in_flight_max`.
fn request_routes() -> Router<ApiState> {
    Router::new()
        .route("/health", get(status::health))
        .route("/metrics", get(status::metrics_text))
        .route("/v1/status", get(status::status))
        .route("/v1/members", get(status::members))
        .route("/v1/ns", get(namespaces::list_namespaces).post(namespaces::create_namespace))
        .route("/v1/ns/{ns}", get(namespaces::get_namespace))
        .route("/v1/ns/{ns}/scan", get(scan))
        .route("/v1/ns/{ns}/kv/{*key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/ns/{ns}/counter/{*key}", get(get_key).post(increment))
        .route("/v1/ns/{ns}/set/{*key}", get(get_key).post(set_op))
        .route("/v1/ns/{ns}/cas/{*key}", post(cas))
        .route("/v1/ns/{ns}/txn", post(txn))
        .route("/v1/ns/{ns}/lock/{*name}", get(lock_get).post(lock_acquire).delete(lock_release))
        .route("/v1/leases", post(strong::lease_grant))
        .route("/v1/leases/{id}", get(strong::lease_get).delete(strong::lease_revoke))
        .route("/v1/leases/{id}/keepalive", post(strong::lease_keepalive))
        .route("/v1/raft", get(strong::raft_status))
        .route("/v1/raft/voters", post(strong::add_voter))
        .route("/v1/raft/voters/{name}", delete(strong::remove_voter))
        .route("/v1/auth/bootstrap", post(auth::bootstrap))
        .route("/v1/auth/whoami", get(auth::whoami))
        .route("/v1/tokens", get(auth::list).post(auth::create))
        .route("/v1/tokens/{name}", delete(auth::revoke))
}

/// Routes whose answer is a stream that lives as long as the client wants:
/// exempt from the request timeout and the in-flight count, bounded by
/// `http_streams_open_max` instead. Every streaming route belongs here and
/// only here.
fn streaming_routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/ns/{ns}/watch", get(watch))
        .route("/v1/watch", get(super::watch::watch))
        .route("/v1/ns/{ns}/snapshot", get(super::watch::snapshot))
}

// ------------------------------------------------ routes of both modes

async fn get_key(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let session = session::from_headers(&headers)?;
    let Some(mode) = find_mode(&s, &ns).await? else {
        telemetry::read_answered("no_namespace");
        return Err(super::error::no_such_namespace(&ns));
    };
    // `stale` means something to strong namespaces only; eventual reads
    // always serve this node's replica.
    let q = parse_query(q)?;
    match mode {
        Mode::Eventual => eventual::get(&s, ns, key, session).await,
        Mode::Strong(svc) => strong::get(&s, &svc, &ns, &key, q, session).await,
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
    headers: HeaderMap,
    Path(ns): Path<String>,
    q: Result<Query<ScanQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let session = session::from_headers(&headers)?;
    let q = parse_query(q)?;
    let limit = q.limit.unwrap_or(SCAN_LIMIT_DEFAULT);
    if limit == 0 || limit > SCAN_LIMIT_MAX {
        return Err(ApiError::bad_request("bad_limit", format!("limit must be in 1..={SCAN_LIMIT_MAX}")));
    }
    match resolve_mode(&s, &ns).await? {
        Mode::Eventual => eventual::scan(&s, ns, q.prefix, q.after, limit, session).await,
        Mode::Strong(svc) => {
            strong::scan(&svc, &ns, &q.prefix, q.after.as_deref(), limit, q.stale, (&s, session)).await
        }
    }
}

async fn put_key(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let session = session::from_headers(&headers)?;
    match resolve_mode(&s, &ns).await? {
        Mode::Eventual => eventual::put(&s, ns, key, body, session).await,
        Mode::Strong(svc) => strong::put(&svc, &ns, &key, body, session).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Eventual namespaces: the causal context this delete replaces.
    context: Option<String>,
    /// The write's idempotency key: a retry with it returns the first
    /// outcome (`docs/design/http-api.md`, "Conventions";
    /// `docs/design/strong.md`, "Idempotent writes").
    request_id: Option<String>,
}

async fn delete_key(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let session = session::from_headers(&headers)?;
    let mode = resolve_mode(&s, &ns).await?;
    let q = parse_query(q)?;
    match mode {
        Mode::Eventual => eventual::delete(&s, ns, key, q.context.as_deref(), q.request_id, session).await,
        Mode::Strong(_) if q.context.is_some() => {
            Err(ApiError::bad_request("bad_request", "strong namespaces take no `context`"))
        }
        Mode::Strong(svc) => strong::delete(&svc, &ns, &key, q.request_id, session).await,
    }
}

// ------------------------------------------- routes of eventual namespaces

/// Counters and sets are CRDTs: they exist in eventual namespaces only.
async fn require_eventual(s: &ApiState, ns: &str) -> Result<(), ApiError> {
    match resolve_mode(s, ns).await? {
        Mode::Eventual => Ok(()),
        Mode::Strong(_) => Err(ApiError::bad_request(
            "wrong_type",
            format!("{ns:?} is a strong namespace of plain values: use put, cas or txn"),
        )),
    }
}

async fn increment(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_eventual(&s, &ns).await?;
    eventual::increment(&s, ns, key, body, session::from_headers(&headers)?).await
}

async fn set_op(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_eventual(&s, &ns).await?;
    eventual::set_op(&s, ns, key, body, session::from_headers(&headers)?).await
}

// --------------------------------------------- routes of strong namespaces

/// The strong service for a strong-only route: 501 `strong_unavailable`
/// when the cluster has no strong namespaces, 404 `no_such_namespace` when
/// `ns` is not a strong namespace.
async fn require_strong(s: &ApiState, ns: &str) -> Result<Arc<StrongService>, ApiError> {
    strong::service(s)?;
    match resolve_mode(s, ns).await? {
        Mode::Strong(svc) => Ok(svc),
        Mode::Eventual => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_namespace",
            format!("strong namespace {ns:?} does not exist ({ns:?} is an eventual namespace)"),
        )),
    }
}

async fn cas(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let svc = require_strong(&s, &ns).await?;
    strong::cas(&svc, ns, key, body, session::from_headers(&headers)?).await
}

async fn txn(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let svc = require_strong(&s, &ns).await?;
    strong::txn(&svc, ns, body, session::from_headers(&headers)?).await
}

async fn lock_acquire(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let svc = require_strong(&s, &ns).await?;
    strong::lock_acquire(&svc, ns, name, body).await
}

async fn lock_release(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    q: Result<Query<UnlockQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let svc = require_strong(&s, &ns).await?;
    strong::lock_release(&svc, ns, name, q).await
}

async fn lock_get(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let svc = require_strong(&s, &ns).await?;
    strong::lock_get(&svc, ns, name, q).await
}

async fn watch(
    State(s): State<ApiState>,
    Path(ns): Path<String>,
    q: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let svc = require_strong(&s, &ns).await?;
    strong::watch(svc, ns, q).await
}
