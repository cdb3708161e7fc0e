//! `chorus bench strong [--vs-etcd]`: strong (Raft) write throughput,
//! latency and leader failover of a 3-voter chorus cluster on loopback, next
//! to a 3-member etcd cluster driven by the same client program in the same
//! run, because the targets are relative to etcd under the same client load
//! (targets and results: `docs/design/strong.md`, section "`chorus bench
//! strong --vs-etcd --rounds 3`").
//!
//! Method, identical for both systems:
//! - one cluster at a time (the other is not running), 3 members on
//!   127.0.0.1, data in a fresh temporary directory, default settings; a
//!   fresh cluster for every run;
//! - interleaved: each client count runs on chorus and then at once on
//!   etcd, so a machine whose speed drifts (a shared VM: we saw the same
//!   build vary 2x within minutes) affects both alike; `--rounds R` repeats
//!   that R times and reports the median round per system and the median of
//!   the per-round ratios;
//! - N closed-loop clients (1, 16 and 64 by default) on one thread
//!   (`crate::cmd::load`), one keep-alive HTTP/1.1 connection each (hyper),
//!   one request at a time; client i talks to member i mod 3, so
//!   most requests land on a follower that forwards them to the leader, as
//!   they would behind a load balancer;
//! - each client writes keys `c{i}-{n}` with 100-byte values back to back
//!   for `--seconds`; only writes answered 200 before the end count, latency
//!   is issue → answer;
//! - failover: one more client writes against a follower with a per-request
//!   timeout (`--failover-timeout-ms`, default 1 s); the leader is
//!   SIGKILLed; the failover time is from just before the kill until the
//!   first write *issued after the kill* is answered 200 (a write issued
//!   earlier might have been committed by the old leader, so it proves
//!   nothing). A write the follower holds for the dead leader costs the
//!   whole timeout, so the timeout is also the resolution. Each trial runs
//!   on a fresh cluster; the median is reported.
//!
//! chorus: `PUT /v1/ns/bench/kv/{key}` `{"value": ...}` on a namespace of
//! mode strong. etcd 3.4: the gRPC-gateway JSON API, `POST /v3/kv/put`
//! `{"key": base64, "value": base64}`; its leader comes from
//! `POST /v3/maintenance/status` (`header.member_id` = `leader`).
//!
//! The harness and the measurement are kept apart so each reads on its own
//! (results and method: `docs/design/strong.md`, section "`chorus bench
//! strong --vs-etcd --rounds 3`"): `cluster` starts, probes and kills the
//! chorus and etcd clusters (ports, child processes, leader discovery), and
//! `measure` runs the load rounds and failover trials and takes the medians.
//! This module holds the flags, the bounds, the client program both
//! systems are driven with ([`Writer`]) and the report (table and JSON).

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod cluster;
mod measure;

use cluster::{ChorusCluster, Cluster, EtcdCluster, StartCluster, etcd_version, find_etcd};
use measure::{Measured, Run, failover_trials, median_ratio, median_run, throughput};

/// Bytes of every benchmark value.
const VALUE_BYTES: usize = 100;
/// Most concurrent clients.
const CLIENTS_MAX: usize = 1024;
/// Most failover trials (each starts a fresh cluster).
const FAILOVER_RUNS_MAX: usize = 9;
/// Most `--rounds`.
const ROUNDS_MAX: usize = 9;
/// Members of either cluster.
const MEMBERS: usize = 3;
/// The chorus namespace the benchmark writes to.
const NAMESPACE: &str = "bench";
/// Deadline of one write during the throughput runs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of `--failover-timeout-ms`.
const FAILOVER_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 10..=10_000;
/// Pause after a failed failover write, so a member that refuses at once
/// is not hammered in a busy loop.
const FAILOVER_RETRY_PAUSE: Duration = Duration::from_millis(1);
/// Successful writes before the leader is killed (the writer is warm).
const FAILOVER_WARM_WRITES: usize = 20;
/// A failover with no successful write after this many seconds is reported
/// as failed (null).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
/// Bound of the writer → measurer channel during failover.
const FAILOVER_EVENTS_MAX: usize = 4096;
/// How long a fresh cluster may take to elect a leader and take writes.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Poll period while waiting for a cluster.
const POLL: Duration = Duration::from_millis(50);
/// Lines of an etcd log shown when a member dies during start-up.
const LOG_TAIL_LINES: usize = 15;

