//! The load generator of the write benchmarks (`chorus bench write`,
//! `chorus bench strong`): N closed-loop clients, each with one keep-alive
//! HTTP/1.1 connection and one request outstanding at a time, all driven by
//! one thread.
//!
//! Why not one blocking client per thread: on a 2-core machine the
//! benchmark shares the CPU with the cluster it measures. 64 threads of
//! blocking `ureq` clients took 79% of a core at 8k writes/s (~100 µs of
//! CPU per request, mostly context switches), CPU the measured nodes then
//! did not get. Tasks on one thread with `hyper`'s connection API cost a
//! fraction of that and measure the same thing: issue → answer of each
//! request, per client, in order.

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause before reconnecting after a broken connection, so a refusing
/// server is not hammered in a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// One request of a client.
pub struct Request {
    pub method: hyper::Method,
    /// Path and query, e.g. `/v1/ns/default/kv/k`.
    pub path: String,
    /// A JSON body (empty: none).
    pub body: Bytes,
}

/// What the clients of one run did.
pub struct Outcome {
    /// Requests answered 200 before the end.
    pub ok: u64,
    /// Requests answered otherwise, timed out, or failed in transport.
    pub errors: u64,
    /// Issue → answer of every ok request, in milliseconds (unsorted).
    pub latency_ms: Vec<f64>,
    /// The length of the run.
    pub seconds: f64,
}

/// The socket address and `Host` of an `http://IP:PORT` URL.
pub(crate) fn parse_url(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: only http:// URLs are supported"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = authority.parse().with_context(|| format!("{url}: not an IP:PORT address"))?;
    Ok((addr, authority.to_string()))
}

pub(crate) async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the connection closes; the client sees that as an error
        // on its next request and reconnects.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Send one request and read the whole answer: its status, or None on a
/// transport error or timeout.
pub(crate) async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &str,
    request: Request,
    timeout: Duration,
) -> Option<u16> {
    let mut builder =
        hyper::Request::builder().method(request.method).uri(request.path).header(hyper::header::HOST, host);
    if !request.body.is_empty() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let http_request = builder.body(Full::new(request.body)).ok()?;
    let answer = async {
        sender.ready().await.ok()?;
        let response = sender.send_request(http_request).await.ok()?;
        let status = response.status().as_u16();
        // Read the body to the end so the connection is reused.
        response.into_body().collect().await.ok()?;
        Some(status)
    };
    tokio::time::timeout(timeout, answer).await.ok().flatten()
}

/// Run `clients` closed-loop clients for `duration`: client c talks to
/// `urls[target(c)]` and sends `request(c, n)` as its n-th request, the next
/// one as soon as the previous is answered. Every client connects before
/// the clock starts. Only requests answered before the end count.
pub fn drive(
    urls: &[String],
    clients: usize,
    duration: Duration,
    timeout: Duration,
    target: impl Fn(usize) -> usize,
    request: impl Fn(usize, u64) -> Request + Send + Sync + 'static,
) -> Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let targets: Vec<(SocketAddr, String)> =
        (0..clients).map(|c| parse_url(&urls[target(c) % urls.len()])).collect::<Result<_>>()?;
    let request = Arc::new(request);
    runtime.block_on(async move {
        let mut senders = Vec::with_capacity(clients);
        for (addr, _) in &targets {
            senders.push(connect(*addr).await?);
        }
        let started = Instant::now();
        let end = started + duration;
        let mut tasks = Vec::with_capacity(clients);
        for (c, (mut sender, (addr, host))) in senders.into_iter().zip(targets).enumerate() {
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut errors, mut latency) = (0u64, 0u64, Vec::new());
                let mut n = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let status = exchange(&mut sender, &host, request(c, n), timeout).await;
                    let t1 = Instant::now();
                    n += 1;
                    if t1 > end {
                        break;
                    }
                    match status {
                        Some(200) => {
                            ok += 1;
                            latency.push((t1 - t0).as_secs_f64() * 1e3);
                        }
                        Some(_) => errors += 1,
                        None => {
                            errors += 1;
                            tokio::time::sleep(RECONNECT_PAUSE).await;
                            if let Ok(fresh) = connect(addr).await {
                                sender = fresh;
                            }
                        }
                    }
                }
                (ok, errors, latency)
            }));
        }
        let mut outcome = Outcome { ok: 0, errors: 0, latency_ms: Vec::new(), seconds: duration.as_secs_f64() };
        for task in tasks {
            let (ok, errors, latency) = task.await.map_err(|_| anyhow!("a client task panicked"))?;
            outcome.ok += ok;
            outcome.errors += errors;
            outcome.latency_ms.extend(latency);
        }
        Ok(outcome)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_plain_http_with_an_ip_address() {
        let (addr, host) = parse_url("http://127.0.0.1:7101").expect("valid");
        assert_eq!(addr, "127.0.0.1:7101".parse().expect("addr"));
        assert_eq!(host, "127.0.0.1:7101");
        assert!(parse_url("https://127.0.0.1:7101").is_err());
        assert!(parse_url("http://localhost:7101").is_err());
    }
}
