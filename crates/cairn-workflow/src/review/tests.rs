use super::*;
use crate::{Adapter, AdapterFuture, ExecutionRefused, Executor, authorize_execution};
use cairn_types::*;
use proptest::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) fn rec(rev: u32) -> Recommendation {
    cairn_types::fixtures::recommendation(rev)
}

pub(crate) fn decision(outcome: Outcome, tier: Option<u8>, approvals: u8) -> Decision {
    Decision {
        recommendation_id: RecommendationId("rec-1".into()),
        revision: 1,
        outcome,
        tier,
        approvals_required: approvals,
        approver_groups: vec!["sre".into()],
        requires_window: tier == Some(3),
        // As the default bundle decides: stages pause from tier 2 up.
        stage_approval: tier.is_none_or(|t| t >= 2),
        breakglass_owner: None,
        reasons: vec!["test".into()],
        policy_version: "sha256:p1".into(),
        policy_failed: false,
        decided_ms: 0,
    }
}

/// A gate with one window open at every time for every target, and no roster check.
pub(crate) fn always_open() -> crate::ExecutionGate {
    let w = crate::MaintenanceWindow {
        name: "always".into(),
        service: "*".into(),
        environment: "*".into(),
        weekly: Some(crate::WeeklySchedule { days: vec!["mon".into()], start: "00:00".into(), duration_minutes: 7 * 24 * 60 }),
        start: None,
        end: None,
    };
    crate::ExecutionGate { windows: crate::MaintenanceWindows::new(vec![w]).unwrap(), roster: None }
}

fn person(s: &str) -> Principal {
    Principal { subject: s.into(), display_name: s.into(), groups: vec!["sre".into()] }
}

fn open(outcome: Outcome, tier: Option<u8>, approvals: u8) -> (ChangeRequest, Recommendation, Decision) {
    let r = rec(1);
    let d = decision(outcome, tier, approvals);
    let (c, drafts) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
    assert_eq!(drafts.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), ["recommendation.proposed", "decision.made", "change.opened"]);
    (c, r, d)
}

#[derive(Debug, Default)]
struct Counting(AtomicUsize);

impl Adapter for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn execute<'a>(&'a self, _: &'a Recommendation, _: &'a ChangeRequest) -> AdapterFuture<'a> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
    fn rollback<'a>(&'a self, _: &'a Recommendation, _: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
}

#[test]
fn unapproved_review_item_never_reaches_the_adapter() {
    let (c, r, d) = open(Outcome::Review, Some(2), 1);
    let counting = Arc::new(Counting::default());
    let ex = Executor::new(counting.clone());
    // Pending, and even forced into `approved` without approvals.
    assert!(block_on(ex.run(&c, &r, &d, 2_000)).is_err());
    let mut forged = c.clone();
    forged.state = ChangeState::Approved;
    assert!(matches!(block_on(ex.run(&forged, &r, &d, 2_000)), Err(ExecutionRefused::NoQuorum { valid: 0, required: 1 })));
    assert_eq!(counting.0.load(Ordering::SeqCst), 0);
    let (approved, _) = approve(&c, &r, &person("user:carol"), 1, "ok", 2_000).unwrap();
    assert_eq!(approved.state, ChangeState::Approved);
    let (exec, next, _) = block_on(ex.run(&approved, &r, &d, 3_000)).unwrap();
    assert_eq!(exec.outcome, ExecutionOutcome::Succeeded);
    assert_eq!(next.state, ChangeState::Succeeded);
    assert_eq!(counting.0.load(Ordering::SeqCst), 1);
}

#[test]
fn self_approval_is_refused() {
    let (mut c, mut r, _) = open(Outcome::Review, Some(2), 1);
    c.requester = "user:alice".into();
    r.requester = "user:alice".into();
    assert!(matches!(approve(&c, &r, &person("user:alice"), 1, "mine", 2_000), Err(ReviewError::SelfApproval { .. })));
}

