//! The leader's lease task: after an election it refreshes every lease, so
//! clients have a full TTL to find the new leader, then proposes
//! `ExpireLeases` whenever a deadline has passed. Time comes from the
//! leader's injected clock and enters the log inside commands, so every
//! replica expires the same leases; a leader whose clock is unsafe proposes
//! neither, and refreshes every lease once its clock is safe again
//! (`docs/design/strong.md`, "Lease time").

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::{Inner, StrongNode};
use crate::kv::KvCommand;

/// On the leader: after winning an election, refresh every lease (a full
/// TTL from now, so clients can find the new leader); then, each tick,
/// propose `ExpireLeases` when some lease's deadline has passed.
pub(super) async fn lease_loop(inner: std::sync::Weak<Inner>) {
    let mut refreshed_term = None;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let node = StrongNode { inner: strong };
        let tick = Duration::from_millis(node.inner.config.lease_tick_ms);
        let metrics = node.metrics();
        let clock = &node.inner.config.clock;
        if !clock.is_safe() {
            // No lease time from an unsafe clock; when it is safe again the
            // refresh below gives every lease a full TTL first, so a lease
            // whose keep-alives were refused meanwhile does not expire at once.
            refreshed_term = None;
        } else if metrics.state == ServerState::Leader && metrics.current_leader == Some(node.inner.id) {
            let now_ms = clock.now_ms();
            let deadline = Instant::now() + Duration::from_millis(node.inner.config.request_timeout_ms);
            if refreshed_term != Some(metrics.current_term) {
                if node.write_local(KvCommand::RefreshLeases { now_ms }, deadline).await.is_ok() {
                    refreshed_term = Some(metrics.current_term);
                }
            } else {
                let expired = {
                    let shared = node.inner.sm.read().unwrap_or_else(PoisonError::into_inner);
                    shared.kv.has_expired_leases(now_ms)
                };
                if expired && let Err(e) = node.write_local(KvCommand::ExpireLeases { now_ms }, deadline).await {
                    tracing::debug!(error = %e, "lease expiry proposal failed");
                }
            }
        } else {
            refreshed_term = None;
        }
        drop(node);
        tokio::time::sleep(tick).await;
    }
}
