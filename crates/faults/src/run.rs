//! One run: network, agents, namespaces, workers + seeded faults, heal,
//! quiescence, convergence, final strong reads, checks.

use crate::checker::{self, NodeState, Violation, ViolationKind};
use crate::cluster::{Cluster, ClusterError, Http};
use crate::history::{HistoryLog, Outcome};
use crate::net::{self, Net, NetError};
use crate::schedule::{self, Fault, Schedule};
use crate::strong::{self, NS_STRONG, STRONG_OP_TIMEOUT};
use crate::strong_checker::{self, StrongStats};
use crate::workers::{self, NS_COUNTER, NS_LWW, NS_SET, WorkerConfig};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Deadline for nodes to start and see each other, and for the cluster to
/// be healthy again after the heal.
pub const HEALTHY_DEADLINE: Duration = Duration::from_secs(40);
/// Deadline for a namespace to reach every node.
pub const NAMESPACE_DEADLINE: Duration = Duration::from_secs(20);
/// Largest scan page.
pub const SCAN_LIMIT: usize = 1_000;
/// Bound on scan pages per namespace (the workers' key spaces are tiny).
pub const SCAN_PAGES_MAX: usize = 64;

/// Parameters of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    pub nodes: usize,
    pub workers: u32,
    /// Strong register workers (linearizability) and fencing workers
    /// (lock grants); each does at most `ops_per_worker_max` ops.
    pub strong_workers: u32,
    pub fence_workers: u32,
    pub ops_per_worker_max: usize,
    pub faults_max: usize,
    /// The `chorus` binary.
    pub chorus_bin: PathBuf,
    /// Where to keep the run's files (history, logs); `None` = a temporary
    /// directory, kept only when a check fails.
    pub out_dir: Option<PathBuf>,
    /// Try network namespaces (else loopback right away).
    pub namespaces: bool,
    /// Deadline for all nodes to agree after the heal.
    pub converge_deadline: Duration,
    /// Worker HTTP time-out.
    pub op_timeout: Duration,
}

impl RunConfig {
    /// The defaults of the short CI version for `seed`.
    pub fn short(seed: u64, nodes: usize, chorus_bin: PathBuf) -> RunConfig {
        RunConfig {
            seed,
            nodes,
            workers: 4,
            strong_workers: 2,
            fence_workers: 2,
            ops_per_worker_max: 250,
            faults_max: 3,
            chorus_bin,
            out_dir: None,
            namespaces: true,
            converge_deadline: Duration::from_secs(30),
            op_timeout: Duration::from_millis(1_500),
        }
    }
}

/// What one run did and found.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    /// "namespaces (netem|tbf)" or "loopback: <why>".
    pub mode: String,
    pub ops: usize,
    pub ok: usize,
    pub unknown: usize,
    pub fail: usize,
    /// Faults actually injected (steps applied, plus 1 for start-up clock skew).
    pub faults: usize,
    pub fault_log: Vec<String>,
    pub violations: Vec<Violation>,
    /// Where the run's history and logs are (if kept).
    pub kept_dir: Option<PathBuf>,
    /// How the strong namespace was set up (or why not).
    pub strong: String,
    /// What the strong checks saw.
    pub strong_stats: StrongStats,
    pub elapsed: Duration,
}

/// The harness could not do its job (distinct from a checker violation).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("network: {0}")]
    Net(#[from] NetError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

/// The `chorus` binary next to this executable (target/<profile>/chorus),
/// unless `$CHORUS_BIN` names one.
pub fn default_chorus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHORUS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join("chorus")
}

fn unique_tag(seed: u64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let x = seed
        ^ (u64::from(std::process::id()) << 20)
        ^ (nanos as u64)
        ^ NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:05x}", crate::rng::Rng::new(x).next_u64() & 0xf_ffff)
}

