//! Which mode a namespace has, and the namespace routes (`/v1/ns`,
//! `/v1/ns/{ns}`).
//!
//! A name is eventual, strong, or unknown. [`resolve_mode`] is the one
//! place that decides, and every route naming a namespace calls it before
//! it reads the request body, so a request is parsed with its mode's own
//! type and no route guesses a mode from another mode's error.

use super::error::{ApiError, no_such_namespace, parse_body, strong_error};
use super::{ApiState, strong};
use crate::strong::StrongService;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chorus_core::NodeId;
use chorus_core::node::NamespaceError;
use chorus_core::{Node, ValueType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

/// The mode of a namespace that exists.
#[derive(Clone)]
pub enum Mode {
    /// CRDTs replicated by gossip and anti-entropy (the node task).
    Eventual,
    /// Raft (the strong service).
    Strong(Arc<StrongService>),
}

/// Eventual namespaces the API has already found in the node.
///
/// Eventual namespaces are never dropped, so a name once found stays
/// eventual: the set needs no invalidation, and it is bounded by the
/// node's own namespaces since only names the node has enter it.
#[derive(Clone, Default)]
pub struct EventualNames(Arc<RwLock<HashSet<String>>>);

impl EventualNames {
    fn contains(&self, ns: &str) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(ns)
    }

    fn insert(&self, ns: &str) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(ns.to_string());
    }
}

/// The mode of namespace `ns`, or `None` when no registry has it.
///
/// Looked up cheapest first, and a Raft read only when nothing local knows
/// the name:
/// 1. eventual names already found in the node ([`EventualNames`], memory);
/// 2. this replica's strong registry ([`StrongService::is_strong`], memory
///    and the local state machine; no Raft round trip, so a strong request
///    never waits behind the eventual node task's turns);
/// 3. the node's eventual namespaces (one `inspect` of the node task);
/// 4. the strong registry on the Raft leader
///    ([`StrongService::is_strong_linearizable`]): a strong namespace
///    created through another node a moment ago, not yet applied here.
///
/// Both registries only grow and a name found in one is not looked up in
/// the other, so a name keeps the mode this node first found for it (the
/// one exception: two nodes creating the same name in both modes at once,
/// which the `mode_conflict` checks, not atomic across modes, allow). A
/// failure of step 4 (no quorum, no leader, deadline) is answered
/// as that failure, not as a 404 that could be wrong.
pub async fn find_mode(s: &ApiState, ns: &str) -> Result<Option<Mode>, ApiError> {
    if s.eventual_names.contains(ns) {
        return Ok(Some(Mode::Eventual));
    }
    if let Some(svc) = &s.strong
        && svc.is_strong(ns)
    {
        return Ok(Some(Mode::Strong(svc.clone())));
    }
    let name = ns.to_string();
    if s.node.inspect(move |node: &Node| node.namespace(&name).is_some()).await? {
        s.eventual_names.insert(ns);
        return Ok(Some(Mode::Eventual));
    }
    if let Some(svc) = &s.strong {
        match svc.is_strong_linearizable(ns).await {
            Ok(true) => return Ok(Some(Mode::Strong(svc.clone()))),
            Ok(false) => {}
            Err(e) => return Err(strong_error(svc, e)),
        }
    }
    Ok(None)
}

/// The mode of namespace `ns`, or 404 `no_such_namespace` (see [`find_mode`]).
pub async fn resolve_mode(s: &ApiState, ns: &str) -> Result<Mode, ApiError> {
    find_mode(s, ns).await?.ok_or_else(|| no_such_namespace(ns))
}

#[derive(Serialize)]
pub(crate) struct NamespaceBody {
    name: String,
    mode: &'static str,
    #[serde(rename = "type")]
    value_type: &'static str,
    keys: usize,
}

