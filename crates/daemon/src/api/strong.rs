//! Strong namespaces over HTTP (`docs/design/strong.md`; routes in
//! `docs/design/http-api.md`, "Strong namespaces"). The key routes
//! (`/v1/ns/{ns}/kv/..`, `/scan`) are shared with eventual namespaces: the
//! router sends a request here when [`super::resolve_mode`] found its
//! namespace strong. Everything else (CAS, transactions, leases, locks,
//! watch, Raft membership) exists only for strong namespaces.
//!
//! Error model, as for the rest of the API: `{"error": code, "message": ..}`
//! plus, for `no_quorum`, the reachable and configured voters by name.
//! `timeout` (504) is the one answer whose outcome is unknown.
//!
//! Writes (put, delete, cas, txn, lease grant) take an optional idempotency
//! key `request_id`; a retry with the same key within
//! `idempotency_window_ms` answers the first outcome with `"replayed":
//! true` and applies nothing (`docs/design/strong.md`, "Idempotent writes").

use super::error::{ApiError, parse_body, parse_query, strong_error, text_or_base64};
use super::{ApiState, bytes_fields};
use crate::strong::{StrongService, data_key, prefix_end};
use crate::telemetry;
use crate::token::Session;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_strong::kv::{
    Compare, CompareOp, CompareTarget, KeyValue, KvCommand, KvError, KvResponse, LockMode, TxnOp, TxnOpResult,
    WatchEventKind,
};
use chorus_strong::{Query as StrongQuery, QueryResult, StrongError};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a lock request may wait for the lock.
pub const LOCK_WAIT_MS_MAX: u64 = 60_000;
/// How often a waiting lock request or a watch looks at the local replica.
const POLL_PERIOD: Duration = Duration::from_millis(20);
/// Events one watch poll reads at most.
const WATCH_BATCH_MAX: usize = 1000;
/// Longest a watch stream may be asked to last (0 = until the client goes).
pub const WATCH_TIMEOUT_MS_MAX: u64 = 24 * 3600 * 1000;

/// The strong service, or 501 `strong_unavailable` when this cluster has none.
pub(crate) fn service(s: &ApiState) -> Result<&Arc<StrongService>, ApiError> {
    s.strong.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "strong_unavailable",
            "strong namespaces are disabled: this cluster has no `strong_voters` in its config",
        )
    })
}

/// JSON of a stored key of namespace `ns` (the namespace prefix removed).
fn kv_json(ns: &str, kv: &KeyValue) -> Value {
    let prefix_len = ns.len() + 1;
    let key = kv.key.get(prefix_len..).unwrap_or(&kv.key);
    let mut out = Map::new();
    out.insert("key".into(), Value::String(String::from_utf8_lossy(key).into_owned()));
    out.insert("type".into(), "lww".into());
    bytes_fields(&mut out, "value", &kv.value);
    out.insert("version".into(), kv.version.into());
    out.insert("create_revision".into(), kv.create_revision.into());
    out.insert("mod_revision".into(), kv.mod_revision.into());
    out.insert("lease".into(), kv.lease.map_or(Value::Null, Value::from));
    Value::Object(out)
}

fn opt_kv_json(ns: &str, kv: Option<&KeyValue>) -> Value {
    kv.map_or(Value::Null, |kv| kv_json(ns, kv))
}

fn unexpected(svc: &StrongService, answer: impl std::fmt::Debug) -> ApiError {
    strong_error(svc, StrongError::Protocol(format!("unexpected answer {answer:?}")))
}

/// The answer of a strong write: the state machine's response, and
/// whether it is a replay of a first outcome (an idempotency key seen before).
struct Written {
    response: KvResponse,
    replayed: bool,
    values_elided: bool,
}

impl Written {
    /// Adds `replayed` (and `values_elided` when the remembered answer lost
    /// its values) to a JSON answer of a replayed write.
    fn mark(&self, mut body: Value) -> Value {
        if self.replayed
            && let Value::Object(o) = &mut body
        {
            o.insert("replayed".into(), true.into());
            if self.values_elided {
                o.insert("values_elided".into(), true.into());
            }
        }
        body
    }
}

