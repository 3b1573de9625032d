//! What routing gives: a decision about who may let a recommendation run.

use crate::{RecommendationId, TimestampMs};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Runs by itself (tier 0), or runs and notifies (tier 1).
    Auto,
    /// Waits for people: one approver (tier 2) or two and a window (tier 3).
    Review,
    /// Shown to people, never executed by Cairn.
    Advisory,
    /// Not executable under this policy version.
    Blocked,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Auto, Outcome::Review, Outcome::Advisory, Outcome::Blocked];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Auto => "auto",
            Outcome::Review => "review",
            Outcome::Advisory => "advisory",
            Outcome::Blocked => "blocked",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The routing decision for one recommendation revision under one policy version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub recommendation_id: RecommendationId,
    pub revision: u32,
    pub outcome: Outcome,
    /// Risk tier 0–3 for `auto` and `review`; `None` for advisory and blocked.
    pub tier: Option<u8>,
    pub approvals_required: u8,
    /// Groups whose members may approve; empty means nobody may.
    pub approver_groups: Vec<String>,
    /// Whether execution also needs an open maintenance window.
    pub requires_window: bool,
    /// Whether a staged change waits for a person's approval before each stage after the first.
    /// Absent in a stored decision from before the field existed: pause (fail closed).
    #[serde(default = "crate::change::pause_between_stages_by_default")]
    pub stage_approval: bool,
    /// Set when a break-glass opened a blocked recommendation for review: its owner, who may not
    /// approve the change (separation of duties, as for the requester).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breakglass_owner: Option<String>,
    /// Why the policy decided this, in words a reviewer reads.
    pub reasons: Vec<String>,
    /// Content hash of the policy bundle that decided.
    pub policy_version: String,
    /// True when the decision is the fail-closed fallback after a policy error or timeout.
    pub policy_failed: bool,
    pub decided_ms: TimestampMs,
}

impl Decision {
    /// The fail-closed decision of invariant 5: review at the highest tier, two approvers.
    pub fn fail_closed(
        recommendation_id: RecommendationId,
        revision: u32,
        policy_version: String,
        error: &str,
        decided_ms: TimestampMs,
    ) -> Decision {
        Decision {
            recommendation_id,
            revision,
            outcome: Outcome::Review,
            tier: Some(3),
            approvals_required: 2,
            approver_groups: Vec::new(),
            requires_window: false,
            stage_approval: true,
            breakglass_owner: None,
            reasons: vec![format!("policy evaluation failed, routed to review at tier 3: {error}")],
            policy_version,
            policy_failed: true,
            decided_ms,
        }
    }
}
