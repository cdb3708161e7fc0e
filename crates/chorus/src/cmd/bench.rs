//! `chorus bench write`: durable write throughput and latency of one node of
//! a 3-node loopback cluster, and propagation latency to the other two.

use crate::cmd::client::{Client, encode_key};
use crate::cmd::dev::DevLayout;
use crate::cmd::load::Request;
use anyhow::{Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Bytes of every benchmark value.
const VALUE_BYTES: usize = 100;
/// Propagation probes: one every this often while the load runs.
const PROBE_PERIOD: Duration = Duration::from_millis(5);
/// A probe not visible on a peer within this counts as this long.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of one benchmark write.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent clients.
const CLIENTS_MAX: usize = 1024;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Write 100-byte values to node 1 of a fresh 3-node loopback cluster.
    Write {
        /// Concurrent clients (default: runs of 1, 16 and 64).
        #[arg(long)]
        clients: Option<usize>,
        /// Seconds of load per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// First port of the cluster (like `chorus dev --base-port`).
        #[arg(long, default_value_t = 7401)]
        base_port: u16,
        /// Print one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// Reconcile two replicas of n entries that differ in d, with chorus's
    /// range-based reconciliation, the negentropy crate, and a naive
    /// full-state transfer, on the same sets.
    AntiEntropy(crate::cmd::bench_ae::AntiEntropyArgs),
    /// Strong (Raft) writes and leader failover on 3 voters; with
    /// --vs-etcd, against a 3-member etcd cluster in the same run.
    Strong(crate::cmd::bench_strong::StrongArgs),
    /// Change-stream delivery latency (write on node 1 → event on a
    /// watcher of node 2) at paced write rates, and the memory of 1,000
    /// idle watchers, on a fresh 3-node loopback cluster.
    Watch(crate::cmd::bench_watch::WatchArgs),
    /// One token flooding a one-node cluster with auth and the client rate
    /// limit on: 429s, and another token's read latency unloaded and under
    /// the flood; the CPU time of one token check.
    Flood(crate::cmd::bench_flood::FloodArgs),
}

struct Run {
    clients: usize,
    writes: u64,
    errors: u64,
    seconds: f64,
    ack_ms: Vec<f64>,
    propagation_ms: Vec<f64>,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let (clients, seconds, base_port, json) = match args.command {
        BenchCommand::Write { clients, seconds, base_port, json } => (clients, seconds, base_port, json),
        BenchCommand::AntiEntropy(a) => return crate::cmd::bench_ae::run(a),
        BenchCommand::Strong(a) => return crate::cmd::bench_strong::run(a),
        BenchCommand::Watch(a) => return crate::cmd::bench_watch::run(a),
        BenchCommand::Flood(a) => return crate::cmd::bench_flood::run(a),
    };
    let counts: Vec<usize> = match clients {
        Some(n) if n == 0 || n > CLIENTS_MAX => bail!("--clients must be in 1..={CLIENTS_MAX}"),
        Some(n) => vec![n],
        None => vec![1, 16, 64],
    };
    let temp = tempfile::Builder::new().prefix("chorus-bench-").tempdir()?;
    let layout = DevLayout {
        nodes: 3,
        dir: temp.path().to_path_buf(),
        base_port,
        ip: Ipv4Addr::LOCALHOST,
        extra_config: "log = \"warn\"".into(),
    };
    let cluster = layout.start()?;
    wait_members(&cluster.urls)?;
    let mut runs = Vec::new();
    for (r, &n) in counts.iter().enumerate() {
        let run = load(&cluster.urls, n, Duration::from_secs(seconds), r)?;
        print_run(&run);
        runs.push(run);
    }
    drop(cluster);
    if json {
        let as_json = |r: &Run| {
            let mut ack = r.ack_ms.clone();
            ack.sort_by(f64::total_cmp);
            let mut prop = r.propagation_ms.clone();
            prop.sort_by(f64::total_cmp);
            json!({
                "clients": r.clients,
                "writes": r.writes,
                "errors": r.errors,
                "seconds": r.seconds,
                "writes_per_s": r.writes as f64 / r.seconds,
                "ack_p50_ms": percentile(&ack, 0.5),
                "ack_p99_ms": percentile(&ack, 0.99),
                "propagation_p50_ms": percentile(&prop, 0.5),
                "propagation_p99_ms": percentile(&prop, 0.99),
                "propagation_samples": prop.len(),
            })
        };
        let all: Vec<Value> = runs.iter().map(as_json).collect();
        let largest = runs.iter().max_by_key(|r| r.clients).map(as_json).unwrap_or(Value::Null);
        let mut top = largest.as_object().cloned().unwrap_or_default();
        top.insert("value_bytes".into(), json!(VALUE_BYTES));
        top.insert("nodes".into(), json!(3));
        top.insert("runs".into(), Value::Array(all));
        println!("{}", Value::Object(top));
    }
    Ok(ExitCode::SUCCESS)
}

fn wait_members(urls: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in urls {
        let client = Client::new(url);
        loop {
            let v = client.ok("GET", "/v1/members", None)?;
            let alive = v["members"].as_array().map_or(0, |a| a.iter().filter(|m| m["state"] == "alive").count());
            if alive + 1 == urls.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{url} did not see every member alive within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn print_run(r: &Run) {
    let mut ack = r.ack_ms.clone();
    ack.sort_by(f64::total_cmp);
    let mut prop = r.propagation_ms.clone();
    prop.sort_by(f64::total_cmp);
    println!(
        "clients {:>3}: {:>8.0} writes/s ({} writes, {} errors) | ack p50 {:.2} ms p99 {:.2} ms | propagation p50 {:.2} ms p99 {:.2} ms ({} samples)",
        r.clients,
        r.writes as f64 / r.seconds,
        r.writes,
        r.errors,
        percentile(&ack, 0.5),
        percentile(&ack, 0.99),
        percentile(&prop, 0.5),
        percentile(&prop, 0.99),
        prop.len()
    );
}

/// `clients` closed-loop clients (the shared load generator,
/// [`crate::cmd::load`]) write as fast as acknowledgements allow; one more
/// thread writes a probe key every [`PROBE_PERIOD`] and polls the other
/// nodes until it is visible there (propagation = issue → visible).
fn load(urls: &[String], clients: usize, duration: Duration, run: usize) -> Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let body = Bytes::from(json!({ "value": "x".repeat(VALUE_BYTES) }).to_string());
    let prober = {
        let urls = urls.to_vec();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let writer = Client::new(&urls[0]);
            let readers: Vec<Client> = urls[1..].iter().map(|u| Client::new(u)).collect();
            let mut samples = Vec::new();
            let mut j = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("probe-{run}-{j}");
                j += 1;
                let t0 = Instant::now();
                if !matches!(
                    writer.call(
                        "PUT",
                        &format!("/v1/ns/default/kv/{}", encode_key(&key)),
                        Some(&json!({"value": "p"}))
                    ),
                    Ok((200, _))
                ) {
                    continue;
                }
                for reader in &readers {
                    let path = format!("/v1/ns/default/kv/{}", encode_key(&key));
                    loop {
                        if let Ok((200, _)) = reader.call("GET", &path, None) {
                            samples.push(t0.elapsed().as_secs_f64() * 1e3);
                            break;
                        }
                        if t0.elapsed() > PROBE_DEADLINE {
                            samples.push(PROBE_DEADLINE.as_secs_f64() * 1e3);
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                let spent = t0.elapsed();
                if spent < PROBE_PERIOD {
                    std::thread::sleep(PROBE_PERIOD - spent);
                }
            }
            samples
        })
    };
    let outcome = crate::cmd::load::drive(
        &urls[..1],
        clients,
        duration,
        REQUEST_TIMEOUT,
        |_| 0,
        move |c, i| Request {
            method: hyper::Method::PUT,
            path: format!("/v1/ns/default/kv/bench-{run}-{c}-{i}"),
            body: body.clone(),
        },
    );
    stop.store(true, Ordering::Relaxed);
    let outcome = outcome?;
    let mut r = Run {
        clients,
        writes: outcome.ok,
        errors: outcome.errors,
        seconds: outcome.seconds,
        ack_ms: outcome.latency_ms,
        propagation_ms: Vec::new(),
    };
    r.propagation_ms = prober.join().map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    Ok(r)
}