pub(crate) fn namespace_body(ns: &chorus_core::namespace::Namespace) -> NamespaceBody {
    NamespaceBody {
        name: ns.name().to_string(),
        mode: "eventual",
        value_type: ns.value_type().as_str(),
        keys: ns.len().saturating_sub(ns.tombstone_count()),
    }
}

fn strong_body(name: String, keys: u64) -> NamespaceBody {
    NamespaceBody { name, mode: "strong", value_type: "lww", keys: keys as usize }
}

/// Strong namespaces as this node's replica knows them.
pub(crate) fn strong_namespace_bodies(s: &ApiState) -> Vec<NamespaceBody> {
    let Some(svc) = &s.strong else { return Vec::new() };
    svc.namespaces().into_iter().map(|(name, keys)| strong_body(name, keys)).collect()
}

/// GET /v1/ns: eventual namespaces of the node, then strong ones of this replica.
pub(crate) async fn list_namespaces(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    // Reserved namespaces (`_chorus.…`, e.g. the token records) are chorus's own.
    let mut list: Vec<NamespaceBody> = s
        .node
        .inspect(|node: &Node| {
            node.namespaces()
                .filter(|ns| !ns.name().starts_with(crate::auth::RESERVED_PREFIX))
                .map(namespace_body)
                .collect()
        })
        .await?;
    list.extend(strong_namespace_bodies(&s));
    Ok(Json(json!({ "namespaces": list })))
}

/// GET /v1/ns/{ns}.
pub(crate) async fn get_namespace(
    State(s): State<ApiState>,
    Path(ns): Path<String>,
) -> Result<Json<NamespaceBody>, ApiError> {
    match resolve_mode(&s, &ns).await? {
        Mode::Eventual => {
            let name = ns.clone();
            let found = s.node.inspect(move |node: &Node| node.namespace(&name).map(namespace_body)).await?;
            found.map(Json).ok_or_else(|| no_such_namespace(&ns))
        }
        Mode::Strong(svc) => {
            let keys = svc.key_count(&ns);
            Ok(Json(strong_body(ns, keys)))
        }
    }
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

/// POST /v1/ns `{"name", "mode", "type"}`.
pub(crate) async fn create_namespace(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NamespaceBody>), ApiError> {
    let req: CreateNamespaceRequest = parse_body(body)?;
    if req.name.starts_with(crate::auth::RESERVED_PREFIX) {
        return Err(ApiError::bad_request(
            "reserved_namespace",
            format!("namespace names starting with {:?} are reserved for chorus", crate::auth::RESERVED_PREFIX),
        ));
    }
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
        Ok(outcome) if !outcome.unconfirmed.is_empty() => {
            s.eventual_names.insert(&req.name);
            Err(unconfirmed_error(&s, &req.name, &outcome.unconfirmed))
        }
        Ok(_) => {
            s.eventual_names.insert(&req.name);
            Ok((
                StatusCode::CREATED,
                Json(NamespaceBody { name: req.name, mode: "eventual", value_type: value_type.as_str(), keys: 0 }),
            ))
        }
        Err(e @ NamespaceError::TypeConflict { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "type_conflict", e.to_string()))
        }
        Err(e @ NamespaceError::InvalidName(_)) => Err(ApiError::bad_request("bad_namespace_name", e.to_string())),
        Err(e) => Err(ApiError::bad_request("namespace_refused", e.to_string())),
    }
}

/// 504: the namespace was created here (and wherever the announcement
/// reached: `docs/design/replication.md`, "Namespace creation"), but these
/// live members did not confirm it within `namespace_confirm_timeout_ms`.
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
    .with_details(serde_json::json!({ "unconfirmed": missing }))
}

async fn create_strong_namespace(
    s: &ApiState,
    name: String,
    value_type: ValueType,
) -> Result<(StatusCode, Json<NamespaceBody>), ApiError> {
    let svc = strong::service(s)?;
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
    let created = svc.create_namespace(&name).await.map_err(|e| strong_error(svc, e))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(strong_body(name, 0))))
}
