//! `GET /v1/watch` (WebSocket, or NDJSON to a plain HTTP client) and
//! `GET /v1/ns/{ns}/snapshot`: change streams of every namespace, resumable
//! on any node (`docs/design/watch.md`).
//!
//! A stream is a task that writes JSON lines into a bounded channel; the
//! transport (a WebSocket or a chunked HTTP body) forwards them. Eventual
//! namespaces: the stream starts from a catch-up read (or the node's state
//! now) and subscribes to the hub inside that read's release, then turns
//! every durable change batch into events, each carrying the stream's
//! position as its `token`. Strong namespaces: the stream reads the
//! replica's watch history after the token's revision and waits on the
//! applied revision between reads.

use super::error::{ApiError, parse_query};
use super::eventual::value_fields;
use super::limits::StreamPermit;
use super::namespaces::{Mode, resolve_mode};
use super::{ApiState, bytes_fields};
use crate::strong::{StrongService, data_key};
use crate::telemetry;
use crate::token::{self, WatchToken, watch_scope};
use crate::watch_hub::Subscription;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_core::watch::{CatchUp, CatchUpError, ChangeBatch, Delivery, DotRange, StreamPosition};
use chorus_core::{Entry, Node, VersionVector};
use chorus_strong::kv::WatchEventKind;
use chorus_strong::{Query as StrongQuery, QueryResult};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// JSON lines a stream may have produced and its transport not yet sent.
/// Small on purpose: a slow consumer fills it quickly, the stream stops
/// reading its hub buffer, and that buffer's bound decides when it lags.
pub const STREAM_LINES_MAX: usize = 64;

/// Events of a strong stream read from the replica's history at once.
pub const STRONG_EVENTS_PER_READ_MAX: usize = 256;

/// An idle stream sends a `progress` event (its token) at most this often,
/// and only when its position moved: a consumer of a quiet prefix keeps a
/// fresh resume token, and dead connections are noticed.
pub const PROGRESS_PERIOD: Duration = Duration::from_secs(1);

/// A WebSocket whose client accepts nothing for this long is closed: its
/// stream already lagged long before (the buffers above are small), and
/// the socket would otherwise hold its place among the open streams.
pub const WS_SEND_STALL_MAX: Duration = Duration::from_secs(30);

/// Keys of one snapshot page.
pub const SNAPSHOT_PAGE_KEYS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchQuery {
    ns: String,
    #[serde(default)]
    prefix: String,
    resume: Option<String>,
}

/// GET /v1/watch?ns=&prefix=&resume=: see the module documentation.
pub(crate) async fn watch(
    State(s): State<ApiState>,
    q: Result<Query<WatchQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    let (mut parts, _body) = request.into_parts();
    let permit = parts.extensions.get::<StreamPermit>().cloned();
    let wants_ws = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let ws = if wants_ws {
        Some(WebSocketUpgrade::from_request_parts(&mut parts, &()).await.map_err(|e| {
            ApiError::bad_request("bad_websocket", format!("WebSocket upgrade refused: {}", e.body_text()))
        })?)
    } else {
        None
    };
    let (tx, rx) = mpsc::channel::<String>(STREAM_LINES_MAX);
    let scope = watch_scope(&q.ns, q.prefix.as_bytes());
    let resume = q
        .resume
        .as_deref()
        .map(|t| {
            let t = token::decode_watch(t).map_err(|e| ApiError::bad_request("bad_token", e.to_string()))?;
            match &t {
                WatchToken::Eventual { scope: sc, .. } | WatchToken::Strong { scope: sc, .. } if *sc != scope => {
                    Err(ApiError::bad_request(
                        "token_mismatch",
                        "the resume token was issued for another namespace or prefix",
                    ))
                }
                _ => Ok(t),
            }
        })
        .transpose()?;
    match resolve_mode(&s, &q.ns).await? {
        Mode::Eventual => {
            let from = match resume {
                None => None,
                Some(WatchToken::Eventual { position, .. }) => Some(position),
                Some(WatchToken::Strong { .. }) => {
                    return Err(ApiError::bad_request("token_mismatch", "a strong token for an eventual namespace"));
                }
            };
            let opened = open_eventual(&s, &q.ns, q.prefix.as_bytes(), from).await?;
            telemetry::watch_opened("eventual");
            let stream = EventualStream { ns: q.ns, prefix: q.prefix.into_bytes(), scope, pos: opened.pos.clone() };
            tokio::spawn(stream.run(opened, tx));
        }
        Mode::Strong(svc) => {
            let from = match resume {
                None => None,
                Some(WatchToken::Strong { revision, .. }) => Some(revision),
                Some(WatchToken::Eventual { .. }) => {
                    return Err(ApiError::bad_request("token_mismatch", "an eventual token for a strong namespace"));
                }
            };
            let next = open_strong(&s, &svc, from).await?;
            telemetry::watch_opened("strong");
            let stream =
                StrongStream { svc, ns: q.ns.clone(), prefix: data_key(&q.ns, q.prefix.as_bytes()), scope, next };
            tokio::spawn(stream.run(tx));
        }
    }
    Ok(match ws {
        Some(ws) => ws.on_upgrade(move |socket| async move {
            // The socket counts toward `http_streams_open_max` until it closes.
            let _permit = permit;
            forward_ws(socket, rx).await
        }),
        None => ndjson(rx),
    })
}

