//! The daemon's configuration: one TOML file, every key has a default, and an
//! unknown key is an error naming it.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Largest accepted `http_requests_in_flight_max` and
/// `http_streams_open_max` (each open request or stream holds a task and a
/// file descriptor; a million is far past what one node can serve).
pub const HTTP_CONCURRENCY_MAX: usize = 1_000_000;

/// Everything `chorus agent --config FILE` reads. Field names are the TOML
/// keys and a stable interface.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name: a DNS-style label (`node1`, `edge-42.eu`). It must
    /// equal the name in the node certificate and is the node's identity
    /// across restarts (`NodeId::from_name`).
    pub name: String,
    /// Cluster name (informational; trust comes from the CA).
    pub cluster_name: String,
    /// Where the store (`chorus.redb`) lives.
    pub data_dir: PathBuf,
    /// HTTP/JSON API address.
    pub api_addr: SocketAddr,
    /// QUIC address peers connect to (bind address).
    pub peer_addr: SocketAddr,
    /// Address advertised to peers; defaults to `peer_addr` (which must then
    /// not be a wildcard address).
    pub advertise_addr: Option<SocketAddr>,
    /// Peer addresses of nodes to join through (any live member will do).
    pub seeds: Vec<SocketAddr>,
    /// Directory holding `node.pem`, `node.key` and `ca.pem`.
    pub tls_dir: PathBuf,
    /// Tier 0–8; a node exchanges data only with tiers t-1..t+1
    /// (`docs/design/clock.md`, "Tiers").
    pub tier: u8,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: u32,
    /// Period of anti-entropy rounds.
    pub anti_entropy_interval_ms: u64,
    /// Peers a new write is pushed to; 0 = ceil(log2(peers + 1)).
    pub fanout: u32,
    /// Hops a write is forwarded at most; 0 = ceil(log2(peers + 1)) + 3.
    pub hop_limit: u8,
    /// Clock safety bound (`docs/design/clock.md`, "Safety"): a node whose
    /// clock is further than this from cluster time refuses writes and
    /// refuses to join; remote timestamps further ahead of our clock are
    /// refused.
    pub max_offset_ms: u64,
    /// Every live peer of an adjacent tier gets one clock probe this often.
    pub clock_probe_interval_ms: u64,
    /// Deadline of every HTTP request inside the daemon.
    pub request_timeout_ms: u64,
    /// Bound of the command queue into the node task; a full queue answers
    /// 503 rather than queueing without limit.
    pub command_queue_max: usize,
    /// Most client writes merged into one group commit.
    pub group_commit_writes_max: usize,
    /// SWIM probe period.
    pub probe_period_ms: u64,
    /// SWIM: a suspect that does not refute within this is declared down.
    pub suspect_to_down_after_ms: u64,
    /// `tracing` filter when `RUST_LOG` is unset.
    pub log: String,
    /// Names of the Raft voters of the cluster's strong namespaces
    /// (`docs/design/strong.md`): 1, 3, 5 or 7 names, the same list on every
    /// node. Empty: strong namespaces are disabled on this cluster. The lowest
    /// name bootstraps the group once every voter is alive; every other node
    /// joins as a learner (it forwards writes and serves `stale=true` reads).
    /// Voters change at runtime with `chorus raft add-voter/remove-voter`;
    /// this list only seeds a new cluster.
    pub strong_voters: Vec<String>,
    /// Raft heartbeat period.
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout, lower bound (randomised up to the upper bound).
    pub raft_election_timeout_min_ms: u64,
    /// Raft election timeout, upper bound.
    pub raft_election_timeout_max_ms: u64,
    /// Raft pre-vote: a partitioned node cannot disrupt a healthy leader.
    pub raft_pre_vote: bool,
    /// How long creating an eventual namespace waits for every reachable
    /// node to confirm it holds it; past it the create answers 504 naming
    /// the members that did not (it was still created where it reached).
    pub namespace_confirm_timeout_ms: u64,
    /// Threads of the async runtime; 0 = automatic: one less than the CPUs
    /// available, at least one (see [`Config::runtime_worker_threads`]).
    pub worker_threads: usize,
    /// Deadline of a whole HTTP request on a request route (reading the
    /// body included); past it the answer is 504 `timeout`. At least
    /// `request_timeout_ms`, and above the longest lock wait (60 s) so a
    /// lock request is never cut short. Streaming routes are exempt
    /// (`docs/design/http-api.md`, "Limits").
    pub http_request_timeout_ms: u64,
    /// A connection that has not sent a request's whole header within this
    /// long of the request's start (or of the connection's start, or of the
    /// previous answer on a kept-alive connection) is closed.
    pub http_header_timeout_ms: u64,
    /// Requests of request routes running at once; one more is answered 503
    /// `overloaded` at once (refused, nothing changed).
    pub http_requests_in_flight_max: usize,
    /// Answers of streaming routes (watch) open at once; one more is
    /// answered 503 `too_many_streams`.
    pub http_streams_open_max: usize,
    /// How long a request carrying a session (`Chorus-Session`), or a watch
    /// resumed from a token, waits for this node to catch up with it before
    /// answering 503 `session_behind` / `watch_behind` (never older data;
    /// `docs/design/watch.md`). A request route's wait also ends with its
    /// `http_request_timeout_ms` (504 `timeout` then).
    pub session_wait_ms: u64,
    /// How long a write's idempotency key (`request_id`) is remembered: a
    /// retry with the same key within it returns the first outcome and
    /// applies nothing. Strong namespaces stamp it into the Raft log
    /// (`docs/design/strong.md`, "Idempotent writes").
    pub idempotency_window_ms: u64,
    /// Bytes of one strong snapshot chunk: the unit a snapshot is written
    /// to the store in, read back in and sent to a follower in
    /// (`docs/design/strong.md`, "Snapshot format").
    pub strong_snapshot_chunk_bytes: usize,
    /// Build a strong snapshot (and purge the Raft log) every this many
    /// applied entries.
    pub strong_snapshot_every_entries: u64,
    /// Raft log entries kept behind a snapshot, so a follower that lags by
    /// fewer catches up from the log rather than by snapshot.
    pub strong_snapshot_log_kept_entries: u64,
    /// Watch events of strong namespaces this node keeps (a watcher asking
    /// for older ones is told `compacted`).
    pub strong_watch_history_events_max: usize,
    /// Bytes of keys and values in that watch history, at most.
    pub strong_watch_history_bytes_max: usize,
    /// Client tokens (`docs/design/security.md`, "Client tokens"): when on,
    /// every route but `/health` needs a bearer token (401 without a valid
    /// one, 403 without the permission). The first admin token comes from
    /// `chorus token bootstrap`. Off by default, so `chorus dev` stays one
    /// command (`chorus dev --auth` turns it on).
    pub auth_enabled: bool,
    /// With `auth_enabled`, `/metrics` answers without a token.
    pub metrics_public: bool,
    /// Writes signed by their origin (`docs/design/signing.md`): every
    /// write is covered by its origin's ed25519 signature (one per turn of
    /// writes) and every node refuses data its origins did not sign,
    /// quarantining the sender. Needs `signing.json` in `tls_dir` (written
    /// by `chorus ca issue`). The whole cluster must agree; off only for
    /// the benchmark's comparison.
    pub signing_enabled: bool,
    /// HTTP requests a second per client: per token, or per IP address for
    /// requests without one (`docs/design/security.md`, "Rate limits").
    /// Over it the answer is 429 `rate_limited` with `Retry-After`. 0: off.
    /// `/health` and the bootstrap are not limited.
    pub rate_limit_client_per_s: u64,
    /// Requests a client may send at once above its rate (0: the rate).
    pub rate_limit_client_burst: u64,
    /// Replication messages and requests a second per peer; over it they
    /// are dropped and counted (anti-entropy repairs what a dropped push
    /// carried). 0: off.
    pub rate_limit_peer_per_s: u64,
    /// Messages a peer may send at once above its rate (0: the rate).
    pub rate_limit_peer_burst: u64,
    /// A revocation list signed by the cluster CA (`chorus ca revoke`
    /// writes it as `revocations.json` next to the CA): nodes and
    /// certificates it names can neither connect nor stay connected. Read
    /// at start (a damaged one stops the start) and again whenever it
    /// changes (a damaged change is logged and ignored). Unset: none.
    pub revocation_list: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "node1".into(),
            cluster_name: "chorus".into(),
            data_dir: PathBuf::from("chorus-data"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7101)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 7201)),
            advertise_addr: None,
            seeds: Vec::new(),
            tls_dir: PathBuf::from("chorus-tls"),
            tier: 0,
            max_value_bytes: chorus_core::limits::VALUE_BYTES_DEFAULT as u32,
            anti_entropy_interval_ms: 1_000,
            fanout: 0,
            hop_limit: 0,
            max_offset_ms: 500,
            clock_probe_interval_ms: 1_000,
            request_timeout_ms: 5_000,
            command_queue_max: 16_384,
            group_commit_writes_max: 4_096,
            probe_period_ms: 250,
            suspect_to_down_after_ms: 750,
            log: "info".into(),
            strong_voters: Vec::new(),
            raft_heartbeat_ms: 50,
            raft_election_timeout_min_ms: 150,
            raft_election_timeout_max_ms: 300,
            raft_pre_vote: true,
            namespace_confirm_timeout_ms: 3_000,
            worker_threads: 0,
            http_request_timeout_ms: 75_000,
            session_wait_ms: 2_000,
            http_header_timeout_ms: 10_000,
            http_requests_in_flight_max: 1_024,
            http_streams_open_max: 1_000,
            idempotency_window_ms: chorus_strong::node::IDEMPOTENCY_WINDOW_MS_DEFAULT,
            strong_snapshot_chunk_bytes: chorus_strong::node::SNAPSHOT_CHUNK_BYTES_DEFAULT,
            strong_snapshot_every_entries: 100_000,
            strong_snapshot_log_kept_entries: 5_000,
            strong_watch_history_events_max: chorus_strong::kv::WATCH_HISTORY_MAX,
            strong_watch_history_bytes_max: chorus_strong::kv::WATCH_HISTORY_BYTES_DEFAULT,
            auth_enabled: false,
            metrics_public: false,
            signing_enabled: true,
            rate_limit_client_per_s: 0,
            rate_limit_client_burst: 0,
            rate_limit_peer_per_s: 0,
            rate_limit_peer_burst: 0,
            revocation_list: None,
        }
    }
}

