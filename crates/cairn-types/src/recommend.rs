//! What the recommender gives: a proposed remediation with everything a reviewer needs.

use crate::{IncidentId, Severity, TimestampMs};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// A stable recommendation id, e.g. `rec-9c1d…`. Together with a revision it names one exact proposal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecommendationId(pub String);

impl fmt::Display for RecommendationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of change a recommendation proposes. Policy routes on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionClass {
    RestartProcess,
    ScaleOut,
    RollbackDeploy,
    DrainNode,
    DatabaseFailover,
    DnsChange,
    IamChange,
    FirewallRelax,
    /// Moving a workload to another provider or region.
    ProviderMove,
    /// Deleting or truncating data: destructive and not undoable by Cairn.
    DataDelete,
    /// Swapping the active policy bundle (invariant 10): always tier 3.
    PolicyActivation,
    /// No action fits: people should look, with the evidence and what telemetry is missing.
    /// Always advisory; never executed.
    Investigate,
}

impl ActionClass {
    pub const ALL: [ActionClass; 12] = [
        ActionClass::RestartProcess,
        ActionClass::ScaleOut,
        ActionClass::RollbackDeploy,
        ActionClass::DrainNode,
        ActionClass::DatabaseFailover,
        ActionClass::DnsChange,
        ActionClass::IamChange,
        ActionClass::FirewallRelax,
        ActionClass::ProviderMove,
        ActionClass::DataDelete,
        ActionClass::PolicyActivation,
        ActionClass::Investigate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionClass::RestartProcess => "restart_process",
            ActionClass::ScaleOut => "scale_out",
            ActionClass::RollbackDeploy => "rollback_deploy",
            ActionClass::DrainNode => "drain_node",
            ActionClass::DatabaseFailover => "database_failover",
            ActionClass::DnsChange => "dns_change",
            ActionClass::IamChange => "iam_change",
            ActionClass::FirewallRelax => "firewall_relax",
            ActionClass::ProviderMove => "provider_move",
            ActionClass::DataDelete => "data_delete",
            ActionClass::PolicyActivation => "policy_activation",
            ActionClass::Investigate => "investigate",
        }
    }

    pub fn parse(s: &str) -> Option<ActionClass> {
        ActionClass::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for ActionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much could break if the action goes wrong. Ordered from smallest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlastRadius {
    /// One process, pod or instance.
    Instance,
    /// One service in one environment.
    Service,
    /// A node, cluster or shared dependency: several services.
    Cluster,
    /// Everything behind a name, an identity or a network boundary.
    Global,
}

impl BlastRadius {
    pub fn as_str(self) -> &'static str {
        match self {
            BlastRadius::Instance => "instance",
            BlastRadius::Service => "service",
            BlastRadius::Cluster => "cluster",
            BlastRadius::Global => "global",
        }
    }
}

/// Whether the action can be undone, and how fully.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reversibility {
    Reversible,
    PartiallyReversible,
    Irreversible,
}

impl Reversibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Reversibility::Reversible => "reversible",
            Reversibility::PartiallyReversible => "partially_reversible",
            Reversibility::Irreversible => "irreversible",
        }
    }
}

/// What the action is applied to.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Target {
    pub service: String,
    pub environment: String,
    /// The concrete resource: an instance, node, deployment, DNS name, role, rule…
    pub resource: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.environment, self.service, self.resource)
    }
}

/// How to undo the action, and who owns undoing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackPlan {
    pub steps: Vec<String>,
    pub owner: String,
}

/// A check run after execution; failing it triggers the rollback plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerificationCheck {
    pub name: String,
    /// A PromQL expression or the name of one of Cairn's own series.
    pub query: String,
    /// `<`, `<=`, `>`, `>=`, `==`.
    pub comparator: String,
    pub threshold: f64,
    pub within_secs: u64,
}

/// One piece of evidence behind a recommendation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// `alert` or `anomaly`.
    pub kind: String,
    pub description: String,
    pub timestamp_ms: TimestampMs,
}

/// A proposed remediation. `(id, revision)` names one exact proposal; a new revision is made when
/// the evidence changes, and it voids approvals given to earlier revisions (invariant 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub id: RecommendationId,
    pub revision: u32,
    pub incident_id: IncidentId,
    pub playbook: String,
    pub playbook_version: String,
    pub action: ActionClass,
    pub target: Target,
    pub parameters: BTreeMap<String, String>,
    /// Probability-like confidence that the action addresses the incident, in [0, 1].
    pub confidence: f64,
    pub severity: Severity,
    pub blast_radius: BlastRadius,
    pub reversibility: Reversibility,
    pub rollback_plan: Option<RollbackPlan>,
    pub verification: Vec<VerificationCheck>,
    pub expected_benefit: String,
    pub rationale: String,
    pub evidence: Vec<Evidence>,
    /// Versions of the models whose anomalies are among the evidence.
    pub model_version: String,
    pub created_ms: TimestampMs,
    /// Who asks for the change; Cairn's own identity for generated recommendations.
    pub requester: String,
}

/// The recommendation parameter that carries a playbook's progressive stages, comma-separated
/// (`canary,25%,100%`). Being a parameter, the stages are part of the action digest: an approval
/// binds to the staged plan.
pub const STAGES_PARAMETER: &str = "stages";

impl Recommendation {
    /// The progressive stages this recommendation runs in, in order; empty for a one-step change.
    pub fn stages(&self) -> Vec<String> {
        self.parameters
            .get(STAGES_PARAMETER)
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    }

    /// SHA-256 over the exact action: target, parameters, rollback plan, verification checks,
    /// recommendation id and revision, and the policy version it was routed under. An approval binds
    /// to this digest; anything that changes it voids the approval.
    pub fn action_digest(&self, policy_version: &str) -> String {
        #[derive(Serialize)]
        struct Bound<'a> {
            id: &'a RecommendationId,
            revision: u32,
            action: ActionClass,
            target: &'a Target,
            parameters: &'a BTreeMap<String, String>,
            rollback_plan: &'a Option<RollbackPlan>,
            verification: &'a [VerificationCheck],
            policy_version: &'a str,
        }
        let bound = Bound {
            id: &self.id,
            revision: self.revision,
            action: self.action,
            target: &self.target,
            parameters: &self.parameters,
            rollback_plan: &self.rollback_plan,
            verification: &self.verification,
            policy_version,
        };
        // serde_json writes struct fields in declaration order and BTreeMaps sorted: canonical.
        let bytes = serde_json::to_vec(&bound).expect("plain data always serialises");
        hex::encode(Sha256::digest(bytes))
    }
}
