//! Times rebuilding an [`ItemIndex`] from a full item list (what a node does
//! at restart) and incremental updates (what every write costs). Run with
//! `cargo run --release -p chorus-reconcile --example index_timings [n]`
//! (default n = 1,000,000).
//!
//! The comparison against negentropy and a full-state transfer is
//! `chorus bench anti-entropy`.

// An example is a program, not protocol code: it reads its arguments and the
// monotonic clock, which `clippy.toml` forbids in this crate's library.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Instant;

use chorus_reconcile::{ItemIndex, item_tag};

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
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
