//! `chorus bench watch`: how fast a change stream (`GET /v1/watch`,
//! NDJSON) delivers a write made on another node, and what idle watchers
//! cost in memory, on a fresh 3-node loopback cluster of `chorus agent`
//! processes (`chorus dev`'s [`DevLayout`]). A benchmark: it reports the
//! targets of issue 14 (p99 < 10 ms at 1,000 events/s, RSS growth < 100 MiB
//! for 1,000 idle watchers) and asserts nothing.
//!
//! Method:
//! - memory first, on the fresh cluster, before any write: VmRSS
//!   (`/proc/PID/status`) of every node, then `--watchers` NDJSON watchers
//!   of prefix `idle/` (which nobody writes) opened on node 3, one
//!   connection each, each answered 200 (the node answers only once the
//!   stream is subscribed); after [`SETTLE`], VmRSS again. Nodes 1 and 2
//!   hold no watcher, so their change is the noise. The watchers are closed
//!   before the latency runs.
//! - delivery latency, per rate (100, 1,000 and 10,000 writes/s by
//!   default, `--seconds` each): one watcher on node 2 (prefix `w{run}/`),
//!   and [`WRITERS`] keep-alive connections to node 1 that issue write n of
//!   the run at `start + n / rate` (open loop: a slow answer does not slow
//!   the schedule down, it only occupies one of the connections). Each write
//!   puts a fresh key whose value starts with n. Delivery of write n is the
//!   arrival of its event's line at the watcher minus the moment the write
//!   was sent, both read from this process's monotonic clock; the write's
//!   own answer time (send → 200 from node 1) is reported beside it as
//!   `ack_p50_ms`/`ack_p99_ms`, node 1's share of the delivery. A write not
//!   issued by `start + ISSUE_OVERRUN × seconds` is not issued, so a cluster
//!   that cannot sustain the rate shows a lower achieved rate
//!   (`events_per_s`: acknowledged writes over the issuing time). A stream
//!   closed as `lagged` is resumed from its last token (the latency then
//!   includes the reconnection), at most [`RESUMES_MAX`] times.
//!
//! Everything runs on one thread (as in [`crate::cmd::load`]) so the
//! benchmark takes as little CPU from the measured nodes as it can.

use crate::cmd::bench::percentile;
use crate::cmd::client::encode_key;
use crate::cmd::dev::{DevCluster, DevLayout};
use crate::cmd::load::{Request, connect, exchange, parse_url};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Write rates of the default runs, per second.
const RATES: [u64; 3] = [100, 1_000, 10_000];
/// Largest `--rate`.
const RATE_MAX: u64 = 50_000;
/// Largest `--seconds`.
const SECONDS_MAX: u64 = 60;
/// Most writes of one run, whatever the rate and duration.
const WRITES_PER_RUN_MAX: u64 = 500_000;
/// Largest `--watchers`.
const WATCHERS_MAX: usize = 10_000;
/// Connections the paced writes are issued on: enough that a write
/// answered within `WRITERS / rate` never delays the next one (6.4 ms at
/// 10,000 writes/s).
const WRITERS: u64 = 64;
/// Bytes of every value (the sequence number, a space, padding).
const VALUE_BYTES: usize = 100;
/// The namespace written and watched (eventual, exists on a fresh cluster).
const NAMESPACE: &str = "default";
/// Nodes of the cluster.
const NODES: u16 = 3;
/// Index of the node the writes go to.
const WRITER_NODE: usize = 0;
/// Index of the node of the latency watcher.
const WATCHER_NODE: usize = 1;
/// Index of the node of the idle watchers.
const IDLE_NODE: usize = 2;
/// The prefix of the idle watchers; nothing writes under it.
const IDLE_PREFIX: &str = "idle/";
/// Deadline of one write.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of opening one watch (connection and answer headers).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes due later than `start + ISSUE_OVERRUN × seconds` are not issued.
const ISSUE_OVERRUN: u32 = 2;
/// After the last write is answered, how long the watcher may take to
/// receive the events still missing.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Resumes of the latency watcher per run (after `lagged` or a broken stream).
const RESUMES_MAX: u64 = 16;
/// Bytes of one NDJSON line at most (a longer one is an error).
const LINE_BYTES_MAX: usize = 1 << 20;
/// Bytes of an error answer kept for the message.
const ERROR_BODY_BYTES_MAX: usize = 2048;
/// Pause between opening the idle watchers and the second RSS reading.
const SETTLE: Duration = Duration::from_secs(2);
/// How long the fresh cluster may take to see every member alive.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause before reconnecting a writer whose connection broke.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Writes per second (default: runs of 100, 1,000 and 10,000).
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds of writes per rate.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Idle watchers opened on node 3 for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// First port of the cluster (like `chorus dev --base-port`).
    #[arg(long, default_value_t = 18101)]
    base_port: u16,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// One rate's run.
