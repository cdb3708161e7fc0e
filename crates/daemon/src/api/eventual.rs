//! Key, counter and set routes of eventual namespaces (CRDTs; answers
//! carry causal-context tokens). The router calls these once
//! [`super::resolve_mode`] said the namespace is eventual; each parses the
//! request body with its own type, after that.

use super::error::{ApiError, no_such_namespace, parse_body, parse_context, text_or_base64, write_error};
use super::{ApiState, bytes_fields, list_fields};
use crate::token::Session;
use crate::{telemetry, token};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use chorus_core::{LocalWrite, Node, Op, ReadValue, WriteReceipt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

// ------------------------------------------------------------------ reads

/// The JSON of one read: `type`, the value fields of that type, `context`.
fn read_json(key: &[u8], value: &ReadValue, context: &chorus_core::VersionVector) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("key".into(), Value::String(String::from_utf8_lossy(key).into_owned()));
    let kind = value_fields(&mut out, value);
    out.insert("type".into(), kind.into());
    out.insert("context".into(), Value::String(token::encode(context)));
    Value::Object(out)
}

/// The value fields of one state (`value`, `values`, or `members`, each
/// with its `_base64` twin); returns the value type's name.
pub(crate) fn value_fields(out: &mut serde_json::Map<String, Value>, value: &ReadValue) -> &'static str {
    match value {
        ReadValue::Lww(v) => {
            match v {
                Some(v) => bytes_fields(out, "value", v),
                None => {
                    out.insert("value".into(), Value::Null);
                }
            }
            "lww"
        }
        ReadValue::Mv(vs) => {
            list_fields(out, "values", vs);
            "mv"
        }
        ReadValue::Counter(n) => {
            out.insert("value".into(), Value::from(*n));
            "counter"
        }
        ReadValue::Set(ms) => {
            list_fields(out, "members", ms);
            "set"
        }
    }
}

/// GET /v1/ns/{ns}/kv/{key} (also `/counter/`, `/set/`): the key's value
/// in this node's replica, or 404 `not_found`.
pub(crate) async fn get(s: &ApiState, ns: String, key: String, mut session: Session) -> Result<Response, ApiError> {
    super::session::wait_eventual(s, &ns, &session).await?;
    let (ns2, key2) = (ns.clone(), key.clone());
    let found = s
        .node
        .inspect(move |node: &Node| {
            node.namespace(&ns2)?;
            Some(node.get(&ns2, key2.as_bytes()).map(|r| (read_json(key2.as_bytes(), &r.value, &r.context), r.context)))
        })
        .await?;
    match found {
        // Resolved as eventual, and eventual namespaces are never dropped.
        None => Err(no_such_namespace(&ns)),
        Some(None) => {
            telemetry::read_answered("not_found");
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("key {key:?} not found in namespace {ns:?}")))
        }
        Some(Some((mut v, context))) => {
            telemetry::read_answered("ok");
            super::session::observe(&mut session, &ns, &context)?;
            if let Value::Object(o) = &mut v {
                o.insert("namespace".into(), Value::String(ns));
            }
            Ok(super::session::respond(v, &session))
        }
    }
}

