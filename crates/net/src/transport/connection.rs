//! The tasks that move bytes: dialing, the accept loop, one driver per
//! peer writing its queued messages and held datagrams, and the readers of
//! every stream and datagram a peer opens. Each task owns its loop and
//! reports into the peer table (`peers`), so a slow or dead peer stalls only
//! its own tasks; see `docs/design/transport-and-membership.md`, sections
//! 2 to 4.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use super::peers::{Backoff, Peer};
use super::stats::{add, bump};
use super::{
    DATAGRAM_CHANNEL_APP, DATAGRAM_CHANNEL_MEMBERSHIP, DialError, HANDSHAKES_CONCURRENT_MAX, Incoming, Inner,
    MESSAGE_SEND_ATTEMPTS_MAX, PeerAddr, PeerId, RequestError, code, varint,
};
use crate::frame::{self, FrameError};
use crate::tls;

impl Inner {
    /// Dials `addr`. With `expected` the server must prove that name; with
    /// `None` any CA-signed name is accepted (seed dialing).
    pub(super) async fn dial(&self, expected: Option<&str>, addr: SocketAddr) -> Result<quinn::Connection, DialError> {
        if let Some(name) = expected
            && self.quarantined(name)
        {
            return Err(DialError::Quarantined(name.to_owned()));
        }
        let (config, server_name) = match expected {
            Some(name) => (self.client_config.clone(), name),
            None => (self.seed_client_config.clone(), "seed.chorus.invalid"),
        };
        let connecting = self.endpoint.connect_with(config, addr, server_name)?;
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                bump(&self.stats.handshake_failures);
                return Err(DialError::Handshake(e));
            }
            Err(_) => {
                bump(&self.stats.handshake_failures);
                return Err(DialError::Timeout);
            }
        };
        if let Some(expected) = expected {
            // The verifier already matched the name against the SNI; this
            // re-check guards against a verifier misconfiguration.
            let actual = tls::peer_node_name(&conn).unwrap_or_default();
            if actual != expected {
                conn.close(varint(code::NAME_MISMATCH), b"name mismatch");
                return Err(DialError::NameMismatch { expected: expected.to_owned(), actual });
            }
        }
        bump(&self.stats.connections_established);
        Ok(conn)
    }

    async fn deliver(&self, event: Incoming) {
        // Waiting here applies back-pressure to this one stream through
        // QUIC flow control; the bound is `incoming_queue_max`.
        if self.incoming.send(event).await.is_err() {
            bump(&self.stats.incoming_dropped);
        }
    }
}

/// Owns one peer's outgoing queue: dials on demand with backoff, writes
/// queued messages on a long-lived unidirectional stream, flushes held
/// datagrams once connected.
pub(super) async fn peer_driver(inner: Arc<Inner>, peer: Arc<Peer>, mut queue: mpsc::Receiver<Bytes>) {
    let mut stop = peer.stop.subscribe();
    let mut backoff = Backoff::new(&inner.config);
    let mut held: Option<(Bytes, u32)> = None;
    let mut stream: Option<(usize, quinn::SendStream)> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if held.is_none() && !peer.wants_connection() {
            tokio::select! {
                message = queue.recv() => match message {
                    Some(message) => held = Some((message, 0)),
                    None => return,
                },
                _ = peer.demand.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }

        let conn = match peer.live() {
            Some(conn) => conn,
            None => match inner.dial(Some(&peer.name), peer.addr()).await {
                Ok(conn) => {
                    backoff.reset();
                    inner.register(&peer, conn.clone(), true);
                    // register may have kept an existing connection instead.
                    peer.live().unwrap_or(conn)
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    debug!(peer = %peer.name, error = %e, delay_ms = delay.as_millis() as u64, "dial failed");
                    *peer.backoff_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + delay);
                    peer.state.send_modify(|s| s.dial_failures += 1);
                    if matches!(e, DialError::NameMismatch { .. } | DialError::Quarantined(_)) {
                        // Retrying the message would hit the same wall.
                        if held.take().is_some() {
                            bump(&inner.stats.messages_dropped);
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            },
        };

        let pending: Vec<Bytes> = peer.pending_datagrams.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for datagram in pending {
            let len = datagram.len().saturating_sub(1);
            if conn.send_datagram(datagram).is_ok() {
                bump(&inner.stats.datagrams_sent);
                add(&peer.stats.bytes_sent, len);
            } else {
                bump(&inner.stats.datagrams_dropped);
            }
        }

        let Some((message, attempts)) = held.take() else {
            continue;
        };
        match write_message(&conn, &mut stream, &message).await {
            Ok(()) => inner.count_sent(&peer.stats, message.len()),
            Err(e) => {
                stream = None;
                let attempts = attempts + 1;
                debug!(peer = %peer.name, error = %e, attempts, "message write failed");
                // Force a fresh connection next time around.
                conn.close(varint(code::SHUTDOWN), b"write failed");
                if attempts >= MESSAGE_SEND_ATTEMPTS_MAX {
                    bump(&inner.stats.messages_dropped);
                } else {
                    held = Some((message, attempts));
                }
            }
        }
    }
}

async fn write_message(
    conn: &quinn::Connection,
    stream: &mut Option<(usize, quinn::SendStream)>,
    message: &Bytes,
) -> Result<(), RequestError> {
    if stream.as_ref().map(|(id, _)| *id) != Some(conn.stable_id()) {
        if let Some((_, mut old)) = stream.take() {
            let _ = old.finish();
        }
        *stream = Some((conn.stable_id(), conn.open_uni().await?));
    }
    if let Some((_, send)) = stream.as_mut() {
        send.write_all_chunks(&mut [frame::header(message.len()), message.clone()]).await?;
    }
    Ok(())
}

pub(super) async fn accept_loop(inner: Arc<Inner>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_CONCURRENT_MAX));
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            bump(&inner.stats.handshake_failures);
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            accept_one(inner, incoming).await;
        });
    }
}

