//! Client commands: talk to a node's HTTP/JSON API (`docs/design/http-api.md`).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The header carrying a session token (docs/design/watch.md, "Sessions").
pub const SESSION_HEADER: &str = "Chorus-Session";
/// Deadline of one client request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a command keeps resending a request that was refused with
/// nothing changed and that a moment may cure: 503 `not_leader` (leadership
/// moved while the node forwarded it) and 503 `no_leader` (an election is
/// under way). Counted from the first attempt.
pub const RETRY_REFUSED_MAX: Duration = Duration::from_secs(3);
/// First pause before such a retry; it doubles up to [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How long a write whose outcome is unknown (504 `timeout`, or no answer)
/// is retried on the same node with the same `request_id`: only that node
/// can know about a write that became durable there but was not yet pushed
/// anywhere (docs/design/http-api.md, "Client retries").
pub const RETRY_UNKNOWN_MAX: Duration = Duration::from_secs(10);
/// Pages `scan` follows at most (each up to 1,000 keys).
const SCAN_PAGES_MAX: usize = 10_000;

#[derive(Args, Clone)]
pub struct Target {
    /// The node's API URL.
    #[arg(long, env = "CHORUS_NODE", default_value = "http://127.0.0.1:7101", global = true)]
    pub node: String,
    /// Namespace.
    #[arg(long, default_value = "default", global = true)]
    pub ns: String,
    /// Idempotency key of a write (default: a fresh random one per command).
    /// A retry with the same key returns the first outcome and applies nothing.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Session token from an earlier answer (`session`): this command is
    /// served only by a node that has seen everything that session saw
    /// (read-your-writes, monotonic reads; docs/design/watch.md).
    #[arg(long, env = "CHORUS_SESSION", global = true)]
    pub session: Option<String>,
    /// Client token (`chorus token create`), sent as `Authorization:
    /// Bearer TOKEN`: needed when the cluster runs with `auth_enabled`.
    #[arg(long, env = "CHORUS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

impl Target {
    /// This command's idempotency key.
    pub fn request_id(&self) -> String {
        self.request_id.clone().unwrap_or_else(fresh_request_id)
    }
}

/// The session and token headers of a request (each only when set).
pub fn request_headers(session: Option<&str>, token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    if let Some(session) = session.filter(|s| !s.is_empty()) {
        headers.push((SESSION_HEADER, session.to_string()));
    }
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        headers.push(("Authorization", format!("Bearer {token}")));
    }
    headers
}

/// 128 random bits as hex, from the OS (no clock: two commands in the same
/// microsecond must not collide).
pub fn fresh_request_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Args)]
pub struct NsArgs {
    #[command(subcommand)]
    command: NsCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum NsCommand {
    /// Create a namespace.
    Create {
        name: String,
        /// eventual (CRDTs, always writable) or strong (Raft; not in this build).
        #[arg(long, default_value = "eventual")]
        mode: String,
        /// lww, mv, counter or set.
        #[arg(long = "type", default_value = "lww")]
        value_type: String,
    },
    /// List namespaces.
    List,
}

/// A small blocking HTTP client for one node.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// Sent as `Chorus-Session` with every request.
    session: Option<String>,
    /// Sent as `Authorization: Bearer …` with every request.
    token: Option<String>,
}