/// The idempotency key of a write body: 1 to 128 bytes, or 400 `bad_request_id`.
fn request_id_of(request_id: Option<String>) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(id) = request_id else { return Ok(None) };
    let max = chorus_strong::kv::IDEMPOTENCY_KEY_BYTES_MAX;
    if id.is_empty() || id.len() > max {
        return Err(ApiError::bad_request(
            "bad_request_id",
            format!("request_id has {} bytes; it must have 1 to {max}", id.len()),
        ));
    }
    Ok(Some(id.into_bytes()))
}

async fn write(
    svc: &StrongService,
    op: &'static str,
    command: KvCommand,
    request_id: Option<Vec<u8>>,
) -> Result<Written, ApiError> {
    let started = Instant::now();
    let command = match request_id {
        // The leader stamps `at_ms` and `window_ms` when it proposes.
        Some(request_id) => KvCommand::Idempotent { request_id, at_ms: 0, window_ms: 1, command: Box::new(command) },
        None => command,
    };
    let result = svc.node.write(command).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(StrongError::Rejected(_)) => "refused",
        Err(_) => "unavailable",
    };
    telemetry::write_answered(op, outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(KvResponse::Replayed { first, values_elided }) => {
            Ok(Written { response: *first, replayed: true, values_elided })
        }
        Ok(response) => Ok(Written { response, replayed: false, values_elided: false }),
        Err(StrongError::Rejected(KvError::ClockUnsafe)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "clock_unsafe",
            "refused: the Raft leader's clock is unsafe, so it stamps no lease time; nothing changed",
        )),
        Err(StrongError::Rejected(KvError::RequestIdReused)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "request_id_reused",
            "request_id was already used for a different write within idempotency_window_ms; nothing changed",
        )),
        Err(StrongError::Rejected(e @ KvError::BadRequestId(_))) => {
            Err(ApiError::bad_request("bad_request_id", e.to_string()))
        }
        Err(e) => Err(strong_error(svc, e)),
    }
}

async fn query(svc: &StrongService, q: StrongQuery, stale: bool) -> Result<(u64, QueryResult), ApiError> {
    let response = svc.node.query(q, !stale).await.map_err(|e| strong_error(svc, e))?;
    Ok((response.revision, response.result))
}

// ------------------------------------------------------------ shared routes

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    /// Serve from this node's replica without asking the leader.
    #[serde(default)]
    pub stale: bool,
}

/// GET /v1/ns/{ns}/kv/{key} on a strong namespace: linearizable unless `stale=true`.
pub(crate) async fn get(
    s: &ApiState,
    svc: &StrongService,
    ns: &str,
    key: &str,
    q: ReadQuery,
    session: Session,
) -> Result<Response, ApiError> {
    if q.stale {
        super::session::wait_strong(s, svc, &session).await?;
    }
    let (revision, result) = query(svc, StrongQuery::Get { key: data_key(ns, key.as_bytes()) }, q.stale).await?;
    let QueryResult::Get(found) = result else { return Err(unexpected(svc, result)) };
    let Some(kv) = found else {
        telemetry::read_answered("not_found");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("key {key:?} not found in namespace {ns:?}"),
        ));
    };
    telemetry::read_answered("ok");
    let mut v = kv_json(ns, &kv);
    if let Value::Object(o) = &mut v {
        o.insert("namespace".into(), ns.into());
        o.insert("revision".into(), revision.into());
    }
    Ok(with_revision(v, session))
}

