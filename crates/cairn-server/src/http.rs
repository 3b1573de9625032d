//! HTTP endpoints: Prometheus remote_write, the Alertmanager webhook, `/metrics`, `/healthz`,
//! `/readyz`. Decoding lives in `cairn-ingest`; this module reads headers and bodies, applies the
//! size cap before buffering, enqueues accepted batches and maps errors to statuses.

use crate::auth::Authenticator;
use cairn_service::{Batch, Engine};
use crate::error::ApiError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_ingest::IngestLimits;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

/// The connection's peer, put into each request by `listen::serve_http`.
type Peer = Option<axum::Extension<crate::listen::PeerInfo>>;

/// What the HTTP handlers share.
#[derive(Clone, Debug)]
pub struct HttpState {
    pub engine: Arc<Engine>,
    pub queue: mpsc::Sender<Batch>,
    pub limits: Arc<IngestLimits>,
    pub auth: Arc<Authenticator>,
    pub require_token: bool,
    /// Alert names whose steering annotations are honoured from any sender.
    pub trusted_annotation_rules: Arc<Vec<String>>,
    pub retry_after_secs: u64,
    /// False once the analysis worker has stopped: `/readyz` then fails.
    pub worker_alive: Arc<AtomicBool>,
    /// Where alerts are made durable before they are acknowledged.
    pub intake: Arc<crate::intake::Intake>,
    /// remote_write bodies being decoded at once.
    pub decode_slots: Arc<tokio::sync::Semaphore>,
}

pub fn router(state: HttpState) -> Router {
    // The extractor refuses bodies over the cap while reading them, so an oversized body is never
    // buffered whole; `+ 1` lets the decoder name the exact limit in its message.
    let body_cap = state.limits.max_body_bytes.saturating_add(1);
    Router::new()
        .route("/api/v1/write", post(remote_write))
        .route("/api/v1/alerts/alertmanager", post(alertmanager))
        .route("/api/v1/changes", post(changes))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(body_cap))
        .with_state(state)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl HttpState {
    /// The sender's identity (its bearer token, or without one its verified client certificate),
    /// checked against the ingest rule (`access.rs`); `None` for an anonymous sender where
    /// `ingest.require_token` is off.
    fn check_token(&self, headers: &HeaderMap, peer: &Peer) -> Result<Option<crate::access::Identity>, ApiError> {
        let cert = peer.as_ref().and_then(|p| p.0.cert.as_deref());
        let identity = self.auth.authenticate_peer(header_str(headers, header::AUTHORIZATION), cert);
        crate::access::check_rule(crate::access::INGEST, identity.as_ref(), !self.require_token)?;
        Ok(identity)
    }

    fn body(&self, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
        body.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::Ingest(cairn_ingest::IngestError::BodyTooLarge {
                    limit: self.limits.max_body_bytes,
                })
            } else {
                ApiError::InvalidArgument(format!("cannot read request body: {rej}"))
            }
        })
    }

    /// Hands a batch to the analysis worker without waiting: a full queue is an immediate,
    /// retryable refusal, so back-pressure reaches the sender instead of piling up here.
    fn enqueue(&self, batch: Batch, endpoint: &'static str) -> Result<(), ApiError> {
        match self.queue.try_send(batch) {
            Ok(()) => {
                self.engine.metrics().queue_depth.inc();
                Ok(())
            }
            Err(_) => {
                self.engine.metrics().requests_overloaded.with_label_values(&[endpoint]).inc();
                Err(ApiError::Overloaded { retry_after_secs: self.retry_after_secs })
            }
        }
    }

    fn finish(&self, endpoint: &'static str, started: Instant, result: Result<Response, ApiError>) -> Response {
        self.engine
            .metrics()
            .request_duration
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, ApiError::Overloaded { .. } | ApiError::NotStored { .. }) {
                    self.engine
                        .metrics()
                        .requests_rejected
                        .with_label_values(&[endpoint, e.reason_label()])
                        .inc();
                }
                tracing::debug!(endpoint, error = %e, "request refused");
                e.into_response()
            }
        }
    }
}