struct RateRun {
    rate: u64,
    /// Writes sent.
    issued: u64,
    /// Writes answered 200.
    acked: u64,
    /// From the start to the last write sent, plus one period.
    issue_seconds: f64,
    /// Distinct writes whose event arrived.
    delivered: u64,
    /// Events of a write already delivered.
    duplicates: u64,
    /// Acknowledged writes whose event did not arrive by the drain deadline.
    missing: u64,
    /// Times the watcher was resumed from its token.
    resumes: u64,
    /// `lagged` events received.
    lagged: u64,
    /// `reset` events received.
    resets: u64,
    /// Write sent → event line arrived, of every delivered acknowledged write.
    delivery_ms: Vec<f64>,
    /// Write sent → its 200 answer from node 1 (node 1's share of the
    /// delivery time: its queueing and fsync), of every acknowledged write.
    ack_ms: Vec<f64>,
}

impl RateRun {
    fn events_per_s(&self) -> f64 {
        if self.issue_seconds > 0.0 { self.acked as f64 / self.issue_seconds } else { f64::NAN }
    }

    fn sorted_delivery(&self) -> Vec<f64> {
        sorted(&self.delivery_ms)
    }

    fn sorted_ack(&self) -> Vec<f64> {
        sorted(&self.ack_ms)
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut d = samples.to_vec();
    d.sort_by(f64::total_cmp);
    d
}

/// VmRSS of one node before and after the idle watchers were opened.
struct NodeRss {
    watchers: usize,
    before_bytes: u64,
    after_bytes: u64,
}

impl NodeRss {
    fn growth_bytes(&self) -> i64 {
        self.after_bytes as i64 - self.before_bytes as i64
    }
}

struct Report {
    seconds: u64,
    watchers: usize,
    streams_open_max: usize,
    rates: Vec<RateRun>,
    nodes: Vec<NodeRss>,
}

pub fn run(args: WatchArgs) -> Result<ExitCode> {
    let rates: Vec<u64> = match args.rate {
        Some(r) if r == 0 || r > RATE_MAX => bail!("--rate must be in 1..={RATE_MAX}"),
        Some(r) => vec![r],
        None => RATES.to_vec(),
    };
    if args.seconds == 0 || args.seconds > SECONDS_MAX {
        bail!("--seconds must be in 1..={SECONDS_MAX}");
    }
    if args.watchers > WATCHERS_MAX {
        bail!("--watchers must be at most {WATCHERS_MAX}");
    }
    // Every idle watcher holds one stream of node 3; only a count above
    // the node's default bound needs a larger one.
    let default_streams = chorus_daemon::Config::default().http_streams_open_max;
    let streams_open_max = default_streams.max(args.watchers);
    let mut extra_config = "log = \"warn\"\n".to_string();
    if streams_open_max != default_streams {
        extra_config.push_str(&format!("http_streams_open_max = {streams_open_max}\n"));
    }
    let temp = tempfile::Builder::new().prefix("chorus-bench-watch-").tempdir()?;
    let layout = DevLayout {
        nodes: NODES,
        dir: temp.path().to_path_buf(),
        base_port: args.base_port,
        ip: Ipv4Addr::LOCALHOST,
        extra_config,
    };
    // Dropping the cluster stops every agent, on success and on error alike
    // (and the agents get SIGTERM if this process dies: `spawn_agent`).
    let cluster = layout.start()?;
    cluster.wait_ready(READY_DEADLINE)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(measure(&cluster, &rates, args.seconds, args.watchers, streams_open_max))?;
    drop(runtime);
    drop(cluster);
    print_report(&report);
    if args.json {
        println!("{}", report_json(&report));
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    cluster: &DevCluster,
    rates: &[u64],
    seconds: u64,
    watchers: usize,
    streams_open_max: usize,
) -> Result<Report> {
    let pids: Vec<u32> = cluster.children.iter().map(std::process::Child::id).collect();
    let nodes = idle_watchers(&cluster.urls, &pids, watchers).await?;
    let mut runs = Vec::with_capacity(rates.len());
    for (r, &rate) in rates.iter().enumerate() {
        let run = rate_run(&cluster.urls, r, rate, Duration::from_secs(seconds)).await?;
        runs.push(run);
    }
    Ok(Report { seconds, watchers, streams_open_max, rates: runs, nodes })
}

/// VmRSS of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow!("{path} has no VmRSS"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: unreadable VmRSS line {line:?}"))?;
    Ok(kib * 1024)
}

/// An open NDJSON watch: the connection (kept so it stays open) and the
/// answer whose body is the stream.
struct OpenWatch {
    _sender: SendRequest<Full<Bytes>>,
    response: hyper::Response<Incoming>,
}

/// Open `GET /v1/watch?ns=NAMESPACE&prefix=P[&resume=T]` on its own
/// connection; answered 200 means the node has subscribed the stream.
async fn open_watch(addr: SocketAddr, host: &str, prefix: &str, resume: Option<&str>) -> Result<OpenWatch> {
    let mut path = format!("/v1/watch?ns={NAMESPACE}&prefix={}", encode_key(prefix));
    if let Some(t) = resume {
        path.push_str(&format!("&resume={}", encode_key(t)));
    }
    let opened = async {
        let mut sender = connect(addr).await?;
        let request = hyper::Request::get(path.as_str())
            .header(hyper::header::HOST, host)
            .body(Full::new(Bytes::new()))
            .context("building the watch request")?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        Ok::<_, anyhow::Error>(OpenWatch { _sender: sender, response })
    };
    let open = tokio::time::timeout(OPEN_TIMEOUT, opened)
        .await
        .map_err(|_| anyhow!("{host}{path}: no answer within {OPEN_TIMEOUT:?}"))??;
    let status = open.response.status();
    if status != hyper::StatusCode::OK {
        let body = tokio::time::timeout(OPEN_TIMEOUT, open.response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES_MAX)]).into_owned();
        bail!("{host}{path}: answered {status}: {text}");
    }
    Ok(open)
}

