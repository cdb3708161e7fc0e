//! `chorus bench anti-entropy`: the bytes, round trips and CPU time of
//! reconciling two replicas of n entries (~100 bytes each) that differ in d
//! entries, next to the negentropy crate and a naive full-state transfer on
//! the same sets.
//!
//! `bytes` is everything reconciliation puts on the wire: the protocol's own
//! messages (fingerprints, tags, keys) *plus* the differing entries
//! themselves; `negentropy_bytes` counts the same way (its protocol plus the
//! same entries), so the two compare like for like. `protocol_bytes` and
//! `negentropy_protocol_bytes` are the protocol parts alone.
//!
//! The harness itself (set generation, both protocols, the checks that each
//! finds exactly the differences) is in [`compare`].

mod compare;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;
use std::process::ExitCode;

use compare::{BenchReport, bench_compare};

#[derive(Args, Debug)]
pub struct AntiEntropyArgs {
    /// Entries per replica.
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Differing entries (default: runs of 10, 1,000 and 100,000).
    #[arg(long)]
    d: Option<u64>,
    /// Seed of the generated sets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print each run as one JSON object per line (the last line is the last run).
    #[arg(long)]
    json: bool,
}

/// One run. Field names are a stable interface.
#[derive(Serialize)]
struct Row {
    n: u64,
    d: u64,
    bytes: u64,
    diff_bytes: u64,
    round_trips: u64,
    cpu_ms: f64,
    negentropy_bytes: u64,
    full_state_bytes: u64,
    protocol_bytes: u64,
    negentropy_protocol_bytes: u64,
    /// bytes / diff_bytes.
    ratio: f64,
    /// The target: bytes <= 1.5 × diff_bytes + 64 KiB.
    within_target: bool,
}

pub fn run(args: AntiEntropyArgs) -> Result<ExitCode> {
    if args.n == 0 {
        bail!("--n must be positive");
    }
    let ds: Vec<u64> = match args.d {
        Some(d) if d > args.n => bail!("--d must not exceed --n"),
        Some(d) => vec![d],
        None => vec![10, 1_000, 100_000].into_iter().filter(|&d| d <= args.n).collect(),
    };
    if !args.json {
        println!(
            "{:>9} {:>7} {:>12} {:>12} {:>6} {:>7} {:>9} {:>14} {:>14}",
            "n", "d", "bytes", "diff_bytes", "ratio", "rtt", "cpu_ms", "negentropy", "full_state"
        );
    }
    for d in ds {
        let row = row_of(&bench_compare(args.n, d, args.seed));
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:>9} {:>7} {:>12} {:>12} {:>6.2} {:>7} {:>9.1} {:>14} {:>14}",
                row.n,
                row.d,
                row.bytes,
                row.diff_bytes,
                row.ratio,
                row.round_trips,
                row.cpu_ms,
                row.negentropy_bytes,
                row.full_state_bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The printed row of one run: totals include the differing entries, the
/// `*protocol_bytes` fields are the protocols alone.
fn row_of(r: &BenchReport) -> Row {
    let bytes = r.bytes + r.diff_bytes;
    Row {
        n: r.n,
        d: r.d,
        bytes,
        diff_bytes: r.diff_bytes,
        round_trips: r.round_trips,
        cpu_ms: r.cpu_ms,
        negentropy_bytes: r.negentropy_bytes + r.diff_bytes,
        full_state_bytes: r.full_state_bytes,
        protocol_bytes: r.bytes,
        negentropy_protocol_bytes: r.negentropy_bytes,
        ratio: if r.diff_bytes == 0 { 0.0 } else { bytes as f64 / r.diff_bytes as f64 },
        within_target: (bytes as f64) <= 1.5 * r.diff_bytes as f64 + 65_536.0,
    }
}

#[cfg(test)]
mod tests {
    use super::{bench_compare, row_of};

    #[test]
    fn json_rows_keep_the_documented_field_names_and_totals() {
        let report = bench_compare(2_000, 30, 9);
        let json = serde_json::to_value(row_of(&report)).unwrap();
        let mut fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "bytes",
                "cpu_ms",
                "d",
                "diff_bytes",
                "full_state_bytes",
                "n",
                "negentropy_bytes",
                "negentropy_protocol_bytes",
                "protocol_bytes",
                "ratio",
                "round_trips",
                "within_target"
            ]
        );
        assert_eq!((json["n"].as_u64(), json["d"].as_u64()), (Some(2_000), Some(30)));
        assert_eq!(json["bytes"].as_u64(), Some(report.bytes + report.diff_bytes));
        assert_eq!(json["protocol_bytes"].as_u64(), Some(report.bytes));
        assert_eq!(json["negentropy_bytes"].as_u64(), Some(report.negentropy_bytes + report.diff_bytes));
    }
}
