//! Leases on claimed executor work. Claiming a change (moving it to `executing`) records who holds
//! it and until when; the executor renews the lease while it works and marks, before every adapter
//! call, that the target is being touched. When a holder dies (OOM kill, reboot, deploy) its lease
//! lapses, and [`LeaseStore::expired_leases`] hands the change to recovery, which decides from what
//! the lease and the change record say and applies its decision with
//! [`LeaseStore::resolve_interrupted`] — once, whoever else is sweeping.
//!
//! This is the shape that `SELECT … FOR UPDATE SKIP LOCKED` plus a lease row takes on PostgreSQL
//! when several replicas share the work (DESIGN.md, "When one machine is not enough").

use crate::Result;
use cairn_types::{AuditDraft, ChangeId, ChangeRequest};

/// Who claims executor work through this store, and for how long a claim lasts without renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTerms {
    /// The executor's identity as recorded on its leases, e.g. `host:pid:start`. Unique per process.
    pub holder: String,
    /// A claim not renewed for this long is considered abandoned.
    pub ttl_ms: i64,
}

impl Default for LeaseTerms {
    fn default() -> Self {
        LeaseTerms { holder: format!("cairn pid {}", std::process::id()), ttl_ms: DEFAULT_LEASE_MS }
    }
}

/// The default lease length (`executor.lease_ms`).
pub const DEFAULT_LEASE_MS: i64 = 60_000;

/// One lease on a change in `executing`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub change_id: ChangeId,
    pub holder: String,
    pub claimed_ms: i64,
    pub expires_ms: i64,
    /// The last adapter call that began under this lease ("execute", "execute stage canary",
    /// "rollback stage 25%"), and when. Once set, the target may have been touched: the outcome is
    /// unknown until the executor records it.
    pub adapter_call: Option<String>,
    pub adapter_call_ms: Option<i64>,
    /// How many stages had run and verified (in memory, in this claim) when that call began.
    pub stages_done_at_call: Option<u32>,
}

/// Leases on executor work. A supertrait of [`Store`](crate::Store), so every store has it. The
/// claims themselves ([`ChangeStore::claim_approved`](crate::ChangeStore::claim_approved) and its siblings)
/// create the lease under the store's [`LeaseTerms`]; any write that moves the change out of
/// `executing` ends it.
pub trait LeaseStore: Send + Sync + std::fmt::Debug {
    /// The holder and length that later claims record.
    fn set_lease_terms(&self, terms: LeaseTerms);
    fn lease_terms(&self) -> LeaseTerms;
    /// The lease on `change`, if it is executing.
    fn lease(&self, change: &ChangeId) -> Result<Option<Lease>>;
    /// Extends `holder`'s lease on `change` to `now_ms` + the lease length. `None` when `holder`
    /// no longer holds it (recovered elsewhere, or finished): stop working on the change.
    fn renew_lease(&self, change: &ChangeId, holder: &str, now_ms: i64) -> Result<Option<Lease>>;
    /// Records durably, before the adapter is called, that `call` is about to touch the target
    /// after `stages_done` stages ran and verified, and renews the lease. `None` when `holder` no
    /// longer holds it: the call must not happen.
    fn mark_adapter_call(&self, change: &ChangeId, holder: &str, call: &str, stages_done: u32, now_ms: i64) -> Result<Option<Lease>>;
    /// Executing changes whose lease expired at `now_ms`, oldest expiry first.
    fn expired_leases(&self, now_ms: i64, limit: usize) -> Result<Vec<(ChangeRequest, Lease)>>;
    /// Applies recovery's decision for an abandoned change: writes `change` (version
    /// `expected_version + 1`, out of `executing`), ends the lease and appends `audit`, in one
    /// transaction — only if `lease` is still the lease on record (same holder, same expiry) and
    /// still expired at `now_ms`. `false` when it is not: renewed by a live holder, or already
    /// recovered by another sweep, and nothing was written.
    fn resolve_interrupted(
        &self,
        change: &ChangeRequest,
        expected_version: u64,
        lease: &Lease,
        audit: &[AuditDraft],
        now_ms: i64,
    ) -> Result<bool>;
}
