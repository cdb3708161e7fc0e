//! `chorus-faults`: run seeded fault-injection runs against real agents.
//! Its last line is `faults: runs=N ops=M faults=F violations=V`; the exit
//! status is 1 when V > 0 and 2 when a run could not be carried out.

use chorus_faults::run::{self, RunConfig};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Fault-injection runs against real chorus agents (docs/design/fault-injection.md)")]
struct Args {
    /// Number of runs; run r uses seed S + r.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Base seed (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes per run.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Client worker threads (eventual namespaces).
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Strong register workers (linearizability check).
    #[arg(long, default_value_t = 2)]
    strong_workers: u32,
    /// Fencing workers (lock grants, fencing-token check).
    #[arg(long, default_value_t = 2)]
    fence_workers: u32,
    /// Most ops per worker per run.
    #[arg(long, default_value_t = 250)]
    ops: usize,
    /// Most faults per run.
    #[arg(long, default_value_t = 3)]
    faults: usize,
    /// The chorus binary (default: next to this one, or $CHORUS_BIN).
    #[arg(long)]
    chorus_bin: Option<PathBuf>,
    /// Keep every run's files (history.jsonl, schedule.json, agent logs) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not try network namespaces (kill/stop faults only).
    #[arg(long)]
    loopback: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(1..=50).contains(&args.nodes) {
        eprintln!("--nodes must be in 1..=50");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
    });
    let bin = args.chorus_bin.clone().unwrap_or_else(run::default_chorus_bin);
    if !bin.is_file() {
        eprintln!("chorus binary not found at {} (build it: cargo build -p chorus)", bin.display());
        return ExitCode::from(2);
    }
    println!("faults: base seed {seed}, {} runs, {} nodes, chorus at {}", args.runs, args.nodes, bin.display());
    let (mut ops, mut faults, mut violations, mut errors) = (0usize, 0usize, 0usize, 0usize);
    let mut strong = chorus_faults::strong_checker::StrongStats::default();
    for r in 0..args.runs {
        let s = seed.wrapping_add(r);
        let mut cfg = RunConfig::short(s, args.nodes, bin.clone());
        cfg.workers = args.workers;
        cfg.strong_workers = args.strong_workers;
        cfg.fence_workers = args.fence_workers;
        cfg.ops_per_worker_max = args.ops;
        cfg.faults_max = args.faults;
        cfg.out_dir = args.out.clone();
        cfg.namespaces = !args.loopback;
        cfg.converge_deadline = Duration::from_secs(30);
        let replay = format!("scripts/faults.sh --runs 1 --seed {s} --nodes {}", args.nodes);
        match run::run_once(&cfg) {
            Ok(rep) => {
                ops += rep.ops;
                faults += rep.faults;
                let st = &rep.strong_stats;
                strong.register_ops += st.register_ops;
                strong.unknown += st.unknown;
                strong.unknown_per_key_max = strong.unknown_per_key_max.max(st.unknown_per_key_max);
                strong.inconclusive += st.inconclusive;
                strong.lock_requests += st.lock_requests;
                strong.grants += st.grants;
                violations += rep.violations.len();
                println!(
                    "run {}/{} seed={s} mode={} ops={} (ok {} unknown {} fail {}) faults={} violations={} {:.1}s replay: {replay}",
                    r + 1,
                    args.runs,
                    rep.mode,
                    rep.ops,
                    rep.ok,
                    rep.unknown,
                    rep.fail,
                    rep.faults,
                    rep.violations.len(),
                    rep.elapsed.as_secs_f64()
                );
                println!(
                    "    strong: {}; register ops {} (unknown {}, at most {} unknown writes on a key, inconclusive keys {}), lock requests {} (granted {})",
                    rep.strong,
                    st.register_ops,
                    st.unknown,
                    st.unknown_per_key_max,
                    st.inconclusive,
                    st.lock_requests,
                    st.grants
                );
                for f in &rep.fault_log {
                    println!("    fault: {f}");
                }
                for v in &rep.violations {
                    println!("    VIOLATION: {v}");
                }
                if let Some(d) = &rep.kept_dir {
                    println!("    files: {}", d.display());
                }
            }
            Err(e) => {
                errors += 1;
                println!("run {}/{} seed={s} HARNESS ERROR: {e} replay: {replay}", r + 1, args.runs);
            }
        }
    }
    if errors > 0 {
        println!("faults: {errors} run(s) could not be carried out");
    }
    println!(
        "faults: strong register ops={} unknown={} max-unknown-writes-per-key={} inconclusive={} lock requests={} grants={}",
        strong.register_ops,
        strong.unknown,
        strong.unknown_per_key_max,
        strong.inconclusive,
        strong.lock_requests,
        strong.grants
    );
    println!("faults: runs={} ops={ops} faults={faults} violations={violations}", args.runs);
    if violations > 0 {
        ExitCode::from(1)
    } else if errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