async fn remote_write(
    State(st): State<HttpState>,
    headers: HeaderMap,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const ENDPOINT: &str = "remote_write";
    let started = Instant::now();
    let result = async {
        st.check_token(&headers, &peer)?;
        let body = st.body(body)?;
        let encoding = header_str(&headers, header::CONTENT_ENCODING).map(str::to_owned);
        let content_type = header_str(&headers, header::CONTENT_TYPE).map(str::to_owned);
        let limits = st.limits.clone();
        // At most `ingest.max_concurrent_decodes` bodies are decompressed at once: with the
        // per-request limits that bounds the memory decoding can take, however many arrive.
        let slot = st.decode_slots.clone().acquire_owned().await.map_err(|_| ApiError::Internal("decoder closed".into()))?;
        // Decoding is CPU work proportional to the body: keep it off the async workers so one
        // large body does not stall every other connection.
        let samples = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            cairn_ingest::decode_remote_write(encoding.as_deref(), content_type.as_deref(), &body, &limits)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("decoder panicked: {e}")))??;
        let n = samples.len() as u64;
        if n > 0 {
            st.enqueue(Batch::Samples { samples, source: ENDPOINT }, ENDPOINT)?;
            st.engine.metrics().samples_accepted.with_label_values(&[ENDPOINT]).inc_by(n);
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    st.finish(ENDPOINT, started, result)
}

async fn alertmanager(
    State(st): State<HttpState>,
    headers: HeaderMap,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const ENDPOINT: &str = "alertmanager";
    let started = Instant::now();
    let result = async {
        let sender = st.check_token(&headers, &peer)?;
        let body = st.body(body)?;
        let now = st.engine.clock().now_ms();
        let mut batch = cairn_ingest::decode_alertmanager(&body, &st.limits, now)?;
        let may_steer = sender.is_some_and(|id| id.has(crate::access::Scope::IngestAnnotate));
        cairn_ingest::withhold_steering(&mut batch.alerts, may_steer, &st.trusted_annotation_rules);
        let n = batch.alerts.len() as u64;
        if n > 0 {
            // Stored before answered: a 200 is a promise that the alert survives a crash.
            let (engine, intake, retry) = (st.engine.clone(), st.intake.clone(), st.retry_after_secs);
            tokio::task::spawn_blocking(move || intake.accept(&engine, batch.alerts, retry))
                .await
                .map_err(|e| ApiError::Internal(format!("intake panicked: {e}")))??;
            st.engine.metrics().alerts_accepted.with_label_values(&[ENDPOINT]).inc_by(n);
        }
        Ok((StatusCode::OK, format!("accepted {n} alerts\n")).into_response())
    }
    .await;
    st.finish(ENDPOINT, started, result)
}

/// A deploy, config push or feature-flag change, as CI/CD announces it (`cairn_ingest::decode_change`).
/// Journaled before it is answered, like an alert; the same `ingest` scope.
async fn changes(
    State(st): State<HttpState>,
    headers: HeaderMap,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const ENDPOINT: &str = "changes";
    let started = Instant::now();
    let result = async {
        st.check_token(&headers, &peer)?;
        let body = st.body(body)?;
        let now = st.engine.clock().now_ms();
        let change = cairn_ingest::decode_change(&body, &st.limits, now)?;
        let fingerprint = change.fingerprint.clone();
        let (engine, intake, retry) = (st.engine.clone(), st.intake.clone(), st.retry_after_secs);
        tokio::task::spawn_blocking(move || intake.accept(&engine, vec![change], retry))
            .await
            .map_err(|e| ApiError::Internal(format!("intake panicked: {e}")))??;
        st.engine.metrics().alerts_accepted.with_label_values(&[ENDPOINT]).inc();
        Ok((StatusCode::OK, format!("accepted change {fingerprint}\n")).into_response())
    }
    .await;
    st.finish(ENDPOINT, started, result)
}

async fn metrics(State(st): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.engine.metrics().render(),
    )
        .into_response()
}

async fn readyz(State(st): State<HttpState>) -> Response {
    if !st.worker_alive.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "analysis worker stopped\n").into_response();
    }
    if let Some(reason) = st.intake.unready_reason() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response();
    }
    let engine = st.engine.clone();
    match tokio::task::spawn_blocking(move || engine.store().audit_head()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store check failed: {e}\n")).into_response(),
    }
}