/// Percent-encode a key for a URL path, keeping `/` (keys may contain it;
/// the routes capture the rest of the path).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(base: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Client { agent, base: base.trim_end_matches('/').to_string(), session: None, token: None }
    }

    /// This client, sending `token` as its bearer token.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// A client of the target's node, presenting its session if it has one.
    pub fn of(t: &Target) -> Client {
        Client { session: t.session.clone(), token: t.token.clone(), ..Client::new(&t.node) }
    }

    /// A client of the same node with this one's agent, session and token.
    fn clone_config(&self) -> Client {
        Client {
            agent: self.agent.clone(),
            base: self.base.clone(),
            session: self.session.clone(),
            token: self.token.clone(),
        }
    }

    /// The headers every request carries: session and token, when set.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        request_headers(self.session.as_deref(), self.token.as_deref())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status and JSON body of a request (`body` given: sent as JSON).
    /// A refusal that changed nothing (see [`is_refused_unchanged`]) is sent
    /// again for up to [`RETRY_REFUSED_MAX`]; every other answer, 504
    /// `timeout` included (its write may have applied), is returned as is.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut retry = RefusalRetry::new();
        loop {
            let (status, value) = self.call_once(method, path, body)?;
            if !retry.again(status, &value) {
                return Ok((status, value));
            }
        }
    }

    /// One attempt of [`Client::call`], never retried.
    pub fn call_once(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let url = self.url(path);
        let headers = self.headers();
        macro_rules! with_headers {
            ($request:expr) => {{
                let mut request = $request;
                for (name, value) in &headers {
                    request = request.header(*name, value);
                }
                request
            }};
        }
        let response = match (method, body) {
            ("GET", _) => with_headers!(self.agent.get(&url)).call(),
            ("DELETE", _) => with_headers!(self.agent.delete(&url)).call(),
            ("PUT", Some(b)) => with_headers!(self.agent.put(&url)).send_json(b),
            ("POST", Some(b)) => with_headers!(self.agent.post(&url)).send_json(b),
            ("POST", None) => with_headers!(self.agent.post(&url)).send_empty(),
            _ => bail!("unsupported request {method} {path}"),
        };
        let mut response = response.with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().with_context(|| format!("reading the answer of {url}"))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// A write carrying idempotency key `request_id` (in the JSON body, or
    /// the query of a DELETE). Retries follow the rule of
    /// docs/design/http-api.md, "Client retries": an unknown outcome (504,
    /// or no answer) is retried on the *same* node with the same key for up
    /// to [`RETRY_UNKNOWN_MAX`]; a refusal that changed nothing (503) may
    /// move to another live member (from `/v1/members`, once each); every
    /// other answer is returned.
    pub fn write(&self, method: &str, path: &str, body: Option<Value>, request_id: &str) -> Result<(u16, Value)> {
        let (path, body) = match body {
            Some(mut b) => {
                if let Value::Object(o) = &mut b {
                    o.insert("request_id".into(), Value::String(request_id.to_string()));
                }
                (path.to_string(), Some(b))
            }
            None => {
                let sep = if path.contains('?') { '&' } else { '?' };
                (format!("{path}{sep}request_id={}", encode_query(request_id)), None)
            }
        };
        let mut tried: Vec<String> = vec![self.base.clone()];
        let mut client = Client { base: self.base.clone(), ..self.clone_config() };
        loop {
            let deadline = Instant::now() + RETRY_UNKNOWN_MAX;
            let mut backoff = RETRY_BACKOFF_MIN;
            let answer = loop {
                let attempt = client.call(method, &path, body.as_ref());
                let unknown = match &attempt {
                    Ok((status, _)) => *status == 504,
                    Err(_) => true,
                };
                if !unknown || Instant::now() + backoff >= deadline {
                    break attempt;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            };
            let (status, value) = answer?;
            if status != 503 {
                return Ok((status, value));
            }
            // Refused, nothing changed: another live member may serve it.
            match client.other_member(&tried) {
                Some(next) => {
                    tried.push(next.clone());
                    client = Client { base: next, ..self.clone_config() };
                }
                None => return Ok((status, value)),
            }
        }
    }

    /// The API address of a live member not in `tried`, as this node sees
    /// the cluster.
    fn other_member(&self, tried: &[String]) -> Option<String> {
        let (status, v) = self.call_once("GET", "/v1/members", None).ok()?;
        if status != 200 {
            return None;
        }
        v.get("members")?.as_array()?.iter().find_map(|m| {
            let alive = m.get("state").and_then(Value::as_str) == Some("alive");
            let url = format!("http://{}", m.get("api_addr")?.as_str()?);
            (alive && !tried.contains(&url)).then_some(url)
        })
    }

    /// Like [`Client::write`] but a non-2xx answer is an error with its message.
    pub fn write_ok(&self, method: &str, path: &str, body: Option<Value>, request_id: &str) -> Result<Value> {
        let (status, value) = self.write(method, path, body, request_id)?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        bail!("{}", describe_error(status, &value))
    }

    /// Like [`Client::call`] but a non-2xx answer is an error with its message.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, value) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        bail!("{}", describe_error(status, &value))
    }
}

