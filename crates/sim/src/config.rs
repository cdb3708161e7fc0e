//! What determines a run ([`SimConfig`]) and what it measured ([`SimReport`]).

#[cfg(feature = "test-knobs")]
use chorus_core::node::InjectedBug;
use serde::Serialize;
use std::collections::BTreeMap;

/// Everything that determines a run. Equal configs give equal runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: u32,
    pub seed: u64,
    /// Probability that a message is lost during chaos.
    pub loss: f64,
    /// Probability that a message is delivered twice during chaos.
    pub duplicate: f64,
    /// Partitions come and go during chaos.
    pub partitions: bool,
    /// Nodes crash (sometimes in the middle of a write) and restart.
    pub crashes: bool,
    /// Each node's clock is off by up to ± this much.
    pub skew_ms: u64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Extra random delay per message; makes messages overtake each other.
    pub jitter_ms: u64,
    pub chaos_ms: u64,
    /// Heal phase deadline: not converged by then is a violation.
    pub heal_max_ms: u64,
    /// Client writes issued during chaos.
    pub writes: u32,
    pub keys_per_namespace: u32,
    pub anti_entropy_interval_ms: u64,
    /// How long the (oracle) failure detector takes to notice a change.
    pub detection_ms: u64,
    /// Fanout override (0: protocol default).
    pub fanout: u32,
    /// Writes issued in the broadcast probe phase (see [`SimReport`]).
    pub probe_writes: u32,
    /// A Persist completes after a seeded delay of up to this much (its
    /// completion never overtakes an earlier batch's), so several batches
    /// are in flight at once, as with the daemon's pipelined group commit.
    pub disk_delay_max_us: u64,
    /// Probability that a batch fails during chaos (a disk error): the node
    /// halts, saying why, and is restarted from its disk.
    pub disk_errors: f64,
    /// Exists only with the `test-knobs` feature.
    #[cfg(feature = "test-knobs")]
    pub injected_bug: Option<InjectedBug>,
}

impl SimConfig {
    /// A cluster of `nodes` with every fault off and defaults sized to the
    /// cluster (more nodes: more writes, longer phases).
    pub fn new(nodes: u32, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            loss: 0.0,
            duplicate: 0.0,
            partitions: false,
            crashes: false,
            skew_ms: 0,
            latency_min_ms: 1,
            latency_max_ms: 20,
            jitter_ms: 5,
            chaos_ms: 10_000,
            heal_max_ms: 120_000,
            writes: nodes.clamp(100, 1000),
            keys_per_namespace: 32,
            anti_entropy_interval_ms: 1000,
            detection_ms: 1500,
            fanout: 0,
            probe_writes: 20,
            disk_delay_max_us: 4_000,
            disk_errors: 0.0,
            #[cfg(feature = "test-knobs")]
            injected_bug: None,
        }
    }

    /// Every fault type on (the checkers' hardest setting).
    pub fn with_all_faults(mut self) -> Self {
        self.loss = 0.05;
        self.duplicate = 0.02;
        self.partitions = true;
        self.crashes = true;
        self.skew_ms = 100;
        self.disk_errors = 0.0005;
        self
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!("chorus sim --nodes {} --seed {}", self.nodes, self.seed);
        if self.loss > 0.0 {
            cmd.push_str(&format!(" --loss {}", self.loss));
        }
        if self.duplicate > 0.0 {
            cmd.push_str(&format!(" --duplicate {}", self.duplicate));
        }
        if self.partitions {
            cmd.push_str(" --partitions");
        }
        if self.crashes {
            cmd.push_str(" --crashes");
        }
        if self.disk_errors > 0.0 {
            cmd.push_str(&format!(" --disk-errors {}", self.disk_errors));
        }
        if self.disk_delay_max_us != SimConfig::new(self.nodes, 0).disk_delay_max_us {
            cmd.push_str(&format!(" --disk-delay-max-us {}", self.disk_delay_max_us));
        }
        if self.skew_ms > 0 {
            cmd.push_str(&format!(" --skew-ms {}", self.skew_ms));
        }
        if self.writes != SimConfig::new(self.nodes, 0).writes {
            cmd.push_str(&format!(" --writes {}", self.writes));
        }
        if self.chaos_ms != 10_000 {
            cmd.push_str(&format!(" --chaos-ms {}", self.chaos_ms));
        }
        #[cfg(feature = "test-knobs")]
        if let Some(bug) = self.injected_bug {
            cmd.push_str(&format!(" --inject-bug {}", crate::bug_name(bug)));
        }
        cmd
    }
}

/// What a run measured. Field names are a stable interface (`chorus sim --json`).
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub nodes: u32,
    pub seed: u64,
    pub converged: bool,
    /// Gossip rounds (hops) a probe write needed to reach the last node,
    /// the maximum over the probe writes that reached every node by push.
    ///
    /// Broadcast is measured in a probe phase after the cluster converged:
    /// the chaos phase's loss is back on, anti-entropy messages are held
    /// (a node that got a write by anti-entropy first would not forward
    /// its push, confounding the measurement), and `probe_writes` writes
    /// are issued 500 ms apart. Then anti-entropy resumes, loss stops, and
    /// the checkers run after a second convergence.
    pub rounds_to_converge: u32,
    /// Virtual time from the start of the heal phase until every node held
    /// identical state.
    pub virtual_ms_to_converge: u64,
    pub messages_per_node: f64,
    pub bytes_per_node: f64,
    /// Checker failures, each `checker: what happened`; empty when every
    /// invariant held.
    pub violations: Vec<String>,
    /// How many violations each checker reported (names in `check`).
    pub violations_by_checker: BTreeMap<String, u64>,
    pub peak_rss_bytes: u64,
    pub writes_attempted: u64,
    pub writes_acked: u64,
    /// Fraction of probe writes that reached every node by push alone.
    pub push_complete_fraction: f64,
    pub probe_writes: u32,
    /// Propagation latencies are those of the probe writes' push
    /// deliveries, in virtual time.
    /// Push rounds allowed (the protocol's hop limit): log2(N) + 3.
    pub push_round_limit: u32,
    pub propagation_p50_ms: f64,
    pub propagation_p99_ms: f64,
    pub crashes: u32,
    pub partitions: u32,
    /// Batches that failed (injected disk errors); each halted its node.
    pub disk_errors: u32,
    /// Most batches one node had in flight at once.
    pub persists_in_flight_max: u64,
    pub virtual_ms_total: u64,
    pub replay: String,
}
