//! `chorus bench strong [--vs-etcd]`: strong (Raft) write throughput,
//! latency and leader failover of a 3-voter chorus cluster on loopback, next
//! to a 3-member etcd cluster driven by the same client program in the same
//! run (SPEC §11: "at least etcd's throughput and no worse p99, same client
//! load, same run"; "writes succeed again < 1 s after the leader is killed").
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

use crate::cmd::client::{Client, describe_error};
use crate::cmd::dev::{DevCluster, DevLayout};
use crate::cmd::load::Request;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

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

/// Standard base64 (RFC 4648 §4, with padding), for etcd's JSON gateway.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A running 3-member cluster of either system.
trait Cluster {
    fn urls(&self) -> &[String];
    /// Index of the member every reachable member names as leader, waiting
    /// up to [`READY_DEADLINE`] for one.
    fn leader(&self) -> Result<usize>;
    /// SIGKILL member `i` and reap it.
    fn kill(&mut self, i: usize) -> Result<()>;
}

/// A chorus cluster and the directory it lives in (dropped after it).
struct ChorusCluster {
    cluster: DevCluster,
    _dir: tempfile::TempDir,
}

impl ChorusCluster {
    fn start(base_port: u16) -> Result<ChorusCluster> {
        let dir = tempfile::Builder::new().prefix("chorus-bench-strong-").tempdir()?;
        let layout = DevLayout {
            nodes: MEMBERS as u16,
            dir: dir.path().to_path_buf(),
            base_port,
            ip: Ipv4Addr::LOCALHOST,
            extra_config: "log = \"warn\"".into(),
        };
        let cluster = layout.start()?;
        let c = ChorusCluster { cluster, _dir: dir };
        c.leader()?;
        c.create_namespace()?;
        wait_writable(System::Chorus, c.urls())?;
        Ok(c)
    }