/// Whether an answer is a refusal after which nothing changed and that a
/// moment may cure: 503 `not_leader` or `no_leader`. Not `no_quorum` (this
/// node is cut off from a majority: waiting seconds rarely helps, and the
/// caller should hear it at once), and never 504 `timeout`, whose write may
/// have been applied.
pub fn is_refused_unchanged(status: u16, body: &Value) -> bool {
    status == 503 && matches!(body.get("error").and_then(Value::as_str), Some("not_leader" | "no_leader"))
}

/// Bounded retries of refusals that changed nothing, with doubling pauses.
pub struct RefusalRetry {
    deadline: Instant,
    backoff: Duration,
}

impl Default for RefusalRetry {
    fn default() -> Self {
        Self::new()
    }
}

impl RefusalRetry {
    /// Starts the [`RETRY_REFUSED_MAX`] budget now.
    pub fn new() -> RefusalRetry {
        RefusalRetry { deadline: Instant::now() + RETRY_REFUSED_MAX, backoff: RETRY_BACKOFF_MIN }
    }

    /// Whether to send the request again after answer `(status, body)`:
    /// only a refusal that changed nothing, and only while the pause before
    /// the next attempt still ends within the budget. Sleeps that pause.
    pub fn again(&mut self, status: u16, body: &Value) -> bool {
        if !is_refused_unchanged(status, body) || Instant::now() + self.backoff > self.deadline {
            return false;
        }
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(RETRY_BACKOFF_MAX);
        true
    }
}

pub fn describe_error(status: u16, body: &Value) -> String {
    match (body.get("error").and_then(Value::as_str), body.get("message").and_then(Value::as_str)) {
        (Some(code), Some(message)) => format!("{message} ({code}, HTTP {status})"),
        _ => format!("HTTP {status}: {body}"),
    }
}

fn kv_path(t: &Target, kind: &str, key: &str) -> String {
    format!("/v1/ns/{}/{kind}/{}", encode_key(&t.ns), encode_key(key))
}

/// One line per value of a read (the value alone: scripts use it).
fn value_lines(v: &Value) -> Vec<String> {
    let text = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match v.get("type").and_then(Value::as_str) {
        Some("mv") => {
            v.get("values").and_then(Value::as_array).map(|a| a.iter().map(text).collect()).unwrap_or_default()
        }
        Some("set") => {
            v.get("members").and_then(Value::as_array).map(|a| a.iter().map(text).collect()).unwrap_or_default()
        }
        _ => vec![v.get("value").map(text).unwrap_or_default()],
    }
}

/// "OK", or with `--json` the whole answer (its `session` included).
fn print_written(v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
    } else {
        println!("OK");
    }
}

pub fn put(t: &Target, key: &str, value: &str, json_out: bool) -> Result<ExitCode> {
    let v = Client::of(t).write_ok("PUT", &kv_path(t, "kv", key), Some(json!({ "value": value })), &t.request_id())?;
    print_written(&v, json_out);
    Ok(ExitCode::SUCCESS)
}

pub fn get(t: &Target, key: &str, json_out: bool) -> Result<ExitCode> {
    let (status, body) = Client::of(t).call("GET", &kv_path(t, "kv", key), None)?;
    if status == 404 && body.get("error").and_then(Value::as_str) == Some("not_found") {
        eprintln!("key {key:?} not found in namespace {:?}", t.ns);
        return Ok(ExitCode::from(1));
    }
    if !(200..300).contains(&status) {
        bail!("{}", describe_error(status, &body));
    }
    if json_out {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    for line in value_lines(&body) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn del(t: &Target, key: &str, json_out: bool) -> Result<ExitCode> {
    let v = Client::of(t).write_ok("DELETE", &kv_path(t, "kv", key), None, &t.request_id())?;
    print_written(&v, json_out);
    Ok(ExitCode::SUCCESS)
}

pub fn scan(t: &Target, prefix: &str, limit: usize, json_out: bool) -> Result<ExitCode> {
    let client = Client::of(t);
    let mut after: Option<String> = None;
    for _ in 0..SCAN_PAGES_MAX {
        let mut path = format!("/v1/ns/{}/scan?prefix={}&limit={limit}", encode_key(&t.ns), encode_query(prefix));
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode_query(a)));
        }
        let page = client.ok("GET", &path, None)?;
        if json_out {
            // One line per page: each carries its `items`, `next` and `session`.
            println!("{page}");
        }
        for item in page.get("items").and_then(Value::as_array).into_iter().flatten().filter(|_| !json_out) {
            let key = item.get("key").and_then(Value::as_str).unwrap_or_default();
            println!("{key}\t{}", value_lines(item).join(","));
        }
        match page.get("next").and_then(Value::as_str) {
            Some(n) => after = Some(n.to_string()),
            None => return Ok(ExitCode::SUCCESS),
        }
    }
    bail!("scan stopped after {SCAN_PAGES_MAX} pages")
}

