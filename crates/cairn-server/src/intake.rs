//! Acknowledged means stored (invariant 12): alerts are written to the store's intake journal
//! before their sender is answered, and the analysis worker takes them from there, ahead of
//! samples. A crash between the answer and the analysis replays them at the next start; a store
//! that cannot write (a full disk) turns the answer into a retryable 503 and `/readyz` into 503,
//! so Alertmanager resends instead of losing the alert, and nothing was remembered as a duplicate.
//!
//! This module decides when an alert is acknowledged; it never analyses one.

use cairn_service::metrics::Metrics;
use cairn_service::{Analysis, Batch, Engine};
use crate::error::ApiError;
use cairn_types::AlertEvent;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use prometheus::IntGauge;
use tokio::sync::Notify;
use tracing::{error, info};

/// Journaled alerts read back and analysed as one batch, at most. The pipeline routes each incident
/// the batch touched once, in its final state (a new revision voids approvals anyway), so under
/// load the routing work per alert falls as batches grow; a quiet intake still gives small batches
/// at once. Measured (alert-load, 200 services): the work per incident and pass (settle, recommend,
/// route, the revision and its supersession with their audit events, the incident row) was about
/// six times the work per alert at 5,000 alerts a pass, so the pass is as large as the default
/// `ingest.max_pending_alerts`: when the backlog is full, one pass takes all of it. That bounds
/// memory (the decoded alerts, about 20 MB); it does not lengthen the wait of an alert under load,
/// which is the backlog ahead of it divided by the rate, and the rate rises with the pass.
const ALERTS_PER_PASS: usize = 20_000;

/// The durable front door for alerts, shared by the webhook and `Push`.
#[derive(Debug)]
pub struct Intake {
    /// Wakes the analysis worker when alerts were journaled.
    wake: Notify,
    /// Why the last journal write failed, until one succeeds again: `/readyz` reports it.
    failing: Mutex<Option<String>>,
    /// Journaled alerts not yet analysed, and how many may wait (`ingest.max_pending_alerts`):
    /// past it senders are answered 503 + Retry-After, as for a full sample queue, so a backlog
    /// the worker cannot catch up with does not grow without end.
    pending: AtomicU64,
    max_pending: u64,
    /// `cairn_intake_pending_alerts`, moved with `pending`.
    gauge: IntGauge,
}

impl Intake {
    /// `already` alerts are journaled from before (a crash): they count against the bound. The
    /// backlog and its bound are shown in `metrics`.
    pub fn new(max_pending: u64, already: u64, metrics: &Metrics) -> Intake {
        metrics.intake_pending_limit.set(i64::try_from(max_pending).unwrap_or(i64::MAX));
        let gauge = metrics.intake_pending.clone();
        gauge.set(i64::try_from(already).unwrap_or(i64::MAX));
        Intake { wake: Notify::new(), failing: Mutex::new(None), pending: AtomicU64::new(already), max_pending, gauge }
    }

    /// Counts `n` more alerts waiting; returns how many waited before.
    fn add_pending(&self, n: u64) -> u64 {
        self.gauge.add(n as i64);
        self.pending.fetch_add(n, Ordering::SeqCst)
    }

    /// Counts `n` alerts fewer waiting (not below zero).
    fn sub_pending(&self, n: u64) {
        let before = self.pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(p.saturating_sub(n))).unwrap_or_else(|p| p);
        self.gauge.sub(before.min(n) as i64);
    }

    /// Journals `alerts` durably, then wakes the worker. Blocking: call it off the async runtime.
    /// An error is a retryable refusal: nothing of this request was acknowledged.
    pub fn accept(&self, engine: &Engine, alerts: Vec<AlertEvent>, retry_after_secs: u64) -> Result<(), ApiError> {
        let now = engine.clock().now_ms();
        let n = alerts.len() as u64;
        let before = self.add_pending(n);
        if before + n > self.max_pending {
            self.sub_pending(n);
            engine.metrics().requests_overloaded.with_label_values(&["alerts"]).inc();
            return Err(ApiError::Overloaded { retry_after_secs });
        }
        match engine.store().journal_alerts(alerts, now) {
            Ok(()) => {
                self.set_failing(None);
                self.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                self.sub_pending(n);
                engine.metrics().intake_failures.inc();
                let reason = format!("alerts cannot be stored: {e}");
                error!(error = %e, alerts = n, "alerts refused with 503: the intake journal cannot be written");
                self.set_failing(Some(reason.clone()));
                Err(ApiError::NotStored { retry_after_secs, reason })
            }
        }
    }

    /// Why ingest cannot acknowledge alerts right now, if it cannot.
    pub fn unready_reason(&self) -> Option<String> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_failing(&self, reason: Option<String>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Resolves once alerts were journaled since the last call (or at once if some were).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// Analyses every journaled alert, oldest first, and marks each batch analysed once its analysis
/// (which stores the alerts) succeeded. Blocking. On a failure the rest stays journaled
/// for the next pass. Returns how many alerts were analysed.
pub fn drain(engine: &Engine, intake: &Intake, analysis: &mut Analysis) -> Result<usize, ApiError> {
    let mut done = 0;
    loop {
        let rows = engine.store().pending_intake(ALERTS_PER_PASS)?;
        let Some(last) = rows.last().map(|r| r.seq) else { return Ok(done) };
        let received: Vec<i64> = rows.iter().map(|r| r.received_ms).collect();
        let alerts: Vec<AlertEvent> = rows.into_iter().map(|r| r.alert).collect();
        let n = alerts.len();
        // What the analysis of the batch writes (alerts, incidents, revisions with their audit
        // events) and the mark that its journal rows are analysed share a transaction, give or
        // take the turns the pass gives to other writers (a person's approval): one commit where
        // there was one per incident and revision. Acknowledgements go on meanwhile: the journal
        // is written apart.
        let pass = engine.store().write_pass()?;
        let analysed = engine
            .pipeline()
            .analyse(analysis, Batch::Alerts { alerts, source: "journal" })
            .map_err(ApiError::from)
            .and_then(|()| Ok(engine.store().finish_intake(last)?));
        if let Err(e) = pass.commit() {
            // Not stored: the batch stays journaled and is retried, so its alerts must not be
            // remembered as seen, or the retry would drop them as duplicates.
            for j in engine.store().pending_intake(n).unwrap_or_default() {
                analysis.deduper.forget(&j.alert);
            }
            return Err(e.into());
        }
        analysed?;
        let now = engine.clock().now_ms();
        for at in received {
            engine.metrics().alert_analysis_delay.observe((now - at).max(0) as f64 / 1000.0);
        }
        intake.sub_pending(n as u64);
        done += n;
        if n < ALERTS_PER_PASS {
            if done > 0 {
                info!(alerts = done, "journaled alerts analysed");
            }
            return Ok(done);
        }
    }
}