/// RSS of every node before and after `watchers` idle watchers were opened
/// on node 3 (see the module documentation). The watchers are closed on
/// return.
async fn idle_watchers(urls: &[String], pids: &[u32], watchers: usize) -> Result<Vec<NodeRss>> {
    let before: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect::<Result<_>>()?;
    let (addr, host) = parse_url(&urls[IDLE_NODE])?;
    let mut open = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let w = open_watch(addr, &host, IDLE_PREFIX, None).await.with_context(|| format!("idle watcher {i}"))?;
        open.push(w);
    }
    tokio::time::sleep(SETTLE).await;
    let after: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect::<Result<_>>()?;
    drop(open);
    Ok(before
        .into_iter()
        .zip(after)
        .enumerate()
        .map(|(i, (before_bytes, after_bytes))| NodeRss {
            watchers: if i == IDLE_NODE { watchers } else { 0 },
            before_bytes,
            after_bytes,
        })
        .collect())
}

/// The fields of a stream line the benchmark reads.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    token: Option<String>,
}

/// What the latency watcher saw.
struct Watched {
    /// Arrival of write n's first event, by n.
    arrivals: Vec<Option<Instant>>,
    delivered: u64,
    duplicates: u64,
    resumes: u64,
    lagged: u64,
    resets: u64,
}

/// When the watcher may stop: once it has `acked` distinct events, or at
/// `deadline`.
#[derive(Clone, Copy)]
struct Drain {
    acked: u64,
    deadline: Instant,
}

/// The sequence number a benchmark value starts with.
fn sequence_of(value: &Value) -> Option<u64> {
    value.as_str()?.split(' ').next()?.parse().ok()
}

