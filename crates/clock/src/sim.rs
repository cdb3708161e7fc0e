//! Seeded, deterministic simulation of the clock service (`chorus sim
//! --scenario clock`).
//!
//! N nodes with true offsets and drifts (±`drift_max_ppm`), per-direction
//! base delays (so paths are asymmetric) plus bounded exponential jitter, and
//! probes from every correct node to every tier-compatible node once per
//! probe interval of virtual time. Liars, taken from the end of the node
//! list, alternate between two kinds:
//!
//! * **fixed**: a clock 10 s ahead that answers honestly;
//! * **two-faced**: stamps t2/t3 with a different lie for each prober
//!   (±1–5 s, random sign), so no two correct nodes see the same clock.
//!
//! Everything follows from `seed`; the same parameters give the same report.

use serde::Serialize;

use crate::{ClockConfig, ClockService, FILTER_SAMPLES_MAX, PeerKey, ProbeTimestamps, tiers_may_talk};

/// Virtual time zero maps to this OS-clock reading (µs since the Unix epoch,
/// late 2023) so the service sees realistic magnitudes.
const EPOCH_US: i64 = 1_700_000_000_000_000;
/// Offset of the fixed liar's clock.
const FIXED_LIAR_OFFSET_US: i64 = 10_000_000;
/// Range of the two-faced liar's per-prober lie.
const TWO_FACED_LIE_MIN_US: i64 = 1_000_000;
const TWO_FACED_LIE_MAX_US: i64 = 5_000_000;
/// Rounding of integer-µs timestamps and the drift of a clock during one
/// exchange (≤ 200 ppm of a ≤ 50 ms round trip) stay below this.
const MEASUREMENT_SLACK_US: u64 = 20;

/// Inputs of [`run_clock_scenario`]. Build with [`ClockScenarioParams::new`]
/// and adjust fields.
#[derive(Clone, Debug)]
pub struct ClockScenarioParams {
    pub nodes: usize,
    /// Liars among `nodes` (the last ones); clamped to `nodes`.
    pub liars: usize,
    pub seed: u64,
    pub virtual_secs: u64,
    pub probe_interval_ms: u64,
    /// Correct clocks start within ±this of true time.
    pub true_offset_max_us: i64,
    /// Clock frequency errors are uniform in ±this.
    pub drift_max_ppm: f64,
    /// One-way base delay of each direction of each path, uniform in
    /// [min, max]; the two directions are drawn independently.
    pub delay_base_min_us: u64,
    pub delay_base_max_us: u64,
    /// Jitter per direction: exponential with mean `jitter_max_us / 4`,
    /// clipped to `jitter_max_us`.
    pub jitter_max_us: u64,
    /// Peer processing time between t2 and t3, uniform in [0, max].
    pub processing_max_us: u64,
    /// Tier of each node; missing entries are tier 0.
    pub tiers: Vec<u8>,
    /// Offset and drift errors are measured only after this much virtual
    /// time, once the filter and the drift fit have data.
    pub warmup_secs: u64,
    /// Service configuration of every node (its `tier` is overridden).
    pub config: ClockConfig,
}

impl ClockScenarioParams {
    pub fn new(nodes: usize, liars: usize, seed: u64, virtual_secs: u64) -> Self {
        ClockScenarioParams {
            nodes,
            liars,
            seed,
            virtual_secs,
            probe_interval_ms: 1_000,
            true_offset_max_us: 20_000,
            drift_max_ppm: 100.0,
            delay_base_min_us: 200,
            delay_base_max_us: 20_000,
            jitter_max_us: 2_000,
            processing_max_us: 200,
            tiers: Vec::new(),
            warmup_secs: 60,
            config: ClockConfig::default(),
        }
    }
}