    /// Create the strong namespace, retrying while there is no leader yet.
    fn create_namespace(&self) -> Result<()> {
        let client = Client::new(&self.cluster.urls[0]);
        let body = json!({ "name": NAMESPACE, "mode": "strong" });
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match client.call("POST", "/v1/ns", Some(&body)) {
                Ok((200 | 201, _)) => return Ok(()),
                Ok((503, v)) if Instant::now() < deadline => tracing::debug!("creating {NAMESPACE}: {v}"),
                Ok((status, v)) => bail!("creating namespace {NAMESPACE}: {}", describe_error(status, &v)),
                Err(e) if Instant::now() < deadline => tracing::debug!("creating {NAMESPACE}: {e:#}"),
                Err(e) => return Err(e.context(format!("creating namespace {NAMESPACE}"))),
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Cluster for ChorusCluster {
    fn urls(&self) -> &[String] {
        &self.cluster.urls
    }

    fn leader(&self) -> Result<usize> {
        poll_leader("chorus", || {
            let mut named = None;
            for url in &self.cluster.urls {
                let (status, v) = Client::new(url).call("GET", "/v1/raft", None)?;
                if status != 200 {
                    bail!("GET {url}/v1/raft: {}", describe_error(status, &v));
                }
                let Some(name) = v["leader"].as_str() else { return Ok(None) };
                let i = name
                    .strip_prefix("node")
                    .and_then(|k| k.parse::<usize>().ok())
                    .filter(|k| (1..=self.cluster.urls.len()).contains(k))
                    .ok_or_else(|| anyhow!("{url} names an unknown leader {name:?}"))?;
                if named.is_some_and(|n| n != i - 1) {
                    return Ok(None);
                }
                named = Some(i - 1);
            }
            Ok(named)
        })
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        let child = self.cluster.children.get_mut(i).ok_or_else(|| anyhow!("no chorus node {i}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

/// Three etcd members as children of this process; all are SIGKILLed on
/// drop (and, on Linux, when this process dies).
struct EtcdCluster {
    children: Vec<Child>,
    urls: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl EtcdCluster {
    fn start(bin: &Path, base_port: u16) -> Result<EtcdCluster> {
        if u32::from(base_port) + 10 + MEMBERS as u32 > u32::from(u16::MAX) {
            bail!("--etcd-base-port {base_port} leaves no room for {MEMBERS} members");
        }
        let dir = tempfile::Builder::new().prefix("chorus-bench-etcd-").tempdir()?;
        let client_url = |i: usize| format!("http://127.0.0.1:{}", base_port as usize + i);
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", base_port as usize + 10 + i);
        let initial: Vec<String> = (1..=MEMBERS).map(|i| format!("e{i}={}", peer_url(i))).collect();
        let mut cluster = EtcdCluster { children: Vec::new(), urls: Vec::new(), dir };
        for i in 1..=MEMBERS {
            let log_path = cluster.dir.path().join(format!("e{i}.log"));
            let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let mut cmd = Command::new(bin);
            cmd.arg("--name")
                .arg(format!("e{i}"))
                .arg("--data-dir")
                .arg(cluster.dir.path().join(format!("e{i}.data")))
                .arg("--listen-client-urls")
                .arg(client_url(i))
                .arg("--advertise-client-urls")
                .arg(client_url(i))
                .arg("--listen-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-cluster")
                .arg(initial.join(","))
                .arg("--initial-cluster-state")
                .arg("new")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
            }
            cluster.children.push(cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?);
            cluster.urls.push(client_url(i));
        }
        cluster.wait_healthy()?;
        cluster.leader()?;
        wait_writable(System::Etcd, &cluster.urls)?;
        Ok(cluster)
    }

    /// Poll `GET /health` on every member until it says `{"health":"true"}`.
    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        for i in 0..self.urls.len() {
            let client = Client::new(&self.urls[i]);
            loop {
                if let Ok((200, v)) = client.call("GET", "/health", None)
                    && v["health"] == "true"
                {
                    break;
                }
                if let Some(status) = self.children[i].try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.path().join(format!("e{}.log", i + 1))).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
                    bail!(
                        "etcd member e{} exited ({status}); log tail:\n{}",
                        i + 1,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                if Instant::now() > deadline {
                    bail!("etcd member {} was not healthy within {READY_DEADLINE:?}", self.urls[i]);
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }
}

impl Cluster for EtcdCluster {
    fn urls(&self) -> &[String] {
        &self.urls
    }

    fn leader(&self) -> Result<usize> {
        poll_leader("etcd", || {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for url in &self.urls {
                let (status, v) = Client::new(url).call("POST", "/v3/maintenance/status", Some(&json!({})))?;
                if status != 200 {
                    bail!("POST {url}/v3/maintenance/status: {}", describe_error(status, &v));
                }
                // u64s are JSON strings in the gateway's protobuf mapping.
                ids.push(v["header"]["member_id"].as_str().unwrap_or_default().to_string());
                leaders.push(v["leader"].as_str().unwrap_or_default().to_string());
            }
            let Some(leader) = leaders.first().filter(|l| !l.is_empty() && *l != "0") else { return Ok(None) };
            if leaders.iter().any(|l| l != leader) {
                return Ok(None);
            }
            Ok(ids.iter().position(|id| id == leader))
        })
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        let child = self.children.get_mut(i).ok_or_else(|| anyhow!("no etcd member {i}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

/// Call `probe` until it names a leader; errors are retried until the
/// deadline, then returned.
fn poll_leader(what: &str, mut probe: impl FnMut() -> Result<Option<usize>>) -> Result<usize> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let last = probe();
        if let Ok(Some(i)) = last {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return match last {
                Err(e) => Err(e.context(format!("{what}: no leader within {READY_DEADLINE:?}"))),
                _ => bail!("{what}: members did not agree on a leader within {READY_DEADLINE:?}"),
            };
        }
        std::thread::sleep(POLL);
    }
}

/// Wait until one write through every member succeeds (a follower may
/// learn of the leader, or of a new namespace, a little after it exists).
fn wait_writable(system: System, urls: &[String]) -> Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    for url in urls {
        let writer = Writer::new(system, url, REQUEST_TIMEOUT);
        while !writer.write("ready") {
            if Instant::now() > deadline {
                bail!("{}: {url} did not take a write within {READY_DEADLINE:?}", system.name());
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// One load run of one system.
#[derive(Clone, Debug)]
struct Run {
    writes: u64,
    errors: u64,
    seconds: f64,
    /// Sorted ascending.
    latency_ms: Vec<f64>,
}

impl Run {
    fn writes_per_s(&self) -> f64 {
        self.writes as f64 / self.seconds
    }

    fn p50(&self) -> f64 {
        percentile(&self.latency_ms, 0.5)
    }

    fn p99(&self) -> f64 {
        percentile(&self.latency_ms, 0.99)
    }
}

/// Nearest-rank percentile of an ascending slice (NaN when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `clients` closed-loop clients (the shared load generator,
/// [`crate::cmd::load`]) write back to back for `duration`, client i
/// through member i mod 3, with the same bodies as [`Writer`]. The clock
/// starts when every client is connected.
fn load(system: System, urls: &[String], clients: usize, duration: Duration) -> Result<Run> {
    let raw = "x".repeat(VALUE_BYTES);
    let request = move |c: usize, n: u64| {
        let key = format!("c{c}-{n}");
        match system {
            System::Chorus => Request {
                method: hyper::Method::PUT,
                path: format!("/v1/ns/{NAMESPACE}/kv/{key}"),
                body: Bytes::from(format!("{{\"value\":\"{raw}\"}}")),
            },
            System::Etcd => Request {
                method: hyper::Method::POST,
                path: "/v3/kv/put".into(),
                body: Bytes::from(format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    base64(key.as_bytes()),
                    base64(raw.as_bytes())
                )),
            },
        }
    };
    let outcome = crate::cmd::load::drive(urls, clients, duration, REQUEST_TIMEOUT, |c| c, request)?;
    let mut latency_ms = outcome.latency_ms;
    latency_ms.sort_by(f64::total_cmp);
    Ok(Run { writes: outcome.ok, errors: outcome.errors, seconds: outcome.seconds, latency_ms })
}

/// One write of the failover client, as the measuring thread sees it.
struct Attempt {
    issued: Instant,
    answered: Instant,
    done: bool,
}

/// One leader-kill trial.
struct Trial {
    /// From the kill until a write issued after it was answered 200 (None:
    /// not within [`FAILOVER_DEADLINE`]).
    ms: Option<f64>,
    /// Writes that failed (error or timeout) after the kill, before that.
    failed: u64,
    /// The longest of those, issue → failure.
    longest_failed_ms: f64,
}

/// Kill the leader while a client writes through a follower.
fn failover(system: System, cluster: &mut dyn Cluster, timeout: Duration) -> Result<Trial> {
    let leader = cluster.leader()?;
    let follower = (leader + 1) % cluster.urls().len();
    let url = cluster.urls()[follower].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel::<Attempt>(FAILOVER_EVENTS_MAX);
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let writer = Writer::new(system, &url, timeout);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let done = writer.write(&format!("failover-{n}"));
                n += 1;
                if tx.send(Attempt { issued: t0, answered: Instant::now(), done }).is_err() {
                    break;
                }
                if !done {
                    std::thread::sleep(FAILOVER_RETRY_PAUSE);
                }
            }
        })
    };
    let measured = (|| {
        let mut warm = 0;
        let warm_deadline = Instant::now() + READY_DEADLINE;
        while warm < FAILOVER_WARM_WRITES {
            let left = warm_deadline.saturating_duration_since(Instant::now());
            let attempt = rx
                .recv_timeout(left)
                .map_err(|_| anyhow!("{}: no write through a follower before the kill", system.name()))?;
            warm += usize::from(attempt.done);
        }
        let killed_at = Instant::now();
        cluster.kill(leader)?;
        let deadline = killed_at + FAILOVER_DEADLINE;
        let mut trial = Trial { ms: None, failed: 0, longest_failed_ms: 0.0 };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(attempt) = rx.recv_timeout(left) else { return Ok(trial) };
            if attempt.answered < killed_at {
                continue;
            }
            if attempt.done && attempt.issued >= killed_at {
                trial.ms = Some((attempt.answered - killed_at).as_secs_f64() * 1e3);
                return Ok(trial);
            }
            if !attempt.done {
                trial.failed += 1;
                let ms = (attempt.answered - attempt.issued).as_secs_f64() * 1e3;
                trial.longest_failed_ms = trial.longest_failed_ms.max(ms);
            }
        }
    })();
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    writer.join().map_err(|_| anyhow!("the failover writer panicked"))?;
    measured
}

/// Everything measured for one system.
struct Measured {
    /// Per client count, one run per round.
    runs: Vec<Vec<Run>>,
    /// One per trial; None: no write succeeded within the deadline.
    failover_ms: Vec<Option<f64>>,
    /// Set when the system could not be measured (the rest is skipped).
    failed: bool,
}

impl Measured {
    /// The median trial, a failed trial counting as slower than any other
    /// (so a majority of failed trials makes the median None).
    fn failover_median(&self) -> Option<f64> {
        let mut sorted = self.failover_ms.clone();
        sorted.sort_by(|a, b| match (a, b) {
            (Some(a), Some(b)) => a.total_cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        sorted.get(sorted.len() / 2).copied().flatten()
    }
}

/// Starts a fresh cluster of one system.
type StartCluster = dyn Fn() -> Result<Box<dyn Cluster>>;

/// One throughput run on a fresh cluster of `system`.
fn throughput(
    system: System,
    clients: usize,
    seconds: u64,
    start: &dyn Fn() -> Result<Box<dyn Cluster>>,
) -> Result<Run> {
    eprintln!("{}: starting {MEMBERS} members", system.name());
    let cluster = start()?;
    eprintln!("{}: leader is member {}; {clients} clients for {seconds} s", system.name(), cluster.leader()? + 1);
    load(system, cluster.urls(), clients, Duration::from_secs(seconds))
}

/// Leader-kill trials on one system, each on a fresh cluster.
fn failover_trials(
    system: System,
    failover_runs: usize,
    failover_timeout: Duration,
    start: &dyn Fn() -> Result<Box<dyn Cluster>>,
) -> Result<Vec<Option<f64>>> {
    let mut failover_ms = Vec::new();
    for trial in 0..failover_runs {
        let mut cluster = start()?;
        let t = failover(system, cluster.as_mut(), failover_timeout)?;
        eprintln!(
            "{}: failover trial {}: {} ({} failed writes meanwhile, longest {:.0} ms)",
            system.name(),
            trial + 1,
            t.ms.map_or(format!("no write within {FAILOVER_DEADLINE:?}"), |ms| format!("{ms:.0} ms")),
            t.failed,
            t.longest_failed_ms
        );
        failover_ms.push(t.ms);
    }
    Ok(failover_ms)
}

/// The run of median throughput among rounds (None when there is none).
fn median_run(rounds: &[Run]) -> Option<&Run> {
    let mut sorted: Vec<&Run> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.writes_per_s().total_cmp(&b.writes_per_s()));
    sorted.get(sorted.len() / 2).copied()
}

/// The median of the per-round ratios chorus/etcd of writes/s (rounds
/// where both systems ran, each pair measured back to back).
fn median_ratio(chorus: &[Run], etcd: &[Run]) -> Option<f64> {
    let mut ratios: Vec<f64> = chorus
        .iter()
        .zip(etcd)
        .filter(|(_, e)| e.writes_per_s() > 0.0)
        .map(|(c, e)| c.writes_per_s() / e.writes_per_s())
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied()
}

/// `--etcd-bin`, else `etcd` on PATH, else /usr/bin/etcd.
fn find_etcd(flag: Option<PathBuf>) -> Result<PathBuf> {
    let found = match flag {
        Some(p) => p.is_file().then_some(p),
        None => std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("etcd")).find(|p| p.is_file()))
            .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file())),
    };
    found.ok_or_else(|| {
        anyhow!(
            "--vs-etcd: etcd not found (looked at --etcd-bin, PATH and /usr/bin/etcd); \
             install it with scripts/install-etcd.sh (as root) or pass --etcd-bin PATH"
        )
    })
}

/// First line of `etcd --version` ("etcd Version: 3.4.23").
fn etcd_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin).arg("--version").output().with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} --version failed ({})", bin.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_failed_failover_trials_makes_the_median_null() {
        let m = |failover_ms| Measured { runs: Vec::new(), failover_ms, failed: false };
        assert_eq!(m(vec![Some(300.0), None, Some(100.0)]).failover_median(), Some(300.0));
        assert_eq!(m(vec![None, Some(100.0), None]).failover_median(), None);
        assert_eq!(m(vec![Some(5.0)]).failover_median(), Some(5.0));
    }

    #[test]
    fn the_ratio_is_the_median_of_back_to_back_pairs() {
        let run = |writes: u64| Run { writes, errors: 0, seconds: 1.0, latency_ms: Vec::new() };
        let chorus = [run(200), run(90), run(300)];
        let etcd = [run(100), run(100), run(100)];
        assert_eq!(median_ratio(&chorus, &etcd), Some(2.0));
        assert_eq!(median_run(&chorus).map(|r| r.writes), Some(200));
        assert_eq!(median_ratio(&chorus, &[]), None);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
