//! Real `chorus agent` processes on loopback for the integration tests.
//!
//! Each test uses its own loopback address block `127.0.T.i` (T = test id,
//! i = node), so tests run in parallel without port clashes. Every process
//! is killed when its `Agent` is dropped, and on Linux also when the thread
//! that spawned it dies (PR_SET_PDEATHSIG).

#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_chorus");
pub const API_PORT: u16 = 17101;
pub const PEER_PORT: u16 = 17201;
/// Deadline of every "eventually" in these tests.
pub const CONVERGE: Duration = Duration::from_secs(20);

pub fn chorus(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run chorus")
}

/// Poll `f` until it returns `Some`, or panic with `what` after `deadline`.
pub fn eventually<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub struct Http {
    agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        Http { agent }
    }

    /// [`Http::req`] with a bearer token (`None`: without one).
    pub fn req_as(&self, token: Option<&str>, method: &str, url: &str, body: Option<&str>) -> Option<(u16, Value)> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        macro_rules! with_token {
            ($request:expr) => {{
                let request = $request;
                match &bearer {
                    Some(b) => request.header("Authorization", b),
                    None => request,
                }
            }};
        }
        let r = match (method, body) {
            ("GET", _) => with_token!(self.agent.get(url)).call(),
            ("DELETE", _) => with_token!(self.agent.delete(url)).call(),
            ("PUT", Some(b)) => with_token!(self.agent.put(url)).content_type("application/json").send(b),
            ("POST", Some(b)) => with_token!(self.agent.post(url)).content_type("application/json").send(b),
            ("POST", None) => with_token!(self.agent.post(url)).send_empty(),
            _ => panic!("unsupported {method}"),
        };
        let mut r = r.ok()?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// (status, JSON body); `None` when the node does not answer at all.
    pub fn req(&self, method: &str, url: &str, body: Option<&str>) -> Option<(u16, Value)> {
        let r = match (method, body) {
            ("GET", _) => self.agent.get(url).call(),
            ("DELETE", _) => self.agent.delete(url).call(),
            ("PUT", Some(b)) => self.agent.put(url).content_type("application/json").send(b),
            ("POST", Some(b)) => self.agent.post(url).content_type("application/json").send(b),
            _ => panic!("unsupported {method}"),
        };
        let mut r = r.ok()?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    pub fn get(&self, url: &str) -> Option<(u16, Value)> {
        self.req("GET", url, None)
    }
}

/// One agent process and where it lives.
pub struct Agent {
    pub name: String,
    pub api: String,
    pub peer_addr: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Agent {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        self.child = Some(spawn_agent(&self.config, &self.log));
    }

    /// Start with extra environment variables (e.g. the test knob
    /// `CHORUS_TEST_CLOCK_OFFSET_MS`, which runs the test-knobs binary).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} already running", self.name);
        self.child = Some(spawn_agent_with_env(&self.config, &self.log, env));
    }

    /// Append TOML lines to this agent's config (before it starts).
    pub fn append_config(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.config).expect("open config");
        writeln!(f, "{lines}").expect("append config");
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The agent's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no graceful leave, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn wait_healthy(&mut self, http: &Http) {
        let url = self.url("/health");
        let log = self.log.clone();
        let child = self.child.as_mut().expect("running");
        eventually(&format!("{url} to answer"), CONVERGE, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("agent exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            http.get(&url).filter(|(s, _)| *s == 200).map(|_| ())
        });
    }

    pub fn members(&self, http: &Http) -> Vec<Value> {
        http.get(&self.url("/v1/members")).and_then(|(_, v)| v["members"].as_array().cloned()).unwrap_or_default()
    }

    /// Write and assert it was acknowledged; returns the answer.
    pub fn put(&self, http: &Http, ns: &str, key: &str, value: &str) -> Value {
        let (status, v) = http
            .req("PUT", &self.url(&format!("/v1/ns/{ns}/kv/{key}")), Some(&json!({ "value": value }).to_string()))
            .expect("node answers");
        assert_eq!(status, 200, "put {key} on {}: {v}", self.name);
        v
    }

    /// The read of `key`, or `None` when absent or unreachable.
    pub fn read(&self, http: &Http, ns: &str, key: &str) -> Option<Value> {
        http.get(&self.url(&format!("/v1/ns/{ns}/kv/{key}"))).filter(|(s, _)| *s == 200).map(|(_, v)| v)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn spawn_agent(config: &Path, log: &Path) -> Child {
    spawn_agent_with_env(config, log, &[])
}

/// Agents started with a test knob in their environment run the binary
/// built with the `test-knobs` feature (target/knobs/chorus): the normal
/// binary ignores every knob.
pub fn spawn_agent_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let knobbed = env.iter().any(|(k, _)| k.starts_with("CHORUS_TEST_"));
    let bin: &Path = if knobbed { chorus_testkit::knobs_binary() } else { Path::new(BIN) };
    let mut cmd = Command::new(bin);
    cmd.arg("agent").arg("--config").arg(config).stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.envs(env.iter().copied());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no parent memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    cmd.spawn().expect("spawn agent")
}

