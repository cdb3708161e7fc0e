//! Routes about the node rather than a namespace: `/health`, `/metrics`,
//! `/v1/status` and `/v1/members`.

use super::error::ApiError;
use super::{ApiState, namespaces, strong};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chorus_core::{Node, NodeId};
use chorus_net::{MemberState, Membership};
use serde::Serialize;
use serde_json::{Value, json};
use std::net::SocketAddr;

// ---------------------------------------------------------------- health

#[derive(Serialize)]
pub(crate) struct HealthBody {
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
pub(crate) struct HealthStrong {
    /// Raft role: leader, follower, candidate, learner.
    state: String,
    leader: Option<String>,
    has_quorum: bool,
    voters: Vec<String>,
    reachable_voters: Vec<String>,
    /// Why the Raft group stopped on this node; absent while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct HealthClock {
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
/// else `degraded` with the first reason `strong_stopped` when this node's
/// Raft group of strong namespaces stopped (a fatal storage error, a
/// shutdown: every strong request fails until the node restarts), else
/// `no_quorum` when this node cannot reach a majority of the strong
/// namespaces' voters (its strong writes fail), else `partitioned` when
/// this node reaches fewer than half of the known members (itself
/// included), `degraded` when any member is suspect or down
/// (`docs/design/http-api.md`, "Health").
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
            stopped: status.stopped,
        }
    });
    let stopped = strong.as_ref().and_then(|st| st.stopped.clone());
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
    } else if let Some(why) = stopped {
        reasons.insert(
            0,
            format!(
                "strong_stopped: the Raft group of strong namespaces stopped on this node ({why}); \
                 every strong request fails until the node restarts"
            ),
        );
        score = 0.0;
        "degraded"
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
            max_offset_us: clock_status.offset_max_us,
            peers_used: clock_status.peers_used,
            reason: clock_status.reason,
        },
        strong,
    }
}

/// Fewer than half of the known members reachable, this node included
/// (`docs/design/http-api.md`, "Health").
pub fn is_partitioned(membership: &Membership) -> bool {
    let others = membership.members();
    let reachable = 1 + others.iter().filter(|m| m.state == MemberState::Alive).count();
    reachable * 2 < others.len() + 1
}

pub(crate) async fn health(State(s): State<ApiState>) -> Json<HealthBody> {
    Json(health_of(&s))
}

pub(crate) async fn metrics_text(State(s): State<ApiState>) -> Response {
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
    /// Peer (QUIC) address.
    addr: String,
    /// HTTP API address, as the member advertises it in its SWIM identity
    /// (`null` for a member that serves no API).
    api_addr: Option<String>,
    state: &'static str,
    generation: u64,
    tier: u8,
}

/// GET /v1/members: this node and every member its SWIM view holds, each
/// with the API address clients can reach it on.
pub(crate) async fn members(State(s): State<ApiState>) -> Json<Value> {
    let api_addr = |a: Option<SocketAddr>| a.map(|a| a.to_string());
    let me = MemberBody {
        name: s.info.name.clone(),
        node_id: s.info.node_id.to_string(),
        addr: s.info.peer_addr.to_string(),
        api_addr: api_addr(s.membership.local().api_addr),
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
            api_addr: api_addr(m.api_addr),
            state: member_state(m.state),
            generation: m.generation,
            tier: m.tier,
        })
        .collect();
    Json(json!({ "self": me, "members": others }))
}

// ---------------------------------------------------------------- status

pub(crate) async fn status(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let (mut listed, stats, hlc) = s
        .node
        .inspect(|node: &Node| {
            let ns: Vec<namespaces::NamespaceBody> = node.namespaces().map(namespaces::namespace_body).collect();
            (ns, node.stats().clone(), node.hlc_high_water())
        })
        .await?;
    listed.extend(namespaces::strong_namespace_bodies(&s));
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
        "namespaces": listed,
        "hlc": { "physical_us": hlc.physical_us, "logical": hlc.logical },
        "clock": clock,
        "strong": strong::status_json(&s),
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
        "max_offset_us": st.offset_max_us,
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