#[derive(Args, Debug)]
pub struct StrongArgs {
    /// Also run a 3-member etcd cluster (Debian etcd-server 3.4, installed by
    /// scripts/install-etcd.sh) with the same clients, and compare.
    #[arg(long)]
    vs_etcd: bool,
    /// Concurrent clients (default: runs of 1, 16 and 64).
    #[arg(long)]
    clients: Option<usize>,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of runs; each round runs every client count on chorus and
    /// then on etcd, back to back, and the median round is reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The etcd binary (default: `etcd` on PATH, else /usr/bin/etcd).
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    /// First port of the chorus cluster (like `chorus dev --base-port`).
    #[arg(long, default_value_t = 7401)]
    base_port: u16,
    /// etcd member i listens for clients on etcd-base-port + i and for
    /// peers on etcd-base-port + 10 + i.
    #[arg(long, default_value_t = 23790)]
    etcd_base_port: u16,
    /// Leader-kill trials per system; the median is reported.
    #[arg(long, default_value_t = 3)]
    failover_runs: usize,
    /// Deadline of one write during failover: a write stuck on the dead
    /// leader is given up after this and issued again, so it is also the
    /// resolution of the failover time.
    #[arg(long, default_value_t = 1000)]
    failover_timeout_ms: u64,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Chorus,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Chorus => "chorus",
            System::Etcd => "etcd",
        }
    }
}

/// The client program both systems are measured with: one keep-alive
/// connection, one request at a time, JSON bodies built the same way.
struct Writer {
    agent: ureq::Agent,
    system: System,
    base: String,
    /// The value as it appears in the JSON body (etcd: base64).
    value: String,
}

impl Writer {
    fn new(system: System, base: &str, timeout: Duration) -> Writer {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        let raw = "x".repeat(VALUE_BYTES);
        let value = match system {
            System::Chorus => raw,
            System::Etcd => base64(raw.as_bytes()),
        };
        Writer { agent, system, base: base.trim_end_matches('/').to_string(), value }
    }

    /// Write `key` (ASCII letters, digits and `-`: no escaping needed);
    /// true when the system answered 200.
    fn write(&self, key: &str) -> bool {
        let sent = match self.system {
            System::Chorus => self
                .agent
                .put(format!("{}/v1/ns/{NAMESPACE}/kv/{key}", self.base))
                .content_type("application/json")
                .send(format!("{{\"value\":\"{}\"}}", self.value)),
            System::Etcd => self
                .agent
                .post(format!("{}/v3/kv/put", self.base))
                .content_type("application/json")
                .send(format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", base64(key.as_bytes()), self.value)),
        };
        match sent {
            Ok(mut response) => {
                // Read the body to the end so the connection is reused.
                let body = response.body_mut().read_to_vec();
                response.status().as_u16() == 200 && body.is_ok()
            }
            Err(_) => false,
        }
    }
}

/// Standard base64 with padding (see `docs/design/strong.md`, "References"),
/// for etcd's JSON gateway.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn number(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

fn cell(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".into(),
    }
}