/// Outcome of [`run_clock_scenario`]. Field names are part of the CLI's JSON
/// output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClockScenarioReport {
    pub nodes: usize,
    pub seed: u64,
    pub virtual_secs: u64,
    /// |estimated − true| offset of correct peers as seen by correct nodes,
    /// once per probe interval after warm-up.
    pub offset_error_p50_us: u64,
    pub offset_error_p99_us: u64,
    pub offset_error_max_us: u64,
    /// Largest per-pair theoretical bound: half the path's base-delay
    /// asymmetry, half the jitter bound, the filter age times the assumed
    /// residual frequency error, and a rounding slack.
    pub offset_bound_us: u64,
    /// Measurements beyond their own pair's bound (must be 0).
    pub offset_bound_violations: u64,
    /// Largest |estimated − true| relative drift between correct nodes at
    /// the end of the run.
    pub drift_error_max_ppm: f64,
    /// Liars in the run.
    pub liars: usize,
    /// Liars flagged as falsetickers by **every** correct node that may talk
    /// to them (tiers), in that node's final estimate; a liar no correct node
    /// can talk to is not counted.
    pub liars_flagged: usize,
    /// (observer, correct peer) pairs flagged as falsetickers at the end.
    pub correct_peers_flagged: usize,
    /// Estimates outside the correct clocks' true range widened by twice
    /// the largest possible measurement error bound (must be 0).
    pub estimate_outside_truechimers: u64,
    /// Times a corrected clock returned less than before (must be 0).
    pub hlc_backwards: u64,
    /// Largest spread of the correct nodes' cluster-time estimates (as true
    /// clock readings) at one instant after warm-up.
    pub cluster_estimate_spread_max_us: u64,
    /// Spread of the correct nodes' corrected clocks at the end.
    pub corrected_spread_end_us: u64,
    /// Correct nodes reporting `clock_unsafe` at the end.
    pub correct_nodes_unsafe: usize,
    /// Samples the services rejected (tier or validity).
    pub samples_rejected: u64,
}

/// SplitMix64 (see `docs/design/clock.md`, "References"): tiny, seedable,
/// good enough for a simulation, and no global state.
struct SimRng(u64);

impl SimRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [low, high].
    fn range_i64(&mut self, low: i64, high: i64) -> i64 {
        if high <= low {
            return low;
        }
        let span = (high - low) as u64 + 1;
        low + (self.next_u64() % span) as i64
    }
}

#[derive(Clone, Debug)]
enum Behaviour {
    Correct,
    FixedLiar,
    /// Lie per prober index.
    TwoFaced(Vec<i64>),
}

#[derive(Clone, Debug)]
struct SimNode {
    offset_us: i64,
    drift_ppb: i64,
    tier: u8,
    behaviour: Behaviour,
}

impl SimNode {
    /// The node's OS clock at true time `true_us`.
    fn clock_us(&self, true_us: i64) -> i64 {
        let drift = (i128::from(true_us) * i128::from(self.drift_ppb)).div_euclid(1_000_000_000);
        EPOCH_US + true_us + self.offset_us + drift as i64
    }
    /// What the node stamps on an ack to `prober`.
    fn stamp_for_us(&self, prober: usize, true_us: i64) -> i64 {
        let lie = match &self.behaviour {
            Behaviour::TwoFaced(lies) => lies.get(prober).copied().unwrap_or(0),
            _ => 0,
        };
        self.clock_us(true_us) + lie
    }
    fn is_correct(&self) -> bool {
        matches!(self.behaviour, Behaviour::Correct)
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn percentile(sorted: &[u64], percent: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() * percent / 100).min(sorted.len() - 1)]
}

