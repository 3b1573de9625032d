//! The composition of the core: one [`Engine`] holds the analysis pipeline, the review desk and
//! the executor loop, built from one store and the server's settings, for the server to wire to
//! its listeners. Each part is given only its slice of the store ([`Signals`], [`Changes`],
//! [`Guards`], [`Leases`]) and the handles it needs, and can be built and used on its own.

use crate::desk::{ReviewDesk, ReviewDeskDeps};
use crate::executor::{ExecutorLoop, ExecutorLoopDeps};
use crate::governance::Governance;
use crate::identity::StepUp;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineDeps};
use crate::policy::ActiveRouter;
use cairn_policy::Router;
use cairn_store::{ChangeStore, GuardStore, LeaseStore, SignalStore, Store, StoreError};
use cairn_workflow::{Executor, WorkflowConfig};
use std::sync::Arc;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use crate::clock::{Clock, ManualClock, SystemClock};

/// The store cut by consumer, as the parts hold it: alerts, anomalies and incidents.
pub type Signals = Arc<dyn SignalStore>;
/// Recommendations, changes and executions.
pub type Changes = Arc<dyn ChangeStore>;
/// Break-glass, the freeze, disabled automations, and the runs the guardrails count.
pub type Guards = Arc<dyn GuardStore>;
/// The executor's leases on the changes it runs.
pub type Leases = Arc<dyn LeaseStore>;

/// What the server builds the core from.
#[derive(Debug)]
pub struct EngineParts {
    pub store: Arc<dyn Store>,
    /// The policy to route with until an activation swaps it.
    pub router: Arc<Router>,
    /// The workflow executor with its adapter, gate, verifier and journal.
    pub executor: Executor,
    pub workflow: WorkflowConfig,
    /// Break-glass and guardrail settings, and the way escalations reach people.
    pub governance: Governance,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Whether every signal comes from an authenticated sender (`ingest.require_token`).
    pub signals_authenticated: bool,
    /// How fresh a sign-in must be for the most consequential acts.
    pub step_up: StepUp,
    /// Whether an OpenID issuer is configured (decides whether static person tokens pass step-up).
    pub oidc_configured: bool,
    /// Cancelled when the server shuts down; long-lived streams end on it.
    pub shutdown: CancellationToken,
}

/// The three parts of the core, and what the server's read-only handlers and live streams share:
/// the store for reads, the active router, the metrics, the clock and the audit head.
#[derive(Debug)]
pub struct Engine {
    store: Arc<dyn Store>,
    router: Arc<ActiveRouter>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    pipeline: Arc<Pipeline>,
    desk: ReviewDesk,
    executor: Arc<ExecutorLoop>,
    /// The audit head after the last write: live streams wait on it to re-read the outbox.
    audit_head: watch::Sender<u64>,
    shutdown: CancellationToken,
}

impl Engine {
    pub fn new(parts: EngineParts) -> Result<Engine, StoreError> {
        let EngineParts {
            store,
            router,
            executor,
            workflow,
            governance,
            metrics,
            clock,
            signals_authenticated,
            step_up,
            oidc_configured,
            shutdown,
        } = parts;
        let head = store.audit_head()?;
        let (audit_head, _) = watch::channel(head);
        // The store says when the log grew (after the commit), so live streams wake on every
        // write without any caller having to remember to tell them.
        let notify = audit_head.clone();
        store.on_audit_commit(Box::new(move |head| {
            notify.send_if_modified(|h| {
                let newer = head > *h;
                if newer {
                    *h = head;
                }
                newer
            });
        }));
        let router = Arc::new(ActiveRouter::new(router));
        let governance = Arc::new(governance);
        let wake = Arc::new(Notify::new());
        let windows = executor.gate().windows.clone();
        let pipeline = Arc::new(Pipeline::new(PipelineDeps {
            signals: store.clone(),
            changes: store.clone(),
            guards: store.clone(),
            router: router.clone(),
            windows: windows.clone(),
            governance: governance.clone(),
            workflow: workflow.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            executor_wake: wake.clone(),
            signals_authenticated,
        }));
        let desk = ReviewDesk::new(ReviewDeskDeps {
            changes: store.clone(),
            signals: store.clone(),
            guards: store.clone(),
            pipeline: pipeline.clone(),
            router: router.clone(),
            windows,
            governance: governance.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            step_up,
            oidc_configured,
            executor_wake: wake.clone(),
        });
        let executor = Arc::new(ExecutorLoop::new(ExecutorLoopDeps {
            changes: store.clone(),
            guards: store.clone(),
            leases: store.clone(),
            executor,
            pipeline: pipeline.clone(),
            router: router.clone(),
            governance,
            workflow,
            metrics: metrics.clone(),
            clock: clock.clone(),
            wake,
        }));
        Ok(Engine { store, router, metrics, clock, pipeline, desk, executor, audit_head, shutdown })
    }

    /// The analysis pipeline.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// The review desk.
    pub fn desk(&self) -> &ReviewDesk {
        &self.desk
    }

    /// The executor loop.
    pub fn executor(&self) -> &Arc<ExecutorLoop> {
        &self.executor
    }

    /// The store, for embedders, tests and the server's read-only handlers.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The active policy router (swapped when a policy activation runs).
    pub fn router(&self) -> &ActiveRouter {
        &self.router
    }

    /// The server's own metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The clock every part reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn subscribe_audit_head(&self) -> watch::Receiver<u64> {
        self.audit_head.subscribe()
    }

    /// Cancelled when the server begins to shut down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Asks the executor loop for a pass now.
    pub fn wake_executor(&self) {
        self.executor.wake();
    }
}