/// One client count: the median rounds, and `writes_ratio`, the median of
/// the per-round ratios.
fn print_table(clients: usize, chorus: Option<&Run>, etcd: Option<&Run>, writes_ratio: Option<f64>) {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let wps = (chorus.map(Run::writes_per_s), etcd.map(Run::writes_per_s));
    let p50 = (chorus.map(Run::p50), etcd.map(Run::p50));
    let p99 = (chorus.map(Run::p99), etcd.map(Run::p99));
    let errors = (chorus.map(|r| r.errors as f64), etcd.map(|r| r.errors as f64));
    println!("clients {clients:<4} {:>12} {:>12} {:>12}", "chorus", "etcd", "chorus/etcd");
    println!("  writes/s   {:>12} {:>12} {:>12}", cell(wps.0, 0), cell(wps.1, 0), cell(writes_ratio, 2));
    println!("  p50 ms     {:>12} {:>12} {:>12}", cell(p50.0, 2), cell(p50.1, 2), cell(ratio(p50.0, p50.1), 2));
    println!("  p99 ms     {:>12} {:>12} {:>12}", cell(p99.0, 2), cell(p99.1, 2), cell(ratio(p99.0, p99.1), 2));
    println!("  errors     {:>12} {:>12}", cell(errors.0, 0), cell(errors.1, 0));
}

