//! Cairn's daemon: the gRPC services (`cairn.v1` ingest, review, incidents, guardrails, audit, plus
//! health and reflection), the HTTP endpoints (remote_write, Alertmanager webhook, change events,
//! metrics, health), caller identity (static tokens, client certificates, people signed in at an
//! OpenID Provider: `oidc.rs`), TLS and the
//! listeners, and the composition root that turns the configuration into a running core
//! (`cairn-service`'s analysis pipeline, review desk and executor loop) wired to them.
//!
//! This is the only crate that knows gRPC and HTTP, and the only place where errors become status
//! codes (`error.rs`). It holds no domain logic of its own: the orchestration is `cairn-service`'s,
//! and detection, correlation, recommendation, routing, review rules, execution and the audit chain
//! each live in their stage's crate. It must never decide what may run — that is `cairn-policy`
//! and `cairn-workflow`.

#![forbid(unsafe_code)]

pub mod access;
mod audit_api;
pub mod alerting;
pub mod auth;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod error;
pub mod intake;
pub mod listen;
mod grpc;
mod grpc_guardrails;
mod http;
pub mod oidc;
pub mod tls;

// The protocol-free core lives in `cairn-service`; these paths stay so that embedders (the e2e
// tests, the `cairn` binary, the benches) keep naming `cairn_server::engine::SystemClock`,
// `cairn_server::access::Scope` and kin without churn.
pub use cairn_service::{engine, governance, metrics, models, policy, recover};

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use cairn_service::{Analysis, Batch, Clock, Engine, EngineParts};
use crate::metrics::Metrics;
use cairn_proto::v1 as pb;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Why the server could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot open the store: {0}")]
    Store(#[from] cairn_store::StoreError),
    #[error("cannot load the policy bundle: {0}")]
    Policy(#[from] cairn_policy::PolicyError),
    #[error("cannot load the playbook catalogue: {0}")]
    Playbooks(String),
    #[error("cannot set up the executor: {0}")]
    Executor(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot set up guardrails or alerting: {0}")]
    Governance(String),
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointSetupError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot set up the OpenID issuers: {0}")]
    Oidc(String),
    #[error("cannot load the multivariate models: {0}")]
    Models(#[from] cairn_detect::registry::RegistryError),
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub checkpointer: Arc<checkpoint::Checkpointer>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningServer {
    /// Stops accepting requests, lets in-flight requests finish, drains the analysis queue, and
    /// waits for every task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.checkpointer.write_final().await;
    }

    /// Waits until the server stops (after `cancel` is triggered elsewhere).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.checkpointer.write_final().await;
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Builds every stage from the configuration and starts listening.
pub async fn start(cfg: ServerConfig, clock: Arc<dyn Clock>) -> Result<RunningServer, StartError> {
    cfg.validate()?;
    listen::raise_descriptor_limit();
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|source| StartError::DataDir { path: cfg.data_dir.clone(), source })?;
    let db = cfg.data_dir.join("cairn.db");
    let store: Arc<dyn cairn_store::Store> = Arc::new(cairn_store::SqliteStore::open(&db)?);
    let checkpointer = Arc::new(checkpoint::Checkpointer::open(&cfg.audit, &cfg.data_dir, store.clone())?);

    let bundle = match &cfg.policy.bundle {
        Some(dir) => cairn_policy::PolicyBundle::load_dir(dir)?,
        None => cairn_policy::PolicyBundle::embedded_default(),
    };
    let bundle = policy::restore_active(store.as_ref(), bundle);
    let router = cairn_policy::Router::new(
        bundle,
        cairn_policy::RouterConfig { timeout_ms: cfg.policy.timeout_ms, ..Default::default() },
    )?;
    let catalogue = match &cfg.playbooks {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| StartError::Playbooks(format!("{}: {e}", path.display())))?;
            cairn_recommend::Catalogue::from_toml(&text).map_err(|e| StartError::Playbooks(e.to_string()))?
        }
        None => cairn_recommend::Catalogue::embedded_default(),
    };
    store.set_lease_terms(cairn_store::LeaseTerms {
        holder: recover::lease_holder(),
        ttl_ms: cfg.executor.lease_ms as i64,
    });
    let executor = build_executor(&cfg)?
        .with_journal(Arc::new(recover::StoreJournal { leases: store.clone(), clock: clock.clone() }));
    info!(
        store = %db.display(),
        policy_version = router.version(),
        playbooks_version = catalogue.version(),
        adapter = cfg.executor.adapter.as_str(),
        "starting cairn"
    );

    let metrics = Metrics::new();
    let cancel = CancellationToken::new();
    let engine = Engine::new(EngineParts {
        store,
        router: Arc::new(router),
        executor,
        workflow: cfg.workflow.clone(),
        governance: build_governance(&cfg)?,
        metrics,
        clock,
        signals_authenticated: cfg.ingest.require_token,
        step_up: cfg.auth.step_up,
        oidc_configured: !cfg.auth.oidc.is_empty(),
        shutdown: cancel.clone(),
    })?;
    engine.desk().apply_configured_freeze().map_err(|e| StartError::Governance(e.to_string()))?;
    let engine = Arc::new(engine);
    let analysis = Analysis {
        detector: cairn_detect::Detector::new(cfg.detect.clone()),
        correlator: cairn_correlate::Correlator::with_topology(cfg.correlate.clone(), &cfg.topology),
        recommender: cairn_recommend::Recommender::new(catalogue),
        deduper: cairn_ingest::AlertDeduper::new(
            cfg.ingest.dedup_capacity,
            (cfg.ingest.dedup_ttl_secs * 1000) as i64,
        ),
        exported: Default::default(),
        exported_multivariate: Vec::new(),
        last_sweep_ms: 0,
        multivariate: models::load_scorers(&cfg.models)?,
    };

    let tls = cfg.tls.clone().map(tls::Tls::load).transpose()?;
    let auth = Arc::new(Authenticator::new(&cfg.auth));
    let verifier = Arc::new(oidc::Verifier::new(&cfg.auth.oidc).map_err(StartError::Oidc)?);
    if cfg.guardrails.approver_groups.is_empty() {
        warn!("guardrails.approver_groups is empty: nobody can approve changes held by a guardrail or opened under a break-glass; name the groups that may");
    }
    if !cfg.ingest.require_token {
        warn!("ingest.require_token = false: every signal is unauthenticated, so nothing runs by itself (auto decisions wait for a person); give senders tokens with scope `ingest` and set it to true to allow automation");
    }
    if auth.is_empty() && cfg.auth.oidc.is_empty() {
        warn!("no bearer tokens configured: review and audit calls will be refused; run `cairn token new` and add the entry under [auth] in the config file");
    }
    let limits = Arc::new(cfg.ingest.limits.clone());
    let trusted_rules = Arc::new(cfg.ingest.trusted_annotation_rules.clone());
    let mut tasks = JoinSet::new();
    if !verifier.is_empty() {
        // The issuers' keys now, so the first sign-in costs no round trip to the provider.
        let v = verifier.clone();
        tasks.spawn(async move { v.prefetch().await });
    }
    let (queue_tx, queue_rx) = mpsc::channel::<Batch>(cfg.ingest.queue_capacity);
    let worker_alive = Arc::new(AtomicBool::new(true));

    let intake = Arc::new(intake::Intake::new(cfg.ingest.max_pending_alerts, engine.store().pending_intake_len()?, engine.metrics()));
    tasks.spawn(analysis_worker(engine.clone(), analysis, queue_rx, intake.clone(), worker_alive.clone()));
    tasks.spawn(engine.executor().clone().run(Duration::from_millis(cfg.executor.poll_interval_ms), cancel.clone()));
    tasks.spawn(checkpointer.clone().run(
        engine.subscribe_audit_head(),
        Duration::from_secs(cfg.audit.checkpoint_every_secs.max(1)),
        cfg.audit.checkpoint_every_entries,
        cancel.clone(),
    ));

    // HTTP
    let http_listener = TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| StartError::Bind { what: "http", addr: cfg.http_addr, source })?;
    let http_addr = http_listener.local_addr().map_err(|source| StartError::Bind {
        what: "http",
        addr: cfg.http_addr,
        source,
    })?;
    let app = http::router(http::HttpState {
        engine: engine.clone(),
        queue: queue_tx.clone(),
        limits: limits.clone(),
        auth: auth.clone(),
        require_token: cfg.ingest.require_token,
        trusted_annotation_rules: trusted_rules.clone(),
        retry_after_secs: cfg.ingest.retry_after_secs,
        worker_alive,
        intake: intake.clone(),
        decode_slots: Arc::new(tokio::sync::Semaphore::new(cfg.ingest.max_concurrent_decodes)),
    });
    if let Some(t) = &tls {
        tasks.spawn(t.clone().watch(engine.metrics().clone(), cancel.clone()));
    }
    let listener_tls = |alpn| tls.clone().map(|tls| listen::ListenerTls { tls, alpn });
    let http_incoming = listen::accept(
        http_listener,
        "http",
        &cfg.listen,
        listener_tls(tls::Alpn::Http1),
        engine.metrics().clone(),
        cancel.clone(),
    );
    tasks.spawn(listen::serve_http(http_incoming, app, cfg.listen.clone(), cancel.clone()));

    // gRPC
    let grpc_listener = TcpListener::bind(cfg.grpc_addr)
        .await
        .map_err(|source| StartError::Bind { what: "grpc", addr: cfg.grpc_addr, source })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| StartError::Bind {
        what: "grpc",
        addr: cfg.grpc_addr,
        source,
    })?;
    let required = grpc::AuthInterceptor { auth: auth.clone(), required: true };
    let ingest_auth = grpc::AuthInterceptor { auth, required: cfg.ingest.require_token };
    let (health_reporter, health_svc) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::review_service_server::ReviewServiceServer<grpc::ReviewSvc>>()
        .await;
    health_reporter
        .set_serving::<pb::ingest_service_server::IngestServiceServer<grpc::IngestSvc>>()
        .await;
    health_reporter
        .set_serving::<pb::audit_service_server::AuditServiceServer<grpc::AuditSvc>>()
        .await;
    health_reporter
        .set_serving::<pb::incident_service_server::IncidentServiceServer<grpc::IncidentSvc>>()
        .await;
    health_reporter
        .set_serving::<pb::guardrail_service_server::GuardrailServiceServer<grpc_guardrails::GuardrailSvc>>()
        .await;
    // Reflection in both protocol versions: grpcurl and current tools ask v1; Python's
    // grpcio-reflection, older grpcurl, Evans and Postman ask v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1().map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection_builder().build_v1alpha().map_err(|e| StartError::Reflection(e.to_string()))?;
    let ingest_svc = pb::ingest_service_server::IngestServiceServer::with_interceptor(
        grpc::IngestSvc {
            engine: engine.clone(),
            queue: queue_tx.clone(),
            limits,
            trusted_annotation_rules: trusted_rules,
            intake,
            keys: std::sync::Mutex::new(cairn_ingest::RecentKeys::new(grpc::PUSH_KEYS, grpc::PUSH_KEY_TTL_MS)),
            max_stream_lifetime: Duration::from_secs(cfg.ingest.push_max_stream_secs),
        },
        ingest_auth,
    );
    let review_svc = pb::review_service_server::ReviewServiceServer::with_interceptor(
        grpc::ReviewSvc { engine: engine.clone() },
        required.clone(),
    );
    let incident_svc = pb::incident_service_server::IncidentServiceServer::with_interceptor(
        grpc::IncidentSvc { engine: engine.clone(), queue: queue_tx },
        required.clone(),
    );
    let guardrail_svc = pb::guardrail_service_server::GuardrailServiceServer::with_interceptor(
        grpc_guardrails::GuardrailSvc { engine: engine.clone() },
        required.clone(),
    );
    let audit_svc = pb::audit_service_server::AuditServiceServer::with_interceptor(
        grpc::AuditSvc { engine: engine.clone(), checkpoints: checkpointer.clone() },
        required,
    );
    let c = cancel.clone();
    let grpc_metrics = engine.metrics().clone();
    let grpc_incoming = listen::accept(
        grpc_listener,
        "grpc",
        &cfg.listen,
        listener_tls(tls::Alpn::H2),
        engine.metrics().clone(),
        cancel.clone(),
    );
    let (ping, ping_timeout) = (
        Duration::from_millis(cfg.listen.http2_keepalive_interval_ms),
        Duration::from_millis(cfg.listen.http2_keepalive_timeout_ms),
    );
    tasks.spawn(async move {
        let res = tonic::transport::Server::builder()
            // Pings keep live clients sending, so the idle timeout closes only dead or silent ones.
            .http2_keepalive_interval(Some(ping))
            .http2_keepalive_timeout(Some(ping_timeout))
            .layer(tower::layer::layer_fn(move |inner| grpc::TagPath {
                inner,
                verifier: verifier.clone(),
                metrics: grpc_metrics.clone(),
            }))
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(ingest_svc)
            .add_service(review_svc)
            .add_service(incident_svc)
            .add_service(audit_svc)
            .add_service(guardrail_svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(grpc_incoming),
                async move { c.cancelled().await },
            )
            .await;
        if let Err(e) = res {
            error!(error = %e, "grpc server failed");
        }
    });

    info!(%http_addr, %grpc_addr, tls = tls.is_some(), "cairn is listening");
    Ok(RunningServer { http_addr, grpc_addr, engine, checkpointer, cancel, tasks })
}

