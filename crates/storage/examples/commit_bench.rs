//! Durable commit throughput and latency of `GroupCommitter` over redb.
//!
//! Each client thread commits single-put batches (16-byte key, 100-byte
//! value) in a closed loop and records each commit's latency, from `commit`
//! call to durable acknowledgement.
//!
//! ```text
//! cargo run --release -p chorus-storage --example commit_bench -- [DIR] [SECONDS] [IN_FLIGHT]
//! ```
//!
//! IN_FLIGHT (default 1) is how many batches each client keeps submitted
//! before waiting for the oldest (a pipelining client, as an async server
//! handling many requests per connection would be).
//!
//! DIR defaults to the system temporary directory; point it at the disk the
//! daemon will use, since the `fsync` cost is the whole story.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_storage::{GroupCommitter, RedbStorage, WriteBatch};

const CLIENT_COUNTS: [usize; 3] = [1, 16, 64];
const VALUE_BYTES: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    let seconds: u64 = match args.next() {
        Some(text) => text.parse()?,
        None => 3,
    };
    let in_flight: usize = match args.next() {
        Some(text) => text.parse::<usize>()?.max(1),
        None => 1,
    };
    println!("in-flight batches per client: {in_flight}");
    let duration = Duration::from_secs(seconds);
    println!("clients  writes/s  p50_ms  p99_ms  max_ms  batches/fsync");
    for clients in CLIENT_COUNTS {
        let dir = tempfile::tempdir_in(&base)?;
        let store = RedbStorage::open(dir.path().join("bench.redb"))?;
        let group = Arc::new(GroupCommitter::start(Arc::new(store))?);
        let started = Instant::now();
        let deadline = started + duration;
        let mut latencies_us: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..clients)
                .map(|client| {
                    let group = Arc::clone(&group);
                    scope.spawn(move || {
                        let mut latencies_us = Vec::new();
                        let mut sequence: u64 = 0;
                        let mut pending = VecDeque::new();
                        loop {
                            let now = Instant::now();
                            if now < deadline && pending.len() < in_flight {
                                let mut key = (client as u64).to_be_bytes().to_vec();
                                key.extend_from_slice(&sequence.to_be_bytes());
                                let mut batch = WriteBatch::new();
                                batch.put("bench", key, vec![0x5a; VALUE_BYTES]);
                                match group.submit(batch) {
                                    Ok(ticket) => pending.push_back((now, ticket)),
                                    Err(err) => {
                                        eprintln!("submit failed: {err}");
                                        break;
                                    }
                                }
                                sequence += 1;
                                continue;
                            }
                            let Some((begun, ticket)) = pending.pop_front() else {
                                break;
                            };
                            if let Err(err) = ticket.wait() {
                                eprintln!("commit failed: {err}");
                                break;
                            }
                            latencies_us.push(begun.elapsed().as_micros() as u64);
                        }
                        latencies_us
                    })
                })
                .collect();
            handles.into_iter().flat_map(|handle| handle.join().unwrap_or_default()).collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        latencies_us.sort_unstable();
        let percentile = |p: f64| -> f64 {
            if latencies_us.is_empty() {
                return f64::NAN;
            }
            let index = ((latencies_us.len() as f64 - 1.0) * p).round() as usize;
            latencies_us[index] as f64 / 1000.0
        };
        let batches_per_group = group.batches_committed() as f64 / group.groups_committed().max(1) as f64;
        println!(
            "{clients:>7}  {:>8.0}  {:>6.2}  {:>6.2}  {:>6.2}  {:>13.1}",
            latencies_us.len() as f64 / elapsed,
            percentile(0.50),
            percentile(0.99),
            percentile(1.0),
            batches_per_group,
        );
    }
    Ok(())
}