#[test]
fn service_identity_cannot_approve() {
    let (c, r, _) = open(Outcome::Review, Some(2), 1);
    let cairn = Principal { subject: CAIRN_SERVICE_SUBJECT.into(), display_name: "cairn".into(), groups: vec!["sre".into()] };
    assert_eq!(approve(&c, &r, &cairn, 1, "auto", 2_000).unwrap_err(), ReviewError::ServiceIdentity);
}

#[test]
fn tier3_needs_two_distinct_approvers() {
    let (c, r, d) = open(Outcome::Review, Some(3), 2);
    let (c1, drafts) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
    assert_eq!(c1.state, ChangeState::PendingApproval);
    assert_eq!(drafts.len(), 1);
    assert!(matches!(approve(&c1, &r, &person("user:alice"), 1, "again", 2_001), Err(ReviewError::AlreadyApproved { .. })));
    // Even a policy that asked for one approval at tier 3 does not run on one.
    let mut lax = d.clone();
    lax.approvals_required = 1;
    let mut forced = c1.clone();
    forced.state = ChangeState::Approved;
    assert!(authorize_execution(&forced, &r, &lax, &always_open(), 2_002).is_err());
    let (c2, drafts) = approve(&c1, &r, &person("user:bob"), 1, "ok", 2_003).unwrap();
    assert_eq!(c2.state, ChangeState::Approved);
    assert_eq!(drafts.last().unwrap().kind, "change.approved");
    assert!(authorize_execution(&c2, &r, &d, &always_open(), 2_004).is_ok());
}

#[test]
fn stale_revision_is_refused() {
    let (c, _, _) = open(Outcome::Review, Some(2), 1);
    let newer = rec(2);
    assert!(matches!(approve(&c, &newer, &person("user:carol"), 1, "ok", 2_000), Err(ReviewError::StaleRevision { .. })));
    assert!(matches!(approve(&c, &rec(1), &person("user:carol"), 2, "ok", 2_000), Err(ReviewError::StaleRevision { .. })));
}

#[test]
fn approval_for_changed_action_digest_is_refused() {
    let (c, mut r, _) = open(Outcome::Review, Some(2), 1);
    r.target.resource = "deploy/other".into();
    assert!(matches!(approve(&c, &r, &person("user:carol"), 1, "ok", 2_000), Err(ReviewError::DigestMismatch { .. })));
}

#[test]
fn expired_change_cannot_be_approved() {
    let (c, r, _) = open(Outcome::Review, Some(2), 1);
    let late = c.expires_ms;
    assert!(matches!(approve(&c, &r, &person("user:carol"), 1, "ok", late), Err(ReviewError::Expired { .. })));
    let (e, _) = expire(&c, late).unwrap();
    assert_eq!(e.state, ChangeState::Expired);
    assert!(expire(&c, late - 1).is_none());
}

#[test]
fn rejection_vetoes() {
    let (c, r, d) = open(Outcome::Review, Some(3), 2);
    let (c1, _) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
    let (c2, _) = reject(&c1, &r, &person("user:bob"), 1, "wrong target", 2_001).unwrap();
    assert_eq!(c2.state, ChangeState::Rejected);
    assert!(matches!(approve(&c2, &r, &person("user:carol"), 1, "ok", 2_002), Err(ReviewError::NotPending { .. })));
    assert!(authorize_execution(&c2, &r, &d, &always_open(), 2_003).is_err());
}

