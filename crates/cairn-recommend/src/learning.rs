//! Learning from people: what reviewers and outcomes said about similar changes before (same
//! playbook, same service and environment) lowers a new recommendation's confidence, visibly.
//!
//! Bounded and explainable on purpose. Only the last [`LearningConfig::window`] decided changes
//! count; each rejection takes [`LearningConfig::per_rejection`] off, each rollback or failed run
//! [`LearningConfig::per_rollback`]; the total never exceeds [`LearningConfig::max_penalty`].
//! Approvals and clean runs count in the denominator ("2 of the last 5") and so dilute the
//! penalty, but learning never *raises* confidence above what the playbook computed: a run of
//! approvals cannot turn a reviewed change into one that runs by itself, and low confidence stays
//! low (invariant 6 is enforced downstream in any case).

use cairn_types::{Evidence, Recommendation};
use serde::{Deserialize, Serialize};

/// Evidence kind carrying the explanation on a recommendation whose confidence was adjusted.
pub const LEARNING_EVIDENCE: &str = "learning";

/// What people (or the outcome) said about one earlier similar change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Approved by people, or ran by itself, and it held.
    Accepted,
    Rejected,
    /// Ran and had to be rolled back, or failed.
    RolledBack,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearningConfig {
    /// How many of the most recent decided similar changes count.
    pub window: usize,
    pub per_rejection: f64,
    pub per_rollback: f64,
    /// The most confidence past decisions can take off.
    pub max_penalty: f64,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig { window: 5, per_rejection: 0.04, per_rollback: 0.06, max_penalty: 0.2 }
    }
}

/// A confidence moved by past decisions, and why, in a sentence for the decision card.
#[derive(Clone, Debug, PartialEq)]
pub struct Adjustment {
    pub before: f64,
    pub after: f64,
    pub explanation: String,
}

/// Adjusts `confidence` by `history` (newest first). `None` when nothing similar was decided yet.
pub fn adjust(confidence: f64, history: &[Verdict], cfg: &LearningConfig) -> Option<Adjustment> {
    let recent = &history[..history.len().min(cfg.window)];
    if recent.is_empty() {
        return None;
    }
    let rejected = recent.iter().filter(|v| **v == Verdict::Rejected).count();
    let rolled_back = recent.iter().filter(|v| **v == Verdict::RolledBack).count();
    let penalty = (cfg.per_rejection * rejected as f64 + cfg.per_rollback * rolled_back as f64).clamp(0.0, cfg.max_penalty);
    let after = (confidence - penalty).clamp(0.0, confidence.max(0.0));
    let n = recent.len();
    let mut said = Vec::new();
    if rejected > 0 {
        said.push(format!("{rejected} of the last {n} similar changes {} rejected", if rejected == 1 { "was" } else { "were" }));
    }
    if rolled_back > 0 {
        said.push(format!("{rolled_back} of the last {n} {} rolled back or failed", if rolled_back == 1 { "was" } else { "were" }));
    }
    if said.is_empty() {
        said.push(format!("the last {n} similar changes were all accepted (learning never raises confidence)"));
    }
    Some(Adjustment {
        before: confidence,
        after,
        explanation: format!("confidence {confidence:.2} → {after:.2}: {}", said.join("; ")),
    })
}

/// Applies `adjust` to a recommendation: its confidence, a sentence in its rationale, and a
/// `learning` evidence entry the decision card shows. A recommendation that already carries one is
/// returned unchanged, so routing it again (after a policy activation) does not count twice.
pub fn apply(mut rec: Recommendation, history: &[Verdict], cfg: &LearningConfig, now_ms: i64) -> Recommendation {
    if rec.evidence.iter().any(|e| e.kind == LEARNING_EVIDENCE) {
        return rec;
    }
    if let Some(a) = adjust(rec.confidence, history, cfg) {
        rec.confidence = a.after;
        rec.rationale.push_str(&format!(" Learning from past reviews: {}.", a.explanation));
        rec.evidence.push(Evidence { kind: LEARNING_EVIDENCE.into(), description: a.explanation, timestamp_ms: now_ms });
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    #[test]
    fn rejections_lower_confidence_and_say_so() {
        let a = adjust(0.72, &[Rejected, Accepted, Rejected, Accepted, Accepted], &LearningConfig::default()).unwrap();
        assert!((a.after - 0.64).abs() < 1e-9, "{a:?}");
        assert_eq!(a.explanation, "confidence 0.72 → 0.64: 2 of the last 5 similar changes were rejected");
    }

    #[test]
    fn only_the_window_counts_and_the_penalty_is_bounded() {
        let cfg = LearningConfig::default();
        // Older rejections beyond the last five do not count.
        let a = adjust(0.9, &[Accepted, Accepted, Accepted, Accepted, Accepted, Rejected, Rejected], &cfg).unwrap();
        assert_eq!(a.after, 0.9);
        // Five rollbacks would be 0.30; the cap is 0.20.
        let a = adjust(0.9, &[RolledBack; 5], &cfg).unwrap();
        assert!((a.after - 0.7).abs() < 1e-9, "{a:?}");
        assert!(a.explanation.contains("5 of the last 5 were rolled back or failed"), "{}", a.explanation);
        // Never below zero.
        assert_eq!(adjust(0.1, &[RolledBack; 5], &cfg).unwrap().after, 0.0);
        assert!(adjust(0.9, &[], &cfg).is_none());
    }

    #[test]
    fn approvals_never_raise_confidence() {
        let a = adjust(0.79, &[Accepted; 5], &LearningConfig::default()).unwrap();
        assert_eq!(a.after, 0.79, "a run of approvals does not make a reviewed change run by itself");
    }

    #[test]
    fn applying_twice_counts_once() {
        let rec = crate::tests::sample_recommendation();
        let once = apply(rec.clone(), &[Rejected, Rejected], &LearningConfig::default(), 7);
        assert!(once.confidence < rec.confidence);
        assert_eq!(once.evidence.last().unwrap().kind, LEARNING_EVIDENCE);
        let twice = apply(once.clone(), &[Rejected, Rejected], &LearningConfig::default(), 8);
        assert_eq!(twice, once);
    }
}
