//! What bounds the HTTP server's work (`docs/design/http-api.md`, "Limits"):
//! every request answers within `http_request_timeout_ms` and at most
//! `http_requests_in_flight_max` run at once; streaming routes (their answer
//! is a stream that lives as long as the client wants) are exempt from both
//! and bounded by `http_streams_open_max` instead. Over a bound the answer
//! is a fast 503 (`overloaded`, `too_many_streams`: refused, nothing
//! changed), never a queue. The header timeout, which hyper applies per
//! connection, is set where the server is built (`crate::start`).

use super::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The HTTP server's bounds, shared by every connection.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Deadline of a whole request (body read included) on a request route.
    pub request_timeout: Duration,
    /// Permits for requests in flight on request routes.
    requests: Arc<Semaphore>,
    requests_max: usize,
    /// Permits for open answers of streaming routes.
    streams: Arc<Semaphore>,
    streams_max: usize,
}

impl HttpLimits {
    pub fn new(request_timeout: Duration, requests_in_flight_max: usize, streams_open_max: usize) -> Self {
        HttpLimits {
            request_timeout,
            requests: Arc::new(Semaphore::new(requests_in_flight_max)),
            requests_max: requests_in_flight_max,
            streams: Arc::new(Semaphore::new(streams_open_max)),
            streams_max: streams_open_max,
        }
    }

    /// The bounds of a node's configuration.
    pub fn from_config(config: &crate::Config) -> Self {
        Self::new(
            Duration::from_millis(config.http_request_timeout_ms),
            config.http_requests_in_flight_max,
            config.http_streams_open_max,
        )
    }
}

/// Layer of every request route: refuses at once past
/// `http_requests_in_flight_max`, answers 504 `timeout` past
/// `http_request_timeout_ms` (a write cut short may or may not have
/// applied, so it is not a 503).
pub async fn limit_request(State(limits): State<HttpLimits>, request: Request, next: Next) -> Response {
    let Ok(_permit) = limits.requests.clone().try_acquire_owned() else {
        crate::telemetry::http_refused("overloaded");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "{} requests are in flight (http_requests_in_flight_max); refused, nothing changed: retry later",
                limits.requests_max
            ),
        )
        .into_response();
    };
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            crate::telemetry::http_refused("timeout");
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "the request did not complete within http_request_timeout_ms ({} ms); a write may or may not \
                     have applied",
                    limits.request_timeout.as_millis()
                ),
            )
            .into_response()
        }
    }
}

/// A streaming route's place among `http_streams_open_max`, also handed to
/// the handler (request extension): a WebSocket outlives its HTTP answer,
/// so its task keeps a clone of the permit for as long as the socket lives.
#[derive(Clone)]
pub struct StreamPermit(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

/// Layer of every streaming route: refuses at once past
/// `http_streams_open_max`; a stream's permit is held until its answer's
/// body is dropped (the stream ended or the client went away), and by a
/// WebSocket's task until the socket closes ([`StreamPermit`]).
pub async fn limit_stream(State(limits): State<HttpLimits>, mut request: Request, next: Next) -> Response {
    let Ok(permit) = limits.streams.clone().try_acquire_owned() else {
        crate::telemetry::http_refused("too_many_streams");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{} streams are open (http_streams_open_max); refused: retry later", limits.streams_max),
        )
        .into_response();
    };
    let permit = StreamPermit(Arc::new(permit));
    request.extensions_mut().insert(permit.clone());
    let response = next.run(request).await;
    response.map(|body| {
        let stream = body.into_data_stream().map(move |chunk| {
            // The closure owns the permit, so it lives exactly as long as
            // the body stream.
            let _held = &permit;
            chunk
        });
        Body::from_stream(stream)
    })
}
