//! Session guarantees (`docs/design/watch.md`, "Sessions"): every read and
//! write answers with a session token (JSON field `session`, header
//! `Chorus-Session`); a request that presents one (header `Chorus-Session`)
//! is served only once this node has seen everything the session saw —
//! read-your-writes and monotonic reads on any node. A node that has not
//! caught up within `session_wait_ms` answers 503 `session_behind` with the
//! missing position, never older data.

use super::ApiState;
use super::error::ApiError;
use crate::strong::StrongService;
use crate::telemetry;
use crate::token::{self, Session};
use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_core::{Node, VersionVector};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// The request and response header.
pub const SESSION_HEADER: &str = "chorus-session";

/// The session a request presents (empty when it presents none).
pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Session, ApiError> {
    let Some(value) = headers.get(SESSION_HEADER) else { return Ok(Session::default()) };
    let text = value.to_str().map_err(|_| ApiError::bad_request("bad_session", "Chorus-Session is not ASCII"))?;
    token::decode_session(text.trim()).map_err(|e| ApiError::bad_request("bad_session", e.to_string()))
}

/// `body` with its `session` field, and the same token as a header.
pub(crate) fn respond(mut body: Value, session: &Session) -> Response {
    let text = token::encode_session(session);
    if let Value::Object(o) = &mut body {
        o.insert("session".into(), Value::String(text.clone()));
    }
    let mut response = Json(body).into_response();
    // The token is URL-safe base64: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&text) {
        response.headers_mut().insert(SESSION_HEADER, v);
    }
    response
}

/// A session that outgrew its bound is refused, not silently weakened.
pub(crate) fn observe(session: &mut Session, ns: &str, clock: &VersionVector) -> Result<(), ApiError> {
    session.observe(ns, clock).map_err(|e| ApiError::bad_request("session_too_large", e.to_string()))
}

fn behind(missing: Value) -> ApiError {
    telemetry::session_behind();
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "session_behind",
        "this node has not yet seen everything the session has; retry, or ask another node",
    )
    .with_details(json!({ "missing": missing }))
}

/// Wait until this node has seen every write of `ns` the session covers.
pub(crate) async fn wait_eventual(s: &ApiState, ns: &str, session: &Session) -> Result<(), ApiError> {
    let Some(want) = session.eventual.get(ns).filter(|v| !v.is_empty()).cloned() else { return Ok(()) };
    let deadline = Instant::now() + s.session_wait;
    let mut changes = s.watch_hub.changes();
    loop {
        changes.borrow_and_update();
        let (ns2, want2) = (ns.to_string(), want.clone());
        let missing: Option<VersionVector> = s
            .node
            .inspect(move |node: &Node| {
                let have = node.namespace(&ns2).map(|n| n.seen().contiguous().clone()).unwrap_or_default();
                let missing = VersionVector::from_entries(want2.iter().filter(|&(n, c)| have.get(n) < c));
                (!missing.is_empty()).then_some(missing)
            })
            .await?;
        let Some(missing) = missing else { return Ok(()) };
        if Instant::now() >= deadline {
            let list: Vec<Value> =
                missing.iter().map(|(n, c)| json!({ "node": n.to_string(), "counter": c })).collect();
            return Err(behind(json!({ "namespace": ns, "dots": list })));
        }
        let _ =
            tokio::time::timeout_at(deadline.min(Instant::now() + Duration::from_millis(50)), changes.changed()).await;
    }
}

/// Wait until this replica has applied the session's strong revision.
pub(crate) async fn wait_strong(s: &ApiState, svc: &StrongService, session: &Session) -> Result<(), ApiError> {
    let want = session.strong_revision;
    let mut applied = svc.node.applied_revisions();
    let deadline = Instant::now() + s.session_wait;
    loop {
        let have = *applied.borrow_and_update();
        if have >= want {
            return Ok(());
        }
        if Instant::now() >= deadline || tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
            return Err(behind(json!({ "revision": want, "applied_revision": have })));
        }
    }
}