pub fn run(args: StrongArgs) -> Result<ExitCode> {
    let counts: Vec<usize> = match args.clients {
        Some(n) if n == 0 || n > CLIENTS_MAX => bail!("--clients must be in 1..={CLIENTS_MAX}"),
        Some(n) => vec![n],
        None => vec![1, 16, 64],
    };
    if args.seconds == 0 {
        bail!("--seconds must be positive");
    }
    if args.failover_runs == 0 || args.failover_runs > FAILOVER_RUNS_MAX {
        bail!("--failover-runs must be in 1..={FAILOVER_RUNS_MAX}");
    }
    if !FAILOVER_TIMEOUT_MS.contains(&args.failover_timeout_ms) {
        bail!("--failover-timeout-ms must be in {FAILOVER_TIMEOUT_MS:?}");
    }
    let failover_timeout = Duration::from_millis(args.failover_timeout_ms);
    let etcd = if args.vs_etcd {
        let bin = find_etcd(args.etcd_bin)?;
        let version = etcd_version(&bin)?;
        Some((bin, version))
    } else {
        None
    };
    if args.rounds == 0 || args.rounds > ROUNDS_MAX {
        bail!("--rounds must be in 1..={ROUNDS_MAX}");
    }
    let base_port = args.base_port;
    let chorus_start = move || -> Result<Box<dyn Cluster>> { Ok(Box::new(ChorusCluster::start(base_port)?)) };
    let etcd_base_port = args.etcd_base_port;
    let etcd_start = etcd.as_ref().map(|(bin, _)| {
        let bin = bin.clone();
        move || -> Result<Box<dyn Cluster>> { Ok(Box::new(EtcdCluster::start(&bin, etcd_base_port)?)) }
    });
    let mut systems: Vec<(System, &StartCluster, Measured)> = Vec::new();
    let fresh = || Measured { runs: vec![Vec::new(); counts.len()], failover_ms: Vec::new(), failed: false };
    systems.push((System::Chorus, &chorus_start, fresh()));
    if let Some(start) = &etcd_start {
        systems.push((System::Etcd, start, fresh()));
    }
    // Interleaved, so a machine whose speed drifts (a shared VM) affects
    // both systems alike: every client count runs on chorus and then at
    // once on etcd, each on a fresh cluster, round after round.
    for _ in 0..args.rounds {
        for (k, &n) in counts.iter().enumerate() {
            for (system, start, measured) in systems.iter_mut() {
                if measured.failed {
                    continue;
                }
                match throughput(*system, n, args.seconds, *start) {
                    Ok(run) => measured.runs[k].push(run),
                    Err(e) => {
                        eprintln!("{}: {e:#}", system.name());
                        measured.failed = true;
                    }
                }
            }
        }
    }
    for (system, start, measured) in systems.iter_mut() {
        if measured.failed {
            continue;
        }
        match failover_trials(*system, args.failover_runs, failover_timeout, *start) {
            Ok(ms) => measured.failover_ms = ms,
            Err(e) => {
                eprintln!("{}: {e:#}", system.name());
                measured.failed = true;
            }
        }
    }
    let failed = systems.iter().any(|(_, _, m)| m.failed);
    let mut measured = systems.into_iter().map(|(_, _, m)| Some(m).filter(|m| !m.failed));
    let chorus = measured.next().flatten();
    let etcd_measured = measured.next().flatten();

    println!(
        "strong writes: {MEMBERS} members on 127.0.0.1 each, {VALUE_BYTES}-byte values, {} s per run, client i → member i mod {MEMBERS}{}",
        args.seconds,
        etcd.as_ref().map(|(_, v)| format!(", vs {v}")).unwrap_or_default()
    );
    let mut rows = Vec::new();
    for (k, &clients) in counts.iter().enumerate() {
        let c_rounds = chorus.as_ref().and_then(|m| m.runs.get(k)).map_or(&[][..], Vec::as_slice);
        let e_rounds = etcd_measured.as_ref().and_then(|m| m.runs.get(k)).map_or(&[][..], Vec::as_slice);
        let (c, e) = (median_run(c_rounds), median_run(e_rounds));
        let ratio = median_ratio(c_rounds, e_rounds);
        print_table(clients, c, e, ratio);
        let field = |r: Option<&Run>, f: fn(&Run) -> f64| r.map_or(Value::Null, |r| number(f(r)));
        let per_round = |runs: &[Run]| Value::Array(runs.iter().map(|r| number(r.writes_per_s())).collect());
        let ratio = ratio.map_or(Value::Null, number);
        rows.push(json!({
            "clients": clients,
            "chorus_writes_per_s": field(c, Run::writes_per_s),
            "chorus_p50_ms": field(c, Run::p50),
            "chorus_p99_ms": field(c, Run::p99),
            "chorus_errors": c.map(|r| r.errors),
            "etcd_writes_per_s": field(e, Run::writes_per_s),
            "etcd_p50_ms": field(e, Run::p50),
            "etcd_p99_ms": field(e, Run::p99),
            "etcd_errors": e.map(|r| r.errors),
            "ratio_writes_per_s": ratio,
            "chorus_writes_per_s_rounds": per_round(c_rounds),
            "etcd_writes_per_s_rounds": per_round(e_rounds),
        }));
    }
    let chorus_failover = chorus.as_ref().and_then(Measured::failover_median);
    let etcd_failover = etcd_measured.as_ref().and_then(Measured::failover_median);
    let samples = |m: Option<&Measured>| {
        m.map_or(String::new(), |m| {
            let all: Vec<String> = m.failover_ms.iter().map(|x| cell(*x, 0)).collect();
            format!(" [{}]", all.join(", "))
        })
    };
    println!(
        "failover (kill -9 leader → first write issued after it answered; {} ms per-write timeout; median of {}): chorus {} ms{}, etcd {} ms{}",
        args.failover_timeout_ms,
        args.failover_runs,
        cell(chorus_failover, 0),
        samples(chorus.as_ref()),
        cell(etcd_failover, 0),
        samples(etcd_measured.as_ref()),
    );
    if args.json {
        let trials = |m: Option<&Measured>| {
            m.map_or(Value::Null, |m| {
                Value::Array(m.failover_ms.iter().map(|x| x.map_or(Value::Null, number)).collect())
            })
        };
        let top = json!({
            "runs": rows,
            "chorus_failover_ms": chorus_failover.map_or(Value::Null, number),
            "etcd_failover_ms": etcd_failover.map_or(Value::Null, number),
            "chorus_failover_trials_ms": trials(chorus.as_ref()),
            "etcd_failover_trials_ms": trials(etcd_measured.as_ref()),
            "etcd_version": etcd.as_ref().map(|(_, v)| v.clone()),
            "value_bytes": VALUE_BYTES,
            "members": MEMBERS,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "failover_timeout_ms": args.failover_timeout_ms,
        });
        println!("{top}");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
