//! Prometheus metrics. Names and help texts are an interface.
//!
//! Counters that the core or the transport already keep (`NodeStats`,
//! `TransportStats`) are copied in as absolute values by a periodic upkeep
//! task; events only the daemon sees are counted where they happen.

use crate::clock::ClockSnapshot;
use chorus_clock::PeerKey;
use chorus_core::NodeStats;
use chorus_core::wire::Message;
use chorus_net::{MemberInfo, MemberState, QuarantineReason, TransportStats};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder once and describe every metric.
/// Returns `None` when another recorder was installed first (then `/metrics`
/// says so instead of serving numbers).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle =
                PrometheusBuilder::new().set_quantiles(&[0.5, 0.9, 0.99, 1.0]).ok()?.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!("chorus_writes_total", "Client writes answered, by value type and result.");
    describe_counter!(
        "chorus_rate_limited_total",
        "Requests refused by a rate limit: `kind` client (HTTP 429) or peer (message dropped)."
    );
    describe_counter!(
        "chorus_auth_refused_total",
        "HTTP requests refused by client auth: `status` 401 (no valid token) or 403 (no permission)."
    );
    describe_counter!(
        "chorus_reconcile_sessions_total",
        "Range-based reconciliation sessions (run when seen sets agree but fingerprints differ), by outcome."
    );
    describe_counter!(
        "chorus_reconcile_entries_sent_total",
        "Entries sent because reconciliation found them differing."
    );
    describe_counter!("chorus_reconcile_duration_seconds_total", "Total time of completed reconciliation sessions.");
    describe_counter!(
        "chorus_corrupt_entries_repaired_total",
        "Stored entries that failed their checksum at start-up; dropped and re-fetched from peers by reconciliation."
    );
    describe_counter!("chorus_anti_entropy_entries_sent_total", "Entries sent to peers by anti-entropy.");
    describe_counter!("chorus_reads_total", "Client reads answered (get and scan), by result.");
    describe_counter!(
        "chorus_watch_lagged_total",
        "Watch streams closed with a `lagged` event because their consumer fell behind."
    );
    describe_counter!("chorus_watch_streams_opened_total", "Watch streams opened, by namespace mode.");
    describe_counter!("chorus_watch_events_total", "Watch events sent (data events, not control events).");
    describe_counter!(
        "chorus_session_behind_total",
        "Requests answered 503 `session_behind`: this node had not seen the client's session in time."
    );
    describe_histogram!(
        "chorus_write_ack_seconds",
        Unit::Seconds,
        "Time from receiving a client write to its durable acknowledgement, inside the daemon."
    );
    describe_histogram!(
        "chorus_propagation_seconds",
        Unit::Seconds,
        "Remote writes: local apply time minus the write's HLC physical timestamp (taken on the \
         originating node). Includes the clock offset between the two nodes; measured on pushed \
         writes only, not on writes repaired by anti-entropy."
    );
    describe_counter!("chorus_group_commits_total", "Store commits (one fsync each) made by the node task.");
    describe_histogram!("chorus_group_commit_ops", "Store operations per group commit.");
    describe_histogram!(
        "chorus_group_commit_seconds",
        Unit::Seconds,
        "Time the node task waits for one group commit (queueing in the writer thread plus the redb commit and fsync)."
    );
    describe_counter!("chorus_messages_sent_total", "Replication messages handed to the transport, by kind.");
    describe_counter!("chorus_messages_received_total", "Replication messages decoded from peers, by kind.");
    describe_counter!(
        "chorus_send_dropped_total",
        "Replication messages not sent, by reason (repaired by anti-entropy)."
    );
    describe_counter!("chorus_decode_errors_total", "Undecodable replication messages, by peer.");
    describe_counter!("chorus_broadcasts_sent_total", "Push (broadcast) messages sent (core counter).");
    describe_counter!("chorus_broadcast_items_received_total", "Pushed write items received (core counter).");
    describe_counter!("chorus_broadcast_duplicates_total", "Pushed items already seen (core counter).");
    describe_counter!("chorus_anti_entropy_rounds_total", "Anti-entropy rounds started (core counter).");
    describe_counter!("chorus_anti_entropy_entries_repaired_total", "Entries changed by anti-entropy (core counter).");
    describe_counter!("chorus_lww_overwrites_total", "LWW values replaced by a remote write (conflicts).");
    describe_counter!("chorus_rejected_total", "Remote entries refused, by reason (clock, type, tier, forged).");
    describe_counter!("chorus_tombstones_collected_total", "Tombstones collected once causally stable.");
    describe_counter!("chorus_peer_bytes_sent_total", "Bytes sent to each peer (transport counter).");
    describe_counter!("chorus_peer_bytes_received_total", "Bytes received from each peer (transport counter).");
    describe_counter!("chorus_transport_handshake_failures_total", "Failed TLS handshakes (transport counter).");
    describe_counter!(
        "chorus_peer_messages_sent_total",
        "Replication messages handed to the transport, by destination peer (clock probes and SWIM excluded)."
    );
    describe_counter!(
        "chorus_peer_messages_received_total",
        "Replication messages decoded, by sending peer, before the tier check (clock probes and SWIM excluded)."
    );
    describe_counter!("chorus_clock_probes_total", "Clock probes sent, by result (sampled, sample_rejected, failed).");
    describe_counter!(
        "chorus_clock_probes_refused_total",
        "Incoming requests not answered, by reason (tier, undecodable, unknown_request_kind)."
    );
    describe_counter!("chorus_clock_samples_total", "Clock samples fed to the clock service, by outcome.");
    describe_counter!("chorus_clock_peer_history_resets_total", "Peers whose clock stepped (history restarted).");
    describe_gauge!(
        "chorus_clock_safe",
        "1 when the local clock is within max_offset_ms of cluster time (or unchecked)."
    );
    describe_gauge!("chorus_clock_offset_seconds", "Measured cluster time minus the local OS clock.");
    describe_gauge!(
        "chorus_clock_corrected_offset_seconds",
        "Cluster time minus the corrected clock (what the HLC still lags by)."
    );
    describe_gauge!("chorus_clock_peers_used", "Peers whose clock samples took part in the last selection.");
    describe_gauge!("chorus_clock_drift_ppm", "Local frequency error relative to the cluster, ppm.");
    describe_gauge!("chorus_clock_drift_alarm", "1 when the local drift exceeds drift_tolerance_ppm.");
    describe_gauge!("chorus_clock_correction_seconds", "Correction added to the OS clock for the HLC.");
    describe_gauge!("chorus_clock_correction_target_seconds", "Where the slewed correction is heading.");
    describe_gauge!("chorus_clock_correction_rate_ppm", "Rate at which the correction moved recently, ppm.");
    describe_gauge!("chorus_clock_peer_offset_seconds", "Peer clock minus the local OS clock, by peer.");
    describe_gauge!("chorus_clock_peer_delay_seconds", "Round-trip delay of the best clock sample, by peer.");
    describe_gauge!("chorus_clock_peer_error_bound_seconds", "Error bound of the peer offset estimate, by peer.");
    describe_gauge!("chorus_clock_peer_drift_ppm", "Peer clock frequency relative to ours, ppm (0 until known).");
    describe_gauge!("chorus_clock_peer_falseticker", "1 when the peer was flagged a falseticker, by peer.");
    describe_counter!(
        "chorus_strong_registry_reads_total",
        "Linearizable reads of the strong-namespace registry (asking the Raft leader about a namespace name \
         that no local registry knew)."
    );
    describe_counter!(
        "chorus_peer_quarantines_total",
        "Peers disconnected and quarantined, by reason (framing, bad_checksum, undecodable, forged_dots)."
    );
    describe_counter!(
        "chorus_transport_frame_errors_total",
        "Oversized or truncated frames received (transport counter; the peer is quarantined)."
    );
    describe_counter!(
        "chorus_transport_frame_deadlines_total",
        "Frames not complete within frame_read_deadline_ms; their streams were stopped (transport counter)."
    );
    describe_counter!(
        "chorus_transport_frame_budget_refusals_total",
        "Frames that did not fit their peer's in-flight frame bytes; their streams were stopped (transport counter)."
    );
    describe_counter!(
        "chorus_http_refused_total",
        "HTTP requests refused or cut short by a server bound, by reason (overloaded, too_many_streams, timeout)."
    );
    describe_gauge!("chorus_members", "Other members known, by SWIM state.");
    describe_gauge!("chorus_partitioned", "1 when fewer than half the known members are reachable.");
}

