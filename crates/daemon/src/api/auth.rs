//! Who may call which route (`docs/design/security.md`, "Client tokens"):
//! [`ROUTES`], the table of every route with what it needs; [`authorize`],
//! the layer that checks it on every request; the token routes
//! (`/v1/auth/bootstrap`, `/v1/tokens`); and the task that keeps this
//! node's token table in step with its replica.
//!
//! The same layer applies the client rate limit (`rate_limit_client_per_s`:
//! per token, or per IP address without one).
//!
//! The layer fails closed: a route the router serves but [`ROUTES`] does
//! not name answers 500 `route_unclassified`, auth on or off, so a new
//! route cannot ship without saying what it needs.

use super::error::{ApiError, parse_body};
use super::{ApiState, error::write_error};
use crate::auth::{
    self, BOOTSTRAP_KEY, ClientAddr, Perm, Principal, RECORD_PREFIX, RESERVED_PREFIX, RateKey, TOKENS_MAX,
    TOKENS_NAMESPACE, TokenRecord, TokenSpecError,
};
use crate::runtime::CallError;
use crate::telemetry;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chorus_core::{LocalWrite, Op, ValueType};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a route needs from the caller's token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: answers without a token.
    Open,
    /// The `metrics` permission (or admin), unless `metrics_public`.
    Metrics,
    /// Any valid token.
    Member,
    /// The admin permission.
    Admin,
    /// A rule covering the namespace of the path, any permission.
    Namespace,
    /// These permissions on the key of the path (`{*key}` or `{*name}`).
    Key(&'static [Perm]),
    /// These permissions on every key under the `prefix` query parameter
    /// (`""` when absent: the whole namespace) of the namespace in the path
    /// or the `ns` query parameter.
    Prefix(&'static [Perm]),
    /// These permissions on every key of the namespace in the path,
    /// whatever the query says (a transaction's keys are in its body).
    Whole(&'static [Perm]),
    /// Write permission somewhere (leases are not in a namespace; a put
    /// that binds a key to a lease still needs write on that key).
    AnyWrite,
}

/// One route: method, path as the router spells it, and what it needs.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub need: Need,
}

const fn route(method: &'static str, path: &'static str, need: Need) -> Route {
    Route { method, path, need }
}

const R: &[Perm] = &[Perm::Read];
const W: &[Perm] = &[Perm::Write];
const RW: &[Perm] = &[Perm::Read, Perm::Write];
const WATCH: &[Perm] = &[Perm::Watch];

/// Every route of the API and what it needs. The router
/// ([`super::router`]) serves exactly these; a test walks this table and
/// fails if a route answers without a token.
pub const ROUTES: &[Route] = &[
    route("GET", "/health", Need::Open),
    route("GET", "/metrics", Need::Metrics),
    route("GET", "/v1/status", Need::Member),
    route("GET", "/v1/members", Need::Member),
    route("GET", "/v1/ns", Need::Member),
    route("POST", "/v1/ns", Need::Admin),
    route("GET", "/v1/ns/{ns}", Need::Namespace),
    route("GET", "/v1/ns/{ns}/scan", Need::Prefix(R)),
    route("GET", "/v1/ns/{ns}/kv/{*key}", Need::Key(R)),
    route("PUT", "/v1/ns/{ns}/kv/{*key}", Need::Key(W)),
    route("DELETE", "/v1/ns/{ns}/kv/{*key}", Need::Key(W)),
    route("GET", "/v1/ns/{ns}/counter/{*key}", Need::Key(R)),
    route("POST", "/v1/ns/{ns}/counter/{*key}", Need::Key(W)),
    route("GET", "/v1/ns/{ns}/set/{*key}", Need::Key(R)),
    route("POST", "/v1/ns/{ns}/set/{*key}", Need::Key(W)),
    // A failed CAS answers the current value: it reads too.
    route("POST", "/v1/ns/{ns}/cas/{*key}", Need::Key(RW)),
    // A transaction's keys are in its body: it needs the whole namespace
    // (not `Prefix`: its handler ignores a `?prefix=`, which must not
    // narrow the check).
    route("POST", "/v1/ns/{ns}/txn", Need::Whole(RW)),
    route("GET", "/v1/ns/{ns}/lock/{*name}", Need::Key(R)),
    route("POST", "/v1/ns/{ns}/lock/{*name}", Need::Key(RW)),
    route("DELETE", "/v1/ns/{ns}/lock/{*name}", Need::Key(W)),
    route("POST", "/v1/leases", Need::AnyWrite),
    route("GET", "/v1/leases/{id}", Need::AnyWrite),
    route("DELETE", "/v1/leases/{id}", Need::AnyWrite),
    route("POST", "/v1/leases/{id}/keepalive", Need::AnyWrite),
    route("GET", "/v1/raft", Need::Member),
    route("POST", "/v1/raft/voters", Need::Admin),
    route("DELETE", "/v1/raft/voters/{name}", Need::Admin),
    route("POST", "/v1/auth/bootstrap", Need::Open),
    route("GET", "/v1/auth/whoami", Need::Member),
    route("GET", "/v1/tokens", Need::Admin),
    route("POST", "/v1/tokens", Need::Admin),
    route("DELETE", "/v1/tokens/{name}", Need::Admin),
    route("GET", "/v1/ns/{ns}/watch", Need::Prefix(WATCH)),
    route("GET", "/v1/watch", Need::Prefix(WATCH)),
    route("GET", "/v1/ns/{ns}/snapshot", Need::Prefix(R)),
];

/// The table's entry for a request, or why there is none.
fn classify(method: &Method, path: &str) -> Result<&'static Route, bool> {
    // axum answers HEAD with the GET handler (without the body): it needs
    // what GET needs.
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    let mut path_known = false;
    for r in ROUTES {
        if r.path == path {
            if r.method == method {
                return Ok(r);
            }
            path_known = true;
        }
    }
    Err(path_known)
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"chorus\""));
    response
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}

