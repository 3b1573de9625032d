//! A staged change never runs stage N+1 without a valid approval of that stage, and a failed check
//! at any stage undoes every stage that ran. Time is passed in, never waited for.

use crate::review::tests::{decision, rec};
use crate::{Adapter, AdapterFuture, CheckResult, ExecutionGate, ExecutionRefused, Executor, ReviewError, Verifier, approve, open_change};
use crate::WorkflowConfig;
use cairn_types::*;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const REQUESTER: &str = "user:req";

/// Records the stage of every execute and rollback call.
#[derive(Debug, Default)]
struct Stages {
    ran: Mutex<Vec<String>>,
    undone: Mutex<Vec<String>>,
    /// The undo of this stage fails.
    failing_undo: Option<String>,
}

impl Stages {
    fn ran(&self) -> Vec<String> {
        self.ran.lock().unwrap().clone()
    }
    fn undone(&self) -> Vec<String> {
        self.undone.lock().unwrap().clone()
    }
}

impl Adapter for Stages {
    fn name(&self) -> &str {
        "stages"
    }
    fn execute<'a>(&'a self, _: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        self.ran.lock().unwrap().push(change.stage.clone().unwrap_or_default());
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
    fn rollback<'a>(&'a self, _: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        let stage = change.stage.clone().unwrap_or_default();
        self.undone.lock().unwrap().push(stage.clone());
        let failed = self.failing_undo.as_ref() == Some(&stage);
        Box::pin(async move {
            if failed {
                (ExecutionOutcome::Failed { error: format!("undo of {stage} broke") }, String::new())
            } else {
                (ExecutionOutcome::Succeeded, String::new())
            }
        })
    }
}

/// Passes every check except on the `fail_on`-th call (1-based; 0 never fails).
#[derive(Debug)]
struct FailNth {
    calls: AtomicUsize,
    fail_on: usize,
}

impl Verifier for FailNth {
    fn check<'a>(&'a self, check: &'a VerificationCheck) -> BoxFuture<'a, CheckResult> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let passed = n != self.fail_on;
        Box::pin(async move { CheckResult { name: check.name.clone(), passed, observed: None, detail: format!("call {n}") } })
    }
}

fn staged_rec() -> Recommendation {
    let mut r = rec(1);
    r.requester = REQUESTER.into();
    r.parameters.insert(STAGES_PARAMETER.into(), "canary, 25%,100%".into());
    r
}

fn person(s: &str) -> Principal {
    Principal { subject: s.into(), display_name: s.into(), groups: vec!["sre".into()] }
}

fn executor(fail_on: usize) -> (Executor, Arc<Stages>) {
    let adapter = Arc::new(Stages::default());
    let ex = Executor::new(adapter.clone())
        .with_verifier(Arc::new(FailNth { calls: AtomicUsize::new(0), fail_on }))
        .with_gate(Arc::new(ExecutionGate::default()));
    (ex, adapter)
}