pub fn group_committed(ops: usize, seconds: f64) {
    counter!("chorus_group_commits_total").increment(1);
    histogram!("chorus_group_commit_seconds").record(seconds);
    histogram!("chorus_group_commit_ops").record(ops as f64);
}

pub fn write_answered(value_type: &'static str, result: &'static str, seconds: f64) {
    counter!("chorus_writes_total", "type" => value_type, "result" => result).increment(1);
    histogram!("chorus_write_ack_seconds").record(seconds);
}

pub fn rate_limited(kind: &'static str) {
    counter!("chorus_rate_limited_total", "kind" => kind).increment(1);
}

pub fn auth_refused(status: &'static str) {
    counter!("chorus_auth_refused_total", "status" => status).increment(1);
}

pub fn read_answered(result: &'static str) {
    counter!("chorus_reads_total", "result" => result).increment(1);
}

pub fn strong_registry_read() {
    counter!("chorus_strong_registry_reads_total").increment(1);
}

pub fn propagation(us: u64) {
    histogram!("chorus_propagation_seconds").record(us as f64 / 1e6);
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Push(_) => "push",
        Message::SyncRequest(_) => "sync_request",
        Message::SyncReply(_) => "sync_reply",
        Message::SyncPush(_) => "sync_push",
        Message::Reconcile(_) => "reconcile",
        Message::Announce(_) => "announce",
        Message::Confirm(_) => "confirm",
    }
}

