//! `chorus sim`: the real protocol in a seeded simulation of the user's
//! cluster, reporting how fast it converges and what it costs.

use anyhow::{Result, bail};
use chorus_sim::{SimConfig, SimReport};
use clap::Args;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Eventual-namespace replication under faults (the default).
    Replication,
    /// The clock service: offsets, drift and lying clocks.
    Clock,
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// What to simulate.
    #[arg(long, value_enum, default_value_t = Scenario::Replication)]
    scenario: Scenario,
    /// Clock scenario: nodes whose clocks lie (one fixed +10 s, one two-faced, ...).
    #[arg(long, default_value_t = 0)]
    liars: u32,
    /// Clock scenario: virtual seconds to run.
    #[arg(long, default_value_t = 600)]
    virtual_secs: u64,
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 7)]
    nodes: u32,
    /// Seed; the same seed and flags replay the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that a message is lost (0..1) during the chaos phase.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability that a message is delivered twice (0..1).
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Partitions come and go during the chaos phase.
    #[arg(long)]
    partitions: bool,
    /// Nodes crash (sometimes mid-write) and restart from disk.
    #[arg(long)]
    crashes: bool,
    /// Clock skew per node, up to ± this many milliseconds.
    #[arg(long, default_value_t = 0)]
    skew_ms: u64,
    /// Client writes during the chaos phase (default: one per node, 100..1000).
    #[arg(long)]
    writes: Option<u32>,
    /// Length of the chaos phase in virtual milliseconds.
    #[arg(long, default_value_t = 10_000)]
    chaos_ms: u64,
    /// Per-link latency range in milliseconds.
    #[arg(long, default_value_t = 1)]
    latency_min_ms: u64,
    #[arg(long, default_value_t = 20)]
    latency_max_ms: u64,
    /// Anti-entropy period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    anti_entropy_ms: u64,
    /// Probability that a batch fails to persist during chaos (the node
    /// halts and restarts from its disk).
    #[arg(long, default_value_t = 0.0)]
    disk_errors: f64,
    /// Each batch becomes durable after a seeded delay of up to this many
    /// virtual µs (several batches are in flight at once).
    #[arg(long, default_value_t = 4000)]
    disk_delay_max_us: u64,
    /// A deliberately broken node, to show that the checkers catch it (only
    /// in builds with the `test-knobs` feature).
    #[cfg(feature = "test-knobs")]
    #[arg(long, value_parser = parse_bug)]
    inject_bug: Option<chorus_core::InjectedBug>,
    /// Print one JSON object on the last line instead of the summary.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "test-knobs")]
fn parse_bug(name: &str) -> std::result::Result<chorus_core::InjectedBug, String> {
    chorus_sim::bug_by_name(name).ok_or_else(|| {
        let names: Vec<&str> = chorus_sim::BUGS.iter().map(|(n, _)| *n).collect();
        format!("unknown bug {name:?}; one of {names:?}")
    })
}

pub fn run(args: SimArgs) -> Result<ExitCode> {
    if args.scenario == Scenario::Clock {
        return run_clock(&args);
    }
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if !(0.0..1.0).contains(&args.loss) || !(0.0..1.0).contains(&args.duplicate) {
        bail!("--loss and --duplicate must be in [0, 1)");
    }
    if !(0.0..1.0).contains(&args.disk_errors) {
        bail!("--disk-errors must be in [0, 1)");
    }
    if args.latency_min_ms > args.latency_max_ms {
        bail!("--latency-min-ms must not exceed --latency-max-ms");
    }
    let mut cfg = SimConfig::new(args.nodes, args.seed);
    cfg.loss = args.loss;
    cfg.duplicate = args.duplicate;
    cfg.partitions = args.partitions;
    cfg.crashes = args.crashes;
    cfg.skew_ms = args.skew_ms;
    if let Some(w) = args.writes {
        cfg.writes = w;
    }
    cfg.chaos_ms = args.chaos_ms;
    cfg.latency_min_ms = args.latency_min_ms;
    cfg.latency_max_ms = args.latency_max_ms;
    cfg.anti_entropy_interval_ms = args.anti_entropy_ms.max(1);
    cfg.disk_errors = args.disk_errors;
    cfg.disk_delay_max_us = args.disk_delay_max_us;
    #[cfg(feature = "test-knobs")]
    {
        cfg.injected_bug = args.inject_bug;
    }
    let started = std::time::Instant::now();
    let report = chorus_sim::run(cfg);
    let wall = started.elapsed();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report, wall);
    }
    Ok(if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_summary(r: &SimReport, wall: std::time::Duration) {
    println!("chorus sim: {} nodes, seed {}", r.nodes, r.seed);
    println!(
        "  writes        {} issued, {} acknowledged durable; {} crashes, {} partitions, {} disk errors",
        r.writes_attempted, r.writes_acked, r.crashes, r.partitions, r.disk_errors
    );
    println!(
        "  broadcast     {:.1} % of writes reached every node by push alone, in at most {} rounds (limit {})",
        r.push_complete_fraction * 100.0,
        r.rounds_to_converge,
        r.push_round_limit
    );
    println!("  propagation   p50 {:.1} ms, p99 {:.1} ms (virtual)", r.propagation_p50_ms, r.propagation_p99_ms);
    if r.converged {
        println!("  converged     {} ms (virtual) after the faults stopped", r.virtual_ms_to_converge);
    } else {
        println!("  converged     NO");
    }
    println!(
        "  cost          {:.0} messages and {:.1} KiB sent per node",
        r.messages_per_node,
        r.bytes_per_node / 1024.0
    );
    println!(
        "  this machine  {:.1} s wall, peak RSS {:.0} MiB",
        wall.as_secs_f64(),
        r.peak_rss_bytes as f64 / (1024.0 * 1024.0)
    );
    if r.violations.is_empty() {
        println!("  checkers      all passed");
    } else {
        println!("  checkers      {} VIOLATIONS:", r.violations.len());
        for v in &r.violations {
            println!("    - {v}");
        }
        println!("  replay with: {}", r.replay);
    }
}

fn run_clock(args: &SimArgs) -> Result<ExitCode> {
    use chorus_sim::clock::{ClockScenarioParams, run_clock_scenario};
    if args.nodes < 1 || args.liars >= args.nodes {
        bail!("--liars must be smaller than --nodes");
    }
    if args.virtual_secs == 0 {
        bail!("--virtual-secs must be positive");
    }
    let params = ClockScenarioParams::new(args.nodes as usize, args.liars as usize, args.seed, args.virtual_secs);
    let r = run_clock_scenario(params);
    let ok = r.estimate_outside_truechimers == 0 && r.hlc_backwards == 0 && r.liars_flagged == r.liars;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "chorus sim --scenario clock: {} nodes ({} lying), seed {}, {} s virtual",
            r.nodes, r.liars, r.seed, r.virtual_secs
        );
        println!(
            "  offset error   p50 {} µs, p99 {} µs (theoretical bound {} µs)",
            r.offset_error_p50_us, r.offset_error_p99_us, r.offset_bound_us
        );
        println!("  drift error    at most {:.3} ppm", r.drift_error_max_ppm);
        println!("  liars flagged  {} of {}", r.liars_flagged, r.liars);
        println!(
            "  safety         {} estimates outside the correct clocks' range, {} backward HLC steps",
            r.estimate_outside_truechimers, r.hlc_backwards
        );
        println!("  verdict        {}", if ok { "all checks passed" } else { "FAILED" });
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