/// The bearer secret of a request: `Authorization: Bearer SECRET`.
fn bearer(parts: &axum::http::request::Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(secret.trim())
}

fn perms_text(perms: &[Perm]) -> String {
    perms.iter().map(|p| p.as_str()).collect::<Vec<_>>().join("+")
}

/// The layer on every route: reserved namespaces are refused to everyone;
/// with auth on, the caller's token must grant what the route needs. The
/// caller's [`Principal`] is left in the request's extensions.
pub(crate) async fn authorize(State(s): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(matched) = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()) else {
        return next.run(request).await;
    };
    let route = match classify(request.method(), &matched) {
        Ok(route) => route,
        // Another method of a known path: 405 here, never the handler.
        Err(true) => return super::error::method_not_allowed().await.into_response(),
        Err(false) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "route_unclassified",
                format!("route {matched} is not in the route table (api::auth::ROUTES)"),
            )
            .into_response();
        }
    };
    let (mut parts, body) = request.into_parts();
    let params: HashMap<String, String> = match RawPathParams::from_request_parts(&mut parts, &s).await {
        Ok(raw) => raw.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        Err(rejection) => return rejection.into_response(),
    };
    let query: HashMap<String, String> =
        Query::<HashMap<String, String>>::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
    let ns = params.get("ns").or_else(|| query.get("ns")).map(String::as_str);
    if let Some(ns) = ns
        && ns.starts_with(RESERVED_PREFIX)
    {
        return super::error::no_such_namespace(ns).into_response();
    }
    let mut caller: Option<RateKey> = None;
    if s.auth.enabled {
        let open = route.need == Need::Open || (route.need == Need::Metrics && s.auth.metrics_public);
        if !open {
            let Some(secret) = bearer(&parts) else {
                telemetry::auth_refused("401");
                return unauthorized("this route needs a bearer token (Authorization: Bearer TOKEN)");
            };
            let Some(principal) = s.auth.verify(secret, auth::now_ms()) else {
                telemetry::auth_refused("401");
                return unauthorized("the token is unknown, expired or revoked");
            };
            caller = Some(RateKey::Token(principal.record.name.clone()));
            let token = &principal.record;
            let key = params.get("key").or_else(|| params.get("name")).map_or("", String::as_str);
            let prefix = query.get("prefix").map_or("", String::as_str);
            let ns = ns.unwrap_or("");
            let granted = match route.need {
                Need::Open => true,
                Need::Member => true,
                Need::Metrics => token.admin || token.metrics,
                Need::Admin => token.admin,
                Need::AnyWrite => token.allows_anywhere(Perm::Write),
                Need::Namespace => {
                    [Perm::Read, Perm::Write, Perm::Watch].iter().any(|p| token.allows_namespace(*p, ns))
                }
                Need::Key(perms) => perms.iter().all(|p| token.allows(*p, ns, key)),
                Need::Prefix(perms) => perms.iter().all(|p| token.allows(*p, ns, prefix)),
                Need::Whole(perms) => perms.iter().all(|p| token.allows(*p, ns, "")),
            };
            if !granted {
                let what = match route.need {
                    Need::Metrics => "the metrics permission".to_string(),
                    Need::Admin => "the admin permission".to_string(),
                    Need::AnyWrite => "write permission on some namespace".to_string(),
                    Need::Namespace => format!("a rule on namespace {ns:?}"),
                    Need::Key(perms) => format!("{} on key {key:?} of namespace {ns:?}", perms_text(perms)),
                    Need::Prefix(perms) => {
                        format!("{} on every key under {prefix:?} of namespace {ns:?}", perms_text(perms))
                    }
                    Need::Whole(perms) => format!("{} on every key of namespace {ns:?}", perms_text(perms)),
                    Need::Open | Need::Member => String::new(),
                };
                telemetry::auth_refused("403");
                return forbidden(format!("token {:?} lacks {what}", token.name));
            }
            parts.extensions.insert(principal);
        }
    }
    if route.need != Need::Open && s.auth.client_rate.enabled() {
        let key = caller.or_else(|| parts.extensions.get::<ClientAddr>().map(|a| RateKey::of_addr(a.0.ip())));
        if let Some(key) = key
            && let Err(wait) = s.auth.client_rate.check(&key, Instant::now())
        {
            telemetry::rate_limited("client");
            return rate_limited(wait);
        }
    }
    next.run(Request::from_parts(parts, body)).await
}