/// Windows and the approver roster as configured now: an approval by someone no longer configured
/// (or no longer in the change's groups) stops counting at execution.
fn execution_gate(cfg: &ServerConfig) -> Result<cairn_workflow::ExecutionGate, StartError> {
    let windows = cairn_workflow::MaintenanceWindows::new(cfg.maintenance_windows.clone())
        .map_err(|e| StartError::Executor(e.to_string()))?;
    // Only people holding `review` count as approvers at execution: a service's approval, even one
    // forged into the store, is not in the roster.
    // People from an OpenID issuer whose groups grant `review` count too: their groups were the
    // provider's word when they approved.
    let federated = cfg.auth.oidc.iter().filter(|o| o.grants_review()).map(|o| o.subject_prefix());
    let roster = cairn_workflow::Roster::new(Authenticator::new(&cfg.auth).reviewers()).with_federated(federated);
    Ok(cairn_workflow::ExecutionGate { windows, roster: Some(roster) })
}

fn build_governance(cfg: &ServerConfig) -> Result<governance::Governance, StartError> {
    let am: Option<Arc<dyn governance::Escalator>> = match &cfg.alerting.alertmanager_url {
        Some(url) => {
            let generator = cfg.alerting.generator_url.clone().unwrap_or_else(|| format!("http://{}/", cfg.http_addr));
            Some(Arc::new(
                alerting::Alertmanager::new(url, generator, Duration::from_millis(cfg.alerting.timeout_ms))
                    .map_err(|e| StartError::Governance(format!("alerting.alertmanager_url: {e}")))?,
            ))
        }
        None => None,
    };
    governance::Governance::new(cfg.guardrails.clone(), am).map_err(|e| StartError::Governance(format!("guardrails.rate_limits: {e}")))
}

