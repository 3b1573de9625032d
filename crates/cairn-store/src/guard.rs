//! The durable state of guardrails and break-glass: break-glass records and their uses, the global
//! freeze switch, and the automations the loop guard disabled. Like every other write, each one
//! appends its audit drafts in the same transaction.

use crate::Result;
use cairn_types::{ActionClass, AuditDraft, BreakGlass, ChangeId, ChangeRequest, DisabledAutomation, FreezeState, Target};

/// Guardrail and break-glass state. A supertrait of [`Store`](crate::Store), so every store has it.
pub trait GuardStore: Send + Sync + std::fmt::Debug {
    /// Inserts a new break-glass (version 1) or writes the next version of an existing one; a
    /// stale version is a [`Conflict`](crate::StoreError::Conflict).
    fn save_breakglass(&self, bg: &BreakGlass, audit: &[AuditDraft], now_ms: i64) -> Result<()>;
    /// Writes the next version of `bg` (its use counted) and records that `change` was opened
    /// under it, in one transaction.
    fn use_breakglass(&self, bg: &BreakGlass, change: &ChangeId, audit: &[AuditDraft], now_ms: i64) -> Result<()>;
    fn get_breakglass(&self, id: &str) -> Result<Option<BreakGlass>>;
    /// Newest first; `active_only` keeps those whose state is still active (expired or not).
    fn list_breakglass(&self, active_only: bool) -> Result<Vec<BreakGlass>>;
    /// The break-glass a change was opened under, if any.
    fn breakglass_for_change(&self, change: &ChangeId) -> Result<Option<BreakGlass>>;

    /// The runtime freeze switch; `None` until someone first flips it.
    fn freeze_state(&self) -> Result<Option<FreezeState>>;
    fn set_freeze(&self, state: &FreezeState, audit: &[AuditDraft], now_ms: i64) -> Result<()>;

    fn disabled_automation(&self, action: ActionClass, target: &Target) -> Result<Option<DisabledAutomation>>;
    fn list_disabled_automations(&self) -> Result<Vec<DisabledAutomation>>;
    /// Writes a change a guardrail held (version `expected_version + 1`) and, for a tripped loop
    /// guard, the automation it disables — one transaction.
    fn hold_change(
        &self,
        change: &ChangeRequest,
        expected_version: u64,
        disabled: Option<&DisabledAutomation>,
        audit: &[AuditDraft],
        now_ms: i64,
    ) -> Result<()>;
    /// Turns a disabled automation back on. `false` (and nothing written) when it was not disabled.
    fn enable_automation(&self, action: ActionClass, target: &Target, audit: &[AuditDraft], now_ms: i64) -> Result<bool>;

    /// Changes of `action` on `target` that ran (executing or finished), whose recommendation
    /// revision was created since `since_ms`, `excluding` one change (the one about to run). One
    /// indexed count: the loop guard asks this before every auto execution.
    fn count_runs_on_target(&self, action: ActionClass, target: &Target, since_ms: i64, excluding: &ChangeId) -> Result<u32>;

    /// Changes of `action` that an `auto` decision let run (executing or finished), whose
    /// recommendation revision was created since `since_ms`.
    fn count_auto_runs(&self, action: ActionClass, since_ms: i64) -> Result<u32>;
}