/// 429 `rate_limited` with `Retry-After` (whole seconds, at least 1).
fn rate_limited(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("over this client's rate limit; retry in {} ms", wait.as_millis().max(1)),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

// ------------------------------------------------------------ token routes

/// Writes one value of the token namespace, creating the namespace first
/// if this node does not have it yet.
async fn write_record(s: &ApiState, key: String, value: Vec<u8>) -> Result<(), ApiError> {
    let exists = s.node.inspect(|node| node.namespace(TOKENS_NAMESPACE).is_some()).await?;
    if !exists {
        // Announced to every reachable node; one that missed it learns it
        // from anti-entropy like any namespace.
        match s.node.create_namespace(TOKENS_NAMESPACE.to_string(), ValueType::Lww).await? {
            Ok(_) => {}
            Err(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "namespace_refused", e.to_string())),
        }
    }
    let write = LocalWrite::new(TOKENS_NAMESPACE, key.into_bytes(), Op::Put { value, context: None });
    s.node.write(write).await?.map_err(write_error)?;
    Ok(())
}

fn record_key(name: &str) -> String {
    format!("{RECORD_PREFIX}{name}")
}

fn token_json(record: &TokenRecord, now_ms: u64) -> Value {
    let targets = |f: fn(&auth::Rule) -> bool| -> Vec<String> {
        record.rules.iter().filter(|r| f(r)).map(auth::Rule::target).collect()
    };
    json!({
        "name": record.name,
        "admin": record.admin,
        "metrics": record.metrics,
        "read": targets(|r| r.read),
        "write": targets(|r| r.write),
        "watch": targets(|r| r.watch),
        "created_ms": record.created_ms,
        "expires_ms": record.expires_ms,
        "revoked_ms": record.revoked_ms,
        "state": record.state_at(now_ms),
    })
}