/// A cluster CA plus agents on 127.0.`block`.i.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub block: u8,
    pub agents: Vec<Agent>,
    pub http: Http,
}

impl Cluster {
    /// Prepare `n` nodes (CA, certificates, configs) without starting them.
    pub fn prepare(block: u8, n: u8, extra_config: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        let out = chorus(&["ca", "init", "--dir", ca.to_str().unwrap(), "--cluster", "test"]);
        assert!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
        let mut cluster = Cluster { dir, block, agents: Vec::new(), http: Http::new() };
        for i in 1..=n {
            let agent = cluster.add_node(i, &ca, extra_config);
            cluster.agents.push(agent);
        }
        cluster
    }

    pub fn ip(&self, i: u8) -> String {
        format!("127.0.{}.{i}", self.block)
    }

    /// Issue a certificate for node `i` from the CA in `ca` and write its config.
    pub fn add_node(&self, i: u8, ca: &Path, extra_config: &str) -> Agent {
        let name = format!("node{i}");
        let out = chorus(&["ca", "issue", &name, "--dir", ca.to_str().unwrap()]);
        assert!(out.status.success(), "ca issue: {}", String::from_utf8_lossy(&out.stderr));
        let node_dir = self.dir.path().join(format!("{name}-{}", ca.file_name().unwrap().to_string_lossy()));
        std::fs::create_dir_all(&node_dir).unwrap();
        let ip = self.ip(i);
        let seed = format!("{}:{PEER_PORT}", self.ip(1));
        let config = format!(
            "name = \"{name}\"\ndata_dir = {:?}\ntls_dir = {:?}\napi_addr = \"{ip}:{API_PORT}\"\n\
             peer_addr = \"{ip}:{PEER_PORT}\"\nseeds = [\"{seed}\"]\nanti_entropy_interval_ms = 300\n{extra_config}\n",
            node_dir.join("data").display().to_string(),
            ca.join(&name).display().to_string(),
        );
        let config_path = node_dir.join("chorus.toml");
        std::fs::write(&config_path, config).unwrap();
        Agent {
            name,
            api: format!("http://{ip}:{API_PORT}"),
            peer_addr: format!("{ip}:{PEER_PORT}"),
            config: config_path,
            log: node_dir.join("agent.log"),
            child: None,
        }
    }

    /// Start every node and wait until all see each other alive.
    pub fn start(block: u8, n: u8, extra_config: &str) -> Cluster {
        let mut c = Cluster::prepare(block, n, extra_config);
        for a in &mut c.agents {
            a.start();
        }
        for a in &mut c.agents {
            a.wait_healthy(&c.http);
        }
        c.wait_all_alive();
        c
    }

    pub fn wait_all_alive(&self) {
        let n = self.agents.len();
        for a in &self.agents {
            eventually(&format!("{} to see {} members alive", a.name, n - 1), CONVERGE, || {
                let alive = a.members(&self.http).iter().filter(|m| m["state"] == "alive").count();
                (alive == n - 1).then_some(())
            });
        }
    }
}

/// The value of a Prometheus sample line `name{labels} value` (absent = 0).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok()).unwrap_or(0.0)
}

/// The `/metrics` text of agent `i` of `c`.
pub fn metrics(c: &Cluster, i: usize) -> String {
    let (status, v) = c.http.get(&c.agents[i].url("/metrics")).expect("metrics");
    assert_eq!(status, 200);
    v.as_str().unwrap_or_default().to_string()
}