/// Why a configuration was refused. Nothing was started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Syntax errors, wrong types and unknown keys (the message names the key).
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Parse a TOML document and check every value.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The async runtime's thread count: `worker_threads` if set, else
    /// `$TOKIO_WORKER_THREADS` if set, else one less than the CPUs available
    /// (at least one). The storage writer and the redb applier are threads
    /// of their own, busy on every write; leaving them a CPU instead of
    /// running one runtime thread per CPU beside them cut cross-thread
    /// wake-ups enough that strong writes went up 25–30% at 16 clients on
    /// a 2-CPU machine (`chorus bench strong`, docs/design/strong.md).
    pub fn runtime_worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        if let Some(n) =
            std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0)
        {
            return n;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    }

    /// Read and parse a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Check the values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if let Err(e) = chorus_net::ca::validate_node_name(&self.name) {
            return invalid("name", e.to_string());
        }
        if self.tier > chorus_core::TIER_MAX {
            return invalid("tier", format!("{} is above {}", self.tier, chorus_core::TIER_MAX));
        }
        if !(1..=600_000).contains(&self.namespace_confirm_timeout_ms) {
            return invalid("namespace_confirm_timeout_ms", "must be in 1..=600000".into());
        }
        let cap = chorus_core::limits::VALUE_BYTES_CAP as u32;
        if self.max_value_bytes == 0 || self.max_value_bytes > cap {
            return invalid("max_value_bytes", format!("must be in 1..={cap}"));
        }
        if self.anti_entropy_interval_ms == 0 {
            return invalid("anti_entropy_interval_ms", "must be > 0".into());
        }
        if self.max_offset_ms == 0 || self.max_offset_ms > 3_600_000 {
            return invalid("max_offset_ms", "must be in 1..=3600000".into());
        }
        if !(50..=60_000).contains(&self.clock_probe_interval_ms) {
            return invalid("clock_probe_interval_ms", "must be in 50..=60000".into());
        }
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms", "must be > 0".into());
        }
        if self.command_queue_max == 0 {
            return invalid("command_queue_max", "must be > 0".into());
        }
        if self.group_commit_writes_max == 0 {
            return invalid("group_commit_writes_max", "must be > 0".into());
        }
        if self.probe_period_ms < 20 {
            return invalid("probe_period_ms", "must be at least 20".into());
        }
        if self.suspect_to_down_after_ms == 0 {
            return invalid("suspect_to_down_after_ms", "must be > 0".into());
        }
        if !self.strong_voters.is_empty() {
            if !chorus_strong::node::VOTER_COUNTS.contains(&self.strong_voters.len()) {
                return invalid(
                    "strong_voters",
                    format!("{} names; a Raft group has 1, 3, 5 or 7 voters", self.strong_voters.len()),
                );
            }
            let mut names = self.strong_voters.clone();
            names.sort();
            names.dedup();
            if names.len() != self.strong_voters.len() {
                return invalid("strong_voters", "a name appears twice".into());
            }
            for name in &self.strong_voters {
                if let Err(e) = chorus_net::ca::validate_node_name(name) {
                    return invalid("strong_voters", format!("{name:?}: {e}"));
                }
            }
        }
        if self.raft_heartbeat_ms == 0
            || self.raft_election_timeout_min_ms <= self.raft_heartbeat_ms
            || self.raft_election_timeout_max_ms <= self.raft_election_timeout_min_ms
        {
            return invalid(
                "raft_election_timeout_min_ms",
                "need 0 < raft_heartbeat_ms < raft_election_timeout_min_ms < raft_election_timeout_max_ms".into(),
            );
        }
        if self.http_request_timeout_ms < self.request_timeout_ms {
            return invalid(
                "http_request_timeout_ms",
                format!("must be at least request_timeout_ms ({})", self.request_timeout_ms),
            );
        }
        if self.http_header_timeout_ms == 0 {
            return invalid("http_header_timeout_ms", "must be > 0".into());
        }
        if !(1..=HTTP_CONCURRENCY_MAX).contains(&self.http_requests_in_flight_max) {
            return invalid("http_requests_in_flight_max", format!("must be in 1..={HTTP_CONCURRENCY_MAX}"));
        }
        if !(1..=HTTP_CONCURRENCY_MAX).contains(&self.http_streams_open_max) {
            return invalid("http_streams_open_max", format!("must be in 1..={HTTP_CONCURRENCY_MAX}"));
        }
        if !(1..=chorus_strong::kv::IDEMPOTENCY_WINDOW_MS_MAX).contains(&self.idempotency_window_ms) {
            return invalid(
                "idempotency_window_ms",
                format!("must be in 1..={}", chorus_strong::kv::IDEMPOTENCY_WINDOW_MS_MAX),
            );
        }
        let chunk = chorus_strong::node::SNAPSHOT_CHUNK_BYTES_MIN..=chorus_strong::node::SNAPSHOT_CHUNK_BYTES_MAX;
        if !chunk.contains(&self.strong_snapshot_chunk_bytes) {
            return invalid("strong_snapshot_chunk_bytes", format!("must be in {}..={}", chunk.start(), chunk.end()));
        }
        if self.strong_snapshot_every_entries == 0 {
            return invalid("strong_snapshot_every_entries", "must be > 0".into());
        }
        if self.strong_watch_history_events_max == 0 {
            return invalid("strong_watch_history_events_max", "must be > 0".into());
        }
        if self.strong_watch_history_bytes_max == 0 {
            return invalid("strong_watch_history_bytes_max", "must be > 0".into());
        }
        if self.advertise_addr.is_none() && self.peer_addr.ip().is_unspecified() {
            return invalid("advertise_addr", "required when peer_addr is a wildcard address".into());
        }
        Ok(())
    }

    /// The address peers reach us at.
    pub fn advertised_peer_addr(&self) -> SocketAddr {
        self.advertise_addr.unwrap_or(self.peer_addr)
    }

    /// The clock service's tunables (defaults of `chorus-clock` otherwise).
    pub fn clock_config(&self) -> chorus_clock::ClockConfig {
        chorus_clock::ClockConfig {
            tier: self.tier,
            offset_max_ms: self.max_offset_ms,
            ..chorus_clock::ClockConfig::default()
        }
    }

    /// The Raft tunables of the strong namespaces.
    pub fn strong_config(&self) -> chorus_strong::StrongConfig {
        let mut c = chorus_strong::StrongConfig::new(strong_id(&self.name));
        c.advertise_addr = Some(self.advertised_peer_addr());
        c.heartbeat_interval_ms = self.raft_heartbeat_ms;
        c.election_timeout_min_ms = self.raft_election_timeout_min_ms;
        c.election_timeout_max_ms = self.raft_election_timeout_max_ms;
        c.pre_vote = self.raft_pre_vote;
        c.request_timeout_ms = self.request_timeout_ms;
        c.idempotency_window_ms = self.idempotency_window_ms;
        c.snapshot_chunk_bytes = self.strong_snapshot_chunk_bytes;
        c.snapshot_every_entries = self.strong_snapshot_every_entries;
        c.log_kept_behind_snapshot = self.strong_snapshot_log_kept_entries;
        c.watch_history = chorus_strong::kv::HistoryLimits {
            events_max: self.strong_watch_history_events_max,
            bytes_max: self.strong_watch_history_bytes_max,
        };
        c
    }

    /// The replication tunables handed to the core.
    pub fn node_config(&self) -> chorus_core::NodeConfig {
        chorus_core::NodeConfig {
            tier: self.tier,
            fanout: self.fanout,
            hop_limit: self.hop_limit,
            anti_entropy_interval_us: self.anti_entropy_interval_ms.saturating_mul(1000),
            offset_max_us: self.max_offset_ms.saturating_mul(1000),
            namespace_confirm_wait_us: self.namespace_confirm_timeout_ms.saturating_mul(1000),
            value_bytes_max: self.max_value_bytes,
            idempotency_window_us: self.idempotency_window_ms.saturating_mul(1000),
            ..chorus_core::NodeConfig::default()
        }
    }
}