fn encode_query(s: &str) -> String {
    encode_key(s).replace('/', "%2F")
}

pub fn incr(t: &Target, key: &str, amount: i64, json_out: bool) -> Result<ExitCode> {
    let v = Client::of(t).write_ok(
        "POST",
        &kv_path(t, "counter", key),
        Some(json!({ "amount": amount })),
        &t.request_id(),
    )?;
    print_written(&v, json_out);
    Ok(ExitCode::SUCCESS)
}

pub fn set_op(t: &Target, key: &str, op: &str, member: &str, json_out: bool) -> Result<ExitCode> {
    let body = json!({ "op": op, "member": member });
    let v = Client::of(t).write_ok("POST", &kv_path(t, "set", key), Some(body), &t.request_id())?;
    print_written(&v, json_out);
    Ok(ExitCode::SUCCESS)
}

pub fn members(t: &Target) -> Result<ExitCode> {
    let v = Client::of(t).ok("GET", "/v1/members", None)?;
    println!("{:<24} {:<8} {:<22} {:<22} generation", "name", "state", "address", "api");
    let me = v.get("self").into_iter();
    for m in me.chain(v.get("members").and_then(Value::as_array).into_iter().flatten()) {
        let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let generation = m.get("generation").and_then(Value::as_u64).unwrap_or(0);
        println!("{:<24} {:<8} {:<22} {:<22} {generation}", s("name"), s("state"), s("addr"), s("api_addr"));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(t: &Target, raw_json: bool) -> Result<ExitCode> {
    let v = Client::of(t).ok("GET", "/v1/status", None)?;
    if raw_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&v));
    }
    Ok(ExitCode::SUCCESS)
}

/// µs as signed milliseconds with 3 decimals (`-` when absent).
fn ms(v: &Value) -> String {
    v.as_i64().map_or("-".into(), |us| format!("{:+.3}", us as f64 / 1000.0))
}

/// The human-readable `chorus status`.
pub fn render_status(v: &Value) -> String {
    use std::fmt::Write as _;
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut out = String::new();
    let h = &v["health"];
    let _ = writeln!(out, "{} (tier {}, {})", s(&v["name"]), v["tier"], s(&v["peer_addr"]));
    let _ = writeln!(out, "health:  {} (score {:.2})", s(&h["status"]), h["score"].as_f64().unwrap_or(0.0));
    for r in h["reasons"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "         - {}", s(r));
    }
    let m = &v["members"];
    let _ = writeln!(out, "members: {} alive, {} suspect, {} down", m["alive"], m["suspect"], m["down"]);
    let c = &v["clock"];
    let _ = writeln!(out, "clock:   {} - {}", s(&c["state"]), s(&c["reason"]));
    let corr = &c["correction"];
    let drift = c["drift_ppm"].as_f64().map_or("-".into(), |d| format!("{d:+.3}"));
    let _ = writeln!(
        out,
        "         offset {} ms (limit {} ms), correction {} ms -> target {} ms at {:+.1} ppm (max {} ppm), drift {} ppm",
        ms(&c["offset_us"]),
        c["max_offset_us"].as_u64().unwrap_or(0) / 1000,
        ms(&corr["correction_us"]),
        ms(&corr["target_us"]),
        corr["rate_ppm"].as_f64().unwrap_or(0.0),
        corr["slew_rate_max_ppm"],
        drift,
    );
    let peers = c["peers"].as_array().cloned().unwrap_or_default();
    if !peers.is_empty() {
        let _ = writeln!(
            out,
            "         {:<20} {:>4} {:>12} {:>10} {:>10} {:>10} {:>11} {:>7}",
            "peer", "tier", "offset_ms", "delay_ms", "bound_ms", "drift_ppm", "falseticker", "samples"
        );
        for p in &peers {
            let drift = p["drift_ppm"].as_f64().map_or("-".into(), |d| format!("{d:+.3}"));
            let flag = if p["falseticker"].as_bool() == Some(true) { "YES" } else { "no" };
            let _ = writeln!(
                out,
                "         {:<20} {:>4} {:>12} {:>10} {:>10} {:>10} {:>11} {:>7}",
                s(&p["name"]),
                p["tier"],
                ms(&p["offset_us"]),
                ms(&p["delay_us"]),
                ms(&p["error_bound_us"]),
                drift,
                flag,
                p["samples"],
            );
        }
    }
    let names: Vec<String> = v["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| format!("{} ({}, {} keys)", s(&n["name"]), s(&n["type"]), n["keys"]))
        .collect();
    let _ = writeln!(out, "namespaces: {}", names.join(", "));
    out
}