fn kinds(drafts: &[AuditDraft]) -> Vec<&str> {
    drafts.iter().map(|d| d.kind.as_str()).collect()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn stages_come_from_the_recommendation_and_are_bound_by_the_digest() {
    let r = staged_rec();
    assert_eq!(r.stages(), ["canary", "25%", "100%"]);
    let mut other = r.clone();
    other.parameters.insert(STAGES_PARAMETER.into(), "canary,100%".into());
    assert_ne!(r.action_digest("p"), other.action_digest("p"), "approvals bind to the staged plan");
    let (c, _) = open_change(&r, &decision(Outcome::Review, Some(2), 1), 1_000, &WorkflowConfig::default());
    assert_eq!(c.stages, ["canary", "25%", "100%"]);
    assert_eq!(c.next_stage(), Some("canary"));
    assert!(rec(1).stages().is_empty() && open_change(&rec(1), &decision(Outcome::Auto, Some(0), 0), 0, &WorkflowConfig::default()).0.stages.is_empty());
}

#[test]
fn a_staged_change_never_runs_the_next_stage_without_a_valid_approval_of_it() {
    block_on(async {
        let r = staged_rec();
        let d = decision(Outcome::Review, Some(2), 1);
        let (ex, adapter) = executor(0);
        let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        let (c, _) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
        assert_eq!(c.state, ChangeState::Approved);

        // Stage 1 runs, verifies, and the change pauses naming stage 2.
        let (_, c, drafts) = ex.run(&c, &r, &d, 3_000).await.unwrap();
        assert_eq!(adapter.ran(), ["canary"]);
        assert_eq!(c.state, ChangeState::AwaitingStageApproval);
        assert_eq!((c.stages_done, c.next_stage(), c.stage.as_deref()), (1, Some("25%"), None));
        assert_eq!(kinds(&drafts), ["change.executed", "change.stage_started", "change.stage_finished", "change.stage_paused"]);
        assert_eq!(drafts[3].payload["next_stage"], "25%");

        // Paused: the executor refuses it as it is.
        assert!(matches!(ex.run(&c, &r, &d, 3_500).await, Err(ExecutionRefused::NotApproved(ChangeState::AwaitingStageApproval))));
        // Forced to approved without a stage approval: refused.
        let mut forged = c.clone();
        forged.state = ChangeState::Approved;
        assert!(matches!(ex.run(&forged, &r, &d, 3_500).await, Err(ExecutionRefused::NoStageApproval { ref stage, valid: 0, required: 1 }) if stage == "25%"));

        // Who may not approve the stage, and approvals that do not bind.
        assert!(matches!(approve(&c, &r, &person(REQUESTER), 1, "mine", 4_000), Err(ReviewError::SelfApproval { .. })));
        assert!(matches!(approve(&c, &r, &person(CAIRN_SERVICE_SUBJECT), 1, "me", 4_000), Err(ReviewError::ServiceIdentity)));
        let outsider = Principal { subject: "user:eve".into(), display_name: "eve".into(), groups: vec!["dev".into()] };
        assert!(matches!(approve(&c, &r, &outsider, 1, "go", 4_000), Err(ReviewError::NotInApproverGroup { .. })));
        assert!(matches!(approve(&c, &r, &person("user:bob"), 0, "go", 4_000), Err(ReviewError::StaleRevision { named: 0, current: 1 })));
        let mut newer = r.clone();
        newer.revision = 2;
        assert!(matches!(approve(&c, &newer, &person("user:bob"), 2, "go", 4_000), Err(ReviewError::StaleRevision { .. })));
        let mut changed = r.clone();
        changed.parameters.insert(STAGES_PARAMETER.into(), "canary,100%".into());
        assert!(matches!(approve(&c, &changed, &person("user:bob"), 1, "go", 4_000), Err(ReviewError::DigestMismatch { .. })));
        assert!(matches!(approve(&c, &r, &person("user:bob"), 1, " ", 4_000), Err(ReviewError::EmptyReason)));

        // Forged stage approvals: by the requester, for another stage, for a stale revision or
        // another digest: none lets stage 2 run.
        for (subject, stage, revision, digest) in [
            (REQUESTER, "25%", 1, c.action_digest.clone()),
            (CAIRN_SERVICE_SUBJECT, "25%", 1, c.action_digest.clone()),
            ("user:bob", "100%", 1, c.action_digest.clone()),
            ("user:bob", "25%", 0, c.action_digest.clone()),
            ("user:bob", "25%", 1, "other".to_string()),
        ] {
            let mut forged = c.clone();
            forged.state = ChangeState::Approved;
            let mut a = c.approvals[0].clone();
            a.subject = subject.into();
            a.revision = revision;
            a.action_digest = digest;
            forged.stage_approvals.push(StageApproval { stage: stage.into(), approval: a });
            assert!(
                matches!(ex.run(&forged, &r, &d, 3_600).await, Err(ExecutionRefused::NoStageApproval { .. })),
                "{subject} {stage} {revision}"
            );
        }
        // The owner of the break-glass the decision in force was opened under cannot approve a
        // stage of it either (the same rule as for the change's own approvals).
        let mut under_breakglass = d.clone();
        under_breakglass.breakglass_owner = Some("user:dan".into());
        let mut forged = c.clone();
        forged.state = ChangeState::Approved;
        let mut a = c.approvals[0].clone();
        a.subject = "user:dan".into();
        forged.stage_approvals.push(StageApproval { stage: "25%".into(), approval: a });
        let dan = |d: &Decision| crate::execute::counting_approvers(&forged, &r, d, forged.stage_approvals.iter().map(|s| &s.approval)).contains("user:dan");
        assert!(dan(&d) && !dan(&under_breakglass), "dan counts, except as the break-glass's owner");
        assert!(matches!(ex.run(&forged, &r, &under_breakglass, 3_600).await, Err(ExecutionRefused::NoStageApproval { .. })));
        assert_eq!(adapter.ran(), ["canary"], "no refused attempt reached the adapter");

        // A valid approval of stage 2 lets exactly stage 2 run; the change pauses before stage 3.
        let (c, drafts) = approve(&c, &r, &person("user:bob"), 1, "canary looks fine", 5_000).unwrap();
        assert_eq!(kinds(&drafts), ["change.stage_approval_recorded", "change.stage_approved"]);
        assert_eq!((c.state, drafts[0].payload["stage"].as_str()), (ChangeState::Approved, Some("25%")));
        assert!(matches!(approve(&c, &r, &person("user:carol"), 1, "late", 5_100), Err(ReviewError::NotPending { .. })));
        let (_, c, _) = ex.run(&c, &r, &d, 6_000).await.unwrap();
        assert_eq!(adapter.ran(), ["canary", "25%"]);
        assert_eq!((c.state, c.next_stage()), (ChangeState::AwaitingStageApproval, Some("100%")));

        // The approval of stage 2 is not an approval of stage 3.
        let mut forged = c.clone();
        forged.state = ChangeState::Approved;
        assert!(matches!(ex.run(&forged, &r, &d, 6_500).await, Err(ExecutionRefused::NoStageApproval { ref stage, .. }) if stage == "100%"));
        // The same person may approve each stage once.
        let (c, _) = approve(&c, &r, &person("user:bob"), 1, "25% fine", 7_000).unwrap();
        let (_, c, drafts) = ex.run(&c, &r, &d, 8_000).await.unwrap();
        assert_eq!(adapter.ran(), ["canary", "25%", "100%"]);
        assert_eq!((c.state, c.stages_done, c.next_stage()), (ChangeState::Succeeded, 3, None));
        assert_eq!(kinds(&drafts), ["change.executed", "change.stage_started", "change.stage_finished"]);
        assert!(adapter.undone().is_empty());
    });
}

#[test]
fn tier3_stage_transitions_need_two_distinct_approvers() {
    block_on(async {
        let r = staged_rec();
        let d = decision(Outcome::Review, Some(3), 2);
        let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        let mut c = c;
        c.state = ChangeState::AwaitingStageApproval;
        c.stages_done = 1;
        let (c, drafts) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
        assert_eq!((c.state, kinds(&drafts)), (ChangeState::AwaitingStageApproval, vec!["change.stage_approval_recorded"]));
        assert!(matches!(approve(&c, &r, &person("user:alice"), 1, "again", 2_100), Err(ReviewError::AlreadyApproved { .. })));
        let (c, _) = approve(&c, &r, &person("user:bob"), 1, "ok", 2_200).unwrap();
        assert_eq!(c.state, ChangeState::Approved);
    });
}

#[test]
fn a_failed_check_at_stage_two_rolls_back_every_stage_and_runs_no_later_one() {
    block_on(async {
        // Tier 1 auto runs through its stages without pausing; the second check fails.
        let r = staged_rec();
        let d = decision(Outcome::Auto, Some(1), 0);
        let (ex, adapter) = executor(2);
        let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        assert_eq!(c.state, ChangeState::Approved);
        let (execution, c, drafts) = ex.run(&c, &r, &d, 2_000).await.unwrap();
        assert_eq!(adapter.ran(), ["canary", "25%"], "100% never ran");
        assert_eq!(adapter.undone(), ["25%", "canary"], "newest first, everything executed so far");
        assert_eq!((c.state, c.stages_done, c.stage.as_deref()), (ChangeState::RolledBack, 1, None));
        assert_eq!(
            kinds(&drafts),
            [
                "change.executed",
                "change.stage_started",
                "change.stage_finished",
                "change.stage_started",
                "change.verification_failed",
                "change.stage_failed",
                "change.rolled_back"
            ]
        );
        assert_eq!(drafts[5].payload["stage"], "25%");
        assert!(execution.output.contains("stage 25% (2 of 3)"), "{}", execution.output);
        // A rolled-back change never runs again.
        assert!(matches!(ex.run(&c, &r, &d, 3_000).await, Err(ExecutionRefused::NotApproved(ChangeState::RolledBack))));
        assert_eq!(adapter.ran(), ["canary", "25%"]);
    });
}

#[test]
fn a_failed_check_after_an_approved_stage_also_undoes_the_earlier_stages() {
    block_on(async {
        let r = staged_rec();
        let d = decision(Outcome::Review, Some(2), 1);
        let (ex, adapter) = executor(2);
        let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        let (c, _) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
        let (_, c, _) = ex.run(&c, &r, &d, 3_000).await.unwrap();
        let (c, _) = approve(&c, &r, &person("user:bob"), 1, "go on", 4_000).unwrap();
        let (_, c, _) = ex.run(&c, &r, &d, 5_000).await.unwrap();
        assert_eq!(c.state, ChangeState::RolledBack);
        assert_eq!(adapter.ran(), ["canary", "25%"]);
        assert_eq!(adapter.undone(), ["25%", "canary"]);
    });
}

#[test]
fn the_dry_run_adapter_names_the_stage() {
    block_on(async {
        let r = staged_rec();
        let d = decision(Outcome::Auto, Some(0), 0);
        let ex = Executor::new(Arc::new(crate::DryRunAdapter));
        let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        let (execution, c, _) = ex.run(&c, &r, &d, 2_000).await.unwrap();
        assert_eq!(c.state, ChangeState::Succeeded);
        for stage in ["canary", "25%", "100%"] {
            assert!(execution.output.contains(&format!("  stage {stage}\n")), "{}", execution.output);
        }
    });
}

#[test]
fn the_policy_decides_whether_stages_pause_not_the_tier() {
    block_on(async {
        let r = staged_rec();
        // A tier-2 review whose policy lets the stages run through: after the approval, all three run.
        let mut d = decision(Outcome::Review, Some(2), 1);
        d.stage_approval = false;
        let (ex, adapter) = executor(0);
        let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        assert!(!c.stage_approval, "the change records the decision's word");
        let (c, _) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
        let (_, c, _) = ex.run(&c, &r, &d, 3_000).await.unwrap();
        assert_eq!((c.state, adapter.ran()), (ChangeState::Succeeded, vec!["canary".to_string(), "25%".into(), "100%".into()]));

        // A tier-0 auto change whose policy says pause: it stops after the canary.
        let mut d = decision(Outcome::Auto, Some(0), 0);
        d.stage_approval = true;
        let (ex, adapter) = executor(0);
        let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        let (_, c, drafts) = ex.run(&c, &r, &d, 2_000).await.unwrap();
        assert_eq!((c.state, adapter.ran()), (ChangeState::AwaitingStageApproval, vec!["canary".to_string()]));
        assert_eq!(kinds(&drafts).last(), Some(&"change.stage_paused"));
    });
}

#[test]
fn a_change_that_says_run_through_still_pauses_when_the_decision_in_force_says_pause() {
    block_on(async {
        let r = staged_rec();
        let d = decision(Outcome::Review, Some(2), 1);
        assert!(d.stage_approval);
        let (ex, adapter) = executor(0);
        let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        let (c, _) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
        // Tampered: the stored change claims its stages run through.
        let mut forged = c.clone();
        forged.stage_approval = false;
        let (_, c, _) = ex.run(&forged, &r, &d, 3_000).await.unwrap();
        assert_eq!((c.state, adapter.ran()), (ChangeState::AwaitingStageApproval, vec!["canary".to_string()]));
        let mut forged = c.clone();
        forged.state = ChangeState::Approved;
        forged.stage_approval = false;
        assert!(matches!(ex.run(&forged, &r, &d, 4_000).await, Err(ExecutionRefused::NoStageApproval { .. })));
        // And the other way round: a decision that says run through does not unpause a change that
        // recorded pause.
        let mut lax = d.clone();
        lax.stage_approval = false;
        let mut forged = c.clone();
        forged.state = ChangeState::Approved;
        forged.stage_approval = true;
        assert!(matches!(ex.run(&forged, &r, &lax, 4_000).await, Err(ExecutionRefused::NoStageApproval { .. })));
        assert_eq!(adapter.ran(), ["canary"]);
    });
}

#[test]
fn a_change_stored_before_the_field_existed_pauses() {
    let r = staged_rec();
    let (c, _) = open_change(&r, &decision(Outcome::Auto, Some(0), 0), 1_000, &WorkflowConfig::default());
    assert!(!c.stage_approval);
    let mut json = serde_json::to_value(&c).unwrap();
    json.as_object_mut().unwrap().remove("stage_approval");
    let old: ChangeRequest = serde_json::from_value(json).unwrap();
    assert!(old.stage_approval, "missing means pause");
    let mut d = serde_json::to_value(decision(Outcome::Auto, Some(0), 0)).unwrap();
    d.as_object_mut().unwrap().remove("stage_approval");
    assert!(serde_json::from_value::<Decision>(d).unwrap().stage_approval);
}

// --- stopping a paused rollout: reject, expiry, refusal; every stop rolls back what ran ----------

const STAGE_TTL_MS: i64 = 10_000;

/// A tier-2 staged change that ran `done` stages (1 or 2) and waits for the next one's approval;
/// the adapter fails the undo of `failing_undo`.
async fn paused_after(done: u32, failing_undo: Option<&str>) -> (Executor, Arc<Stages>, Recommendation, Decision, ChangeRequest) {
    let r = staged_rec();
    let d = decision(Outcome::Review, Some(2), 1);
    let adapter = Arc::new(Stages { failing_undo: failing_undo.map(String::from), ..Default::default() });
    let ex = Executor::new(adapter.clone())
        .with_verifier(Arc::new(FailNth { calls: AtomicUsize::new(0), fail_on: 0 }))
        .with_stage_approval_ttl_ms(STAGE_TTL_MS);
    let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
    let (c, _) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
    let (_, mut c, _) = ex.run(&c, &r, &d, 3_000).await.unwrap();
    if done == 2 {
        let (approved, _) = approve(&c, &r, &person("user:bob"), 1, "canary fine", 4_000).unwrap();
        c = ex.run(&approved, &r, &d, 5_000).await.unwrap().1;
    }
    assert_eq!((c.state, c.stages_done), (ChangeState::AwaitingStageApproval, done));
    (ex, adapter, r, d, c)
}

/// What the store's claim does to a change in `rollback_pending`.
fn claimed(c: &ChangeRequest) -> ChangeRequest {
    assert_eq!(c.state, ChangeState::RollbackPending);
    let mut next = c.clone();
    next.state = ChangeState::Executing;
    next.version += 1;
    next
}

#[test]
fn a_paused_stage_has_its_own_deadline() {
    block_on(async {
        let (_, _, _, _, c) = paused_after(1, None).await;
        assert_eq!(c.expires_ms, 3_000 + STAGE_TTL_MS, "the deadline starts at the pause");
        let (_, _, _, _, c) = paused_after(2, None).await;
        assert_eq!(c.expires_ms, 5_000 + STAGE_TTL_MS, "each pause starts a new deadline");
    });
}

#[test]
fn a_reject_of_a_paused_rollout_rolls_back_every_executed_stage_newest_first() {
    block_on(async {
        let (ex, adapter, r, d, c) = paused_after(2, None).await;
        let (stopped, drafts) = crate::reject(&c, &r, &person("user:carol"), 1, "25% shows errors", 6_000).unwrap();
        assert_eq!(stopped.state, ChangeState::RollbackPending);
        assert_eq!((stopped.version, stopped.stages_done), (c.version + 1, 2));
        let stop = stopped.stop.clone().unwrap();
        assert_eq!((stop.cause, stop.subject.as_str(), stop.reason.as_str()), (StopCause::Rejected, "user:carol", "25% shows errors"));
        assert_eq!(stopped.rejection.as_ref().map(|j| j.subject.as_str()), Some("user:carol"));
        assert_eq!(kinds(&drafts), ["change.rejected"]);
        assert_eq!(drafts[0].actor, "user:carol");
        assert_eq!(drafts[0].payload["roll_back"], serde_json::json!(["25%", "canary"]));
        assert_eq!(drafts[0].payload["state"], "rollback_pending");

        // Stopped: nothing approves it or runs it any more.
        assert!(matches!(approve(&stopped, &r, &person("user:dave"), 1, "go on", 6_100), Err(ReviewError::NotPending { .. })));
        assert!(matches!(crate::reject(&stopped, &r, &person("user:dave"), 1, "again", 6_100), Err(ReviewError::NotPending { .. })));
        assert!(matches!(ex.run(&stopped, &r, &d, 6_200).await, Err(ExecutionRefused::NotApproved(ChangeState::RollbackPending))));
        assert!(adapter.undone().is_empty(), "the reject itself touches nothing: the executor undoes");

        let (execution, done, drafts) = ex.roll_back_stopped(&claimed(&stopped), &r, 7_000).await.unwrap();
        assert_eq!(adapter.undone(), ["25%", "canary"]);
        assert_eq!(adapter.ran(), ["canary", "25%"], "100% never ran");
        assert_eq!((done.state, done.stage.as_deref()), (ChangeState::RolledBack, None));
        assert_eq!(kinds(&drafts), ["change.executed", "change.rolled_back"]);
        assert_eq!(execution.outcome, ExecutionOutcome::Succeeded);
        assert!(execution.output.contains("25% shows errors"), "{}", execution.output);

        // Terminal: no second rollback, no run.
        assert!(matches!(ex.roll_back_stopped(&done, &r, 8_000).await, Err(ExecutionRefused::NotApproved(ChangeState::RolledBack))));
        assert!(ex.run(&done, &r, &d, 8_000).await.is_err());
        assert_eq!(adapter.undone().len(), 2);
    });
}

#[test]
fn who_may_stop_a_rollout_and_what_they_must_name() {
    block_on(async {
        let (_, _, r, _, c) = paused_after(1, None).await;
        let reject = |who: &Principal, revision: u32, rec: &Recommendation, reason: &str, at: i64| crate::reject(&c, rec, who, revision, reason, at);
        assert!(matches!(reject(&person(CAIRN_SERVICE_SUBJECT), 1, &r, "stop", 4_000), Err(ReviewError::ServiceIdentity)));
        let outsider = Principal { subject: "user:eve".into(), display_name: "eve".into(), groups: vec!["dev".into()] };
        assert!(matches!(reject(&outsider, 1, &r, "stop", 4_000), Err(ReviewError::NotInApproverGroup { .. })));
        assert!(matches!(reject(&person("user:bob"), 0, &r, "stop", 4_000), Err(ReviewError::StaleRevision { named: 0, current: 1 })));
        let mut newer = r.clone();
        newer.revision = 2;
        assert!(matches!(reject(&person("user:bob"), 2, &newer, "stop", 4_000), Err(ReviewError::StaleRevision { .. })));
        let mut changed = r.clone();
        changed.parameters.insert(STAGES_PARAMETER.into(), "canary,100%".into());
        assert!(matches!(reject(&person("user:bob"), 1, &changed, "stop", 4_000), Err(ReviewError::DigestMismatch { .. })));
        assert!(matches!(reject(&person("user:bob"), 1, &r, "  ", 4_000), Err(ReviewError::EmptyReason)));
        assert!(
            matches!(reject(&person("user:bob"), 1, &r, "stop", c.expires_ms), Err(ReviewError::Expired { .. })),
            "past the deadline, expiry stops it instead"
        );
        // The requester may stop their own rollout: stopping only ever undoes.
        let (stopped, _) = reject(&person(REQUESTER), 1, &r, "I asked for it, I stop it", 4_000).unwrap();
        assert_eq!(stopped.state, ChangeState::RollbackPending);
        // A stage approval past the deadline is refused too.
        assert!(matches!(approve(&c, &r, &person("user:bob"), 1, "late", c.expires_ms), Err(ReviewError::Expired { .. })));
    });
}

#[test]
fn a_reject_between_an_approved_stage_and_its_run_also_rolls_back() {
    block_on(async {
        let (ex, adapter, r, d, c) = paused_after(1, None).await;
        let (approved, _) = approve(&c, &r, &person("user:bob"), 1, "go", 4_000).unwrap();
        assert_eq!(approved.state, ChangeState::Approved);
        let (stopped, _) = crate::reject(&approved, &r, &person("user:carol"), 1, "changed my mind", 4_100).unwrap();
        assert_eq!(stopped.state, ChangeState::RollbackPending);
        // Even forced back into the executor with the stage approval in hand, 25% does not run.
        let mut forged = stopped.clone();
        forged.state = ChangeState::Executing;
        assert!(matches!(ex.run(&forged, &r, &d, 4_200).await, Err(ExecutionRefused::Stopped(_))));
        ex.roll_back_stopped(&claimed(&stopped), &r, 5_000).await.unwrap();
        assert_eq!((adapter.ran(), adapter.undone()), (vec!["canary".to_string()], vec!["canary".to_string()]));
    });
}

#[test]
fn a_paused_rollout_expires_exactly_once_and_is_rolled_back() {
    block_on(async {
        let (ex, adapter, r, d, c) = paused_after(2, None).await;
        assert!(crate::expire(&c, c.expires_ms - 1).is_none(), "not before the deadline");
        let (stopped, drafts) = crate::expire(&c, c.expires_ms).unwrap();
        assert_eq!((stopped.state, stopped.stop.as_ref().map(|s| s.cause)), (ChangeState::RollbackPending, Some(StopCause::Expired)));
        assert_eq!(kinds(&drafts), ["change.expired"]);
        assert_eq!(drafts[0].actor, CAIRN_SERVICE_SUBJECT);
        assert!(crate::expire(&stopped, c.expires_ms + 60_000).is_none(), "a stopped rollout does not expire twice");
        assert!(matches!(approve(&stopped, &r, &person("user:bob"), 1, "late", c.expires_ms + 1), Err(ReviewError::NotPending { .. })));
        let (_, done, _) = ex.roll_back_stopped(&claimed(&stopped), &r, c.expires_ms + 10).await.unwrap();
        assert_eq!(done.state, ChangeState::RolledBack);
        assert!(crate::expire(&done, c.expires_ms + 60_000).is_none());
        assert!(ex.run(&done, &r, &d, c.expires_ms + 60_000).await.is_err());
        assert_eq!(adapter.undone(), ["25%", "canary"], "each stage undone exactly once");
        assert_eq!(adapter.ran(), ["canary", "25%"]);
    });
}

#[test]
fn a_failed_undo_of_a_stopped_rollout_ends_in_rollback_failed_and_still_tries_the_rest() {
    block_on(async {
        let (ex, adapter, r, _, c) = paused_after(2, Some("25%")).await;
        let (stopped, _) = crate::reject(&c, &r, &person("user:carol"), 1, "stop", 6_000).unwrap();
        let (execution, done, drafts) = ex.roll_back_stopped(&claimed(&stopped), &r, 7_000).await.unwrap();
        assert_eq!(done.state, ChangeState::RollbackFailed);
        assert_eq!(adapter.undone(), ["25%", "canary"], "the canary is still undone");
        assert_eq!(kinds(&drafts), ["change.executed", "change.rollback_failed"]);
        assert!(matches!(execution.outcome, ExecutionOutcome::Failed { .. }));
        assert!(execution.output.contains("rollback of stage 25% failed"), "{}", execution.output);
        // The escalation the server sends for it names the change.
        let e = crate::guard::rollback_failed_escalation(&done, &r, &execution.output, 7_000);
        assert_eq!(e.alertname, "CairnRollbackFailed");
    });
}

#[test]
fn a_refused_next_stage_rolls_back_what_ran_instead_of_failing_in_place() {
    block_on(async {
        let (ex, adapter, r, _, c) = paused_after(1, None).await;
        let (approved, _) = approve(&c, &r, &person("user:bob"), 1, "go", 4_000).unwrap();
        let mut running = approved.clone();
        running.state = ChangeState::Executing;
        let refused = ExecutionRefused::Mismatch("the policy version that decided it is no longer active");
        let (stopped, drafts) = crate::refuse(&running, &refused, 4_100);
        assert_eq!((stopped.state, stopped.stop.as_ref().map(|s| s.cause)), (ChangeState::RollbackPending, Some(StopCause::Refused)));
        assert_eq!(kinds(&drafts), ["change.execution_refused"]);
        let (_, done, _) = ex.roll_back_stopped(&claimed(&stopped), &r, 5_000).await.unwrap();
        assert_eq!((done.state, adapter.undone()), (ChangeState::RolledBack, vec!["canary".to_string()]));
        // A change that ran nothing still just fails.
        let (fresh, _) = open_change(&r, &decision(Outcome::Review, Some(2), 1), 1_000, &WorkflowConfig::default());
        assert_eq!(crate::refuse(&fresh, &refused, 2_000).0.state, ChangeState::Failed);
    });
}
