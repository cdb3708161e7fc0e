//! `chorus bench flood`: what one flooding client costs another, on a fresh
//! one-node loopback cluster (`chorus agent`, [`DevLayout`]) with client
//! auth and the client rate limit on (`docs/design/security.md`, "Rate
//! limits"). A benchmark: it reports and asserts nothing.
//!
//! Method: two tokens, `flood` and `calm`, both allowed to read. First the
//! calm token alone reads a missing key every [`CALM_PAUSE`] for
//! `--seconds` (unloaded latency); then `--connections` threads, each on
//! its own keep-alive connection, read as `flood` as fast as the node
//! answers for `--seconds` while the calm token repeats its paced reads
//! (latency under the flood). Latency is send → answer on this process's
//! monotonic clock. Also measured in-process: the CPU time of one token
//! check (`Auth::verify`: BLAKE3 of the secret, a table lookup) over
//! [`VERIFY_ROUNDS`] checks.

use crate::cmd::bench::percentile;
use crate::cmd::dev::DevLayout;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Pause between two reads of the calm token.
const CALM_PAUSE: Duration = Duration::from_millis(10);
/// Largest `--connections`.
const CONNECTIONS_MAX: usize = 1_000;
/// Largest `--seconds`.
const SECONDS_MAX: u64 = 120;
/// Token checks timed in-process.
const VERIFY_ROUNDS: u32 = 200_000;
/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct FloodArgs {
    /// Connections flooding with one token.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// `rate_limit_client_per_s` of the node (its burst is the same).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of each phase (unloaded, flooded).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The node's HTTP port (QUIC on base-port + 101).
    #[arg(long, default_value_t = 18301)]
    base_port: u16,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(REQUEST_TIMEOUT)).http_status_as_error(false).build().into()
}

fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let response = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            if let Some(b) = &bearer {
                r = r.header("Authorization", b);
            }
            r.call()
        }
        (_, Some(body)) => {
            let mut r = agent.post(url);
            if let Some(b) = &bearer {
                r = r.header("Authorization", b);
            }
            r.send_json(body)
        }
        _ => {
            let mut r = agent.post(url);
            if let Some(b) = &bearer {
                r = r.header("Authorization", b);
            }
            r.send_empty()
        }
    };
    let mut response = response.with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Paced reads as `token` for `seconds`: (sorted latencies in ms, refusals).
fn calm_reads(url: &str, token: &str, seconds: u64) -> Result<(Vec<f64>, u64)> {
    let agent = agent();
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut latencies, mut refused) = (Vec::new(), 0);
    while Instant::now() < end {
        let started = Instant::now();
        let (status, _) = call(&agent, "GET", url, Some(token), None)?;
        if status == 404 {
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        } else {
            refused += 1;
        }
        std::thread::sleep(CALM_PAUSE);
    }
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, refused))
}

/// CPU time of one token check, in ns.
fn verify_ns() -> f64 {
    let auth = chorus_daemon::auth::Auth::new(true, false);
    let secret = chorus_daemon::auth::new_secret();
    let record = chorus_daemon::auth::TokenRecord {
        name: "t".into(),
        hash: chorus_daemon::auth::hash_secret(&secret),
        rules: Vec::new(),
        admin: true,
        metrics: false,
        created_ms: 0,
        expires_ms: None,
        revoked_ms: None,
    };
    auth.upsert(record);
    let started = cpu_time();
    let mut found = 0u32;
    for _ in 0..VERIFY_ROUNDS {
        found += u32::from(auth.verify(std::hint::black_box(&secret), 1).is_some());
    }
    assert_eq!(found, VERIFY_ROUNDS);
    (cpu_time() - started).as_secs_f64() * 1e9 / f64::from(VERIFY_ROUNDS)
}

