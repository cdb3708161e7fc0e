//! Clients of `GET /v1/watch` for the live watch tests: an NDJSON stream
//! over a raw HTTP/1.1 connection and a WebSocket stream (tungstenite),
//! each read by its own thread into a shared list of JSON lines.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Poll period of every wait in these tests.
pub const POLL: Duration = Duration::from_millis(20);

/// Poll `f` until it answers `Some`, or panic with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// Percent-encode a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `host:port` of an `http://host:port` API address.
fn authority(api: &str) -> &str {
    api.trim_start_matches("http://").trim_end_matches('/')
}

/// The path and query of a watch.
pub fn watch_path(ns: &str, prefix: &str, resume: Option<&str>) -> String {
    let mut path = format!("/v1/watch?ns={}&prefix={}", encode(ns), encode(prefix));
    if let Some(t) = resume {
        path.push_str(&format!("&resume={}", encode(t)));
    }
    path
}

/// What a stream has received so far.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<Value>>>);

impl Lines {
    pub fn snapshot(&self) -> Vec<Value> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn push(&self, v: Value) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }
    /// The token of the last line received (any type).
    pub fn last_token(&self) -> Option<String> {
        self.snapshot().iter().rev().find_map(|l| l["token"].as_str().map(str::to_string))
    }
}

/// One open stream and its reader thread. Dropping it closes the
/// connection and joins the thread.
pub struct Stream {
    pub lines: Lines,
    ended: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    socket: TcpStream,
    reader: Option<JoinHandle<()>>,
}

impl Stream {
    /// Whether the server ended the stream (or the connection broke).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
    /// Stop (or restart) reading: the socket buffers, then the server's
    /// buffers fill.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }
    /// Close the connection now; returns every line received.
    pub fn close(mut self) -> Vec<Value> {
        self.stop();
        self.lines.snapshot()
    }
    fn stop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        self.paused.store(false, Ordering::Release);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a watch request was answered.
pub enum Opened {
    Stream(Stream),
    /// An answer other than 200, with its JSON body (the stream never started).
    Refused(u16, Value),
}

impl Opened {
    pub fn stream(self, what: &str) -> Stream {
        match self {
            Opened::Stream(s) => s,
            Opened::Refused(status, body) => panic!("{what}: watch refused with {status} {body}"),
        }
    }
}

fn read_headers(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut status_line = String::new();
    r.read_line(&mut status_line)?;
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

/// Read one chunk of a chunked body: `None` at its end (or on error).
fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size_line = String::new();
    if r.read_line(&mut size_line).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(size_line.trim().split(';').next()?.trim(), 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut data = vec![0; size];
    r.read_exact(&mut data).ok()?;
    let mut crlf = [0; 2];
    r.read_exact(&mut crlf).ok()?;
    Some(data)
}

/// `GET /v1/watch` as NDJSON on node `api`. With `paused`, the reader
/// thread does not read until [`Stream::set_paused`]`(false)`.
pub fn open_ndjson(api: &str, ns: &str, prefix: &str, resume: Option<&str>, paused: bool) -> Opened {
    open_ndjson_path(api, &watch_path(ns, prefix, resume), paused)
}

/// Any NDJSON route (`path` with its query) on node `api`, read like a
/// watch (e.g. `GET /v1/ns/{ns}/snapshot`).
pub fn open_ndjson_path(api: &str, path: &str, paused: bool) -> Opened {
    let host = authority(api);
    let mut socket = TcpStream::connect(host).expect("connect to the node's API");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/x-ndjson\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).expect("send the watch request");
    let mut reader = BufReader::new(socket.try_clone().expect("clone the socket"));
    let (status, headers) = read_headers(&mut reader).expect("read the answer's headers");
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if status != 200 {
        let mut body = Vec::new();
        if chunked {
            while let Some(c) = read_chunk(&mut reader) {
                body.extend(c);
            }
        } else if let Some(n) = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()) {
            body.resize(n, 0);
            reader.read_exact(&mut body).expect("read the error body");
        }
        let body =
            serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        return Opened::Refused(status, body);
    }
    assert!(chunked, "an NDJSON watch answers with a chunked body: {headers:?}");
    let lines = Lines::default();
    let ended = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(paused));
    let reader = {
        let (lines, ended, paused) = (lines.clone(), Arc::clone(&ended), Arc::clone(&paused));
        std::thread::spawn(move || {
            let mut pending: Vec<u8> = Vec::new();
            loop {
                while paused.load(Ordering::Acquire) {
                    std::thread::sleep(POLL);
                }
                let Some(chunk) = read_chunk(&mut reader) else { break };
                pending.extend(chunk);
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let v = serde_json::from_slice(&line)
                        .unwrap_or_else(|_| panic!("a stream line is not JSON: {}", String::from_utf8_lossy(&line)));
                    lines.push(v);
                }
            }
            ended.store(true, Ordering::Release);
        })
    };
    Opened::Stream(Stream { lines, ended, paused, socket, reader: Some(reader) })
}

/// `GET /v1/watch` as a WebSocket on node `api`, from `resume` when given
/// (panics when the upgrade is refused).
pub fn open_websocket(api: &str, ns: &str, prefix: &str, resume: Option<&str>) -> Stream {
    let host = authority(api);
    let socket = TcpStream::connect(host).expect("connect to the node's API");
    let url = format!("ws://{host}{}", watch_path(ns, prefix, resume));
    let (mut ws, response) =
        tungstenite::client(url.as_str(), socket.try_clone().expect("clone the socket")).expect("WebSocket handshake");
    assert_eq!(response.status().as_u16(), 101, "the watch upgraded to a WebSocket");
    let lines = Lines::default();
    let ended = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let reader = {
        let (lines, ended) = (lines.clone(), Arc::clone(&ended));
        std::thread::spawn(move || {
            loop {
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        let v = serde_json::from_str(t.as_str())
                            .unwrap_or_else(|_| panic!("a WebSocket message is not JSON: {t}"));
                        lines.push(v);
                    }
                    Ok(tungstenite::Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            ended.store(true, Ordering::Release);
        })
    };
    Stream { lines, ended, paused, socket, reader: Some(reader) }
}
