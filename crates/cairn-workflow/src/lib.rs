//! Change requests and what may happen to them: opening one from a routed recommendation,
//! approving and rejecting it, expiring it, and executing it through an adapter.
//!
//! The review rules are pure functions from the current change, the current recommendation, who is
//! acting and the time, to the next change and the audit drafts that describe it; the store applies
//! them in one transaction. The [`Executor`] is the only path to an [`Adapter`], and it re-checks
//! the decision and the quorum (invariant 1) immediately before calling one. After a change runs,
//! its verification checks decide whether it worked; a failed check triggers the declared
//! rollback, and a failed rollback leaves the change visibly in `rollback_failed`. A change whose
//! executor died mid-way is recovered by what was recorded before it died, never re-run silently
//! (`recover.rs`).
//!
//! This crate never routes (that is `cairn-policy`), never writes the store, and knows no protocol
//! other than the outbound HTTP of the webhook adapter and the PromQL verifier, both behind the
//! `http` feature (on by default; the protocol-free `cairn-service` builds without it).

#![forbid(unsafe_code)]

pub mod adapters;
pub mod breakglass;
mod execute;
pub mod guard;
pub mod recover;
mod review;
pub mod stages;
mod verify;
mod window;

pub use adapters::{CommandAdapter, CommandConfig, DryRunAdapter};
#[cfg(feature = "http")]
pub use adapters::WebhookAdapter;
pub use breakglass::{BreakGlassError, BreakGlassRequest};
pub use guard::{GuardInputs, GuardrailsConfig, Hold, RateLimit};
pub use execute::{Adapter, AdapterFuture, ExecutionRefused, Executor, authorize_execution, refuse};
pub use stages::pauses_between_stages;
pub use recover::{AbandonedClaim, Recovered, Resolution, RunJournal, interrupted_escalation, recover_interrupted};
pub use review::{ReviewError, approve, expire, missing_fields, open_change, reject};
pub use verify::{CheckResult, Verifier, compare};
#[cfg(feature = "http")]
pub use verify::PromQlVerifier;
pub use window::{ExecutionGate, MaintenanceWindow, MaintenanceWindows, Roster, WeeklySchedule, WindowError};

use serde::{Deserialize, Serialize};

/// Review settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowConfig {
    /// A change waiting for approval expires after this long (default one hour).
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub pending_ttl_ms: i64,
    /// A staged change waiting in `awaiting_stage_approval` for its next stage expires after this
    /// long, and the stages it ran are rolled back (default one hour, as `pending_ttl_ms`).
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub stage_approval_ttl_ms: i64,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        WorkflowConfig { pending_ttl_ms: 3_600_000, stage_approval_ttl_ms: 3_600_000 }
    }
}

pub use cairn_types::MIN_AUTO_CONFIDENCE;
