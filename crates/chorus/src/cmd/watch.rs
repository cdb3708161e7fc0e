//! `chorus watch [PREFIX] [--resume TOKEN] [--timeout-ms N]`: one JSON event
//! per line from `GET /v1/watch` (NDJSON), for every namespace type and
//! mode (`docs/design/watch.md`).
//!
//! The command keeps the last token it printed. When the stream ends —
//! the node closed it as `lagged`, the connection dropped, the node
//! restarted — it reconnects with that token, so the printed events have
//! no gap and no duplicate. A `reset` event (the position cannot be served)
//! is printed and ends the command with exit code 3: the caller re-reads
//! (`GET /v1/ns/{ns}/snapshot`) and resumes from the snapshot's token.

use super::client::{RefusalRetry, Target, describe_error, encode_key, request_headers};
use anyhow::{Result, bail};
use serde_json::Value;
use std::io::BufRead;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Reconnections in a row that may fail (no event in between) before the
/// command gives up.
pub const RECONNECTS_MAX: u32 = 20;
/// Pause before a reconnection; doubles up to [`RECONNECT_BACKOFF_MAX`].
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Lines read ahead of printing at most.
const LINES_AHEAD_MAX: usize = 256;

/// Exit code after a `reset` event.
pub const EXIT_RESET: u8 = 3;

enum Line {
    Text(String),
    /// The stream ended (closed by the node, or the connection failed).
    End(Option<String>),
}

/// Open the stream; `Err` is a refusal that is not worth retrying.
fn open(t: &Target, url: &str) -> Result<std::result::Result<ureq::Body, String>> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut retry = RefusalRetry::new();
    loop {
        let mut request = agent.get(url);
        for (name, value) in request_headers(t.session.as_deref(), t.token.as_deref()) {
            request = request.header(name, value);
        }
        let mut response = match request.call() {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("GET {url}: {e}"))),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(Ok(response.into_body()));
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if retry.again(status, &v) {
            continue;
        }
        // 503 (e.g. `watch_behind`: this node has not caught up yet) is
        // worth another try; anything else is the caller's mistake.
        if status == 503 {
            return Ok(Err(describe_error(status, &v)));
        }
        bail!("{}", describe_error(status, &v));
    }
}

pub fn run(t: &Target, prefix: &str, resume: Option<String>, timeout_ms: u64) -> Result<ExitCode> {
    let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
    let base = format!(
        "{}/v1/watch?ns={}&prefix={}",
        t.node.trim_end_matches('/'),
        encode_key(&t.ns).replace('/', "%2F"),
        encode_key(prefix).replace('/', "%2F")
    );
    let mut token = resume;
    let mut failures = 0u32;
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        let url = match &token {
            Some(tok) => format!("{base}&resume={tok}"),
            None => base.clone(),
        };
        let why = match open(t, &url)? {
            Ok(body) => {
                let (tx, rx) = mpsc::sync_channel::<Line>(LINES_AHEAD_MAX);
                std::thread::spawn(move || {
                    let reader = std::io::BufReader::new(body.into_reader());
                    for line in reader.lines() {
                        match line {
                            Ok(l) => {
                                if tx.send(Line::Text(l)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Line::End(Some(e.to_string())));
                                return;
                            }
                        }
                    }
                    let _ = tx.send(Line::End(None));
                });
                loop {
                    let line = match deadline {
                        Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                            Ok(l) => l,
                            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(ExitCode::SUCCESS),
                            Err(mpsc::RecvTimeoutError::Disconnected) => Line::End(None),
                        },
                        None => rx.recv().unwrap_or(Line::End(None)),
                    };
                    let text = match line {
                        Line::Text(text) => text,
                        Line::End(why) => break why.unwrap_or_else(|| "the node ended the stream".into()),
                    };
                    println!("{text}");
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if let Some(tok) = v.get("token").and_then(Value::as_str) {
                        token = Some(tok.to_string());
                    }
                    match v.get("type").and_then(Value::as_str) {
                        Some("reset") => return Ok(ExitCode::from(EXIT_RESET)),
                        Some("lagged") => {}
                        _ => {
                            failures = 0;
                            backoff = RECONNECT_BACKOFF_MIN;
                        }
                    }
                }
            }
            Err(why) => why,
        };
        failures += 1;
        if failures > RECONNECTS_MAX {
            bail!("the watch stream failed {RECONNECTS_MAX} times in a row; last: {why}");
        }
        if deadline.is_some_and(|d| Instant::now() + backoff >= d) {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("watch: {why}; resuming in {} ms", backoff.as_millis());
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}