async fn accept_one(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let timeout = Duration::from_millis(inner.config.connect_timeout_ms);
    let conn = match incoming.accept() {
        Ok(connecting) => match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                bump(&inner.stats.handshake_failures);
                debug!(error = %e, "incoming handshake failed");
                return;
            }
            Err(_) => {
                bump(&inner.stats.handshake_failures);
                return;
            }
        },
        Err(e) => {
            bump(&inner.stats.handshake_failures);
            debug!(error = %e, "incoming connection refused");
            return;
        }
    };
    let Some(name) = tls::peer_node_name(&conn) else {
        bump(&inner.stats.handshake_failures);
        conn.close(varint(code::NAME_MISMATCH), b"no name");
        return;
    };
    if inner.quarantined(&name) {
        conn.close(varint(code::QUARANTINED), b"quarantined");
        return;
    }
    let addr = PeerAddr { name, addr: conn.remote_address() };
    let Ok(peer) = inner.peer(&addr) else {
        conn.close(varint(code::NAME_MISMATCH), b"refused");
        return;
    };
    bump(&inner.stats.connections_established);
    inner.register(&peer, conn, false);
}

/// Reads everything the peer opens on `conn` until it closes.
pub(super) async fn serve_connection(inner: Arc<Inner>, peer: Arc<Peer>, conn: quinn::Connection) {
    let from = PeerId { name: peer.name.clone(), addr: conn.remote_address() };
    let mut stop = peer.stop.subscribe();
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(read_messages(inner.clone(), peer.clone(), conn.clone(), from.clone(), recv));
                }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(answer_request(inner.clone(), peer.clone(), conn.clone(), from.clone(), send, recv));
                }
                Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(datagram) => inner.receive_datagram(&peer, &from, datagram),
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => {
                conn.close(varint(code::FORGOTTEN), b"forgotten");
                break;
            }
        }
    }
    // Clear the slot if it still holds this (now dead) connection.
    peer.state.send_if_modified(|state| {
        if state.slot.as_ref().is_some_and(|s| s.conn.stable_id() == conn.stable_id()) {
            state.slot = None;
            true
        } else {
            false
        }
    });
}