pub fn ns(args: NsArgs) -> Result<ExitCode> {
    let client = Client::of(&args.target);
    match args.command {
        NsCommand::Create { name, mode, value_type } => {
            let v = client.ok("POST", "/v1/ns", Some(&json!({ "name": name, "mode": mode, "type": value_type })))?;
            println!("created {} ({}, {})", name, v["mode"].as_str().unwrap_or("?"), v["type"].as_str().unwrap_or("?"));
        }
        NsCommand::List => {
            let v = client.ok("GET", "/v1/ns", None)?;
            println!("{:<32} {:<9} {:<8} keys", "name", "mode", "type");
            for n in v.get("namespaces").and_then(Value::as_array).into_iter().flatten() {
                let s = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                println!("{:<32} {:<9} {:<8} {}", s("name"), s("mode"), s("type"), n["keys"]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP server on loopback whose n-th request (from 0) gets
    /// `answer(n)`; returns its URL and the count of requests it received.
    /// The thread lives until the test process ends.
    fn serve(answer: impl Fn(usize) -> (u16, Value) + Send + 'static) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut body_bytes = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        body_bytes = n.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; body_bytes];
                let _ = reader.read_exact(&mut body);
                // Counted before answering, so the client never sees an answer
                // whose request is not yet counted.
                let (status, value) = answer(seen.fetch_add(1, Ordering::SeqCst));
                let text = value.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        (url, count)
    }

    fn refusal(code: &str) -> Value {
        json!({ "error": code, "message": "m" })
    }

    #[test]
    fn not_leader_and_no_leader_refusals_are_retried_until_an_answer() {
        let (url, count) = serve(|n| match n {
            0 => (503, refusal("not_leader")),
            1 => (503, refusal("no_leader")),
            _ => (200, json!({ "ok": true })),
        });
        let (status, v) = Client::new(&url).call("POST", "/v1/ns", Some(&json!({}))).expect("answer");
        assert_eq!((status, v["ok"].as_bool()), (200, Some(true)));
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_timeout_or_any_other_error_is_never_retried() {
        for (status, code) in [(504, "timeout"), (503, "no_quorum"), (503, "stopping"), (404, "no_such_namespace")] {
            let (url, count) = serve(move |n| if n == 0 { (status, refusal(code)) } else { (200, json!({})) });
            let (got, v) = Client::new(&url).call("PUT", "/v1/ns/s/kv/k", Some(&json!({}))).expect("answer");
            assert_eq!((got, v["error"].as_str()), (status, Some(code)));
            assert_eq!(count.load(Ordering::SeqCst), 1, "{code} was retried");
        }
    }

    #[test]
    fn refusals_are_retried_for_at_most_the_named_bound() {
        let (url, count) = serve(|_| (503, refusal("not_leader")));
        let started = Instant::now();
        let (status, v) = Client::new(&url).call("GET", "/v1/raft", None).expect("answer");
        let took = started.elapsed();
        assert_eq!((status, v["error"].as_str()), (503, Some("not_leader")));
        assert!(took <= RETRY_REFUSED_MAX + Duration::from_millis(500), "retried for {took:?}");
        assert!(took >= RETRY_REFUSED_MAX - RETRY_BACKOFF_MAX, "gave up after {took:?}");
        assert!(count.load(Ordering::SeqCst) > 2, "{} attempts", count.load(Ordering::SeqCst));
    }
}