/// A node's Raft id: derived from its name, so it is stable across restarts
/// and every node computes every other node's id alike.
pub fn strong_id(name: &str) -> u64 {
    chorus_core::NodeId::from_name(name).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_every_default() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn worker_threads_set_in_the_file_win_and_automatic_leaves_at_least_one() {
        let c = Config::from_toml("worker_threads = 3").unwrap();
        assert_eq!(c.runtime_worker_threads(), 3);
        assert!(Config::default().runtime_worker_threads() >= 1);
    }

    #[test]
    fn http_bounds_are_read_and_out_of_range_values_are_refused_by_name() {
        let c = Config::from_toml(
            "http_request_timeout_ms = 9000\nhttp_header_timeout_ms = 700\nhttp_requests_in_flight_max = 3\n\
             http_streams_open_max = 2\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.http_request_timeout_ms,
                c.http_header_timeout_ms,
                c.http_requests_in_flight_max,
                c.http_streams_open_max
            ),
            (9000, 700, 3, 2)
        );
        for (line, key) in [
            ("http_request_timeout_ms = 10", "http_request_timeout_ms"),
            ("http_header_timeout_ms = 0", "http_header_timeout_ms"),
            ("http_requests_in_flight_max = 0", "http_requests_in_flight_max"),
            ("http_streams_open_max = 99999999999", "http_streams_open_max"),
        ] {
            let err = Config::from_toml(line).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let err = Config::from_toml("name = \"n1\"\nfanuot = 3\n").unwrap_err().to_string();
        assert!(err.contains("fanuot"), "{err}");
    }

    #[test]
    fn values_are_read_and_checked() {
        let c = Config::from_toml(
            "name = \"edge-7\"\ntier = 2\nseeds = [\"127.0.0.1:7201\"]\napi_addr = \"127.0.0.2:8000\"\n",
        )
        .unwrap();
        assert_eq!(c.name, "edge-7");
        assert_eq!(c.tier, 2);
        assert_eq!(c.seeds, vec![SocketAddr::from(([127, 0, 0, 1], 7201))]);
        let err = Config::from_toml("tier = 9").unwrap_err().to_string();
        assert!(err.contains("tier"), "{err}");
        let err = Config::from_toml("name = \"Bad Name\"").unwrap_err().to_string();
        assert!(err.contains("name"), "{err}");
    }
}