fn build_executor(cfg: &ServerConfig) -> Result<cairn_workflow::Executor, StartError> {
    let adapter: Arc<dyn cairn_workflow::Adapter> = match cfg.executor.adapter {
        config::AdapterKind::Webhook => {
            let url = cfg
                .executor
                .webhook_url
                .clone()
                .ok_or_else(|| StartError::Executor("executor.webhook_url is required".into()))?;
            let key = match &cfg.executor.webhook_hmac_key_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| StartError::Executor(format!("executor.webhook_hmac_key_file {}: {e}", path.display())))?
                        .trim()
                        .as_bytes()
                        .to_vec(),
                ),
                None => None,
            };
            Arc::new(
                cairn_workflow::WebhookAdapter::new(url, Duration::from_millis(cfg.executor.webhook_timeout_ms), key)
                    .map_err(|e| StartError::Executor(e.to_string()))?,
            )
        }
        config::AdapterKind::Command => Arc::new(cairn_workflow::CommandAdapter::new(cfg.executor.command.clone())),
        config::AdapterKind::DryRun => Arc::new(cairn_workflow::DryRunAdapter),
    };
    let executor = cairn_workflow::Executor::new(adapter)
        .with_gate(Arc::new(execution_gate(cfg)?))
        .with_stage_approval_ttl_ms(cfg.workflow.stage_approval_ttl_ms);
    let v = &cfg.verification;
    Ok(match &v.prometheus_url {
        Some(url) => executor.with_verifier(Arc::new(
            cairn_workflow::PromQlVerifier::new(
                url,
                Duration::from_millis(v.timeout_ms),
                Duration::from_millis(v.interval_ms),
                Duration::from_secs(v.max_wait_secs),
            )
            .map_err(|e| StartError::Executor(e.to_string()))?,
        )),
        None => executor,
    })
}