/// The answer with the session moved to its `revision`.
fn with_revision(body: Value, mut session: Session) -> Response {
    if let Some(r) = body.get("revision").and_then(Value::as_u64) {
        session.observe_revision(r);
    }
    super::session::respond(body, &session)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRequest {
    value: Option<String>,
    value_base64: Option<String>,
    lease: Option<u64>,
    request_id: Option<String>,
}

/// PUT /v1/ns/{ns}/kv/{key} on a strong namespace.
pub(crate) async fn put(
    svc: &StrongService,
    ns: &str,
    key: &str,
    body: Result<Bytes, BytesRejection>,
    session: Session,
) -> Result<Response, ApiError> {
    let req: PutRequest = parse_body(body)?;
    let value = text_or_base64(req.value, req.value_base64, "value")?;
    let request_id = request_id_of(req.request_id)?;
    let command = KvCommand::Put { key: data_key(ns, key.as_bytes()), value, lease: req.lease };
    let written = write(svc, "strong_put", command, request_id).await?;
    match &written.response {
        KvResponse::Put { revision, prev } => Ok(with_revision(
            written.mark(json!({
                "namespace": ns, "key": key, "revision": revision, "prev": opt_kv_json(ns, prev.as_ref()),
            })),
            session,
        )),
        other => Err(unexpected(svc, other)),
    }
}

/// DELETE /v1/ns/{ns}/kv/{key}?request_id= on a strong namespace.
pub(crate) async fn delete(
    svc: &StrongService,
    ns: &str,
    key: &str,
    request_id: Option<String>,
    session: Session,
) -> Result<Response, ApiError> {
    let request_id = request_id_of(request_id)?;
    let command = KvCommand::Delete { key: data_key(ns, key.as_bytes()) };
    let written = write(svc, "strong_delete", command, request_id).await?;
    match &written.response {
        KvResponse::Delete { revision, existed } => Ok(with_revision(
            written.mark(json!({ "namespace": ns, "key": key, "revision": revision, "existed": existed })),
            session,
        )),
        other => Err(unexpected(svc, other)),
    }
}

/// GET /v1/ns/{ns}/scan on a strong namespace: keys with `prefix`, after
/// `after`, at most `limit`, in key order; `next` continues the scan.
pub(crate) async fn scan(
    svc: &StrongService,
    ns: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    stale: bool,
    waits: (&ApiState, Session),
) -> Result<Response, ApiError> {
    let (s, session) = waits;
    if stale {
        super::session::wait_strong(s, svc, &session).await?;
    }
    let low = data_key(ns, prefix.as_bytes());
    let end = prefix_end(&low);
    let start = match after {
        Some(a) => {
            let mut k = data_key(ns, a.as_bytes());
            k.push(0);
            k.max(low)
        }
        None => low,
    };
    let (revision, result) = query(svc, StrongQuery::Range { start, end, limit: limit + 1 }, stale).await?;
    let QueryResult::Range(mut items) = result else { return Err(unexpected(svc, result)) };
    let more = items.len() > limit;
    items.truncate(limit);
    let page: Vec<Value> = items.iter().map(|kv| kv_json(ns, kv)).collect();
    let next = if more { page.last().and_then(|v| v.get("key")).cloned() } else { None };
    telemetry::read_answered("ok");
    Ok(with_revision(json!({ "namespace": ns, "items": page, "next": next, "revision": revision }), session))
}

// ---------------------------------------------------------------------- CAS

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasRequest {
    /// The value the key must hold; omit both forms to require absence.
    expected: Option<String>,
    expected_base64: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
    request_id: Option<String>,
}

/// POST /v1/ns/{ns}/cas/{key}: set `value` if the key holds `expected`
/// (or is absent when no `expected` is given). 200 either way; `succeeded`
/// says which, `current` is the key after the command.
pub(crate) async fn cas(
    svc: &StrongService,
    ns: String,
    key: String,
    body: Result<Bytes, BytesRejection>,
    session: Session,
) -> Result<Response, ApiError> {
    let req: CasRequest = parse_body(body)?;
    let expected = match (req.expected, req.expected_base64) {
        (None, None) => None,
        (t, b) => Some(text_or_base64(t, b, "expected")?),
    };
    let value = text_or_base64(req.value, req.value_base64, "value")?;
    let request_id = request_id_of(req.request_id)?;
    let command = KvCommand::CompareAndSwap { key: data_key(&ns, key.as_bytes()), expected, value };
    let written = write(svc, "strong_cas", command, request_id).await?;
    match &written.response {
        KvResponse::CompareAndSwap { succeeded, revision, current } => Ok(with_revision(
            written.mark(json!({
                "namespace": ns, "key": key, "succeeded": succeeded, "revision": revision,
                "current": opt_kv_json(&ns, current.as_ref()),
            })),
            session,
        )),
        other => Err(unexpected(svc, other)),
    }
}

// ------------------------------------------------------------- transactions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnRequest {
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    success: Vec<TxnOpBody>,
    #[serde(default)]
    failure: Vec<TxnOpBody>,
    request_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    key: String,
    /// `value`, `version`, `create_revision` or `mod_revision`.
    target: String,
    /// `==`, `!=`, `<` or `>`.
    op: String,
    value: Option<String>,
    value_base64: Option<String>,
    version: Option<u64>,
    create_revision: Option<u64>,
    mod_revision: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnOpBody {
    /// `put`, `delete` or `get`.
    op: String,
    key: String,
    value: Option<String>,
    value_base64: Option<String>,
    lease: Option<u64>,
}

fn compare_of(ns: &str, c: CompareBody) -> Result<Compare, ApiError> {
    let op = match c.op.as_str() {
        "==" | "equal" => CompareOp::Equal,
        "!=" | "not_equal" => CompareOp::NotEqual,
        "<" | "less" => CompareOp::Less,
        ">" | "greater" => CompareOp::Greater,
        other => return Err(ApiError::bad_request("bad_compare", format!("unknown op {other:?}: use ==, !=, < or >"))),
    };
    let number = |n: Option<u64>, field: &str| {
        n.ok_or_else(|| ApiError::bad_request("bad_compare", format!("target {field:?} needs a numeric `{field}`")))
    };
    let target = match c.target.as_str() {
        "value" => match (c.value, c.value_base64) {
            (None, None) => CompareTarget::Value(None),
            (t, b) => CompareTarget::Value(Some(text_or_base64(t, b, "value")?)),
        },
        "version" => CompareTarget::Version(number(c.version, "version")?),
        "create_revision" => CompareTarget::CreateRevision(number(c.create_revision, "create_revision")?),
        "mod_revision" => CompareTarget::ModRevision(number(c.mod_revision, "mod_revision")?),
        other => {
            return Err(ApiError::bad_request(
                "bad_compare",
                format!("unknown target {other:?}: use value, version, create_revision or mod_revision"),
            ));
        }
    };
    Ok(Compare { key: data_key(ns, c.key.as_bytes()), op, target })
}

fn txn_op_of(ns: &str, o: TxnOpBody) -> Result<TxnOp, ApiError> {
    let key = data_key(ns, o.key.as_bytes());
    let no_value = |op: &str| -> Result<(), ApiError> {
        if o.value.is_some() || o.value_base64.is_some() || o.lease.is_some() {
            return Err(ApiError::bad_request("bad_txn_op", format!("`{op}` takes only a key")));
        }
        Ok(())
    };
    match o.op.as_str() {
        "put" => Ok(TxnOp::Put { key, value: text_or_base64(o.value, o.value_base64, "value")?, lease: o.lease }),
        "delete" => {
            no_value("delete")?;
            Ok(TxnOp::Delete { key })
        }
        "get" => {
            no_value("get")?;
            Ok(TxnOp::Get { key })
        }
        other => Err(ApiError::bad_request("bad_txn_op", format!("unknown op {other:?}: use put, delete or get"))),
    }
}

fn txn_result_json(ns: &str, r: &TxnOpResult) -> Value {
    match r {
        TxnOpResult::Put { prev } => json!({ "op": "put", "prev": opt_kv_json(ns, prev.as_ref()) }),
        TxnOpResult::Delete { existed } => json!({ "op": "delete", "existed": existed }),
        TxnOpResult::Get { kv } => json!({ "op": "get", "kv": opt_kv_json(ns, kv.as_ref()) }),
        other => json!({ "op": format!("{other:?}") }),
    }
}

/// POST /v1/ns/{ns}/txn: `if all compares hold then success else failure`,
/// atomically, over any keys of the namespace.
pub(crate) async fn txn(
    svc: &StrongService,
    ns: String,
    body: Result<Bytes, BytesRejection>,
    session: Session,
) -> Result<Response, ApiError> {
    let req: TxnRequest = parse_body(body)?;
    let compares = req.compare.into_iter().map(|c| compare_of(&ns, c)).collect::<Result<Vec<_>, _>>()?;
    let success = req.success.into_iter().map(|o| txn_op_of(&ns, o)).collect::<Result<Vec<_>, _>>()?;
    let failure = req.failure.into_iter().map(|o| txn_op_of(&ns, o)).collect::<Result<Vec<_>, _>>()?;
    let request_id = request_id_of(req.request_id)?;
    let written = write(svc, "strong_txn", KvCommand::Txn { compares, success, failure }, request_id).await?;
    match &written.response {
        KvResponse::Txn { succeeded, revision, results } => {
            let results: Vec<Value> = results.iter().map(|r| txn_result_json(&ns, r)).collect();
            Ok(with_revision(
                written
                    .mark(json!({ "namespace": ns, "succeeded": succeeded, "revision": revision, "results": results })),
                session,
            ))
        }
        other => Err(unexpected(svc, other)),
    }
}

// ------------------------------------------------------------------- leases

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseGrantRequest {
    ttl_ms: u64,
    request_id: Option<String>,
}

fn lease_json(lease: u64, ttl_ms: u64, deadline_ms: u64) -> Value {
    json!({ "lease": lease, "ttl_ms": ttl_ms, "deadline_ms": deadline_ms })
}

/// POST /v1/leases `{"ttl_ms"}`: grant a lease.
pub(crate) async fn lease_grant(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let svc = service(&s)?;
    let req: LeaseGrantRequest = parse_body(body)?;
    let request_id = request_id_of(req.request_id)?;
    // Lease time is stamped by the Raft leader as it proposes, never here
    // (`docs/design/strong.md`, "Lease time").
    let command = KvCommand::LeaseGrant { ttl_ms: req.ttl_ms, now_ms: 0 };
    let written = write(svc, "lease_grant", command, request_id).await?;
    match &written.response {
        KvResponse::Lease { lease, ttl_ms, deadline_ms } => {
            Ok((StatusCode::CREATED, Json(written.mark(lease_json(*lease, *ttl_ms, *deadline_ms)))).into_response())
        }
        other => Err(unexpected(svc, other)),
    }
}

/// POST /v1/leases/{id}/keepalive: push the lease's deadline a TTL ahead
/// of the leader's clock. Idempotent by nature (a retry extends it again).
pub(crate) async fn lease_keepalive(State(s): State<ApiState>, Path(id): Path<u64>) -> Result<Response, ApiError> {
    let svc = service(&s)?;
    let written = write(svc, "lease_keepalive", KvCommand::LeaseKeepAlive { lease: id, now_ms: 0 }, None).await?;
    match &written.response {
        KvResponse::Lease { lease, ttl_ms, deadline_ms } => {
            Ok(Json(lease_json(*lease, *ttl_ms, *deadline_ms)).into_response())
        }
        other => Err(unexpected(svc, other)),
    }
}

/// DELETE /v1/leases/{id}: revoke; its keys are deleted, its locks released.
pub(crate) async fn lease_revoke(State(s): State<ApiState>, Path(id): Path<u64>) -> Result<Response, ApiError> {
    let svc = service(&s)?;
    let written = write(svc, "lease_revoke", KvCommand::LeaseRevoke { lease: id }, None).await?;
    match &written.response {
        KvResponse::LeaseRevoked { revision, keys_deleted } => {
            Ok(Json(json!({ "lease": id, "revision": revision, "keys_deleted": keys_deleted })).into_response())
        }
        other => Err(unexpected(svc, other)),
    }
}

/// GET /v1/leases/{id}: the lease's TTL, deadline, keys and locks.
pub(crate) async fn lease_get(
    State(s): State<ApiState>,
    Path(id): Path<u64>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let svc = service(&s)?;
    let q = parse_query(q)?;
    let (revision, result) = query(svc, StrongQuery::Lease { lease: id }, q.stale).await?;
    let QueryResult::Lease(found) = result else { return Err(unexpected(svc, result)) };
    let Some(lease) = found else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "lease_not_found", format!("lease {id} not found")));
    };
    let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
    let mut v = lease_json(lease.id, lease.ttl_ms, lease.deadline_ms);
    if let Value::Object(o) = &mut v {
        o.insert("keys".into(), lease.keys.iter().map(text).collect::<Vec<_>>().into());
        o.insert("locks".into(), lease.locks.iter().map(text).collect::<Vec<_>>().into());
        o.insert("revision".into(), revision.into());
    }
    Ok(Json(v).into_response())
}