impl Inner {
    fn receive_datagram(&self, peer: &Peer, from: &PeerId, datagram: Bytes) {
        bump(&self.stats.datagrams_received);
        let Some((&channel, _)) = datagram.split_first() else {
            bump(&self.stats.datagrams_dropped);
            return;
        };
        let payload = datagram.slice(1..);
        add(&peer.stats.bytes_received, payload.len());
        match channel {
            DATAGRAM_CHANNEL_APP => {
                let event = Incoming::Datagram { from: from.clone(), payload };
                if self.incoming.try_send(event).is_err() {
                    bump(&self.stats.datagrams_dropped);
                }
            }
            DATAGRAM_CHANNEL_MEMBERSHIP => {
                let sink = self.membership.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let delivered = sink.is_some_and(|tx| tx.try_send((from.clone(), payload)).is_ok());
                if !delivered {
                    bump(&self.stats.datagrams_dropped);
                }
            }
            _ => bump(&self.stats.datagrams_dropped),
        }
    }
}

impl Inner {
    /// Counts a frame that was refused for its deadline or its budget and
    /// stops its stream, so quinn drops whatever the peer sent of it.
    fn refuse_frame(&self, peer: &Peer, recv: &mut quinn::RecvStream, error: &FrameError) {
        match error {
            FrameError::Deadline { .. } => bump(&self.stats.frame_read_deadlines),
            FrameError::OverBudget { .. } => bump(&self.stats.frame_budget_refusals),
            _ => return,
        }
        debug!(peer = %peer.name, %error, "frame refused; stopping its stream");
        let _ = recv.stop(varint(code::FRAME_REFUSED));
    }
}

async fn read_messages(
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    conn: quinn::Connection,
    from: PeerId,
    mut recv: quinn::RecvStream,
) {
    let limits = inner.frame_limits(&peer);
    loop {
        match frame::read_frame(&mut recv, &limits).await {
            Ok(Some(frame)) => {
                inner.count_received(&peer.stats, frame.payload.len());
                inner.deliver(Incoming::Message { from: from.clone(), payload: frame.payload }).await;
                // The frame's budget is given back once it is handed on.
                drop(frame.permit);
            }
            Ok(None) => return,
            Err(e) if e.is_protocol_violation() => {
                inner.punish(&peer.name, &conn, &e);
                return;
            }
            Err(e @ (FrameError::Deadline { .. } | FrameError::OverBudget { .. })) => {
                inner.refuse_frame(&peer, &mut recv, &e);
                return;
            }
            Err(e) => {
                debug!(peer = %peer.name, error = %e, "message stream ended");
                return;
            }
        }
    }
}

async fn answer_request(
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    conn: quinn::Connection,
    from: PeerId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let limits = inner.frame_limits(&peer);
    // A request's frame is due at once: its deadline runs from the
    // stream's opening, so a stream that never sends a byte is dropped too.
    let read = tokio::time::timeout(limits.deadline, frame::read_frame(&mut recv, &limits)).await;
    let read = read.unwrap_or(Err(FrameError::Deadline { deadline_ms: limits.deadline.as_millis() as u64 }));
    let frame = match read {
        Ok(Some(frame)) => frame,
        Ok(None) => return,
        Err(e) if e.is_protocol_violation() => {
            inner.punish(&peer.name, &conn, &e);
            return;
        }
        Err(e @ (FrameError::Deadline { .. } | FrameError::OverBudget { .. })) => {
            inner.refuse_frame(&peer, &mut recv, &e);
            let _ = send.reset(varint(code::FRAME_REFUSED));
            return;
        }
        Err(e) => {
            // A reset (code 9: the sender abandoned the request) or a lost
            // connection: nothing to answer, nobody to punish.
            debug!(peer = %peer.name, error = %e, "request stream ended before its frame was whole");
            return;
        }
    };
    inner.count_received(&peer.stats, frame.payload.len());
    let (respond, response) = oneshot::channel();
    inner.deliver(Incoming::Request { from, payload: frame.payload, respond }).await;
    drop(frame.permit);
    let timeout = Duration::from_millis(inner.config.request_timeout_ms);
    match tokio::time::timeout(timeout, response).await {
        Ok(Ok(response)) if response.len() <= inner.config.frame_bytes_max as usize => {
            let len = response.len();
            if send.write_all_chunks(&mut [frame::header(len), response]).await.is_ok() {
                inner.count_sent(&peer.stats, len);
                let _ = send.finish();
            }
        }
        Ok(Ok(response)) => {
            warn!(peer = %peer.name, len = response.len(), "response exceeds frame_bytes_max; not sent");
            let _ = send.reset(varint(code::NO_RESPONSE));
        }
        _ => {
            let _ = send.reset(varint(code::NO_RESPONSE));
        }
    }
}