/// A chunked `application/x-ndjson` body of the stream's lines.
fn ndjson(rx: mpsc::Receiver<String>) -> Response {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let mut line = rx.recv().await?;
        line.push('\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}

/// Send each line as one text message; end when the stream or the client does.
async fn forward_ws(mut socket: WebSocket, mut rx: mpsc::Receiver<String>) {
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => {
                    match tokio::time::timeout(WS_SEND_STALL_MAX, socket.send(Message::Text(line.into()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) | Err(_) => return,
                    }
                }
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

// ------------------------------------------------------------ eventual

/// How an eventual stream starts.
pub(crate) struct Opened {
    /// The position before the catch-up (the token's, or the node's now).
    pos: StreamPosition,
    start: Start,
}

enum Start {
    /// Events to send first, then the live batches.
    Live { catch_up: Option<CatchUp>, sub: Subscription },
    /// The position cannot be served: send `reset` (with the node's
    /// position now) and close.
    Reset { reason: &'static str },
}

/// What the node task found for a stream that wants to start.
enum Found {
    Live { pos: StreamPosition, catch_up: Option<CatchUp> },
    Reset { reason: &'static str, now: StreamPosition },
    Behind(VersionVector),
    PositionFull,
    NoNamespace,
}

fn find(node: &Node, ns: &str, prefix: &[u8], from: Option<StreamPosition>) -> Found {
    let Some(n) = node.namespace(ns) else { return Found::NoNamespace };
    let Some(pos) = from else {
        return match n.position_now(prefix) {
            Ok(pos) => Found::Live { pos, catch_up: None },
            Err(_) => Found::PositionFull,
        };
    };
    match n.catch_up(prefix, &pos) {
        Ok(c) => Found::Live { pos, catch_up: Some(c) },
        Err(CatchUpError::Behind { missing }) => Found::Behind(missing),
        Err(e) => {
            let reason = if matches!(e, CatchUpError::Compacted) { "compacted" } else { "gap_too_large" };
            match n.position_now(prefix) {
                Ok(now) => Found::Reset { reason, now },
                Err(_) => Found::PositionFull,
            }
        }
    }
}

/// Wait (up to `session_wait_ms`) until this node covers `from`, then take
/// the catch-up and subscribe in one step on the node task.
async fn open_eventual(
    s: &ApiState,
    ns: &str,
    prefix: &[u8],
    from: Option<StreamPosition>,
) -> Result<Opened, ApiError> {
    let deadline = Instant::now() + s.session_wait;
    let mut changes = s.watch_hub.changes();
    loop {
        changes.borrow_and_update();
        let (ns2, ns3, prefix2, from2, hub) =
            (ns.to_string(), ns.to_string(), prefix.to_vec(), from.clone(), Arc::clone(&s.watch_hub));
        let found = s
            .node
            .inspect_then(
                move |node: &Node| find(node, &ns2, &prefix2, from2),
                move |found| match found {
                    Found::Live { pos, catch_up } => {
                        Ok(Opened { pos, start: Start::Live { catch_up, sub: hub.subscribe(&ns3) } })
                    }
                    Found::Reset { reason, now } => Ok(Opened { pos: now, start: Start::Reset { reason } }),
                    other => Err(other),
                },
            )
            .await?;
        let why = match found {
            Ok(opened) => return Ok(opened),
            Err(Found::NoNamespace) => return Err(super::error::no_such_namespace(ns)),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            let (reason, missing) = match why {
                Found::Behind(missing) => ("this node has not yet seen everything the token covers", Some(missing)),
                _ => ("too many keys of this node are ahead of its seen prefix; anti-entropy will close the gap", None),
            };
            let missing = missing
                .map(|m| m.iter().map(|(n, c)| json!({ "node": n.to_string(), "counter": c })).collect::<Vec<_>>());
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "watch_behind", reason)
                .with_details(json!({ "missing": missing })));
        }
        // Look again when the next batch lands (or soon, if none does).
        let _ =
            tokio::time::timeout_at(deadline.min(Instant::now() + Duration::from_millis(50)), changes.changed()).await;
    }
}

/// One eventual stream: its filter and its position.
struct EventualStream {
    ns: String,
    prefix: Vec<u8>,
    scope: u64,
    pos: StreamPosition,
}

/// Why a stream ended on its own.
enum End {
    /// The consumer is gone.
    Gone,
    /// Send `lagged` with the position and close.
    Lagged,
}

impl EventualStream {
    fn token(&self) -> String {
        token::encode_watch(&WatchToken::Eventual { scope: self.scope, position: self.pos.clone() })
    }

    fn event(&self, key: &[u8], entry: &Entry, dots: &[DotRange], position: &StreamPosition) -> Value {
        let mut o = Map::new();
        o.insert("ns".into(), self.ns.clone().into());
        o.insert("key".into(), String::from_utf8_lossy(key).into_owned().into());
        o.insert("type".into(), if entry.is_tombstone() { "delete" } else { "put" }.into());
        let kind = value_fields(&mut o, &entry.read());
        o.insert("value_type".into(), kind.into());
        o.insert("context".into(), token::encode(entry.clock()).into());
        let ts = entry.timestamp_max();
        o.insert("origin".into(), ts.node.to_string().into());
        o.insert(
            "hlc".into(),
            json!({ "physical_us": ts.physical_us, "logical": ts.logical, "node": ts.node.to_string() }),
        );
        o.insert(
            "dots".into(),
            dots.iter().map(|d| json!([d.node.to_string(), d.first, d.last])).collect::<Vec<_>>().into(),
        );
        let token = token::encode_watch(&WatchToken::Eventual { scope: self.scope, position: position.clone() });
        o.insert("token".into(), token.into());
        Value::Object(o)
    }

    /// The events of `deliveries` (items looked up by `entry_of`), each
    /// with its token.
    fn events<'a>(&self, deliveries: Vec<Delivery>, entry_of: impl Fn(usize) -> (&'a [u8], &'a Entry)) -> Vec<Value> {
        deliveries
            .into_iter()
            .map(|d| {
                let (key, entry) = entry_of(d.index);
                self.event(key, entry, &d.dots, &d.position)
            })
            .collect()
    }

    async fn send_all(&self, tx: &mpsc::Sender<String>, events: Vec<Value>) -> Result<(), End> {
        #[cfg(feature = "test-knobs")]
        let drop_nth = crate::knobs::watch_drop_event_from_env();
        for e in events {
            #[cfg(feature = "test-knobs")]
            if drop_nth.is_some_and(|n| crate::knobs::watch_event_counted() == n) {
                continue;
            }
            telemetry::watch_events(1);
            tx.send(e.to_string()).await.map_err(|_| End::Gone)?;
        }
        Ok(())
    }

    async fn run(mut self, opened: Opened, tx: mpsc::Sender<String>) {
        let (catch_up, mut sub) = match opened.start {
            Start::Reset { reason } => {
                let line = json!({ "type": "reset", "ns": self.ns, "reason": reason, "token": self.token() });
                let _ = tx.send(line.to_string()).await;
                return;
            }
            Start::Live { catch_up, sub } => (catch_up, sub),
        };
        let mut end = match catch_up {
            Some(c) => match self.pos.apply_catch_up(&c) {
                Ok(d) => {
                    let events = self.events(d, |i| (c.items[i].0.as_slice(), &c.items[i].1));
                    self.send_all(&tx, events).await.err()
                }
                Err(_) => Some(End::Lagged),
            },
            None => None,
        };
        let mut progress = tokio::time::interval(PROGRESS_PERIOD);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent_token = self.token();
        while end.is_none() {
            tokio::select! {
                batch = sub.rx.recv() => match batch {
                    Some((_, batch)) => {
                        end = match self.pos.apply_batch(&self.prefix, &batch) {
                            Ok(d) => {
                                let events = self.events(d, |i| (batch.items[i].key.as_slice(), &batch.items[i].entry));
                                self.send_all(&tx, events).await.err()
                            }
                            Err(_) => Some(End::Lagged),
                        };
                        sent_token = self.token();
                    }
                    None => end = Some(if sub.lagged.load(Ordering::Acquire) { End::Lagged } else { End::Gone }),
                },
                _ = progress.tick() => {
                    let now = self.token();
                    if now != sent_token {
                        let line = json!({ "type": "progress", "ns": self.ns, "token": now });
                        if tx.send(line.to_string()).await.is_err() {
                            end = Some(End::Gone);
                        }
                        sent_token = now;
                    }
                }
                _ = tx.closed() => end = Some(End::Gone),
            }
        }
        if let Some(End::Lagged) = end {
            let line = json!({ "type": "lagged", "ns": self.ns, "token": self.token() });
            let _ = tx.send(line.to_string()).await;
        }
    }
}

// -------------------------------------------------------------- strong

/// The first revision a strong stream sends: after the token's, once this
/// replica has applied it (waiting up to `session_wait_ms`).
async fn open_strong(s: &ApiState, svc: &StrongService, from: Option<u64>) -> Result<u64, ApiError> {
    let mut applied = svc.node.applied_revisions();
    let current = *applied.borrow_and_update();
    let Some(from) = from else { return Ok(current + 1) };
    let deadline = Instant::now() + s.session_wait;
    loop {
        let now = *applied.borrow_and_update();
        if now >= from {
            return Ok(from + 1);
        }
        if Instant::now() >= deadline || tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "watch_behind",
                format!("this replica has applied revision {now}; the token is at {from}"),
            )
            .with_details(json!({ "applied_revision": now, "token_revision": from })));
        }
    }
}