// -------------------------------------------------------------------- locks

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockRequest {
    lease: u64,
    #[serde(default)]
    mode: Option<String>,
    /// Wait up to this long for the lock (0: try once).
    #[serde(default)]
    wait_ms: u64,
}

fn lock_mode(mode: Option<&str>) -> Result<LockMode, ApiError> {
    match mode.unwrap_or("exclusive") {
        "exclusive" => Ok(LockMode::Exclusive),
        "shared" => Ok(LockMode::Shared),
        other => {
            Err(ApiError::bad_request("bad_mode", format!("unknown lock mode {other:?}: use exclusive or shared")))
        }
    }
}

fn mode_str(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "exclusive",
        LockMode::Shared => "shared",
    }
}

/// POST /v1/ns/{ns}/lock/{name} `{"lease", "mode", "wait_ms"}`: acquire
/// under a lease. 200 with a `fencing_token` that is larger than every
/// token granted before; 409 `lock_busy` with the holders' leases.
pub(crate) async fn lock_acquire(
    svc: &StrongService,
    ns: String,
    name: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: LockRequest = parse_body(body)?;
    let mode = lock_mode(req.mode.as_deref())?;
    if req.wait_ms > LOCK_WAIT_MS_MAX {
        return Err(ApiError::bad_request("bad_wait", format!("wait_ms must be at most {LOCK_WAIT_MS_MAX}")));
    }
    let lock_name = data_key(&ns, name.as_bytes());
    let deadline = Instant::now() + Duration::from_millis(req.wait_ms);
    loop {
        let command = KvCommand::LockAcquire { name: lock_name.clone(), lease: req.lease, mode };
        let holders = match write(svc, "lock_acquire", command, None).await?.response {
            KvResponse::LockGranted { fencing_token } => {
                return Ok(Json(json!({
                    "namespace": ns, "lock": name, "lease": req.lease, "mode": mode_str(mode),
                    "fencing_token": fencing_token,
                }))
                .into_response());
            }
            KvResponse::LockBusy { holders } => holders,
            other => return Err(unexpected(svc, other)),
        };
        // Wait until this replica sees the lock free (or compatible), then
        // try again: polling the replica costs no log entries.
        loop {
            if Instant::now() >= deadline {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "lock_busy",
                    format!("lock {name:?} is held by lease(s) {holders:?}"),
                )
                .with_details(json!({ "holders": holders })));
            }
            tokio::time::sleep(POLL_PERIOD.min(deadline.saturating_duration_since(Instant::now()))).await;
            let state = svc.node.query_stale(StrongQuery::Lock { name: lock_name.clone() });
            let free = match state.result {
                QueryResult::Lock(None) => true,
                QueryResult::Lock(Some(l)) => {
                    l.holders.is_empty() || (l.mode == LockMode::Shared && mode == LockMode::Shared)
                }
                _ => true,
            };
            if free {
                break;
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnlockQuery {
    lease: u64,
}

/// DELETE /v1/ns/{ns}/lock/{name}?lease=ID: release.
pub(crate) async fn lock_release(
    svc: &StrongService,
    ns: String,
    name: String,
    q: Result<Query<UnlockQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    let command = KvCommand::LockRelease { name: data_key(&ns, name.as_bytes()), lease: q.lease };
    match write(svc, "lock_release", command, None).await?.response {
        KvResponse::LockReleased { was_held } => {
            Ok(Json(json!({ "namespace": ns, "lock": name, "lease": q.lease, "was_held": was_held })).into_response())
        }
        other => Err(unexpected(svc, other)),
    }
}

/// GET /v1/ns/{ns}/lock/{name}: the holders (empty when free).
pub(crate) async fn lock_get(
    svc: &StrongService,
    ns: String,
    name: String,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    let (revision, result) = query(svc, StrongQuery::Lock { name: data_key(&ns, name.as_bytes()) }, q.stale).await?;
    let QueryResult::Lock(state) = result else { return Err(unexpected(svc, result)) };
    let (mode, holders) = match state {
        Some(l) => (
            Value::from(mode_str(l.mode)),
            l.holders.iter().map(|(lease, token)| json!({ "lease": lease, "fencing_token": token })).collect(),
        ),
        None => (Value::Null, Vec::new()),
    };
    Ok(Json(json!({ "namespace": ns, "lock": name, "mode": mode, "holders": holders, "revision": revision }))
        .into_response())
}

// -------------------------------------------------------------------- watch

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchQuery {
    #[serde(default)]
    prefix: String,
    /// First revision wanted; default: the next one (new events only).
    from_revision: Option<u64>,
    /// End the stream after this long (0 or absent: when the client goes).
    #[serde(default)]
    timeout_ms: u64,
}

/// GET /v1/ns/{ns}/watch?prefix=&from_revision=: a stream of
/// newline-delimited JSON events in revision order, served from this
/// node's replica (a follower's stream lags the leader by its apply delay,
/// never reorders). An event: `{"revision", "type": "put"|"delete", "key",
/// "value", "value_base64"}`. When `from_revision` has left the bounded
/// history, the first line is `{"error": "compacted", "oldest": N}`.
pub(crate) async fn watch(
    svc: Arc<StrongService>,
    ns: String,
    q: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    if q.timeout_ms > WATCH_TIMEOUT_MS_MAX {
        return Err(ApiError::bad_request("bad_timeout", format!("timeout_ms must be at most {WATCH_TIMEOUT_MS_MAX}")));
    }
    let from = match q.from_revision {
        Some(r) => r.max(1),
        None => svc.node.query_stale(StrongQuery::Get { key: Vec::new() }).revision + 1,
    };
    let prefix = data_key(&ns, q.prefix.as_bytes());
    let deadline = (q.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(q.timeout_ms));
    struct Watch {
        svc: Arc<StrongService>,
        ns: String,
        prefix: Vec<u8>,
        next: u64,
        deadline: Option<Instant>,
        done: bool,
    }
    let state = Watch { svc, ns, prefix, next: from, deadline, done: false };
    let stream = futures_util::stream::unfold(state, |mut w| async move {
        loop {
            if w.done || w.deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            let response =
                w.svc.node.query_stale(StrongQuery::Events { from_revision: w.next, limit: WATCH_BATCH_MAX });
            let events = match response.result {
                QueryResult::Events(events) => events,
                QueryResult::Compacted { oldest } => {
                    w.done = true;
                    let line = format!("{}\n", json!({ "error": "compacted", "oldest": oldest }));
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), w));
                }
                _ => return None,
            };
            let mut out = String::new();
            for e in &events {
                w.next = e.revision + 1;
                if !e.key.starts_with(&w.prefix) {
                    continue;
                }
                let key = e.key.get(w.ns.len() + 1..).unwrap_or(&e.key);
                let mut o = Map::new();
                o.insert("revision".into(), e.revision.into());
                o.insert(
                    "type".into(),
                    match e.kind {
                        WatchEventKind::Put => "put",
                        WatchEventKind::Delete => "delete",
                    }
                    .into(),
                );
                o.insert("key".into(), String::from_utf8_lossy(key).into_owned().into());
                match &e.value {
                    Some(v) => bytes_fields(&mut o, "value", v),
                    None => {
                        o.insert("value".into(), Value::Null);
                    }
                }
                out.push_str(&Value::Object(o).to_string());
                out.push('\n');
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), w));
            }
            if events.len() < WATCH_BATCH_MAX {
                tokio::time::sleep(POLL_PERIOD).await;
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

// --------------------------------------------------------------------- raft

fn raft_json(svc: &StrongService) -> Value {
    let status = svc.node.status();
    let snapshot = svc.node.snapshot_status();
    let reachable = &status.quorum.reachable_voters;
    let peers = |m: &std::collections::BTreeMap<u64, chorus_strong::PeerNode>| -> Vec<Value> {
        m.iter()
            .map(|(id, p)| {
                json!({ "id": id, "name": p.name, "addr": p.addr.to_string(), "reachable": reachable.contains(id) })
            })
            .collect()
    };
    json!({
        "enabled": true,
        "id": status.id,
        "name": svc.name_of(status.id),
        "state": status.state,
        "leader": status.leader.map(|id| svc.name_of(id)),
        "leader_id": status.leader,
        "term": status.term,
        "last_applied": status.last_applied,
        "voters": peers(&status.voters),
        "learners": peers(&status.learners),
        "quorum": {
            "has_quorum": status.quorum.has_quorum,
            "voters": svc.names_of(&status.quorum.voters),
            "reachable_voters": svc.names_of(&status.quorum.reachable_voters),
        },
        "stopped": status.stopped,
        "snapshot": {
            "last_index": snapshot.last_index,
            "bytes": snapshot.bytes,
            "chunks": snapshot.chunks,
            "built_total": snapshot.built_total,
            "installed_total": snapshot.installed_total,
            "sent_total": snapshot.sent_total,
            "chunks_received_total": snapshot.chunks_received_total,
        },
    })
}

/// The `strong` object of `/v1/status` (`{"enabled": false}` without strong namespaces).
pub(crate) fn status_json(s: &ApiState) -> Value {
    match &s.strong {
        Some(svc) => raft_json(svc),
        None => json!({ "enabled": false }),
    }
}

/// GET /v1/raft: this node's view of the Raft group.
pub(crate) async fn raft_status(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let svc = service(&s)?;
    Ok(Json(raft_json(svc)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoterRequest {
    name: String,
}

/// POST /v1/raft/voters `{"name"}`: make a live member a voter (it is
/// caught up as a learner first). Any node accepts it; the leader runs it.
pub(crate) async fn add_voter(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let svc = service(&s)?;
    let req: VoterRequest = parse_body(body)?;
    let addr = if req.name == s.info.name {
        s.info.peer_addr
    } else {
        s.membership
            .members()
            .into_iter()
            .find(|m| m.name == req.name && m.state == chorus_net::MemberState::Alive)
            .map(|m| m.addr)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_member",
                    format!("{:?} is not a live member; start it and let it join first", req.name),
                )
            })?
    };
    let id = crate::config::strong_id(&req.name);
    let peer = chorus_strong::PeerNode { name: req.name.clone(), addr };
    svc.node.add_voter(id, peer).await.map_err(|e| strong_error(svc, e))?;
    Ok(Json(raft_json(svc)).into_response())
}

/// DELETE /v1/raft/voters/{name}: remove a voter.
pub(crate) async fn remove_voter(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let svc = service(&s)?;
    svc.node.remove_voter(crate::config::strong_id(&name)).await.map_err(|e| strong_error(svc, e))?;
    Ok(Json(raft_json(svc)).into_response())
}
