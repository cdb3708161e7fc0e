//! Prints the anti-entropy benchmark table for n = 1,000,000 and
//! d ∈ {10, 1,000, 100,000}. Run with
//! `cargo run --release -p chorus-reconcile --example ae_bench`
//! (optional arguments: `n` then any number of `d` values).

use std::time::Instant;

use chorus_reconcile::{ItemIndex, bench_compare, item_tag};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let mut ds: Vec<u64> = args.filter_map(|a| a.parse().ok()).collect();
    if ds.is_empty() {
        ds = vec![10, 1_000, 100_000];
    }
    index_timings(n);
    println!(
        "{:>9} {:>7} {:>11} {:>11} {:>8} {:>6} {:>9} {:>13} {:>14} {:>12}",
        "n", "d", "bytes", "diff_bytes", "B/diff", "rtt", "cpu_ms", "negentropy_B", "full_state_B", "budget_ok"
    );
    for d in ds {
        let r = bench_compare(n, d, 0x5eed ^ d);
        // Target: bytes + diff_bytes <= 1.5 * diff_bytes + 64 KiB.
        let budget = r.diff_bytes / 2 + 64 * 1024;
        println!(
            "{:>9} {:>7} {:>11} {:>11} {:>8.1} {:>6} {:>9.1} {:>13} {:>14} {:>12}",
            r.n,
            r.d,
            r.bytes,
            r.diff_bytes,
            r.bytes as f64 / r.d.max(1) as f64,
            r.round_trips,
            r.cpu_ms,
            r.negentropy_bytes,
            r.full_state_bytes,
            r.bytes <= budget
        );
    }
}

/// Times a rebuild from a full item list and incremental updates.
fn index_timings(n: u64) {
    let items: Vec<(Vec<u8>, [u8; 16])> = (0..n)
        .map(|i| {
            let tag = item_tag(&i.to_le_bytes(), &[0; 16]);
            let key = format!("key-{tag:016x}").into_bytes();
            let mut digest = [0u8; 16];
            digest[..8].copy_from_slice(&tag.to_le_bytes());
            (key, digest)
        })
        .collect();
    let started = Instant::now();
    let mut index = match ItemIndex::from_items(items.iter().cloned()) {
        Ok(index) => index,
        Err(err) => panic!("benchmark keys are short: {err}"),
    };
    let rebuild_ms = started.elapsed().as_secs_f64() * 1000.0;
    let updates = 100_000.min(items.len());
    let started = Instant::now();
    for (key, digest) in items.iter().take(updates) {
        let mut changed = *digest;
        changed[15] ^= 1;
        if let Err(err) = index.insert(key.clone(), changed) {
            panic!("benchmark keys are short: {err}");
        }
    }
    let update_us = started.elapsed().as_secs_f64() * 1e6 / updates.max(1) as f64;
    println!("index of {n} items: rebuild {rebuild_ms:.0} ms, update {update_us:.2} us/op");
}