struct StrongStream {
    svc: Arc<StrongService>,
    ns: String,
    /// The data-key prefix (`{ns}/{prefix}`).
    prefix: Vec<u8>,
    scope: u64,
    /// The next revision to read.
    next: u64,
}

impl StrongStream {
    fn token(&self, revision: u64) -> String {
        token::encode_watch(&WatchToken::Strong { scope: self.scope, revision })
    }

    async fn run(mut self, tx: mpsc::Sender<String>) {
        let mut applied = self.svc.node.applied_revisions();
        let mut progress = tokio::time::interval(PROGRESS_PERIOD);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = self.next.saturating_sub(1);
        loop {
            applied.borrow_and_update();
            let response = self
                .svc
                .node
                .query_stale(StrongQuery::Events { from_revision: self.next, limit: STRONG_EVENTS_PER_READ_MAX });
            let events = match response.result {
                QueryResult::Events(events) => events,
                QueryResult::Compacted { .. } => {
                    let line = json!({
                        "type": "reset", "ns": self.ns, "reason": "compacted",
                        "token": self.token(response.revision),
                    });
                    let _ = tx.send(line.to_string()).await;
                    return;
                }
                _ => return,
            };
            let full = events.len() >= STRONG_EVENTS_PER_READ_MAX;
            for e in events {
                self.next = e.revision + 1;
                if !e.key.starts_with(&self.prefix) {
                    continue;
                }
                let key = e.key.get(self.ns.len() + 1..).unwrap_or(&e.key);
                let mut o = Map::new();
                o.insert("ns".into(), self.ns.clone().into());
                o.insert("key".into(), String::from_utf8_lossy(key).into_owned().into());
                let kind = match e.kind {
                    WatchEventKind::Put => "put",
                    WatchEventKind::Delete => "delete",
                };
                o.insert("type".into(), kind.into());
                match &e.value {
                    Some(v) => bytes_fields(&mut o, "value", v),
                    None => {
                        o.insert("value".into(), Value::Null);
                    }
                }
                o.insert("revision".into(), e.revision.into());
                o.insert("token".into(), self.token(e.revision).into());
                telemetry::watch_events(1);
                if tx.send(Value::Object(o).to_string()).await.is_err() {
                    return;
                }
                sent = e.revision;
            }
            if full {
                continue;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = progress.tick() => {
                    let at = self.next.saturating_sub(1);
                    if at > sent {
                        let line = json!({ "type": "progress", "ns": self.ns, "token": self.token(at) });
                        if tx.send(line.to_string()).await.is_err() {
                            return;
                        }
                        sent = at;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }
}

// ------------------------------------------------------------ snapshot

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotQuery {
    #[serde(default)]
    prefix: String,
}

/// GET /v1/ns/{ns}/snapshot?prefix=: every key under the prefix as NDJSON
/// (`{"type": "put", "key", value fields, "context"}`; a key deleted while
/// the snapshot runs comes as `"type": "delete"`), then
/// `{"type": "end", "keys", "token"}`: the position to resume a watch from.
/// Memory is bounded by one page on both sides.
pub(crate) async fn snapshot(
    State(s): State<ApiState>,
    Path(ns): Path<String>,
    q: Result<Query<SnapshotQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    let (tx, rx) = mpsc::channel::<String>(STREAM_LINES_MAX);
    let scope = watch_scope(&ns, q.prefix.as_bytes());
    match resolve_mode(&s, &ns).await? {
        Mode::Eventual => {
            let first = snapshot_page(&s, &ns, q.prefix.as_bytes(), None, true).await?;
            tokio::spawn(eventual_snapshot(s.clone(), ns, q.prefix.into_bytes(), scope, first, tx));
        }
        Mode::Strong(svc) => {
            tokio::spawn(strong_snapshot(svc, ns.clone(), data_key(&ns, q.prefix.as_bytes()), scope, tx));
        }
    }
    Ok(ndjson(rx))
}

/// One page of an eventual snapshot, read on the node task, with the hub's
/// batch number at its release (batches up to it are older than the page).
struct Page {
    items: Vec<(Vec<u8>, Entry)>,
    /// More keys follow `items`.
    more: bool,
    /// With the last page: the node's position then (`None` if it cannot be
    /// expressed yet; the snapshot asks again).
    end: Option<StreamPosition>,
    seq: u64,
    sub: Option<Subscription>,
}

async fn snapshot_page(
    s: &ApiState,
    ns: &str,
    prefix: &[u8],
    after: Option<Vec<u8>>,
    subscribe: bool,
) -> Result<Page, ApiError> {
    let (ns2, ns3, prefix2, hub) = (ns.to_string(), ns.to_string(), prefix.to_vec(), Arc::clone(&s.watch_hub));
    let page = s
        .node
        .inspect_then(
            move |node: &Node| {
                let n = node.namespace(&ns2)?;
                let items: Vec<(Vec<u8>, Entry)> = n
                    .scan(&prefix2, after.as_deref(), SNAPSHOT_PAGE_KEYS)
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect();
                let more = items.len() == SNAPSHOT_PAGE_KEYS
                    && n.scan(&prefix2, items.last().map(|(k, _)| k.as_slice()), 1).next().is_some();
                let end = if more { None } else { n.position_now(&prefix2).ok() };
                Some((items, more, end))
            },
            move |found| {
                let (items, more, end) = found?;
                let sub = subscribe.then(|| hub.subscribe(&ns3));
                Some(Page { items, more, end, seq: hub.seq(), sub })
            },
        )
        .await?;
    page.ok_or_else(|| super::error::no_such_namespace(ns))
}

fn state_line(ns: &str, key: &[u8], entry: &Entry) -> String {
    let mut o = Map::new();
    o.insert("ns".into(), ns.into());
    o.insert("key".into(), String::from_utf8_lossy(key).into_owned().into());
    o.insert("type".into(), if entry.is_tombstone() { "delete" } else { "put" }.into());
    let kind = value_fields(&mut o, &entry.read());
    o.insert("value_type".into(), kind.into());
    o.insert("context".into(), token::encode(entry.clock()).into());
    Value::Object(o).to_string()
}

/// Pages in key order; between pages, changes to keys already sent are
/// sent again (batches are split by their number: those up to a page's are
/// older than it and concern only keys before it).
async fn eventual_snapshot(
    s: ApiState,
    ns: String,
    prefix: Vec<u8>,
    scope: u64,
    first: Page,
    tx: mpsc::Sender<String>,
) {
    let Some(mut sub) = first.sub else { return };
    let mut page = Page { sub: None, ..first };
    // Keys at or before `done` have been sent.
    let mut done: Option<Vec<u8>> = None;
    let mut keys = 0u64;
    let mut retries = 0u32;
    let mut pending: Option<(u64, Arc<ChangeBatch>)> = None;
    loop {
        // Batches older than this page: only keys sent before it.
        loop {
            let next = match pending.take() {
                Some(b) => b,
                None => match sub.rx.try_recv() {
                    Ok(b) => b,
                    Err(_) => break,
                },
            };
            if next.0 > page.seq {
                pending = Some(next);
                break;
            }
            for it in &next.1.items {
                if it.key.starts_with(&prefix)
                    && done.as_ref().is_some_and(|d| it.key <= *d)
                    && tx.send(state_line(&ns, &it.key, &it.entry)).await.is_err()
                {
                    return;
                }
            }
        }
        if sub.lagged.load(Ordering::Acquire) {
            let _ = tx.send(json!({ "type": "error", "error": "lagged", "ns": ns }).to_string()).await;
            return;
        }
        for (k, e) in &page.items {
            if !e.is_tombstone() {
                keys += 1;
                if tx.send(state_line(&ns, k, e)).await.is_err() {
                    return;
                }
            }
        }
        if let Some(last) = page.items.last() {
            done = Some(last.0.clone());
        }
        if !page.more {
            if let Some(end) = page.end.take() {
                // Every batch up to the end page is sent: its position holds.
                let token = token::encode_watch(&WatchToken::Eventual { scope, position: end });
                let _ = tx.send(json!({ "type": "end", "ns": ns, "keys": keys, "token": token }).to_string()).await;
                return;
            }
            // The position cannot be expressed yet (too many keys above the
            // seen prefix): ask again shortly; only keys created since come.
            retries += 1;
            if retries > SNAPSHOT_END_RETRIES_MAX {
                let line = json!({ "type": "error", "error": "position_unavailable", "ns": ns });
                let _ = tx.send(line.to_string()).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        page = match snapshot_page(&s, &ns, &prefix, done.clone(), false).await {
            Ok(p) => p,
            Err(_) => return,
        };
    }
}

/// Times a snapshot asks for an expressible end position (50 ms apart).
const SNAPSHOT_END_RETRIES_MAX: u32 = 200;

/// Strong: pages of this replica's range read at increasing revisions,
/// then the history events after the first page's revision replayed as
/// state lines (so every key ends at the last revision), then `end`.
async fn strong_snapshot(svc: Arc<StrongService>, ns: String, prefix: Vec<u8>, scope: u64, tx: mpsc::Sender<String>) {
    let end = crate::strong::prefix_end(&prefix);
    let first_revision = svc.node.query_stale(StrongQuery::Get { key: Vec::new() }).revision;
    let mut start = prefix.clone();
    let mut keys = 0u64;
    loop {
        let r = svc.node.query_stale(StrongQuery::Range {
            start: start.clone(),
            end: end.clone(),
            limit: SNAPSHOT_PAGE_KEYS,
        });
        let QueryResult::Range(items) = r.result else { return };
        let more = items.len() == SNAPSHOT_PAGE_KEYS;
        for kv in &items {
            if !kv.key.starts_with(&prefix) {
                continue;
            }
            keys += 1;
            let key = kv.key.get(ns.len() + 1..).unwrap_or(&kv.key);
            let mut o = Map::new();
            o.insert("ns".into(), ns.clone().into());
            o.insert("key".into(), String::from_utf8_lossy(key).into_owned().into());
            o.insert("type".into(), "put".into());
            bytes_fields(&mut o, "value", &kv.value);
            o.insert("revision".into(), kv.mod_revision.into());
            if tx.send(Value::Object(o).to_string()).await.is_err() {
                return;
            }
        }
        match items.last() {
            Some(last) if more => {
                start = last.key.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    // Replay what changed since the first page.
    let mut next = first_revision + 1;
    loop {
        let r = svc.node.query_stale(StrongQuery::Events { from_revision: next, limit: STRONG_EVENTS_PER_READ_MAX });
        let events = match r.result {
            QueryResult::Events(events) => events,
            _ => {
                let _ = tx.send(json!({ "type": "error", "error": "compacted", "ns": ns }).to_string()).await;
                return;
            }
        };
        if events.is_empty() {
            let token = token::encode_watch(&WatchToken::Strong { scope, revision: next - 1 });
            let _ = tx.send(json!({ "type": "end", "ns": ns, "keys": keys, "token": token }).to_string()).await;
            return;
        }
        for e in events {
            next = e.revision + 1;
            if !e.key.starts_with(&prefix) {
                continue;
            }
            let key = e.key.get(ns.len() + 1..).unwrap_or(&e.key);
            let mut o = Map::new();
            o.insert("ns".into(), ns.clone().into());
            o.insert("key".into(), String::from_utf8_lossy(key).into_owned().into());
            match &e.value {
                Some(v) => {
                    o.insert("type".into(), "put".into());
                    bytes_fields(&mut o, "value", v);
                }
                None => {
                    o.insert("type".into(), "delete".into());
                    o.insert("value".into(), Value::Null);
                }
            }
            o.insert("revision".into(), e.revision.into());
            if tx.send(Value::Object(o).to_string()).await.is_err() {
                return;
            }
        }
    }
}