#[test]
fn missing_fields_are_all_named() {
    let (c, mut r, _) = open(Outcome::Review, Some(3), 2);
    r.rollback_plan = None;
    r.verification.clear();
    r.expected_benefit.clear();
    r.parameters.clear();
    r.target.service.clear();
    // The digest covers these fields; reopen so only the missing-field check can refuse.
    let d = decision(Outcome::Review, Some(3), 2);
    let (c2, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
    let _ = c;
    match approve(&c2, &r, &person("user:alice"), 1, "ok", 2_000) {
        Err(ReviewError::MissingFields { fields }) => {
            for f in ["service", "expected benefit", "rollback plan", "rollback owner", "verification check", "execution window"] {
                assert!(fields.contains(&f), "{f} not named in {fields:?}");
            }
        }
        other => panic!("expected MissingFields, got {other:?}"),
    }
}

#[test]
fn advisory_and_blocked_never_execute() {
    for outcome in [Outcome::Advisory, Outcome::Blocked] {
        let (mut c, r, d) = open(outcome, None, 0);
        c.state = ChangeState::Approved;
        assert_eq!(authorize_execution(&c, &r, &d, &always_open(), 2_000), Err(ExecutionRefused::NotExecutable(outcome)));
    }
}

#[test]
fn low_confidence_auto_never_executes() {
    let mut r = rec(1);
    r.confidence = 0.3;
    let d = decision(Outcome::Auto, Some(0), 0);
    let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
    assert_eq!(c.state, ChangeState::Approved);
    assert!(matches!(authorize_execution(&c, &r, &d, &always_open(), 2_000), Err(ExecutionRefused::LowConfidence(_))));
}

#[test]
fn approver_outside_group_is_refused() {
    let (c, r, _) = open(Outcome::Review, Some(2), 1);
    let outsider = Principal { subject: "user:mallory".into(), display_name: "m".into(), groups: vec!["dev".into()] };
    assert!(matches!(approve(&c, &r, &outsider, 1, "ok", 2_000), Err(ReviewError::NotInApproverGroup { .. })));
}

#[derive(Clone, Debug)]
enum Step {
    Approve(usize),
    Reject(usize),
}

const SUBJECTS: [&str; 5] = ["user:alice", "user:bob", "user:carol", CAIRN_SERVICE_SUBJECT, "user:requester"];

proptest! {
    /// Whatever sequence of approvals and rejections by whoever, execution is authorised only when
    /// the change is approved with a quorum of distinct, eligible people and no rejection.
    #[test]
    fn execution_is_authorised_only_with_a_valid_quorum(
        tier in prop_oneof![Just(2u8), Just(3u8)],
        steps in proptest::collection::vec(prop_oneof![(0usize..5).prop_map(Step::Approve), (0usize..5).prop_map(Step::Reject)], 0..8),
    ) {
        let mut r = rec(1);
        r.requester = "user:requester".into();
        let required = if tier == 3 { 2 } else { 1 };
        let d = decision(Outcome::Review, Some(tier), required);
        let (mut c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        let mut t = 2_000;
        for s in steps {
            t += 1;
            let (who, is_approve) = match s { Step::Approve(i) => (i, true), Step::Reject(i) => (i, false) };
            let p = person(SUBJECTS[who]);
            let res = if is_approve { approve(&c, &r, &p, 1, "r", t) } else { reject(&c, &r, &p, 1, "r", t) };
            if let Ok((next, _)) = res {
                prop_assert_eq!(next.version, c.version + 1);
                c = next;
            }
            let ok = authorize_execution(&c, &r, &d, &always_open(), t).is_ok();
            let eligible: std::collections::BTreeSet<_> = c.approvals.iter()
                .map(|a| a.subject.as_str())
                .filter(|s| *s != "user:requester" && *s != CAIRN_SERVICE_SUBJECT)
                .collect();
            let quorum = eligible.len() >= usize::from(required) && c.rejection.is_none() && c.state == ChangeState::Approved;
            prop_assert_eq!(ok, quorum, "state {:?} approvals {:?}", c.state, c.approvals);
        }
    }
}

#[derive(Debug)]
struct Verdict(bool);

impl crate::Verifier for Verdict {
    fn check<'a>(&'a self, c: &'a VerificationCheck) -> futures::future::BoxFuture<'a, crate::CheckResult> {
        Box::pin(async move { crate::CheckResult { name: c.name.clone(), passed: self.0, observed: None, detail: "fixed".into() } })
    }
}

#[derive(Debug)]
struct BrokenRollback;

impl Adapter for BrokenRollback {
    fn name(&self) -> &str {
        "broken"
    }
    fn execute<'a>(&'a self, _: &'a Recommendation, _: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
    fn rollback<'a>(&'a self, _: &'a Recommendation, _: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(async { (ExecutionOutcome::Failed { error: "target unreachable".into() }, String::new()) })
    }
}

#[test]
fn a_failed_check_rolls_back_and_a_failed_rollback_stays_visible() {
    let (c, r, d) = open(Outcome::Review, Some(2), 1);
    let (approved, _) = approve(&c, &r, &person("user:carol"), 1, "ok", 2_000).unwrap();
    let ok = Executor::new(Arc::new(Counting::default())).with_verifier(Arc::new(Verdict(true)));
    assert_eq!(block_on(ok.run(&approved, &r, &d, 3_000)).unwrap().1.state, ChangeState::Succeeded);
    let undo = Executor::new(Arc::new(Counting::default())).with_verifier(Arc::new(Verdict(false)));
    assert_eq!(block_on(undo.run(&approved, &r, &d, 3_000)).unwrap().1.state, ChangeState::RolledBack);
    let stuck = Executor::new(Arc::new(BrokenRollback)).with_verifier(Arc::new(Verdict(false)));
    let (exec, next, drafts) = block_on(stuck.run(&approved, &r, &d, 3_000)).unwrap();
    assert_eq!(next.state, ChangeState::RollbackFailed);
    assert!(exec.output.contains("target unreachable"));
    assert_eq!(drafts.last().unwrap().kind, "change.rollback_failed");
}

#[test]
fn a_refused_execution_fails_visibly_with_its_reason() {
    let (c, _, _) = open(Outcome::Review, Some(2), 1);
    let refused = ExecutionRefused::NoQuorum { valid: 0, required: 1 };
    let (next, drafts) = crate::refuse(&c, &refused, 9_000);
    assert_eq!((next.state, next.version, next.updated_ms), (ChangeState::Failed, c.version + 1, 9_000));
    assert_eq!(drafts[0].kind, "change.execution_refused");
    assert!(drafts[0].reason.contains("quorum not met"));
}

#[test]
fn approval_by_removed_principal_does_not_count_at_execution() {
    let (c, r, d) = open(Outcome::Review, Some(2), 1);
    let (approved, _) = approve(&c, &r, &person("user:carol"), 1, "ok", 2_000).unwrap();
    let carol_in_sre = crate::Roster::new([person("user:carol")]);
    let mut gate = always_open();
    gate.roster = Some(carol_in_sre);
    assert!(authorize_execution(&approved, &r, &d, &gate, 3_000).is_ok());
    // Carol left the configuration after approving.
    gate.roster = Some(crate::Roster::new([person("user:dave")]));
    match authorize_execution(&approved, &r, &d, &gate, 3_000) {
        Err(ExecutionRefused::ApproverNoLongerAuthorised { valid: 0, required: 1, revoked }) => assert_eq!(revoked, ["user:carol"]),
        other => panic!("expected the approval not to count, got {other:?}"),
    }
    // Carol is still configured but no longer in the approver group `sre`.
    let moved = Principal { subject: "user:carol".into(), display_name: "c".into(), groups: vec!["dev".into()] };
    gate.roster = Some(crate::Roster::new([moved]));
    assert!(authorize_execution(&approved, &r, &d, &gate, 3_000).is_err());
    // And the executor refuses before the adapter.
    let counting = Arc::new(Counting::default());
    let ex = Executor::new(counting.clone()).with_gate(Arc::new(gate));
    assert!(block_on(ex.run(&approved, &r, &d, 3_000)).is_err());
    assert_eq!(counting.0.load(Ordering::SeqCst), 0);
}

#[test]
fn tier3_outside_window_does_not_run() {
    let (c, r, d) = open(Outcome::Review, Some(3), 2);
    let (c1, _) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
    let (c2, _) = approve(&c1, &r, &person("user:bob"), 1, "ok", 2_001).unwrap();
    assert_eq!(c2.state, ChangeState::Approved);
    // Sundays 02:00–04:00 UTC, production only. 2026-11-29 is a Sunday.
    let sunday = crate::MaintenanceWindow {
        name: "sunday".into(),
        service: "*".into(),
        environment: "production".into(),
        weekly: Some(crate::WeeklySchedule { days: vec!["sun".into()], start: "02:00".into(), duration_minutes: 120 }),
        start: None,
        end: None,
    };
    let gate = crate::ExecutionGate { windows: crate::MaintenanceWindows::new(vec![sunday]).unwrap(), roster: None };
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
    let counting = Arc::new(Counting::default());
    let ex = Executor::new(counting.clone()).with_gate(Arc::new(gate.clone()));
    for outside in ["2026-11-29T01:59:00Z", "2026-11-29T04:00:00Z", "2026-11-28T03:00:00Z"] {
        assert!(matches!(block_on(ex.run(&c2, &r, &d, at(outside))), Err(ExecutionRefused::OutsideWindow(_))), "{outside}");
    }
    assert_eq!(counting.0.load(Ordering::SeqCst), 0);
    // No window configured at all: tier 3 never runs.
    assert!(authorize_execution(&c2, &r, &d, &crate::ExecutionGate::default(), at("2026-11-29T03:00:00Z")).is_err());
    // Inside the window it runs.
    assert!(block_on(ex.run(&c2, &r, &d, at("2026-11-29T03:00:00Z"))).is_ok());
    assert_eq!(counting.0.load(Ordering::SeqCst), 1);
    // A tier-2 change needs no window.
    let (t2, r2, d2) = open(Outcome::Review, Some(2), 1);
    let (t2, _) = approve(&t2, &r2, &person("user:carol"), 1, "ok", 2_000).unwrap();
    assert!(authorize_execution(&t2, &r2, &d2, &gate, at("2026-11-28T03:00:00Z")).is_ok());
}

#[test]
fn new_policy_version_voids_approvals() {
    let (c1, r, d1) = open(Outcome::Review, Some(2), 1);
    let (approved, _) = approve(&c1, &r, &person("user:carol"), 1, "ok", 2_000).unwrap();
    assert!(authorize_execution(&approved, &r, &d1, &always_open(), 2_001).is_ok());
    // The same revision routed under a new policy version: a different change and digest.
    let mut d2 = d1.clone();
    d2.policy_version = "sha256:p2".into();
    let (c2, _) = open_change(&r, &d2, 3_000, &WorkflowConfig::default());
    assert_ne!(c2.id, approved.id);
    assert_ne!(c2.action_digest, approved.action_digest, "the digest covers the policy version");
    assert!(c2.approvals.is_empty());
    // The old approved change does not run under the new decision...
    assert_eq!(authorize_execution(&approved, &r, &d2, &always_open(), 3_001), Err(ExecutionRefused::Mismatch("policy decision")));
    // ...and carrying its approvals over into the new change does not make a quorum.
    let mut carried = c2.clone();
    carried.approvals = approved.approvals.clone();
    carried.state = ChangeState::Approved;
    assert!(matches!(
        authorize_execution(&carried, &r, &d2, &always_open(), 3_002),
        Err(ExecutionRefused::NoQuorum { valid: 0, required: 1 })
    ));
}

#[test]
fn opening_a_change_audits_the_model_version_reason_codes_and_target() {
    let r = rec(1);
    let d = decision(Outcome::Review, Some(2), 1);
    let (_, drafts) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
    assert_eq!(drafts[0].model_version.as_deref(), Some(r.model_version.as_str()));
    assert_eq!(drafts[0].affected_resources, vec![r.target.to_string()]);
    assert_eq!(drafts[1].reason_codes, d.reasons);
    assert_eq!(drafts[2].diff_summary.as_deref(), Some("state none -> pending_approval"));
}