/// This thread's CPU time.
pub(crate) fn cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a plain syscall writing into a local struct.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub fn run(args: FloodArgs) -> Result<ExitCode> {
    if args.connections == 0 || args.connections > CONNECTIONS_MAX {
        bail!("--connections must be in 1..={CONNECTIONS_MAX}");
    }
    if args.seconds == 0 || args.seconds > SECONDS_MAX {
        bail!("--seconds must be in 1..={SECONDS_MAX}");
    }
    let verify = verify_ns();
    let temp = tempfile::Builder::new().prefix("chorus-bench-flood-").tempdir()?;
    let layout = DevLayout {
        nodes: 1,
        dir: temp.path().to_path_buf(),
        base_port: args.base_port,
        ip: Ipv4Addr::LOCALHOST,
        extra_config: format!(
            "log = \"warn\"\nauth_enabled = true\nrate_limit_client_per_s = {0}\nrate_limit_client_burst = {0}",
            args.rate
        ),
    };
    let mut cluster = layout.start()?;
    let admin = cluster.bootstrap_auth(temp.path())?;
    let base = cluster.urls[0].clone();
    let admin_agent = agent();
    let token = |name: &str| -> Result<String> {
        let body = json!({ "name": name, "read": ["default"] });
        let (status, v) = call(&admin_agent, "POST", &format!("{base}/v1/tokens"), Some(&admin), Some(&body))?;
        if status != 201 {
            bail!("creating token {name}: {status} {v}");
        }
        Ok(v["token"].as_str().unwrap_or_default().to_string())
    };
    let flood = token("flood")?;
    let calm = token("calm")?;
    let url = format!("{base}/v1/ns/default/kv/missing");
    let (unloaded, unloaded_refused) = calm_reads(&url, &calm, args.seconds)?;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let flooders: Vec<_> = (0..args.connections)
        .map(|_| {
            let (stop, url, flood) = (stop.clone(), url.clone(), flood.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let (mut answered, mut limited, mut failed) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match call(&agent, "GET", &url, Some(&flood), None) {
                        Ok((404, _)) => answered += 1,
                        Ok((429, _)) => limited += 1,
                        _ => failed += 1,
                    }
                }
                (answered, limited, failed)
            })
        })
        .collect();
    let flooded = calm_reads(&url, &calm, args.seconds);
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut limited, mut failed) = (0, 0, 0);
    for f in flooders {
        let (a, l, e) = f.join().map_err(|_| anyhow::anyhow!("a flooding thread panicked"))?;
        answered += a;
        limited += l;
        failed += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (flooded, flooded_refused) = flooded?;
    drop(cluster);
    let report = json!({
        "connections": args.connections,
        "rate_limit_per_s": args.rate,
        "seconds": args.seconds,
        "flood_answered": answered,
        "flood_answered_per_s": answered as f64 / elapsed,
        "flood_429": limited,
        "flood_429_per_s": limited as f64 / elapsed,
        "flood_failed": failed,
        "calm_reads_unloaded": unloaded.len(),
        "calm_refused_unloaded": unloaded_refused,
        "calm_unloaded_p50_ms": percentile(&unloaded, 0.5),
        "calm_unloaded_p99_ms": percentile(&unloaded, 0.99),
        "calm_reads_flooded": flooded.len(),
        "calm_refused_flooded": flooded_refused,
        "calm_flooded_p50_ms": percentile(&flooded, 0.5),
        "calm_flooded_p99_ms": percentile(&flooded, 0.99),
        "token_verify_ns": verify,
    });
    println!(
        "flood: {} connections at limit {}/s: {answered} answered ({:.0}/s), {limited} refused 429 ({:.0}/s), {failed} failed",
        args.connections,
        args.rate,
        answered as f64 / elapsed,
        limited as f64 / elapsed
    );
    println!(
        "calm token: unloaded p50 {:.2} ms p99 {:.2} ms ({} reads, {unloaded_refused} refused); \
         under the flood p50 {:.2} ms p99 {:.2} ms ({} reads, {flooded_refused} refused)",
        percentile(&unloaded, 0.5),
        percentile(&unloaded, 0.99),
        unloaded.len(),
        percentile(&flooded, 0.5),
        percentile(&flooded, 0.99),
        flooded.len()
    );
    println!("token check: {verify:.0} ns of CPU each (BLAKE3 of the secret and a table lookup)");
    if args.json {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
