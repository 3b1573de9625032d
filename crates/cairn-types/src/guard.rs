//! What guardrails and break-glass give: the records people open, the switches they flip, and the
//! escalations Cairn sends to Alertmanager when automation needs a person.

use crate::{ActionClass, Target, TimestampMs};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The longest a break-glass may stay open: four hours.
pub const BREAKGLASS_MAX_MS: i64 = 4 * 3_600_000;

/// Where a break-glass is in its life. Only `Active` allows anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakGlassState {
    Active,
    /// Its expiry passed.
    Expired,
    /// A person closed it early.
    Revoked,
    /// Its maximum number of uses was reached.
    Exhausted,
}

impl BreakGlassState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakGlassState::Active => "active",
            BreakGlassState::Expired => "expired",
            BreakGlassState::Revoked => "revoked",
            BreakGlassState::Exhausted => "exhausted",
        }
    }
}

impl fmt::Display for BreakGlassState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a break-glass covers: these action classes on these targets. In a target, `*` matches any
/// value of that field; an empty list matches nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassScope {
    pub actions: Vec<ActionClass>,
    pub targets: Vec<Target>,
}

impl BreakGlassScope {
    pub fn covers(&self, action: ActionClass, target: &Target) -> bool {
        let field = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        self.actions.contains(&action)
            && self.targets.iter().any(|t| {
                field(&t.service, &target.service)
                    && field(&t.environment, &target.environment)
                    && field(&t.resource, &target.resource)
            })
    }
}

/// A time-bound, owner-bound exception to policy (the seed's "break-glass"): while active and in
/// scope, a `blocked` recommendation is opened for review by two people instead of being refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakGlass {
    /// `bg-…`.
    pub id: String,
    /// The person who opened it and answers for it.
    pub owner: String,
    pub purpose: String,
    /// The incident or change it was opened for.
    pub link: String,
    pub scope: BreakGlassScope,
    pub opened_ms: TimestampMs,
    /// At most [`BREAKGLASS_MAX_MS`] after `opened_ms`.
    pub expires_ms: TimestampMs,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub state: BreakGlassState,
    pub closed_ms: Option<TimestampMs>,
    pub closed_by: Option<String>,
    pub close_reason: Option<String>,
    /// Incremented on every change; the store refuses a stale write.
    pub version: u64,
}

/// The global freeze switch: while on, nothing runs by itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeState {
    pub frozen: bool,
    pub reason: String,
    /// Who flipped it last (`config` when it comes from the configuration file).
    pub by: String,
    pub at_ms: TimestampMs,
}

/// One automation (an action class on one target) the loop guard turned off. Only a person turns
/// it back on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisabledAutomation {
    pub action: ActionClass,
    pub target: Target,
    pub disabled_ms: TimestampMs,
    /// The runs counted in the window that tripped the guard.
    pub runs: u32,
    pub reason: String,
}

/// Something a person must look at, sent to Alertmanager as one alert. `ends_ms` set in the past
/// resolves an alert sent earlier with the same labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    /// The alert name, e.g. `CairnRollbackFailed`.
    pub alertname: String,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    /// Further identifying labels (change id, break-glass id, target…).
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub description: String,
    pub starts_ms: TimestampMs,
    pub ends_ms: Option<TimestampMs>,
}
