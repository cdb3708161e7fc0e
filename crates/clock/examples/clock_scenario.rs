//! Prints the clock scenario report as JSON lines, one per seed:
//! `cargo run -p chorus-clock --example clock_scenario -- NODES LIARS SECS SEEDS [lan]`.

// An example is a program, not protocol code: it reads its arguments, which
// `clippy.toml` forbids in this crate's library.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use chorus_clock::{ClockScenarioParams, run_clock_scenario};

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let lan = raw.iter().any(|arg| arg == "lan");
    let args: Vec<u64> = raw.iter().filter_map(|arg| arg.parse().ok()).collect();
    let nodes = args.first().copied().unwrap_or(7) as usize;
    let liars = args.get(1).copied().unwrap_or(2) as usize;
    let secs = args.get(2).copied().unwrap_or(600);
    let seeds = args.get(3).copied().unwrap_or(5);
    for seed in 0..seeds {
        let mut params = ClockScenarioParams::new(nodes, liars, seed, secs);
        if lan {
            params.delay_base_min_us = 50;
            params.delay_base_max_us = 400;
            params.jitter_max_us = 300;
            params.processing_max_us = 50;
        }
        let report = run_clock_scenario(params);
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(error) => eprintln!("seed {seed}: {error}"),
        }
    }
}