pub fn message_sent(peer: &str, message: &Message) {
    counter!("chorus_messages_sent_total", "kind" => kind(message)).increment(1);
    counter!("chorus_peer_messages_sent_total", "peer" => peer.to_string()).increment(1);
}

pub fn message_received(peer: &str, message: &Message) {
    counter!("chorus_messages_received_total", "kind" => kind(message)).increment(1);
    counter!("chorus_peer_messages_received_total", "peer" => peer.to_string()).increment(1);
}

pub fn probe_refused(reason: &'static str) {
    counter!("chorus_clock_probes_refused_total", "reason" => reason).increment(1);
}

pub fn probe_done(result: &'static str) {
    counter!("chorus_clock_probes_total", "result" => result).increment(1);
}

fn bool_gauge(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Clock-service gauges after a probe round. `names` maps clock-service
/// peer keys (node ids) to member names for the `peer` label.
pub fn clock(snapshot: &ClockSnapshot, names: &HashMap<PeerKey, String>) {
    let st = &snapshot.status;
    gauge!("chorus_clock_safe").set(bool_gauge(st.safe));
    gauge!("chorus_clock_offset_seconds").set(st.offset_us as f64 / 1e6);
    gauge!("chorus_clock_corrected_offset_seconds").set(st.corrected_offset_us as f64 / 1e6);
    gauge!("chorus_clock_peers_used").set(st.peers_used as f64);
    gauge!("chorus_clock_drift_alarm").set(bool_gauge(st.drift_alarm));
    if let Some(drift) = snapshot.estimate.as_ref().and_then(|e| e.drift_ppm) {
        gauge!("chorus_clock_drift_ppm").set(drift);
    }
    let c = &snapshot.correction;
    gauge!("chorus_clock_correction_seconds").set(c.correction_us as f64 / 1e6);
    gauge!("chorus_clock_correction_target_seconds").set(c.target_us as f64 / 1e6);
    gauge!("chorus_clock_correction_rate_ppm").set(c.rate_ppm);
    for p in &snapshot.peers {
        let Some(name) = names.get(&p.peer) else { continue };
        let peer = name.clone();
        gauge!("chorus_clock_peer_offset_seconds", "peer" => peer.clone()).set(p.offset_us as f64 / 1e6);
        gauge!("chorus_clock_peer_delay_seconds", "peer" => peer.clone()).set(p.delay_us as f64 / 1e6);
        gauge!("chorus_clock_peer_error_bound_seconds", "peer" => peer.clone()).set(p.error_bound_us as f64 / 1e6);
        gauge!("chorus_clock_peer_drift_ppm", "peer" => peer.clone()).set(p.drift_ppm.unwrap_or(0.0));
        gauge!("chorus_clock_peer_falseticker", "peer" => peer).set(bool_gauge(p.falseticker));
    }
    let k = &snapshot.counters;
    counter!("chorus_clock_samples_total", "result" => "accepted").absolute(k.samples_accepted);
    counter!("chorus_clock_samples_total", "result" => "rejected_tier").absolute(k.samples_rejected_tier);
    counter!("chorus_clock_samples_total", "result" => "rejected_invalid").absolute(k.samples_rejected_invalid);
    counter!("chorus_clock_samples_total", "result" => "rejected_peer_limit").absolute(k.samples_rejected_peer_limit);
    counter!("chorus_clock_samples_total", "result" => "held_as_spike").absolute(k.samples_held_as_spike);
    counter!("chorus_clock_peer_history_resets_total").absolute(k.peer_history_resets);
}

pub fn send_dropped(reason: &'static str) {
    counter!("chorus_send_dropped_total", "reason" => reason).increment(1);
}

pub fn decode_error(peer: &str) {
    counter!("chorus_decode_errors_total", "peer" => peer.to_string()).increment(1);
}

pub fn watch_lagged() {
    counter!("chorus_watch_lagged_total").increment(1);
}

/// A watch stream opened (`mode`: eventual or strong) or ended (`reason`).
pub fn watch_opened(mode: &'static str) {
    counter!("chorus_watch_streams_opened_total", "mode" => mode).increment(1);
}

pub fn watch_events(n: usize) {
    counter!("chorus_watch_events_total").increment(n as u64);
}

pub fn session_behind() {
    counter!("chorus_session_behind_total").increment(1);
}

pub fn http_refused(reason: &'static str) {
    counter!("chorus_http_refused_total", "reason" => reason).increment(1);
}

pub fn members(view: &[MemberInfo]) {
    let count = |s: MemberState| view.iter().filter(|m| m.state == s).count() as f64;
    gauge!("chorus_members", "state" => "alive").set(count(MemberState::Alive));
    gauge!("chorus_members", "state" => "suspect").set(count(MemberState::Suspect));
    gauge!("chorus_members", "state" => "down").set(count(MemberState::Down));
}

/// A member's signing card did not verify against the cluster CA.
pub fn signing_card_refused() {
    counter!("chorus_signing_cards_refused_total").increment(1);
}

/// Copy the core's and the transport's counters in.
pub fn upkeep(stats: &NodeStats, transport: &TransportStats, partitioned: bool) {
    counter!("chorus_broadcasts_sent_total").absolute(stats.push_messages_sent);
    counter!("chorus_broadcast_items_received_total").absolute(stats.push_items_received);
    counter!("chorus_broadcast_duplicates_total").absolute(stats.push_duplicates);
    counter!("chorus_anti_entropy_rounds_total").absolute(stats.sync_rounds_started);
    counter!("chorus_anti_entropy_entries_repaired_total").absolute(stats.sync_entries_repaired);
    counter!("chorus_anti_entropy_entries_sent_total").absolute(stats.sync_entries_sent);
    counter!("chorus_reconcile_sessions_total", "outcome" => "started").absolute(stats.reconcile_sessions_started);
    counter!("chorus_reconcile_sessions_total", "outcome" => "completed").absolute(stats.reconcile_sessions_completed);
    counter!("chorus_reconcile_sessions_total", "outcome" => "failed").absolute(stats.reconcile_sessions_failed);
    counter!("chorus_reconcile_entries_sent_total").absolute(stats.reconcile_entries_sent);
    counter!("chorus_reconcile_duration_seconds_total").absolute(stats.reconcile_duration_us / 1_000_000);
    counter!("chorus_corrupt_entries_repaired_total").absolute(stats.corrupt_entries_dropped);
    counter!("chorus_lww_overwrites_total").absolute(stats.lww_overwrites);
    counter!("chorus_tombstones_collected_total").absolute(stats.tombstones_collected);
    counter!("chorus_rejected_total", "reason" => "clock").absolute(stats.rejected_clock);
    counter!("chorus_rejected_total", "reason" => "type").absolute(stats.rejected_type);
    counter!("chorus_rejected_total", "reason" => "tier").absolute(stats.rejected_tier);
    counter!("chorus_rejected_total", "reason" => "forged").absolute(stats.rejected_forged);
    counter!("chorus_rejected_total", "reason" => "bad_signature").absolute(stats.rejected_signature);
    counter!("chorus_rejected_total", "reason" => "unknown_origin").absolute(stats.rejected_unknown_origin);
    counter!("chorus_rejected_total", "reason" => "revoked_origin").absolute(stats.rejected_revoked);
    counter!("chorus_write_blocks_signed_total").absolute(stats.blocks_signed);
    counter!("chorus_signatures_verified_total").absolute(stats.signatures_checked);
    counter!("chorus_unprovable_entries_total").absolute(stats.unprovable_entries);
    for (peer, s) in transport.peers_snapshot() {
        counter!("chorus_peer_bytes_sent_total", "peer" => peer.clone()).absolute(s.bytes_sent);
        counter!("chorus_peer_bytes_received_total", "peer" => peer).absolute(s.bytes_received);
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    counter!("chorus_transport_handshake_failures_total").absolute(load(&transport.handshake_failures));
    counter!("chorus_transport_frame_errors_total").absolute(load(&transport.frame_errors));
    counter!("chorus_transport_frame_deadlines_total").absolute(load(&transport.frame_read_deadlines));
    counter!("chorus_transport_frame_budget_refusals_total").absolute(load(&transport.frame_budget_refusals));
    for reason in QuarantineReason::ALL {
        counter!("chorus_peer_quarantines_total", "reason" => reason.as_str()).absolute(transport.quarantines(reason));
    }
    gauge!("chorus_partitioned").set(if partitioned { 1.0 } else { 0.0 });
}