fn spec_error(e: TokenSpecError) -> ApiError {
    let code = match e {
        TokenSpecError::BadName(_) => "bad_token_name",
        TokenSpecError::BadRule(_) => "bad_rule",
        TokenSpecError::TooManyRules => "too_many_rules",
        TokenSpecError::BadTtl(_) => "bad_ttl",
        TokenSpecError::Empty => "empty_token",
    };
    ApiError::bad_request(code, e.to_string())
}

/// POST /v1/auth/bootstrap: the cluster's first admin token, once per
/// cluster (409 `already_bootstrapped` after that, on any node that has
/// seen the first). The answer's `token` is shown only here.
pub(crate) async fn bootstrap(State(s): State<ApiState>) -> Result<Response, ApiError> {
    // The route is open: after the bootstrap, refuse without taking the
    // token-write lock or asking the node, so callers cannot delay revokes.
    if s.auth.bootstrapped() {
        return Err(already_bootstrapped());
    }
    let _writing = s.auth.writes.lock().await;
    // Bootstrapped once the marker or any token record is here (the two
    // travel separately; a record without its marker must not let a second
    // bootstrap overwrite the first admin token).
    let marker = s.node.inspect(|node| auth::read_replica(node).0).await?;
    if marker || s.auth.bootstrapped() {
        return Err(already_bootstrapped());
    }
    let secret = auth::new_secret();
    let now = auth::now_ms();
    let record = TokenRecord {
        name: "bootstrap".into(),
        hash: auth::hash_secret(&secret),
        rules: Vec::new(),
        admin: true,
        metrics: true,
        created_ms: now,
        expires_ms: None,
        revoked_ms: None,
    };
    let value = serde_json::to_vec(&record).map_err(|e| ApiError::bad_request("bad_record", e.to_string()))?;
    // The marker first: a node that has the record has the marker too, or
    // an older value of it.
    write_record(&s, BOOTSTRAP_KEY.to_string(), now.to_string().into_bytes()).await?;
    write_record(&s, record_key(&record.name), value).await?;
    let mut body = token_json(&record, now);
    body["token"] = Value::String(secret);
    s.auth.upsert(record);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn already_bootstrapped() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_bootstrapped",
        "this cluster already has its bootstrap token; create more with an admin token (POST /v1/tokens)",
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    watch: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    metrics: bool,
    /// `30m`, `12h`, `90d`; default [`TTL_DEFAULT`].
    ttl: Option<String>,
}

/// Lifetime of a created token without `ttl`.
pub const TTL_DEFAULT: &str = "90d";

/// POST /v1/tokens `{"name", "read": ["NS[/PREFIX]"], "write", "watch",
/// "admin", "metrics", "ttl"}`: a new token; its `token` is shown only in
/// this answer. 409 `token_exists` while a valid token has the name.
pub(crate) async fn create(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateToken = parse_body(body)?;
    if !auth::valid_token_name(&req.name) {
        return Err(spec_error(TokenSpecError::BadName(req.name)));
    }
    let rules = auth::build_rules(&req.read, &req.write, &req.watch).map_err(spec_error)?;
    if rules.is_empty() && !req.admin && !req.metrics {
        return Err(spec_error(TokenSpecError::Empty));
    }
    let ttl = auth::parse_ttl(req.ttl.as_deref().unwrap_or(TTL_DEFAULT)).map_err(spec_error)?;
    let _writing = s.auth.writes.lock().await;
    let now = auth::now_ms();
    let records = s.auth.records();
    if records.iter().any(|r| r.name == req.name && r.valid_at(now)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "token_exists",
            format!("a valid token is named {:?}; revoke it first", req.name),
        ));
    }
    if records.len() >= TOKENS_MAX && !records.iter().any(|r| r.name == req.name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_tokens",
            format!("the cluster holds {TOKENS_MAX} token records, the most it keeps"),
        ));
    }
    let secret = auth::new_secret();
    let record = TokenRecord {
        name: req.name,
        hash: auth::hash_secret(&secret),
        rules,
        admin: req.admin,
        metrics: req.metrics,
        created_ms: now,
        expires_ms: Some(now.saturating_add(ttl.as_millis() as u64)),
        revoked_ms: None,
    };
    let value = serde_json::to_vec(&record).map_err(|e| ApiError::bad_request("bad_record", e.to_string()))?;
    write_record(&s, record_key(&record.name), value).await?;
    let mut body = token_json(&record, now);
    body["token"] = Value::String(secret);
    s.auth.upsert(record);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// GET /v1/tokens: every token record this node holds (never a secret or