/// Read the stream until [`Drain`] says stop (or its sender is gone),
/// recording when each write's event arrived; resume from the last token
/// when the stream ends early.
async fn watch_run(
    addr: SocketAddr,
    host: String,
    prefix: String,
    first: OpenWatch,
    writes: u64,
    mut drain: tokio::sync::watch::Receiver<Option<Drain>>,
) -> Result<Watched> {
    let mut seen = Watched {
        arrivals: vec![None; writes as usize],
        delivered: 0,
        duplicates: 0,
        resumes: 0,
        lagged: 0,
        resets: 0,
    };
    let mut token: Option<String> = None;
    let mut open = first;
    let mut buf: Vec<u8> = Vec::new();
    let mut drain_open = true;
    loop {
        let limit = *drain.borrow();
        if let Some(d) = limit
            && (seen.delivered >= d.acked || Instant::now() >= d.deadline)
        {
            break;
        }
        let until_deadline = async {
            match limit {
                Some(d) => tokio::time::sleep_until(d.deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut ended = false;
        tokio::select! {
            frame = open.response.body_mut().frame() => match frame {
                Some(Ok(frame)) => {
                    let arrived = Instant::now();
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                    while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        ended |= take_line(&line, arrived, &mut seen, &mut token)?;
                    }
                    if buf.len() > LINE_BYTES_MAX {
                        bail!("a watch line longer than {LINE_BYTES_MAX} bytes");
                    }
                }
                Some(Err(_)) | None => ended = true,
            },
            changed = drain.changed(), if drain_open => {
                if changed.is_err() {
                    drain_open = false;
                    if drain.borrow().is_none() {
                        bail!("the writers ended without saying how many writes were acknowledged");
                    }
                }
            }
            () = until_deadline => break,
        }
        if ended {
            if seen.resumes >= RESUMES_MAX {
                bail!("the watcher on {host} ended {RESUMES_MAX} times; giving up");
            }
            seen.resumes += 1;
            buf.clear();
            open = open_watch(addr, &host, &prefix, token.as_deref()).await.context("resuming the watcher")?;
        }
    }
    Ok(seen)
}

/// Account one NDJSON line; true when the stream says it is closing.
fn take_line(line: &[u8], arrived: Instant, seen: &mut Watched, token: &mut Option<String>) -> Result<bool> {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    if text.is_empty() {
        return Ok(false);
    }
    let parsed: Line = serde_json::from_slice(text)
        .with_context(|| format!("an unreadable watch line: {}", String::from_utf8_lossy(text)))?;
    if let Some(t) = parsed.token {
        *token = Some(t);
    }
    match parsed.kind.as_str() {
        "put" => {
            let n = parsed.value.as_ref().and_then(sequence_of);
            if let Some(slot) = n.and_then(|n| seen.arrivals.get_mut(n as usize)) {
                if slot.is_some() {
                    seen.duplicates += 1;
                } else {
                    *slot = Some(arrived);
                    seen.delivered += 1;
                }
            }
            Ok(false)
        }
        "lagged" => {
            seen.lagged += 1;
            Ok(true)
        }
        "reset" => {
            seen.resets += 1;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// One rate: the watcher on node 2, the paced writers on node 1.
async fn rate_run(urls: &[String], run: usize, rate: u64, duration: Duration) -> Result<RateRun> {
    let writes = (rate * duration.as_secs()).min(WRITES_PER_RUN_MAX);
    let prefix = format!("w{run}/");
    let (watch_addr, watch_host) = parse_url(&urls[WATCHER_NODE])?;
    let first = open_watch(watch_addr, &watch_host, &prefix, None).await.context("opening the latency watcher")?;
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(None::<Drain>);
    let watcher = tokio::spawn(watch_run(watch_addr, watch_host, prefix.clone(), first, writes, drain_rx));

    let (write_addr, write_host) = parse_url(&urls[WRITER_NODE])?;
    let mut senders = Vec::with_capacity(WRITERS as usize);
    for _ in 0..WRITERS {
        senders.push(connect(write_addr).await?);
    }
    let start = Instant::now();
    let issue_end = start + duration * ISSUE_OVERRUN;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = Vec::with_capacity(senders.len());
    for (k, mut sender) in senders.into_iter().enumerate() {
        let (host, prefix) = (write_host.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            // (n, sent, answered, acknowledged) of every write this
            // connection issued.
            let mut sent: Vec<(u64, Instant, Instant, bool)> = Vec::new();
            let mut n = k as u64;
            while n < writes {
                let due = start + period.mul_f64(n as f64);
                if Instant::now().max(due) > issue_end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let value = format!("{n} {}", "x".repeat(VALUE_BYTES.saturating_sub(n.to_string().len() + 1)));
                let request = Request {
                    method: hyper::Method::PUT,
                    path: format!("/v1/ns/{NAMESPACE}/kv/{prefix}{n}"),
                    body: Bytes::from(json!({ "value": value }).to_string()),
                };
                let t0 = Instant::now();
                let status = exchange(&mut sender, &host, request, REQUEST_TIMEOUT).await;
                sent.push((n, t0, Instant::now(), status == Some(200)));
                if status.is_none() {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    match connect(write_addr).await {
                        Ok(s) => sender = s,
                        Err(_) => break,
                    }
                }
                n += WRITERS;
            }
            sent
        }));
    }
    let mut sent_at: Vec<Option<Instant>> = vec![None; writes as usize];
    let (mut issued, mut acked, mut last_sent) = (0u64, 0u64, start);
    let mut ack_ms = Vec::with_capacity(writes as usize);
    for task in tasks {
        for (n, t0, answered, ok) in task.await.map_err(|e| anyhow!("a writer task failed: {e}"))? {
            issued += 1;
            last_sent = last_sent.max(t0);
            if ok {
                acked += 1;
                ack_ms.push(answered.saturating_duration_since(t0).as_secs_f64() * 1e3);
                if let Some(slot) = sent_at.get_mut(n as usize) {
                    *slot = Some(t0);
                }
            }
        }
    }
    // The receiver may be gone already (the watcher failed): its error is
    // reported by the join below.
    let _ = drain_tx.send(Some(Drain { acked, deadline: Instant::now() + DRAIN_DEADLINE }));
    let seen = watcher.await.map_err(|e| anyhow!("the watcher task failed: {e}"))??;
    let mut delivery_ms = Vec::with_capacity(acked as usize);
    let mut missing = 0u64;
    for (sent, arrived) in sent_at.iter().zip(&seen.arrivals) {
        match (sent, arrived) {
            (Some(s), Some(a)) => delivery_ms.push(a.saturating_duration_since(*s).as_secs_f64() * 1e3),
            (Some(_), None) => missing += 1,
            (None, _) => {}
        }
    }
    Ok(RateRun {
        rate,
        issued,
        acked,
        issue_seconds: if issued == 0 { 0.0 } else { (last_sent - start + period).as_secs_f64() },
        delivered: seen.delivered,
        duplicates: seen.duplicates,
        missing,
        resumes: seen.resumes,
        lagged: seen.lagged,
        resets: seen.resets,
        delivery_ms,
        ack_ms,
    })
}

fn number(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

const MIB: f64 = 1024.0 * 1024.0;

fn print_report(r: &Report) {
    println!(
        "watch delivery: writes on node 1 → NDJSON watcher on node 2, {NODES} nodes on 127.0.0.1, {} s per rate, {WRITERS} writer connections",
        r.seconds
    );
    println!(
        "{:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "rate/s",
        "achieved/s",
        "acked",
        "errors",
        "missing",
        "lagged",
        "p50 ms",
        "p99 ms",
        "max ms",
        "ack p50 ms",
        "ack p99 ms"
    );
    for run in &r.rates {
        let d = run.sorted_delivery();
        let a = run.sorted_ack();
        println!(
            "{:>8} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>10.2}",
            run.rate,
            run.events_per_s(),
            run.acked,
            run.issued - run.acked,
            run.missing,
            run.lagged,
            percentile(&d, 0.5),
            percentile(&d, 0.99),
            d.last().copied().unwrap_or(f64::NAN),
            percentile(&a, 0.5),
            percentile(&a, 0.99)
        );
    }
    println!(
        "idle watchers: {} on node {} (http_streams_open_max {}), VmRSS after {SETTLE:?}:",
        r.watchers,
        IDLE_NODE + 1,
        r.streams_open_max
    );
    println!("{:>6} {:>9} {:>12} {:>12} {:>12}", "node", "watchers", "before MiB", "after MiB", "growth MiB");
    for (i, n) in r.nodes.iter().enumerate() {
        println!(
            "{:>6} {:>9} {:>12.1} {:>12.1} {:>12.1}",
            i + 1,
            n.watchers,
            n.before_bytes as f64 / MIB,
            n.after_bytes as f64 / MIB,
            n.growth_bytes() as f64 / MIB
        );
    }
}

/// The `--json` object. Field names are a stable interface: `rates[]`
/// with `events_per_s`, `delivery_p50_ms`, `delivery_p99_ms`; `watchers`;
/// `rss_bytes`, `rss_before_bytes`, `rss_growth_bytes` of the node holding
/// the idle watchers (every node in `nodes[]`).
fn report_json(r: &Report) -> Value {
    let rates: Vec<Value> = r
        .rates
        .iter()
        .map(|run| {
            let d = run.sorted_delivery();
            let a = run.sorted_ack();
            json!({
                "rate": run.rate,
                "events_per_s": number(run.events_per_s()),
                "writes": run.issued,
                "writes_acked": run.acked,
                "events_delivered": run.delivered,
                "events_missing": run.missing,
                "events_duplicated": run.duplicates,
                "lagged": run.lagged,
                "resets": run.resets,
                "resumes": run.resumes,
                "delivery_p50_ms": number(percentile(&d, 0.5)),
                "delivery_p99_ms": number(percentile(&d, 0.99)),
                "delivery_max_ms": number(d.last().copied().unwrap_or(f64::NAN)),
                "delivery_samples": d.len(),
                "ack_p50_ms": number(percentile(&a, 0.5)),
                "ack_p99_ms": number(percentile(&a, 0.99)),
            })
        })
        .collect();
    let nodes: Vec<Value> = r
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({
                "node": i + 1,
                "watchers": n.watchers,
                "rss_before_bytes": n.before_bytes,
                "rss_bytes": n.after_bytes,
                "rss_growth_bytes": n.growth_bytes(),
            })
        })
        .collect();
    let idle = r.nodes.get(IDLE_NODE);
    json!({
        "rates": rates,
        "watchers": r.watchers,
        "watchers_node": IDLE_NODE + 1,
        "rss_bytes": idle.map(|n| n.after_bytes),
        "rss_before_bytes": idle.map(|n| n.before_bytes),
        "rss_growth_bytes": idle.map(NodeRss::growth_bytes),
        "nodes": nodes,
        "http_streams_open_max": r.streams_open_max,
        "seconds": r.seconds,
        "writers": WRITERS,
        "value_bytes": VALUE_BYTES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_report_keeps_the_documented_field_names() {
        let run = RateRun {
            rate: 100,
            issued: 4,
            acked: 4,
            issue_seconds: 0.04,
            delivered: 4,
            duplicates: 0,
            missing: 0,
            resumes: 0,
            lagged: 0,
            resets: 0,
            delivery_ms: vec![4.0, 1.0, 3.0, 2.0],
            ack_ms: vec![0.5, 2.5, 1.5, 1.0],
        };
        let nodes = (0..3)
            .map(|i| NodeRss {
                watchers: if i == IDLE_NODE { 10 } else { 0 },
                before_bytes: 100,
                after_bytes: 150 + i as u64,
            })
            .collect();
        let report = Report { seconds: 1, watchers: 10, streams_open_max: 1000, rates: vec![run], nodes };
        let v = report_json(&report);
        let rate = &v["rates"][0];
        assert_eq!(rate["events_per_s"].as_f64(), Some(100.0));
        assert_eq!(rate["delivery_p50_ms"].as_f64(), Some(3.0));
        assert_eq!(rate["delivery_p99_ms"].as_f64(), Some(4.0));
        assert_eq!(rate["ack_p50_ms"].as_f64(), Some(1.5));
        assert_eq!(rate["ack_p99_ms"].as_f64(), Some(2.5));
        assert_eq!(v["watchers"].as_u64(), Some(10));
        assert_eq!(v["rss_bytes"].as_u64(), Some(152));
        assert_eq!(v["rss_before_bytes"].as_u64(), Some(100));
        assert_eq!(v["rss_growth_bytes"].as_i64(), Some(52));
    }

    #[test]
    fn sequence_numbers_are_read_from_the_value_and_nothing_else() {
        assert_eq!(sequence_of(&json!("17 xxxx")), Some(17));
        assert_eq!(sequence_of(&json!("17")), Some(17));
        assert_eq!(sequence_of(&json!("x 17")), None);
        assert_eq!(sequence_of(&json!(17)), None);
    }

    #[test]
    fn a_lagged_line_closes_and_keeps_its_token_and_duplicates_are_counted() {
        let mut seen =
            Watched { arrivals: vec![None; 2], delivered: 0, duplicates: 0, resumes: 0, lagged: 0, resets: 0 };
        let mut token = None;
        let now = Instant::now();
        let put = br#"{"type":"put","key":"w0/1","value":"1 x","token":"a"}"#;
        assert!(!take_line(put, now, &mut seen, &mut token).unwrap());
        assert!(!take_line(put, now, &mut seen, &mut token).unwrap());
        assert!(take_line(br#"{"type":"lagged","token":"b"}"#, now, &mut seen, &mut token).unwrap());
        assert_eq!((seen.delivered, seen.duplicates, seen.lagged), (1, 1, 1));
        assert_eq!(token.as_deref(), Some("b"));
        assert!(seen.arrivals[1].is_some() && seen.arrivals[0].is_none());
    }
}
