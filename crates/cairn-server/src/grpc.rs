//! The gRPC services of `cairn.v1`: ingest, review (with the live watch stream) and audit.

use crate::auth::Authenticator;
use crate::convert as cv;
use cairn_service::{Batch, Engine};
use crate::error::ApiError;
use cairn_proto::v1 as pb;
use cairn_store::{AuditQuery, RecommendationFilter};
use cairn_types::{ChangeState, Principal, RecommendationId};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Runs a blocking store call off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker panicked: {e}")))?
        .map_err(Status::from)
}

/// One page of an outbox read after a cursor: each entry's cursor and what to send for it (`None`:
/// the cursor moves past it, nothing is sent), and whether the page was full.
type Page<T> = (Vec<(u64, Option<T>)>, bool);

/// A live stream that follows an outbox from `cursor`: it reads a page after the cursor (`read`,
/// on a blocking thread), sends what the page holds through a channel of `buffer` items (so a
/// follower holds at most a page and a buffer in memory), and once a page comes back short waits for
/// the audit head to move, for `poll`, for the client to go or for shutdown, then reads again.
/// Every read starts from the last cursor sent, so a missed wake-up costs latency, never an entry;
/// ending on shutdown lets a graceful stop finish, and clients resume from their last cursor.
fn follow<T: Send + 'static>(
    engine: Arc<Engine>,
    mut cursor: u64,
    poll: Duration,
    buffer: usize,
    read: impl Fn(&Engine, u64) -> Result<Page<T>, ApiError> + Send + Sync + 'static,
) -> tokio_stream::wrappers::ReceiverStream<Result<T, Status>> {
    let mut head = engine.subscribe_audit_head();
    let shutdown = engine.shutdown_token();
    let read = Arc::new(read);
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(buffer);
    tokio::spawn(async move {
        loop {
            let (engine2, read2) = (engine.clone(), read.clone());
            let (items, full) = match blocking(move || read2(&engine2, cursor)).await {
                Ok(page) => page,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            for (seq, item) in items {
                cursor = seq;
                if let Some(item) = item
                    && tx.send(Ok(item)).await.is_err()
                {
                    return; // the client went away
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(poll) => {}
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A tonic interceptor that authenticates the bearer token (or, without one, the verified client
/// certificate) and checks the call against the one
/// access table (`access.rs`): the scope it needs and whether only a person may make it. The
/// identity (and its principal) go into the request's extensions; a refused call stops here with
/// UNAUTHENTICATED or PERMISSION_DENIED naming the rule.
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    pub auth: Arc<Authenticator>,
    /// When false (ingest on loopback by default), ingest calls pass without a token; governing
    /// calls never do.
    pub required: bool,
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        // A signed-in person's JWT was verified (asynchronously) by `TagPath`; its outcome wins
        // over the static tables, and a refused one is never replaced by a certificate.
        let identity = match req.extensions_mut().remove::<OidcOutcome>() {
            Some(OidcOutcome(Ok(id))) => Some(id),
            // The provider being away is not the caller's fault: UNAVAILABLE, so clients retry.
            Some(OidcOutcome(Err(e @ crate::oidc::OidcError::Unavailable { .. }))) => return Err(Status::unavailable(e.to_string())),
            Some(OidcOutcome(Err(e))) => return Err(ApiError::TokenRefused(e.to_string()).into()),
            None => {
                let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
                let cert = req.extensions().get::<crate::listen::PeerInfo>().and_then(|p| p.cert.clone());
                self.auth.authenticate_peer(header, cert.as_deref())
            }
        };
        let path = req.extensions().get::<RpcPath>().map(|p| p.0.clone()).unwrap_or_default();
        crate::access::check(&path, identity.as_ref(), !self.required).map_err(|d| Status::from(ApiError::from(d)))?;
        if let Some(id) = identity {
            req.extensions_mut().insert(id.principal.clone());
            req.extensions_mut().insert(id);
        }
        Ok(req)
    }
}

/// The gRPC path of a call (`/cairn.v1.ReviewService/Approve`), put into the request's extensions
/// by [`TagPath`] so the interceptor can find the call's access rule.
#[derive(Clone, Debug)]
pub struct RpcPath(pub String);

/// What verifying a bearer JWT against the OpenID issuers gave, for [`AuthInterceptor`].
#[derive(Clone, Debug)]
pub struct OidcOutcome(pub Result<crate::access::Identity, crate::oidc::OidcError>);

/// A tower layer in front of every gRPC service: records the request path for [`AuthInterceptor`]
/// and, when the bearer is a JWT and issuers are configured, verifies it (fetching the issuer's
/// keys if need be, which an interceptor cannot wait for).
#[derive(Clone, Debug)]
pub struct TagPath<S> {
    pub inner: S,
    pub verifier: Arc<crate::oidc::Verifier>,
    pub metrics: crate::metrics::Metrics,
}

impl<S, B> tower::Service<http::Request<B>> for TagPath<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = RpcPath(req.uri().path().to_owned());
        req.extensions_mut().insert(path);
        let jwt = (!self.verifier.is_empty())
            .then(|| req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
            .flatten()
            .and_then(crate::auth::bearer_token)
            .filter(|t| crate::oidc::looks_like_jwt(t))
            .map(str::to_owned);
        let Some(token) = jwt else {
            return Box::pin(self.inner.call(req));
        };
        // The ready service is the one to call; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let outcome = verifier.verify(&token, chrono::Utc::now().timestamp()).await;
            let result = match &outcome {
                Ok(_) => "ok",
                Err(e) => e.reason(),
            };
            metrics.oidc_verifications.with_label_values(&[result]).inc();
            if let Err(e) = &outcome {
                tracing::info!(error = %e, "sign-in token refused");
            }
            req.extensions_mut().insert(OidcOutcome(outcome));
            inner.call(req).await
        })
    }
}

pub(crate) fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| ApiError::Unauthenticated.into())
}

/// The caller's identity, for calls the interceptor only lets authenticated callers make.
pub(crate) fn caller<T>(req: &Request<T>) -> Result<crate::access::Identity, Status> {
    identity(req).ok_or_else(|| ApiError::Unauthenticated.into())
}

/// The caller's identity, when it presented a valid token.
pub(crate) fn identity<T>(req: &Request<T>) -> Option<crate::access::Identity> {
    req.extensions().get::<crate::access::Identity>().cloned()
}

// ---------------------------------------------------------------------------------------------
// Ingest

#[derive(Debug)]
pub struct IngestSvc {
    pub engine: Arc<Engine>,
    pub queue: mpsc::Sender<Batch>,
    pub limits: Arc<cairn_ingest::IngestLimits>,
    pub trusted_annotation_rules: Arc<Vec<String>>,
    pub intake: Arc<crate::intake::Intake>,
    /// Idempotency keys of `Push` messages accepted recently (bounded: `PUSH_KEYS` for 10 min).
    pub keys: std::sync::Mutex<cairn_ingest::RecentKeys<String>>,
    /// How long one `Push` stream may stay open.
    pub max_stream_lifetime: Duration,
}

const MAX_REJECTION_DETAILS: usize = 100;
/// Longest idempotency key; with [`PUSH_KEYS`] it bounds the keys' memory to a few MiB.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Idempotency keys remembered at most, and for how long.
pub const PUSH_KEYS: usize = 20_000;
pub const PUSH_KEY_TTL_MS: i64 = 600_000;

#[tonic::async_trait]
impl pb::ingest_service_server::IngestService for IngestSvc {
    async fn push(&self, request: Request<Streaming<pb::PushRequest>>) -> Result<Response<pb::PushResponse>, Status> {
        let may_steer = identity(&request).is_some_and(|id| id.has(crate::access::Scope::IngestAnnotate));
        let mut stream = request.into_inner();
        let mut resp = pb::PushResponse::default();
        let mut batch_index = 0u64;
        let deadline = tokio::time::Instant::now() + self.max_stream_lifetime;
        loop {
            let next = tokio::time::timeout_at(deadline, stream.message()).await.map_err(|_| {
                Status::deadline_exceeded(format!(
                    "a Push stream may stay open at most {} s (ingest.push_max_stream_secs); open a new one and resend \
                     unacknowledged messages with their idempotency keys",
                    self.max_stream_lifetime.as_secs()
                ))
            })?;
            let Some(batch) = next? else { break };
            if batch.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
                return Err(Status::invalid_argument(format!(
                    "message {batch_index}: idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
                )));
            }
            let key = (!batch.idempotency_key.is_empty()).then(|| batch.idempotency_key.clone());
            if let Some(k) = &key
                && self.keys.lock().unwrap_or_else(|p| p.into_inner()).contains(k, self.engine.clock().now_ms())
            {
                resp.duplicate_messages += 1;
                batch_index += 1;
                continue;
            }
            let mut samples = cairn_types::SampleBatch::new();
            let mut alerts = Vec::with_capacity(batch.alerts.len());
            let mut reject = |kind: &str, i: usize, reason: String| {
                resp.rejected += 1;
                if resp.rejections.len() < MAX_REJECTION_DETAILS {
                    resp.rejections.push(pb::PushRejection {
                        batch_index,
                        item_kind: kind.into(),
                        item_index: i as u64,
                        reason,
                    });
                }
            };
            for (i, s) in batch.samples.iter().enumerate() {
                match cv::sample_from_pb(s).and_then(|s| {
                    cairn_ingest::validate_sample(&s, &self.limits).map(|()| s).map_err(|e| e.to_string())
                }) {
                    Ok(s) => samples.push_sample(&s),
                    Err(reason) => reject("sample", i, reason),
                }
            }
            for (i, a) in batch.alerts.iter().enumerate() {
                match cv::alert_from_pb(a).and_then(|a| {
                    cairn_ingest::validate_alert(&a, &self.limits).map(|()| a).map_err(|e| e.to_string())
                }) {
                    Ok(a) => alerts.push(a),
                    Err(reason) => reject("alert", i, reason),
                }
            }
            cairn_ingest::withhold_steering(&mut alerts, may_steer, &self.trusted_annotation_rules);
            // Alerts first: they are stored before anything of the message is counted, and a
            // message cut short after them is resent whole under its key (alerts are
            // de-duplicated by fingerprint downstream; samples were not yet taken).
            let n_alerts = alerts.len() as u64;
            if !alerts.is_empty() {
                // Stored before counted as accepted (invariant 12).
                let (engine, intake) = (self.engine.clone(), self.intake.clone());
                tokio::task::spawn_blocking(move || intake.accept(&engine, alerts, 1))
                    .await
                    .map_err(|e| Status::internal(format!("intake panicked: {e}")))?
                    .map_err(Status::from)?;
                self.engine.metrics().alerts_accepted.with_label_values(&["grpc"]).inc_by(n_alerts);
            }
            // Back-pressure: a gRPC producer waits (bounded) for room instead of being dropped.
            let wait = Duration::from_secs(5);
            let n_samples = samples.len() as u64;
            if !samples.is_empty() {
                self.send(Batch::Samples { samples, source: "grpc" }, wait).await?;
                self.engine.metrics().samples_accepted.with_label_values(&["grpc"]).inc_by(n_samples);
            }
            // The whole message is in: count it, and remember its key.
            resp.accepted_alerts += n_alerts;
            resp.accepted_samples += n_samples;
            if let Some(k) = key {
                self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(k, self.engine.clock().now_ms());
            }
            batch_index += 1;
        }
        Ok(Response::new(resp))
    }
}