/// Runs the analysis stages on the blocking pool, one unit of work at a time: first every alert in
/// the intake journal (so alerts are never held up by samples, and those acknowledged before a
/// crash are analysed after it), then the next batch of samples. Ends when every sender is gone
/// (the listeners have stopped), after draining what was queued and journaled: accepted data is
/// analysed, not dropped, on a graceful shutdown.
async fn analysis_worker(
    engine: Arc<Engine>,
    mut analysis: Analysis,
    mut queue: mpsc::Receiver<Batch>,
    intake: Arc<intake::Intake>,
    alive: Arc<AtomicBool>,
) {
    enum Work {
        Journal,
        Samples(Batch),
    }
    // What start-up finds journaled is analysed first.
    let mut next = Some(Work::Journal);
    loop {
        let work = match next.take() {
            Some(w) => w,
            None => tokio::select! {
                biased;
                () = intake.woken() => Work::Journal,
                batch = queue.recv() => match batch {
                    Some(b) => {
                        engine.metrics().queue_depth.dec();
                        Work::Samples(b)
                    }
                    None => break,
                },
                // A journal pass that failed (the store refused a write) is retried.
                () = tokio::time::sleep(Duration::from_secs(1)) => Work::Journal,
            },
        };
        let (e, i) = (engine.clone(), intake.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let result = match work {
                Work::Journal => intake::drain(&e, &i, &mut analysis).map(|_| ()),
                Work::Samples(batch) => e.pipeline().analyse(&mut analysis, batch).map_err(error::ApiError::from),
            };
            (analysis, result)
        })
        .await;
        match joined {
            Ok((a, result)) => {
                analysis = a;
                if let Err(err) = result {
                    engine.metrics().analysis_failures.inc();
                    error!(error = %err, "analysis of accepted signals failed; journaled alerts are retried");
                }
            }
            Err(panic) => {
                error!(error = %panic, "analysis worker panicked; stopping ingestion");
                alive.store(false, Ordering::Relaxed);
                return;
            }
        }
    }
    if let Err(err) = {
        let e = engine.clone();
        tokio::task::spawn_blocking(move || intake::drain(&e, &intake, &mut analysis)).await
    }
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    {
        error!(error = %err, "journaled alerts left for the next start");
    }
    info!("analysis queue drained");
}
