//! The executor's claims on the wire between the store and the workflow: the lease this process
//! holds on each change it runs (renewed while the adapter works, and before every adapter call
//! through the [`RunJournal`]), and the sweep that recovers changes whose holder died — at start-up
//! and on every executor pass. What becomes of an interrupted change is decided in
//! `cairn_workflow::recover`; this module only reads the store, applies the decision, counts it
//! (`cairn_changes_interrupted_total{resolution}`) and escalates it (`CairnChangeInterrupted`).

use crate::engine::{Clock, Leases};
use crate::executor::{ExecutorError, ExecutorLoop};
use cairn_store::{Lease, LeaseTerms};
use cairn_types::{ChangeId, ChangeRequest};
use cairn_workflow::{AbandonedClaim, RunJournal};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use tracing::{info, warn};

/// How many abandoned changes one sweep recovers at most; the next pass takes the rest.
const RECOVER_PER_SWEEP: usize = 64;

/// This server's identity on its leases: host, process id and wall-clock start time, so a
/// restarted process never mistakes its predecessor's leases for its own (and a sequence number,
/// for several servers started in one process, as tests do).
pub fn lease_holder() -> String {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started_ms = crate::engine::SystemClock.now_ms();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    match n {
        0 => format!("{host}:{}:{started_ms}", std::process::id()),
        n => format!("{host}:{}:{started_ms}#{n}", std::process::id()),
    }
}

/// Records each adapter call on the lease before it happens, renewing it; refuses the call when the
/// lease is no longer this process's.
#[derive(Debug)]
pub struct StoreJournal {
    pub leases: Leases,
    pub clock: Arc<dyn Clock>,
}

impl RunJournal for StoreJournal {
    fn before_adapter_call<'a>(&'a self, change: &'a ChangeRequest, call: &'a str) -> BoxFuture<'a, Result<(), String>> {
        let (store, now) = (self.leases.clone(), self.clock.now_ms());
        let (id, call, done) = (change.id.clone(), call.to_string(), change.stages_done);
        Box::pin(async move {
            let holder = store.lease_terms().holder;
            let marked = tokio::task::spawn_blocking(move || store.mark_adapter_call(&id, &holder, &call, done, now))
                .await
                .map_err(|e| format!("lease write panicked: {e}"))?;
            match marked {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("its lease expired and the change was recovered, or it already finished".into()),
                Err(e) => Err(format!("the lease could not be recorded: {e}")),
            }
        })
    }
}

impl ExecutorLoop {
    /// Recovers every change whose lease expired while it was `executing`: each one's fate is
    /// decided by `cairn_workflow::recover_interrupted` and written with its `change.interrupted`
    /// event in one transaction, only while the lease is still the expired one (so two sweeps
    /// recover it once, and a holder that renewed in time keeps it). Blocking.
    pub(crate) fn recover_interrupted(&self, now: i64) -> Result<usize, ExecutorError> {
        let mut recovered = 0;
        for (change, lease) in self.leases.expired_leases(now, RECOVER_PER_SWEEP)? {
            // One change that cannot be recovered (say, a racing write) must not hold up the rest
            // or the executor pass: it is tried again on the next sweep.
            match self.recover_one(&change, &lease, now) {
                Ok(true) => recovered += 1,
                Ok(false) => {}
                Err(e) => warn!(change_id = %change.id, error = %e, "interrupted change not recovered yet"),
            }
        }
        Ok(recovered)
    }

    fn recover_one(&self, change: &ChangeRequest, lease: &Lease, now: i64) -> Result<bool, ExecutorError> {
        let record = self.changes.get_recommendation(&change.recommendation_id, Some(change.revision))?;
        let latest = self.changes.get_recommendation(&change.recommendation_id, None)?;
        let (Some(record), Some(latest)) = (record, latest) else {
            return Err(ExecutorError::Orphaned(change.id.clone()));
        };
        let claim = AbandonedClaim {
            holder: lease.holder.clone(),
            lease_expires_ms: lease.expires_ms,
            adapter_call: lease.adapter_call.clone(),
            stages_done_at_call: lease.stages_done_at_call,
        };
        let out = cairn_workflow::recover_interrupted(
            change,
            &record.recommendation,
            &record.decision,
            latest.recommendation.revision,
            &claim,
            self.executor.gate(),
            now,
        );
        if !self.leases.resolve_interrupted(&out.change, change.version, lease, &out.drafts, now)? {
            return Ok(false);
        }
        self.metrics.governance.changes_interrupted.with_label_values(&[out.resolution.as_str()]).inc();
        warn!(
            change_id = %change.id,
            holder = %lease.holder,
            lease_expires_ms = lease.expires_ms,
            adapter_call = lease.adapter_call.as_deref().unwrap_or("none"),
            state = out.change.state.as_str(),
            resolution = out.resolution.as_str(),
            "interrupted change recovered"
        );
        if let Some(e) = cairn_workflow::interrupted_escalation(&out, &record.recommendation, now) {
            self.governance.escalate(&self.metrics, vec![e]);
        }
        Ok(true)
    }

    /// Runs `work` on `change` while renewing this process's lease on it, and on the changes of the
    /// same batch still `waiting` their turn, every third of the lease length, so a slow adapter call
    /// is not taken for an abandoned one, nor are the claims queued behind it.
    pub(crate) async fn renewing_lease<T>(self: &Arc<Self>, change: &ChangeId, waiting: &[ChangeId], work: impl Future<Output = T>) -> T {
        let terms: LeaseTerms = self.leases.lease_terms();
        let every = std::time::Duration::from_millis((terms.ttl_ms / 3).max(1) as u64);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = ticker.tick() => {
                    let ids: Vec<ChangeId> = std::iter::once(change).chain(waiting).cloned().collect();
                    let (ex, holder) = (self.clone(), terms.holder.clone());
                    let renewed = tokio::task::spawn_blocking(move || {
                        let now = ex.clock.now_ms();
                        ids.into_iter().map(|id| (ex.leases.renew_lease(&id, &holder, now), id)).collect::<Vec<_>>()
                    })
                    .await;
                    let renewed = match renewed {
                        Ok(renewed) => renewed,
                        Err(e) => {
                            warn!(change_id = %change, error = %e, "lease renewal panicked");
                            continue;
                        }
                    };
                    for (result, id) in renewed {
                        match result {
                            Ok(Some(_)) => {}
                            Ok(None) => info!(change_id = %id, "lease no longer held; the executor stops before its next adapter call"),
                            Err(e) => warn!(change_id = %id, error = %e, "lease renewal failed"),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_servers_in_one_process_hold_leases_under_different_names() {
        let (a, b) = (super::lease_holder(), super::lease_holder());
        assert_ne!(a, b);
        assert!(a.contains(&format!(":{}:", std::process::id())), "{a}");
    }
}