/// Runs the clock scenario. Out-of-range parameters are clamped (at least
/// one node, liars ≤ nodes, probe interval ≥ 1 ms); the report states the
/// values used.
pub fn run_clock_scenario(params: ClockScenarioParams) -> ClockScenarioReport {
    let nodes = params.nodes.max(1);
    let liars = params.liars.min(nodes);
    let interval_us = (params.probe_interval_ms.max(1) as i64) * 1000;
    let rounds = (params.virtual_secs as i64 * 1_000_000) / interval_us;
    let warmup_us = params.warmup_secs as i64 * 1_000_000;
    let mut rng = SimRng(params.seed);

    let drift_max_ppb = (params.drift_max_ppm.abs() * 1000.0) as i64;
    let mut sim_nodes: Vec<SimNode> = (0..nodes)
        .map(|index| SimNode {
            offset_us: rng.range_i64(-params.true_offset_max_us.abs(), params.true_offset_max_us.abs()),
            drift_ppb: rng.range_i64(-drift_max_ppb, drift_max_ppb),
            tier: params.tiers.get(index).copied().unwrap_or(0),
            behaviour: Behaviour::Correct,
        })
        .collect();
    for (liar_index, node) in sim_nodes.iter_mut().skip(nodes - liars).enumerate() {
        node.behaviour = if liar_index % 2 == 0 {
            node.offset_us += FIXED_LIAR_OFFSET_US;
            Behaviour::FixedLiar
        } else {
            let lies = (0..nodes)
                .map(|_| {
                    let magnitude = rng.range_i64(TWO_FACED_LIE_MIN_US, TWO_FACED_LIE_MAX_US);
                    if rng.next_u64().is_multiple_of(2) { magnitude } else { -magnitude }
                })
                .collect();
            Behaviour::TwoFaced(lies)
        };
    }
    let base_delay: Vec<Vec<i64>> = (0..nodes)
        .map(|_| {
            (0..nodes)
                .map(|_| rng.range_i64(params.delay_base_min_us as i64, params.delay_base_max_us as i64))
                .collect()
        })
        .collect();
    let jitter_max = params.jitter_max_us as f64;
    let jitter = |rng: &mut SimRng| -> i64 {
        let exponential = -(1.0 - rng.unit()).ln() * jitter_max / 4.0;
        exponential.min(jitter_max) as i64
    };

    let mut services: Vec<Option<ClockService>> = sim_nodes
        .iter()
        .map(|node| {
            if !node.is_correct() {
                return None;
            }
            let mut config = params.config.clone();
            config.tier = node.tier;
            ClockService::new(config).ok()
        })
        .collect();

    let frequency_ppm = params.config.frequency_error_max_ppm;
    let filter_age_us = (FILTER_SAMPLES_MAX as i64 + 1) * interval_us;
    let pair_bound_us = |i: usize, j: usize| -> u64 {
        let asymmetry = base_delay[i][j].abs_diff(base_delay[j][i]);
        asymmetry / 2
            + params.jitter_max_us / 2
            + (frequency_ppm * filter_age_us as f64 / 1e6).ceil() as u64
            + MEASUREMENT_SLACK_US
    };
    let largest_half_width_us = (2 * (params.delay_base_max_us + params.jitter_max_us) + params.processing_max_us) / 2
        + (params.config.uncompensated_drift_max_ppm * filter_age_us as f64 / 1e6).ceil() as u64
        + MEASUREMENT_SLACK_US;
    let talks = |a: usize, b: usize| a != b && tiers_may_talk(sim_nodes[a].tier, sim_nodes[b].tier);

    let mut offset_errors: Vec<u64> = Vec::new();
    let mut offset_bound_us = 0u64;
    let mut offset_bound_violations = 0u64;
    let mut estimate_outside_truechimers = 0u64;
    let mut hlc_backwards = 0u64;
    let mut cluster_estimate_spread_max_us = 0u64;
    let mut last_corrected: Vec<u64> = vec![0; nodes];
    let mut samples_rejected = 0u64;

    for round in 0..rounds {
        let start_us = round * interval_us;
        for prober in 0..nodes {
            let Some(service) = services[prober].as_mut() else { continue };
            for peer in 0..nodes {
                if !talks(prober, peer) {
                    continue;
                }
                let send = start_us + rng.range_i64(0, interval_us / 2);
                let arrive = send + base_delay[prober][peer] + jitter(&mut rng);
                let reply = arrive + rng.range_i64(0, params.processing_max_us as i64);
                let back = reply + base_delay[peer][prober] + jitter(&mut rng);
                let timestamps = ProbeTimestamps {
                    t1_us: to_u64(sim_nodes[prober].clock_us(send)),
                    t2_us: to_u64(sim_nodes[peer].stamp_for_us(prober, arrive)),
                    t3_us: to_u64(sim_nodes[peer].stamp_for_us(prober, reply)),
                    t4_us: to_u64(sim_nodes[prober].clock_us(back)),
                };
                let result =
                    service.handle_sample(PeerKey(peer as u64), sim_nodes[peer].tier, timestamps, timestamps.t4_us);
                if result.is_err() {
                    samples_rejected += 1;
                }
            }
        }

        let tick_us = start_us + interval_us - 1;
        let after_warmup = tick_us >= warmup_us;
        let mut estimated_cluster_clocks: Vec<i64> = Vec::new();
        for observer in 0..nodes {
            let Some(service) = services[observer].as_mut() else { continue };
            let local_us = sim_nodes[observer].clock_us(tick_us);
            let estimate = service.poll_estimate(to_u64(local_us));
            for os_us in [sim_nodes[observer].clock_us(tick_us - interval_us / 4), local_us] {
                let corrected = service.corrected_now_us(to_u64(os_us));
                if corrected < last_corrected[observer] {
                    hlc_backwards += 1;
                }
                last_corrected[observer] = corrected;
            }

            // Correct clocks this observer can see, itself included.
            let (mut low, mut high) = (local_us, local_us);
            for peer in (0..nodes).filter(|&peer| talks(observer, peer) && sim_nodes[peer].is_correct()) {
                let peer_clock = sim_nodes[peer].clock_us(tick_us);
                low = low.min(peer_clock);
                high = high.max(peer_clock);
            }
            let estimated_cluster = local_us + estimate.offset_us;
            let tolerance = 2 * largest_half_width_us as i64;
            if estimated_cluster < low - tolerance || estimated_cluster > high + tolerance {
                estimate_outside_truechimers += 1;
            }
            if !after_warmup {
                continue;
            }
            estimated_cluster_clocks.push(estimated_cluster);
            for report in service.peer_report(to_u64(local_us)) {
                let peer = report.peer.0 as usize;
                if peer >= nodes || !sim_nodes[peer].is_correct() {
                    continue;
                }
                let truth = sim_nodes[peer].clock_us(tick_us) - local_us;
                let error = report.offset_us.abs_diff(truth);
                let bound = pair_bound_us(observer, peer);
                offset_bound_us = offset_bound_us.max(bound);
                if error > bound {
                    offset_bound_violations += 1;
                }
                offset_errors.push(error);
            }
        }
        // Each estimate as a true-time reading error: spread across nodes.
        if let (Some(min), Some(max)) = (estimated_cluster_clocks.iter().min(), estimated_cluster_clocks.iter().max()) {
            cluster_estimate_spread_max_us = cluster_estimate_spread_max_us.max(max.abs_diff(*min));
        }
    }

    let end_us = rounds * interval_us;
    let mut drift_error_max_ppm = 0.0f64;
    let mut correct_peers_flagged = 0usize;
    let mut correct_nodes_unsafe = 0usize;
    let mut corrected_true_errors: Vec<i64> = Vec::new();
    let mut liar_flags: Vec<bool> = sim_nodes.iter().map(|node| !node.is_correct()).collect();
    let mut liar_observers: Vec<usize> = vec![0; nodes];
    for observer in 0..nodes {
        let Some(service) = services[observer].as_mut() else { continue };
        let local_us = sim_nodes[observer].clock_us(end_us);
        let estimate = service.poll_estimate(to_u64(local_us));
        let corrected = service.corrected_now_us(to_u64(local_us));
        corrected_true_errors.push(corrected as i64 - (end_us + EPOCH_US));
        if !service.status(to_u64(local_us)).safe {
            correct_nodes_unsafe += 1;
        }
        for peer in 0..nodes {
            if !talks(observer, peer) {
                continue;
            }
            let flagged = estimate.falsetickers.contains(&PeerKey(peer as u64));
            if sim_nodes[peer].is_correct() {
                correct_peers_flagged += usize::from(flagged);
            } else {
                liar_observers[peer] += 1;
                if !flagged {
                    liar_flags[peer] = false;
                }
            }
        }
        for report in service.peer_report(to_u64(local_us)) {
            let peer = report.peer.0 as usize;
            if peer >= nodes || !sim_nodes[peer].is_correct() {
                continue;
            }
            let d_observer = sim_nodes[observer].drift_ppb as f64 * 1e-9;
            let d_peer = sim_nodes[peer].drift_ppb as f64 * 1e-9;
            let truth_ppm = (d_peer - d_observer) / (1.0 + d_observer) * 1e6;
            let error = match report.drift_ppm {
                Some(drift) => (drift - truth_ppm).abs(),
                None => f64::INFINITY,
            };
            drift_error_max_ppm = drift_error_max_ppm.max(error);
        }
    }
    let liars_flagged =
        liar_flags.iter().zip(&liar_observers).filter(|&(&flag, &observers)| flag && observers > 0).count();
    offset_errors.sort_unstable();
    let corrected_spread_end_us = match (corrected_true_errors.iter().min(), corrected_true_errors.iter().max()) {
        (Some(min), Some(max)) => max.abs_diff(*min),
        _ => 0,
    };
    ClockScenarioReport {
        nodes,
        seed: params.seed,
        virtual_secs: params.virtual_secs,
        offset_error_p50_us: percentile(&offset_errors, 50),
        offset_error_p99_us: percentile(&offset_errors, 99),
        offset_error_max_us: offset_errors.last().copied().unwrap_or(0),
        offset_bound_us,
        offset_bound_violations,
        drift_error_max_ppm,
        liars,
        liars_flagged,
        correct_peers_flagged,
        estimate_outside_truechimers,
        hlc_backwards,
        cluster_estimate_spread_max_us,
        corrected_spread_end_us,
        correct_nodes_unsafe,
        samples_rejected,
    }
}