/// Build the network for a run: namespaces if allowed and possible, else
/// loopback with the reason.
pub fn build_net(nodes: usize, try_namespaces: bool, seed: u64) -> Net {
    let tag = unique_tag(seed);
    let block = 100 + (u8::from_str_radix(&tag[..2], 16).unwrap_or(0) % 150);
    if !try_namespaces {
        return Net::loopback(nodes, block, "namespaces disabled by --loopback".into());
    }
    net::cleanup_stale();
    match Net::namespaces(nodes, &tag) {
        Ok(n) => n,
        Err(e) => Net::loopback(nodes, block, e.to_string()),
    }
}

/// Create the workers' namespaces on node 0, wait until every node has
/// them, then create the strong namespace [`NS_STRONG`]: `Ok(Ok(time))`
/// when it is ready everywhere, `Ok(Err(why))` when the Raft group did not
/// serve it in time (a finding, reported by the run as a violation).
pub fn create_namespaces(cluster: &Cluster) -> Result<Result<Duration, String>, RunError> {
    let api0 = cluster.nodes[0].api.clone();
    for (name, ty) in [(NS_LWW, "lww"), (NS_COUNTER, "counter"), (NS_SET, "set")] {
        let body = json!({ "name": name, "type": ty }).to_string();
        match cluster.admin.req("POST", &format!("{api0}/v1/ns"), Some(&body)) {
            Ok((s, _)) if s == 201 || s == 200 => {}
            Ok((s, v)) => return Err(RunError::Setup(format!("creating namespace {name}: {s} {v}"))),
            Err(e) => return Err(RunError::Setup(format!("creating namespace {name}: {}", e.reason))),
        }
    }
    let end = Instant::now() + NAMESPACE_DEADLINE;
    for n in &cluster.nodes {
        loop {
            let names: Vec<String> = cluster
                .admin
                .req("GET", &format!("{}/v1/ns", n.api), None)
                .ok()
                .and_then(|(_, v)| {
                    v["namespaces"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x["name"].as_str().map(str::to_string)).collect())
                })
                .unwrap_or_default();
            if [NS_LWW, NS_COUNTER, NS_SET].iter().all(|w| names.iter().any(|n| n == w)) {
                break;
            }
            if Instant::now() >= end {
                return Err(RunError::Setup(format!("{} never learned the namespaces (has {names:?})", n.name)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let apis: Vec<String> = cluster.nodes.iter().map(|n| n.api.clone()).collect();
    Ok(strong::create_namespace(&cluster.admin, &apis))
}

fn read_ns(http: &Http, api: &str, ns: &str) -> Option<Vec<Value>> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..SCAN_PAGES_MAX {
        let mut url = format!("{api}/v1/ns/{ns}/scan?limit={SCAN_LIMIT}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let (s, v) = http.req("GET", &url, None).ok()?;
        if s != 200 {
            return None;
        }
        items.extend(v["items"].as_array()?.iter().cloned());
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Some(items),
        }
    }
    None
}

/// One node's full state, or `None` if it did not answer completely.
pub fn read_state(http: &Http, api: &str) -> Option<NodeState> {
    let mut st = NodeState::default();
    for item in read_ns(http, api, NS_LWW)? {
        if let (Some(k), Some(v)) = (item["key"].as_str(), item["value"].as_str()) {
            st.lww.insert(k.to_string(), v.to_string());
        }
    }
    for item in read_ns(http, api, NS_COUNTER)? {
        if let (Some(k), Some(v)) = (item["key"].as_str(), item["value"].as_i64()) {
            st.counters.insert(k.to_string(), v);
        }
    }
    for item in read_ns(http, api, NS_SET)? {
        if let (Some(k), Some(ms)) = (item["key"].as_str(), item["members"].as_array()) {
            st.sets.insert(k.to_string(), ms.iter().filter_map(|m| m.as_str().map(str::to_string)).collect());
        }
    }
    Some(st)
}

/// Poll every node until all states are equal (then return them) or the
/// deadline passes (then return the last states seen).
pub fn await_convergence(cluster: &Cluster, deadline: Duration) -> (bool, Vec<(String, NodeState)>) {
    let end = Instant::now() + deadline;
    loop {
        let states: Vec<(String, Option<NodeState>)> =
            cluster.nodes.iter().map(|n| (n.name.clone(), read_state(&cluster.admin, &n.api))).collect();
        let complete: Vec<(String, NodeState)> =
            states.iter().filter_map(|(n, s)| s.clone().map(|s| (n.clone(), s))).collect();
        let agreed = complete.len() == cluster.nodes.len() && checker::check_convergence(&complete).is_empty();
        if agreed || Instant::now() >= end {
            return (agreed, complete);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Apply one fault; returns a description, or why it was skipped.
fn apply(net: &Net, cluster: &mut Cluster, fault: &Fault) -> Result<String, String> {
    let e = |x: NetError| x.to_string();
    match fault {
        Fault::PartitionHalves { a, b } | Fault::Bridge { a, b, .. } => {
            for &x in a {
                net.cut(x, b).map_err(e)?;
            }
            for &y in b {
                net.cut(y, a).map_err(e)?;
            }
        }
        Fault::Isolate { node } => {
            let others: Vec<usize> = (0..net.nodes()).filter(|j| j != node).collect();
            net.cut(*node, &others).map_err(e)?;
            for &o in &others {
                net.cut(o, &[*node]).map_err(e)?;
            }
        }
        Fault::OneWay { from, to } => net.one_way(*from, *to).map_err(e)?,
        Fault::LinkDown { node } => net.link_down(*node).map_err(e)?,
        Fault::RandomLoss { node, pct } => net.random_loss(*node, *pct).map_err(e)?,
        Fault::Duplicate { node, pct } => net.duplicate(*node, *pct).map_err(e)?,
        Fault::DegradeLink { node, delay_ms, jitter_ms, loss_pct, dup_pct, reorder_pct } => {
            let how = net.degrade_link(*node, *delay_ms, *jitter_ms, *loss_pct, *dup_pct, *reorder_pct).map_err(e)?;
            return Ok(format!("{fault:?} via {how}"));
        }
        Fault::Kill { node, .. } => {
            if !cluster.is_running(*node) {
                return Err("already down".into());
            }
            cluster.kill9(*node);
        }
        Fault::Pause { node } => {
            if !cluster.pause(*node) {
                return Err("not running".into());
            }
        }
    }
    Ok(format!("{fault:?}"))
}

/// Undo one fault.
fn undo(net: &Net, cluster: &mut Cluster, fault: &Fault) -> Result<(), RunError> {
    match fault {
        Fault::Kill { node, restart_offset_ms } => cluster.start(*node, *restart_offset_ms)?,
        Fault::Pause { node } => {
            cluster.resume(*node);
        }
        _ => {
            if let Some(err) = net.heal().into_iter().next() {
                return Err(err.into());
            }
        }
    }
    Ok(())
}

/// Run `cfg` once. Checker violations are in the report; `Err` means the
/// harness itself could not run (and nothing was checked); the run's files
/// are then kept and their place printed on stderr.
pub fn run_once(cfg: &RunConfig) -> Result<RunReport, RunError> {
    let dir = match &cfg.out_dir {
        Some(d) => {
            let d = d.join(format!("seed-{}", cfg.seed));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).map_err(|source| RunError::Io { what: d.display().to_string(), source })?;
            RunDir::Kept(d)
        }
        None => RunDir::Temp(
            tempfile::Builder::new()
                .prefix("chorus-faults-")
                .tempdir()
                .map_err(|source| RunError::Io { what: "tempdir".into(), source })?,
        ),
    };
    match run_in(cfg, &dir) {
        Ok(mut report) => {
            report.kept_dir = dir.keep_if(!report.violations.is_empty());
            Ok(report)
        }
        Err(e) => {
            if let Some(d) = dir.keep_if(true) {
                eprintln!("seed {}: harness error, files kept in {}", cfg.seed, d.display());
            }
            Err(e)
        }
    }
}

fn run_in(cfg: &RunConfig, dir: &RunDir) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let net = build_net(cfg.nodes, cfg.namespaces, cfg.seed);
    let caps = net.caps();
    let mode = match &net.mode {
        net::Mode::Namespaces { .. } => {
            format!(
                "namespaces (links: {}; nft: {})",
                if caps.netem { "netem" } else { "tbf, no netem in this kernel" },
                caps.nft
            )
        }
        net::Mode::Loopback { why, .. } => format!("loopback (only kill/stop faults): {why}"),
    };
    let mut cluster = Cluster::prepare(&cfg.chorus_bin, &net, dir.path(), 300)?;
    let schedule: Schedule = schedule::generate(cfg.seed, cfg.nodes, cfg.faults_max, net.is_namespaces() && caps.nft);
    std::fs::write(dir.path().join("schedule.json"), serde_json::to_string_pretty(&schedule).unwrap_or_default())
        .map_err(|source| RunError::Io { what: "schedule.json".into(), source })?;
    for (i, off) in schedule.initial_offsets_ms.iter().enumerate() {
        cluster.start(i, *off)?;
    }
    cluster.wait_all_alive(HEALTHY_DEADLINE)?;
    let startup_ms = started.elapsed().as_millis();
    let strong_ready = create_namespaces(&cluster)?;
    let strong_on = strong_ready.is_ok();
    let strong = match &strong_ready {
        Ok(d) => format!(
            "namespace {NS_STRONG} ready after {}ms (voters {:?}); {} register + {} fencing workers",
            d.as_millis(),
            strong::voter_names(cfg.nodes),
            cfg.strong_workers,
            cfg.fence_workers
        ),
        Err(why) => format!("NOT AVAILABLE: {why}"),
    };

    let history_path = dir.path().join("history.jsonl");
    let log = HistoryLog::create(&history_path)
        .map_err(|source| RunError::Io { what: history_path.display().to_string(), source })?;
    let mut fault_log = vec![format!("started: all members alive after {startup_ms}ms")];
    let mut faults = usize::from(schedule.initial_offsets_ms.iter().any(|o| *o != 0));
    if faults > 0 {
        fault_log.push(format!("clock skew at start (ms): {:?}", schedule.initial_offsets_ms));
    }
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let apis: Vec<String> = cluster.nodes.iter().map(|n| n.api.clone()).collect();
    let mut phase_result: Result<(), RunError> = Ok(());
    let ops: usize = std::thread::scope(|s| {
        let wc = |id, timeout| WorkerConfig {
            id,
            seed: cfg.seed,
            apis: apis.clone(),
            ops_max: cfg.ops_per_worker_max,
            timeout,
        };
        let (stop, log) = (&stop, &log);
        let mut handles: Vec<_> = (0..cfg.workers)
            .map(|id| {
                let wc = wc(id, cfg.op_timeout);
                s.spawn(move || workers::run_worker(&wc, stop, t0, log))
            })
            .collect();
        if strong_on {
            for id in 0..cfg.strong_workers {
                let wc = wc(id, STRONG_OP_TIMEOUT);
                handles.push(s.spawn(move || strong::run_register_worker(&wc, stop, t0, log)));
            }
            for id in 0..cfg.fence_workers {
                let wc = wc(id, STRONG_OP_TIMEOUT);
                handles.push(s.spawn(move || strong::run_fence_worker(&wc, stop, t0, log)));
            }
        }
        // Faults run on this thread: agents restarted here live as long as it.
        std::thread::sleep(Duration::from_millis(300));
        for step in &schedule.steps {
            match apply(&net, &mut cluster, &step.fault) {
                Ok(desc) => {
                    faults += 1;
                    fault_log.push(format!("t={}ms {desc} for {}ms", t0.elapsed().as_millis(), step.hold_ms));
                    std::thread::sleep(Duration::from_millis(step.hold_ms));
                    if let Err(e) = undo(&net, &mut cluster, &step.fault) {
                        phase_result = Err(e);
                        break;
                    }
                }
                Err(why) => fault_log.push(format!("skipped {:?}: {why}", step.fault)),
            }
            std::thread::sleep(Duration::from_millis(step.gap_ms));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    // Heal everything, whatever happened above.
    let heal_errors = net.heal();
    for i in 0..cfg.nodes {
        if cluster.is_paused(i) {
            cluster.resume(i);
        }
        if !cluster.is_running(i) {
            cluster.start(i, 0)?;
        }
    }
    phase_result?;
    if let Some(e) = heal_errors.into_iter().next() {
        return Err(e.into());
    }
    let heal_at = Instant::now();
    // Membership that does not re-form is reported, not fatal: the
    // guarantee checked is that state converges, which the next step
    // decides. A node that exited is a harness error (its log is shown).
    match cluster.wait_all_alive(HEALTHY_DEADLINE) {
        Ok(()) => fault_log.push(format!("healed: all members alive after {}ms", heal_at.elapsed().as_millis())),
        Err(ClusterError::Timeout { what, after }) => {
            fault_log.push(format!("healed: MEMBERSHIP NOT RE-FORMED after {after:?}: {what}"))
        }
        Err(e) => return Err(e.into()),
    }
    let (agreed, states) = await_convergence(&cluster, cfg.converge_deadline);
    fault_log.push(format!("healed: converged={agreed} after {}ms", heal_at.elapsed().as_millis()));
    let mut violations = Vec::new();
    match &strong_ready {
        Ok(_) => match strong::final_reads(&apis, t0) {
            Ok(reads) => {
                fault_log.push(format!("healed: strong registers read after {}ms", heal_at.elapsed().as_millis()));
                for r in reads {
                    let _ = log.push(r);
                }
            }
            Err(why) => violations.push(Violation {
                kind: ViolationKind::StrongUnavailable,
                key: NS_STRONG.into(),
                detail: why,
            }),
        },
        Err(why) => violations.push(Violation {
            kind: ViolationKind::StrongUnavailable,
            key: NS_STRONG.into(),
            detail: format!("at start-up, all nodes up: {why}"),
        }),
    }
    let history = log.finish().map_err(|source| RunError::Io { what: "history".into(), source })?;
    if !agreed {
        let diverged = checker::check_convergence(&states);
        let none = diverged.is_empty();
        violations.extend(diverged);
        if none {
            violations.push(Violation {
                kind: ViolationKind::NotConverged,
                key: String::new(),
                detail: format!("only {} of {} nodes answered a full read", states.len(), cfg.nodes),
            });
        }
    }
    if let Some((_, state)) = states.first() {
        violations.extend(checker::check_all(&history, state));
    }
    let (strong_violations, strong_stats) = strong_checker::check_strong(&history);
    violations.extend(strong_violations);
    let count = |o: Outcome| history.iter().filter(|r| r.result == o).count();
    let report_text = json!({
        "seed": cfg.seed, "mode": mode, "faults": fault_log, "violations": violations, "strong": strong,
        "strong_stats": strong_stats,
    });
    let _ =
        std::fs::write(dir.path().join("report.json"), serde_json::to_string_pretty(&report_text).unwrap_or_default());
    drop(cluster);
    drop(net);
    Ok(RunReport {
        seed: cfg.seed,
        mode,
        ops,
        ok: count(Outcome::Ok),
        unknown: count(Outcome::Unknown),
        fail: count(Outcome::Fail),
        faults,
        fault_log,
        violations,
        kept_dir: None,
        strong,
        strong_stats,
        elapsed: started.elapsed(),
    })
}

enum RunDir {
    Kept(PathBuf),
    Temp(tempfile::TempDir),
}

impl RunDir {
    fn path(&self) -> &Path {
        match self {
            RunDir::Kept(p) => p,
            RunDir::Temp(t) => t.path(),
        }
    }

    fn keep_if(self, keep: bool) -> Option<PathBuf> {
        match self {
            RunDir::Kept(p) => Some(p),
            RunDir::Temp(t) if keep => Some(t.keep()),
            RunDir::Temp(_) => None,
        }
    }
}
