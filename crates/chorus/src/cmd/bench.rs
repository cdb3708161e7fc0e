//! `chorus bench write`: durable write throughput and latency of one node of
//! a 3-node loopback cluster, and propagation latency to the other two.
//! `--signing both` runs a cluster with signed writes and one without
//! (`signing_enabled = false`) side by side and interleaves their runs
//! (on, off, on, off, …: this machine's speed drifts within minutes), with
//! the nodes' CPU time per write; it also measures what a signature costs
//! on one core (`docs/design/signing.md`).

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
        /// Signed writes on, off, or both side by side (interleaved runs).
        #[arg(long, value_enum, default_value = "on")]
        signing: SigningMode,
        /// With `--signing both`: rounds of (on, off) per client count.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SigningMode {
    On,
    Off,
    Both,
}

/// Most `--rounds`.
const ROUNDS_MAX: usize = 20;

struct Run {
    clients: usize,
    /// Whether the cluster signed its writes.
    signing: bool,
    /// CPU time (user + system) of the cluster's three node processes per
    /// acknowledged write, µs.
    cpu_us_per_write: f64,
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
    let (clients, seconds, base_port, json, signing, rounds) = match args.command {
        BenchCommand::Write { clients, seconds, base_port, json, signing, rounds } => {
            (clients, seconds, base_port, json, signing, rounds)
        }
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
    let modes: Vec<bool> = match signing {
        SigningMode::On => vec![true],
        SigningMode::Off => vec![false],
        SigningMode::Both => vec![true, false],
    };
    let rounds = if signing == SigningMode::Both { rounds } else { 1 };
    if rounds == 0 || rounds > ROUNDS_MAX {
        bail!("--rounds must be in 1..={ROUNDS_MAX}");
    }
    let costs = modes.contains(&true).then(signature_costs);
    if let Some(c) = &costs {
        println!(
            "signatures (one core): {:.0} ed25519 verifications/s, {:.0} signs/s; a key proof checked against a cached block: {:.2} µs",
            c.verifications_per_s, c.signs_per_s, c.proof_check_us
        );
    }
    // One cluster per mode, side by side (ports 100 apart).
    let mut clusters = Vec::new();
    let mut temps = Vec::new();
    for (k, &on) in modes.iter().enumerate() {
        let temp = tempfile::Builder::new().prefix("chorus-bench-").tempdir()?;
        let mut extra_config = String::from("log = \"warn\"");
        if !on {
            extra_config.push_str("\nsigning_enabled = false");
        }
        let layout = DevLayout {
            nodes: 3,
            dir: temp.path().to_path_buf(),
            base_port: base_port + 100 * k as u16,
            ip: Ipv4Addr::LOCALHOST,
            extra_config,
        };
        let cluster = layout.start()?;
        wait_members(&cluster.urls)?;
        clusters.push(cluster);
        temps.push(temp);
    }
    let mut runs = Vec::new();
    let mut index = 0;
    for &n in &counts {
        for _ in 0..rounds {
            for (cluster, &on) in clusters.iter().zip(&modes) {
                let pids: Vec<u32> = cluster.children.iter().map(|c| c.id()).collect();
                let cpu_before = processes_cpu(&pids);
                let mut run = load(&cluster.urls, n, Duration::from_secs(seconds), index)?;
                index += 1;
                let cpu = processes_cpu(&pids).saturating_sub(cpu_before);
                run.signing = on;
                run.cpu_us_per_write = cpu.as_secs_f64() * 1e6 / run.writes.max(1) as f64;
                print_run(&run);
                runs.push(run);
            }
        }
    }
    drop(clusters);
    let comparison = (signing == SigningMode::Both).then(|| compare(&runs, &counts));
    if json {
        let as_json = |r: &Run| {
            let mut ack = r.ack_ms.clone();
            ack.sort_by(f64::total_cmp);
            let mut prop = r.propagation_ms.clone();
            prop.sort_by(f64::total_cmp);
            json!({
                "clients": r.clients,
                "signing": r.signing,
                "cpu_us_per_write": r.cpu_us_per_write,
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
        top.insert(
            "signing_mode".into(),
            json!(match signing {
                SigningMode::On => "on",
                SigningMode::Off => "off",
                SigningMode::Both => "both",
            }),
        );
        if let Some(c) = &costs {
            top.insert("verifications_per_s_per_core".into(), json!(c.verifications_per_s));
            top.insert("signs_per_s_per_core".into(), json!(c.signs_per_s));
            top.insert("proof_check_us".into(), json!(c.proof_check_us));
        }
        if let Some(cmp) = comparison {
            top.insert("signing_comparison".into(), cmp);
        }
        println!("{}", Value::Object(top));
    }
    Ok(ExitCode::SUCCESS)
}

/// Per client count, the median writes/s and CPU per write with signing on
/// and off over the interleaved rounds; printed and returned as JSON.
fn compare(runs: &[Run], counts: &[usize]) -> Value {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let mut out = Vec::new();
    for &n in counts {
        let pick = |on: bool, f: &dyn Fn(&Run) -> f64| {
            median(runs.iter().filter(|r| r.clients == n && r.signing == on).map(f).collect())
        };
        let rate = |r: &Run| r.writes as f64 / r.seconds;
        let cpu = |r: &Run| r.cpu_us_per_write;
        let (on, off) = (pick(true, &rate), pick(false, &rate));
        let (cpu_on, cpu_off) = (pick(true, &cpu), pick(false, &cpu));
        println!(
            "clients {n:>3}: signing on {on:.0} writes/s vs off {off:.0} ({:+.1} %) | CPU per write {cpu_on:.0} µs vs {cpu_off:.0} µs (medians)",
            (on / off - 1.0) * 100.0
        );
        out.push(json!({
            "clients": n,
            "on_writes_per_s": on,
            "off_writes_per_s": off,
            "ratio": on / off,
            "on_cpu_us_per_write": cpu_on,
            "off_cpu_us_per_write": cpu_off,
        }));
    }
    Value::Array(out)
}

/// User + system CPU time of these processes so far (`/proc/PID/stat`).
fn processes_cpu(pids: &[u32]) -> Duration {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after "(comm) ": state is 0, utime 11, stime 12.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (t(11) + t(12)) / ticks;
    }
    Duration::from_secs_f64(total)
}

struct SignatureCosts {
    verifications_per_s: f64,
    signs_per_s: f64,
    proof_check_us: f64,
}

/// What signing costs on this thread's core: ed25519 signs and strict
/// verifications, and checking one write's key proof whose block is already
/// verified (the per-write cost a receiver pays after a turn's one
/// signature check), all by CPU time.
fn signature_costs() -> SignatureCosts {
    use chorus_core::signing::{
        BlockHeader, Ed25519Signing, KeyProof, Signing, VerifiedBlocks, WriteRecord, check_entry, claim_of, leaf_hash,
        merkle_tree,
    };
    use chorus_core::{Dot, Entry, NodeId, Op, Timestamp, ValueType};
    const ROUNDS: u32 = 2_000;
    const BLOCK: usize = 64;
    let me = NodeId(1);
    let signer = Ed25519Signing::new(me, &[7; 32]);
    let message = [9u8; 32];
    let t = crate::cmd::bench_flood::cpu_time();
    let mut sig = Vec::new();
    for _ in 0..ROUNDS {
        sig = signer.sign(&message);
    }
    let sign_s = (crate::cmd::bench_flood::cpu_time() - t).as_secs_f64();
    let t = crate::cmd::bench_flood::cpu_time();
    let mut valid = 0u32;
    for _ in 0..ROUNDS {
        valid += u32::from(signer.verify(me, &message, &sig) == chorus_core::signing::Verdict::Valid);
    }
    let verify_s = (crate::cmd::bench_flood::cpu_time() - t).as_secs_f64();
    assert_eq!(valid, ROUNDS, "benchmark signatures verify");
    // One turn of BLOCK writes to distinct keys, signed once.
    let op = Op::Put { value: vec![b'x'; VALUE_BYTES], context: None };
    let mut writes = Vec::new();
    for i in 0..BLOCK {
        let dot = Dot { node: me, counter: i as u64 + 1 };
        let ts = Timestamp { physical_us: 1_000 + i as u64, logical: 0, node: me };
        let mut entry = Entry::empty(ValueType::Lww);
        let _ = entry.apply(&op, dot, ts);
        let record = WriteRecord { dot, ts, claim: claim_of(&op, &entry, me) };
        writes.push((format!("k{i}").into_bytes(), entry, record));
    }
    let leaves: Vec<[u8; 32]> = writes.iter().map(|(k, _, r)| leaf_hash("default", k, r)).collect();
    let (root, paths) = merkle_tree(&leaves);
    let header = BlockHeader { origin: me, seq: 1, prev: [0; 32], root, leaves: BLOCK as u32 };
    let block =
        std::sync::Arc::new(chorus_core::signing::SignedBlock { header, signature: signer.sign(&header.hash()) });
    let proofs: Vec<KeyProof> = writes
        .iter()
        .zip(paths)
        .enumerate()
        .map(|(i, ((_, _, r), path))| KeyProof {
            attestations: vec![chorus_core::signing::Attestation {
                record: *r,
                block: block.clone(),
                index: i as u32,
                path,
            }],
        })
        .collect();
    let mut verified = VerifiedBlocks::default();
    let _ = check_entry("default", &writes[0].0, &writes[0].1, &proofs[0], &signer, &mut verified);
    let t = crate::cmd::bench_flood::cpu_time();
    let mut checks = 0u32;
    for _ in 0..ROUNDS / 64 {
        for ((k, e, _), p) in writes.iter().zip(&proofs) {
            checks += u32::from(check_entry("default", k, e, p, &signer, &mut verified).is_ok());
        }
    }
    let check_s = (crate::cmd::bench_flood::cpu_time() - t).as_secs_f64();
    assert_eq!(checks, (ROUNDS / 64) * BLOCK as u32, "benchmark proofs check");
    SignatureCosts {
        verifications_per_s: f64::from(ROUNDS) / verify_s.max(1e-9),
        signs_per_s: f64::from(ROUNDS) / sign_s.max(1e-9),
        proof_check_us: check_s * 1e6 / f64::from(checks.max(1)),
    }
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
        "clients {:>3} signing {:<3}: {:>8.0} writes/s ({} writes, {} errors) | ack p50 {:.2} ms p99 {:.2} ms | propagation p50 {:.2} ms p99 {:.2} ms ({} samples) | CPU {:.0} µs/write",
        r.clients,
        if r.signing { "on" } else { "off" },
        r.writes as f64 / r.seconds,
        r.writes,
        r.errors,
        percentile(&ack, 0.5),
        percentile(&ack, 0.99),
        percentile(&prop, 0.5),
        percentile(&prop, 0.99),
        prop.len(),
        r.cpu_us_per_write
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
        signing: true,
        cpu_us_per_write: 0.0,
        writes: outcome.ok,
        errors: outcome.errors,
        seconds: outcome.seconds,
        ack_ms: outcome.latency_ms,
        propagation_ms: Vec::new(),
    };
    r.propagation_ms = prober.join().map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    Ok(r)
}