impl IngestSvc {
    async fn send(&self, batch: Batch, wait: Duration) -> Result<(), Status> {
        match self.queue.send_timeout(batch, wait).await {
            Ok(()) => {
                self.engine.metrics().queue_depth.inc();
                Ok(())
            }
            Err(_) => {
                self.engine.metrics().requests_overloaded.with_label_values(&["grpc"]).inc();
                Err(ApiError::Overloaded { retry_after_secs: wait.as_secs() }.into())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Review

#[derive(Debug)]
pub struct ReviewSvc {
    pub engine: Arc<Engine>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
/// What `WatchIncidents` answers: incidents as they are written.
type IncidentStream = Pin<Box<dyn Stream<Item = Result<pb::IncidentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::review_service_server::ReviewService for ReviewSvc {
    async fn list_recommendations(
        &self,
        request: Request<pb::ListRecommendationsRequest>,
    ) -> Result<Response<pb::ListRecommendationsResponse>, Status> {
        principal(&request)?;
        let r = request.into_inner();
        let state = if r.state.is_empty() {
            None
        } else {
            Some(ChangeState::parse(&r.state).ok_or_else(|| {
                Status::invalid_argument(format!("unknown state {:?}; expected one of {}", r.state,
                    ChangeState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")))
            })?)
        };
        let filter = RecommendationFilter {
            outcome: cv::outcome_from_pb(r.outcome),
            state,
            service: (!r.service.is_empty()).then_some(r.service),
            limit: if r.limit == 0 { 100 } else { r.limit.min(1000) as usize },
        };
        let engine = self.engine.clone();
        let records = blocking(move || Ok(engine.store().list_recommendations(&filter)?)).await?;
        Ok(Response::new(pb::ListRecommendationsResponse {
            recommendations: records
                .iter()
                .map(|r| pb::RecommendationView {
                    recommendation: Some(cv::recommendation_to_pb(&r.recommendation)),
                    decision: Some(cv::decision_to_pb(&r.decision)),
                    change: Some(cv::change_to_pb(&r.change)),
                })
                .collect(),
        }))
    }

    async fn get_decision_card(
        &self,
        request: Request<pb::GetDecisionCardRequest>,
    ) -> Result<Response<pb::DecisionCard>, Status> {
        principal(&request)?;
        let r = request.into_inner();
        let engine = self.engine.clone();
        let card = blocking(move || Ok(cairn_service::card::decision_card(engine.desk(), &RecommendationId(r.recommendation_id), r.revision)?))
            .await?;
        Ok(Response::new(cv::decision_card_to_pb(&card)))
    }

    async fn propose_policy(
        &self,
        request: Request<pb::ProposePolicyRequest>,
    ) -> Result<Response<pb::ProposePolicyResponse>, Status> {
        let id = caller(&request)?;
        self.engine.desk().check_step_up("proposing a policy", &id).map_err(|e| Status::from(ApiError::from(e)))?;
        let who = id.principal;
        let r = request.into_inner();
        let files = r.files.into_iter().map(|f| cairn_policy::PolicyFile { name: f.name, text: f.text }).collect();
        let engine = self.engine.clone();
        let (record, active_version, proposed_version) =
            blocking(move || Ok(cairn_service::policy::propose(engine.desk(), &who, files, &r.reason, &r.execution_window)?)).await?;
        Ok(Response::new(pb::ProposePolicyResponse {
            proposal: Some(pb::RecommendationView {
                recommendation: Some(cv::recommendation_to_pb(&record.recommendation)),
                decision: Some(cv::decision_to_pb(&record.decision)),
                change: Some(cv::change_to_pb(&record.change)),
            }),
            active_version,
            proposed_version,
        }))
    }

    async fn shadow_policy(
        &self,
        request: Request<pb::ShadowPolicyRequest>,
    ) -> Result<Response<pb::ShadowPolicyResponse>, Status> {
        principal(&request)?;
        let r = request.into_inner();
        let files = r.files.into_iter().map(|f| cairn_policy::PolicyFile { name: f.name, text: f.text }).collect();
        let limit = if r.limit == 0 { 500 } else { r.limit.min(10_000) as usize };
        let engine = self.engine.clone();
        let (active_version, candidate_version, evaluated, changed) =
            blocking(move || Ok(cairn_service::policy::shadow(engine.desk(), files, limit)?)).await?;
        Ok(Response::new(pb::ShadowPolicyResponse {
            active_version,
            candidate_version,
            evaluated: evaluated as u32,
            changed: changed
                .into_iter()
                .map(|c| pb::ShadowOutcome {
                    recommendation_id: c.recommendation_id,
                    revision: c.revision,
                    action: c.action,
                    target: c.target,
                    before: c.before,
                    after: c.after,
                    reasons: c.reasons,
                })
                .collect(),
        }))
    }

    async fn approve(&self, request: Request<pb::ApproveRequest>) -> Result<Response<pb::ReviewResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.review(who, r.recommendation_id, r.revision, r.reason, true).await
    }

    async fn reject(&self, request: Request<pb::RejectRequest>) -> Result<Response<pb::ReviewResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.review(who, r.recommendation_id, r.revision, r.reason, false).await
    }

    type WatchRecommendationsStream = WatchStream;

    async fn watch_recommendations(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchRecommendationsStream>, Status> {
        principal(&request)?;
        let after = request.into_inner().after_cursor;
        // The audit log is the outbox; entries about no recommendation move the cursor only.
        let stream = follow(self.engine.clone(), after, Duration::from_secs(2), 256, |engine, cursor| {
            let q = AuditQuery { after_seq: Some(cursor), limit: 500, ..Default::default() };
            let events = engine.store().audit_events(&q)?;
            let full = events.len() == 500;
            let items = events.iter().map(|ev| (ev.seq, ev.recommendation_id.as_ref().map(|_| cv::watch_event_from_audit(ev))));
            Ok((items.collect(), full))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl ReviewSvc {
    async fn review(
        &self,
        who: crate::access::Identity,
        id: String,
        revision: u32,
        reason: String,
        approve: bool,
    ) -> Result<Response<pb::ReviewResponse>, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("recommendation_id is required"));
        }
        if revision == 0 {
            return Err(Status::invalid_argument(
                "revision is required: name the exact revision you reviewed (see GetDecisionCard)",
            ));
        }
        let engine = self.engine.clone();
        let (change, message) =
            blocking(move || Ok(engine.desk().review(&who, &RecommendationId(id), revision, &reason, approve)?)).await?;
        Ok(Response::new(pb::ReviewResponse { change: Some(cv::change_to_pb(&change)), message }))
    }
}

// ---------------------------------------------------------------------------------------------
// Audit

#[derive(Debug)]
pub struct AuditSvc {
    pub engine: Arc<Engine>,
    pub checkpoints: Arc<crate::checkpoint::Checkpointer>,
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditSvc {
    async fn query(&self, request: Request<pb::AuditQueryRequest>) -> Result<Response<pb::AuditQueryResponse>, Status> {
        principal(&request)?;
        let r = request.into_inner();
        let some = |s: String| (!s.is_empty()).then_some(s);
        let q = AuditQuery {
            recommendation_id: some(r.recommendation_id),
            incident_id: some(r.incident_id),
            actor: some(r.actor),
            kind: some(r.kind),
            since_ms: (r.since_ms != 0).then_some(r.since_ms),
            until_ms: (r.until_ms != 0).then_some(r.until_ms),
            after_seq: (r.after_seq != 0).then_some(r.after_seq),
            limit: if r.limit == 0 { 1000 } else { r.limit.min(10_000) as usize },
        };
        let engine = self.engine.clone();
        let events = blocking(move || Ok(engine.store().audit_events(&q)?)).await?;
        Ok(Response::new(pb::AuditQueryResponse { events: events.iter().map(cv::audit_to_pb).collect() }))
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        principal(&request)?;
        let (engine, checkpoints) = (self.engine.clone(), self.checkpoints.clone());
        let response = blocking(move || crate::audit_api::verify(engine.store().as_ref(), &checkpoints)).await?;
        Ok(Response::new(response))
    }

    async fn prove(&self, request: Request<pb::ProveRequest>) -> Result<Response<pb::ProveResponse>, Status> {
        principal(&request)?;
        let r = request.into_inner();
        let (engine, checkpoints) = (self.engine.clone(), self.checkpoints.clone());
        let response = blocking(move || crate::audit_api::prove(engine.store().as_ref(), &checkpoints, r)).await?;
        Ok(Response::new(response))
    }
}

/// `IncidentService`: incidents as the correlator sees them, with or without a recommendation.
pub struct IncidentSvc {
    pub engine: Arc<Engine>,
    /// The analysis worker's queue: a person's merge or split is applied by the worker, which
    /// owns the correlator, in order with the signals.
    pub queue: mpsc::Sender<Batch>,
}

/// How long a merge or split waits for a place in the analysis queue, then for the worker.
const REGROUP_WAIT: Duration = Duration::from_secs(30);

impl IncidentSvc {
    /// Hands a person's regrouping to the analysis worker and waits for it to be stored.
    async fn regroup(&self, by: cairn_types::Principal, regroup: cairn_service::Regroup, reason: String) -> Result<Response<pb::RegroupResponse>, Status> {
        if reason.trim().is_empty() {
            return Err(Status::invalid_argument("reason is required: say why, for the audit trail and the incident's grouping reasons"));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let batch = Batch::Regroup { regroup, by: by.subject, reason, reply };
        if self.queue.send_timeout(batch, REGROUP_WAIT).await.is_err() {
            return Err(ApiError::Overloaded { retry_after_secs: REGROUP_WAIT.as_secs() }.into());
        }
        self.engine.metrics().queue_depth.inc();
        let stored = match tokio::time::timeout(REGROUP_WAIT, answer).await {
            Ok(Ok(result)) => result.map_err(ApiError::from)?,
            _ => return Err(Status::unavailable("the analysis worker did not answer; see whether the incidents changed, then try again")),
        };
        Ok(Response::new(pb::RegroupResponse { incidents: stored.iter().map(cv::incident_to_pb).collect() }))
    }
}

#[tonic::async_trait]
impl pb::incident_service_server::IncidentService for IncidentSvc {
    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        principal(&request)?;
        let r = request.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit.min(1000) as usize };
        let engine = self.engine.clone();
        let incidents =
            blocking(move || Ok(engine.store().list_incidents(r.updated_since_ms, r.min_members as usize, limit)?)).await?;
        Ok(Response::new(pb::ListIncidentsResponse { incidents: incidents.iter().map(cv::incident_to_pb).collect() }))
    }

    async fn get_incident(&self, request: Request<pb::GetIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        principal(&request)?;
        let id = cairn_types::IncidentId(request.into_inner().id);
        let engine = self.engine.clone();
        let found = blocking(move || Ok(engine.store().get_incident(&id).map(|i| (id, i))?)).await?;
        match found {
            (_, Some(i)) => Ok(Response::new(cv::incident_to_pb(&i))),
            (id, None) => Err(Status::not_found(format!("no incident {id}"))),
        }
    }

    async fn merge(&self, request: Request<pb::MergeIncidentsRequest>) -> Result<Response<pb::RegroupResponse>, Status> {
        let by = principal(&request)?;
        let r = request.into_inner();
        if r.into_id.is_empty() || r.from_id.is_empty() {
            return Err(Status::invalid_argument("into_id and from_id are required"));
        }
        let regroup = cairn_service::Regroup::Merge { into: cairn_types::IncidentId(r.into_id), from: cairn_types::IncidentId(r.from_id) };
        self.regroup(by, regroup, r.reason).await
    }

    async fn split(&self, request: Request<pb::SplitIncidentRequest>) -> Result<Response<pb::RegroupResponse>, Status> {
        let by = principal(&request)?;
        let r = request.into_inner();
        if r.id.is_empty() || r.member_ids.is_empty() {
            return Err(Status::invalid_argument("id and at least one member_ids entry are required"));
        }
        let regroup = cairn_service::Regroup::Split { from: cairn_types::IncidentId(r.id), members: r.member_ids };
        self.regroup(by, regroup, r.reason).await
    }

    type WatchIncidentsStream = IncidentStream;

    async fn watch_incidents(
        &self,
        request: Request<pb::WatchIncidentsRequest>,
    ) -> Result<Response<Self::WatchIncidentsStream>, Status> {
        principal(&request)?;
        let r = request.into_inner();
        let min_members = r.min_members as usize;
        // Incident writes are not audited, so there is no head to wait on for them alone: the
        // audit head wakes it (a changed incident usually routes a recommendation), and the change
        // index is read at least every INCIDENT_POLL, one indexed read per follower.
        let stream = follow(self.engine.clone(), r.after_cursor, INCIDENT_POLL, WATCH_PAGE, move |engine, cursor| {
            let changed = engine.store().incidents_changed_after(cursor, min_members, WATCH_PAGE)?;
            let full = changed.len() == WATCH_PAGE;
            let items = changed.iter().map(|(seq, incident)| {
                (*seq, Some(pb::IncidentEvent { cursor: *seq, incident: Some(cv::incident_to_pb(incident)) }))
            });
            Ok((items.collect(), full))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Incidents read from the change index at a time by `WatchIncidents`, and buffered for a slow
/// follower: an incident may hold up to `correlate.max_members` members, so a follower's memory is
/// bounded by twice this many incidents, not by a count of small events.
const WATCH_PAGE: usize = 16;
/// How long `WatchIncidents` waits for a wake-up before it reads the change index anyway.
const INCIDENT_POLL: Duration = Duration::from_millis(500);
