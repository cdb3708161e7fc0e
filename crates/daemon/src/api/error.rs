//! The API's error answer and everything that turns a request's bytes into
//! typed values or an error: `{"error": code, "message": text}` with the
//! codes listed in `docs/design/http-api.md` ("Conventions", "Strong
//! namespaces"). Codes are a public interface.

use crate::runtime::CallError;
use crate::strong::StrongService;
use axum::Json;
use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_core::WriteError;
use chorus_strong::StrongError;
use serde::Deserialize;
use serde_json::{Value, json};

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

/// 503 always means "refused, nothing changed"; "may have applied" is
/// always 504 `timeout` (docs/design/http-api.md, "Conventions"). A call
/// that ran out of time may have been applied; a stopped node refused it.
impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Timeout | CallError::Abandoned => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", e.to_string())
            }
            CallError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string()),
        }
    }
}

/// 404 `no_such_namespace`: neither mode knows `ns` (see
/// [`super::namespaces::resolve_mode`]).
pub(crate) fn no_such_namespace(ns: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_such_namespace", format!("namespace {ns:?} does not exist"))
}

/// The HTTP form of an eventual write the core refused.
pub(crate) fn write_error(e: WriteError) -> ApiError {
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
        WriteError::RequestIdTooLarge { .. } => ApiError::bad_request("bad_request_id", message),
        WriteError::RequestIdReused { .. } => ApiError::new(StatusCode::CONFLICT, "request_id_reused", message),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "write_refused", message),
    }
}

/// The HTTP form of a [`StrongError`]. `timeout` (504) is the one answer
/// whose outcome is unknown; `no_quorum`, `no_leader` and `not_leader`
/// (503) mean nothing changed, so a client may retry them.
pub(crate) fn strong_error(svc: &StrongService, e: StrongError) -> ApiError {
    use chorus_strong::kv::KvError;
    let message = e.to_string();
    match e {
        StrongError::NoQuorum { reachable_voters, voters } => {
            let reachable = svc.names_of(&reachable_voters);
            let all = svc.names_of(&voters);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_quorum",
                format!("no quorum: reachable voters {reachable:?} of {all:?}"),
            )
            .with_details(json!({ "reachable_voters": reachable, "voters": all }))
        }
        StrongError::NotLeader { leader_id, .. } => {
            let leader = leader_id.map(|id| svc.name_of(id));
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", format!("leadership moved; retry ({message})"))
                .with_details(json!({ "leader": leader }))
        }
        StrongError::NoLeader => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message),
        StrongError::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the deadline passed; the operation may or may not have been applied",
        ),
        StrongError::Rejected(kv) => match kv {
            KvError::BadKey { .. } => ApiError::bad_request("bad_key", message),
            KvError::ValueTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", message),
            KvError::TxnTooLarge => ApiError::bad_request("txn_too_large", message),
            KvError::LeaseNotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "lease_not_found", message),
            KvError::BadTtl(_) => ApiError::bad_request("bad_ttl", message),
            KvError::LimitReached(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_reached", message),
            KvError::Compacted { .. } => ApiError::new(StatusCode::GONE, "compacted", message),
            _ => ApiError::bad_request("rejected", message),
        },
        StrongError::Membership(_) => ApiError::new(StatusCode::CONFLICT, "membership_refused", message),
        StrongError::Shutdown(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", message),
        StrongError::Protocol(_) => ApiError::new(StatusCode::BAD_GATEWAY, "protocol", message),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "strong_error", message),
    }
}

pub(crate) async fn not_found_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route; see docs/design/http-api.md")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
}

/// A JSON body as `T` (an empty body reads as `{}`): 413/400 `bad_body`
/// when the body could not be read, 400 `bad_json` naming the problem.
pub(crate) fn parse_body<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError::new(e.status(), "bad_body", e.body_text()))?;
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("bad_json", e.to_string()))
}

/// A query string as `T`, or 400 `bad_query`.
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

/// A causal-context token of an eventual namespace, or 400 `bad_context`.
pub(crate) fn parse_context(token: Option<&str>) -> Result<Option<chorus_core::VersionVector>, ApiError> {
    token.map(|t| crate::token::decode(t).map_err(|e| ApiError::bad_request("bad_context", e.to_string()))).transpose()
}