/// a hash).
pub(crate) async fn list(State(s): State<ApiState>) -> Json<Value> {
    let now = auth::now_ms();
    let tokens: Vec<Value> = s.auth.records().iter().map(|r| token_json(r, now)).collect();
    Json(json!({ "tokens": tokens }))
}

/// DELETE /v1/tokens/{name}: revoke. The record stays, marked, so the
/// revocation replicates; every node refuses the token once it has it.
pub(crate) async fn revoke(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let _writing = s.auth.writes.lock().await;
    let now = auth::now_ms();
    let Some(record) = s.auth.records().into_iter().find(|r| r.name == name) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_such_token", format!("no token is named {name:?}")));
    };
    let mut record = TokenRecord::clone(&record);
    if record.revoked_ms.is_none() {
        record.revoked_ms = Some(now);
        let value = serde_json::to_vec(&record).map_err(|e| ApiError::bad_request("bad_record", e.to_string()))?;
        write_record(&s, record_key(&name), value).await?;
        s.auth.upsert(record.clone());
    }
    Ok(Json(token_json(&record, now)))
}

/// GET /v1/auth/whoami: the caller's token (`{"auth": false}` with auth off).
pub(crate) async fn whoami(State(s): State<ApiState>, request: Request) -> Json<Value> {
    match request.extensions().get::<Principal>() {
        Some(p) => {
            let mut body = token_json(&p.record, auth::now_ms());
            body["auth"] = Value::Bool(true);
            Json(body)
        }
        None => Json(json!({ "auth": s.auth.enabled })),
    }
}

/// Rebuilds this node's token table from its replica every
/// [`auth::REFRESH_INTERVAL`] until the node stops. The read runs on the
/// node task, so it first compares the namespace's fingerprint (O(log n))
/// with the last one and copies the records only when they changed.
pub async fn refresh_loop(state: ApiState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(auth::REFRESH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let generation = state.auth.generation();
        let known = last;
        let read = state.node.inspect(move |node| {
            let fingerprint = node.namespace(TOKENS_NAMESPACE).map(|ns| ns.fingerprint());
            (fingerprint != known || known.is_none()).then(|| (fingerprint, auth::read_replica(node)))
        });
        match tokio::time::timeout(Duration::from_secs(5), read).await {
            Ok(Ok(Some((fingerprint, (bootstrapped, values))))) => {
                let skipped = state.auth.replace(generation, bootstrapped, values);
                if skipped > 0 {
                    tracing::warn!(skipped, "token records that do not decode were ignored");
                }
                // An upsert meanwhile left the table as it was: read again next time.
                if state.auth.generation() == generation {
                    last = fingerprint;
                }
            }
            Ok(Ok(None)) => {}
            // The node is gone: nothing to refresh any more.
            Ok(Err(CallError::Stopped | CallError::Abandoned)) => return,
            Ok(Err(CallError::Timeout)) => {
                tracing::warn!("reading the token table timed out; keeping the previous one")
            }
            Err(_) => tracing::warn!("reading the token table took over 5 s; keeping the previous one"),
        }
    }
}