/// GET /v1/ns/{ns}/scan: keys with `prefix` after `after`, at most `limit`
/// (already checked), in key order; `next` continues the scan.
pub(crate) async fn scan(
    s: &ApiState,
    ns: String,
    prefix: String,
    after: Option<String>,
    limit: usize,
    mut session: Session,
) -> Result<Response, ApiError> {
    super::session::wait_eventual(s, &ns, &session).await?;
    let ns2 = ns.clone();
    let page = s
        .node
        .inspect(move |node: &Node| {
            let namespace = node.namespace(&ns2)?;
            let mut items = Vec::new();
            let mut seen = chorus_core::VersionVector::new();
            let mut last: Option<Vec<u8>> = None;
            // Tombstones are skipped but still count towards the page, so
            // one page's work stays bounded by `limit`.
            for (k, e) in namespace.scan(prefix.as_bytes(), after.as_deref().map(str::as_bytes), limit) {
                last = Some(k.clone());
                if !e.is_tombstone() {
                    items.push(read_json(k, &e.read(), e.clock()));
                    seen.merge(e.clock());
                }
            }
            let next = if last.is_some() && namespace.scan(prefix.as_bytes(), last.as_deref(), 1).next().is_some() {
                last.map(|k| String::from_utf8_lossy(&k).into_owned())
            } else {
                None
            };
            Some((items, next, seen))
        })
        .await?;
    let Some((items, next, seen)) = page else { return Err(no_such_namespace(&ns)) };
    telemetry::read_answered("ok");
    super::session::observe(&mut session, &ns, &seen)?;
    Ok(super::session::respond(json!({ "namespace": ns, "items": items, "next": next }), &session))
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

/// One eventual write through the node task; the answer is the write
/// receipt once the write is durable on this node.
async fn do_write(
    s: &ApiState,
    ns: String,
    key: String,
    op: Op,
    request_id: Option<String>,
    mut session: Session,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let op_name = op.name();
    if !s.clock.is_safe() {
        // A node whose clock is too far from cluster time must not stamp new
        // writes with it (`docs/design/clock.md`, "Daemon integration").
        telemetry::write_answered(op_name, "clock_unsafe", started.elapsed().as_secs_f64());
        let status = s.clock.status();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "clock_unsafe",
            format!("write refused: {}", status.reason),
        ));
    }
    let mut write = LocalWrite::new(ns.clone(), key.clone().into_bytes(), op);
    if let Some(rid) = request_id {
        write = write.with_request_id(rid.into_bytes());
    }
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
    super::session::observe(&mut session, &ns, &receipt.context)?;
    let body = WriteBody {
        namespace: ns,
        key,
        dot: DotBody { node: receipt.dot.node.to_string(), counter: receipt.dot.counter },
        timestamp: TimestampBody {
            physical_us: receipt.ts.physical_us,
            logical: receipt.ts.logical,
            node: receipt.ts.node.to_string(),
        },
        context: token::encode(&receipt.context),
    };
    Ok(super::session::respond(serde_json::to_value(body).unwrap_or(Value::Null), &session))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRequest {
    value: Option<String>,
    value_base64: Option<String>,
    context: Option<String>,
    /// Idempotency key: a retry with it returns the first outcome.
    request_id: Option<String>,
}

/// PUT /v1/ns/{ns}/kv/{key} `{"value"|"value_base64", "context"?}`.
pub(crate) async fn put(
    s: &ApiState,
    ns: String,
    key: String,
    body: Result<Bytes, BytesRejection>,
    session: Session,
) -> Result<Response, ApiError> {
    let req: PutRequest = parse_body(body)?;
    let value = text_or_base64(req.value, req.value_base64, "value")?;
    let context = parse_context(req.context.as_deref())?;
    do_write(s, ns, key, Op::Put { value, context }, req.request_id, session).await
}

/// DELETE /v1/ns/{ns}/kv/{key}?context=TOKEN&request_id=ID.
pub(crate) async fn delete(
    s: &ApiState,
    ns: String,
    key: String,
    context: Option<&str>,
    request_id: Option<String>,
    session: Session,
) -> Result<Response, ApiError> {
    let context = parse_context(context)?;
    do_write(s, ns, key, Op::Delete { context }, request_id, session).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementRequest {
    #[serde(default = "one")]
    amount: i64,
    request_id: Option<String>,
}

fn one() -> i64 {
    1
}

/// POST /v1/ns/{ns}/counter/{key} `{"amount"}` (default 1).
pub(crate) async fn increment(
    s: &ApiState,
    ns: String,
    key: String,
    body: Result<Bytes, BytesRejection>,
    session: Session,
) -> Result<Response, ApiError> {
    let req: IncrementRequest = parse_body(body)?;
    do_write(s, ns, key, Op::Increment { amount: req.amount }, req.request_id, session).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRequest {
    op: String,
    member: Option<String>,
    member_base64: Option<String>,
    context: Option<String>,
    request_id: Option<String>,
}

/// POST /v1/ns/{ns}/set/{key} `{"op": "add"|"remove", "member"|"member_base64", "context"?}`.
pub(crate) async fn set_op(
    s: &ApiState,
    ns: String,
    key: String,
    body: Result<Bytes, BytesRejection>,
    session: Session,
) -> Result<Response, ApiError> {
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
    do_write(s, ns, key, op, req.request_id, session).await
}
