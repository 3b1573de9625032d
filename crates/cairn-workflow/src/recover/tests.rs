//! Recovery of interrupted changes, tried against what would break it: a stale approval sneaking
//! back to `approved`, a possibly-applied change being run again, a lost claim still touching the
//! target. Time is passed in.

use super::*;
use crate::review::tests::{always_open, decision, rec};
use crate::{Adapter, AdapterFuture, Executor, WorkflowConfig, approve, open_change};
use cairn_types::*;
use std::sync::{Arc, Mutex};

const REQUESTER: &str = "user:req";

fn person(s: &str) -> Principal {
    Principal { subject: s.into(), display_name: s.into(), groups: vec!["sre".into()] }
}

fn claim(call: Option<&str>) -> AbandonedClaim {
    AbandonedClaim { holder: "node-a:41:1700".into(), lease_expires_ms: 9_000, adapter_call: call.map(String::from), stages_done_at_call: None }
}

/// A claim that died while `call` ran, `done` stages into the run.
fn claim_at(call: &str, done: u32) -> AbandonedClaim {
    AbandonedClaim { stages_done_at_call: Some(done), ..claim(Some(call)) }
}

/// An approved tier-2 change of `r`, then claimed (`executing`) as the store does.
fn claimed(r: &Recommendation, d: &Decision) -> ChangeRequest {
    let (c, _) = open_change(r, d, 1_000, &WorkflowConfig::default());
    let (mut c, _) = approve(&c, r, &person("user:alice"), r.revision, "ok", 2_000).unwrap();
    assert_eq!(c.state, ChangeState::Approved);
    c.state = ChangeState::Executing;
    c.version += 1;
    c
}

fn staged_rec() -> Recommendation {
    let mut r = rec(1);
    r.requester = REQUESTER.into();
    r.parameters.insert(STAGES_PARAMETER.into(), "canary,25%,100%".into());
    r
}

#[derive(Debug, Default)]
struct Recording {
    calls: Mutex<Vec<String>>,
}

impl Adapter for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn execute<'a>(&'a self, _: &'a Recommendation, c: &'a ChangeRequest) -> AdapterFuture<'a> {
        self.calls.lock().unwrap().push(format!("adapter execute {}", c.stage.clone().unwrap_or_default()));
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
    fn rollback<'a>(&'a self, _: &'a Recommendation, c: &'a ChangeRequest) -> AdapterFuture<'a> {
        self.calls.lock().unwrap().push(format!("adapter rollback {}", c.stage.clone().unwrap_or_default()));
        Box::pin(async { (ExecutionOutcome::Succeeded, String::new()) })
    }
}

/// A journal writing into the same log as the adapter, so the order is visible; refuses every call
/// from the `refuse_from`-th on (1-based; 0 never).
#[derive(Debug)]
struct Journal {
    log: Arc<Recording>,
    refuse_from: usize,
}

impl RunJournal for Journal {
    fn before_adapter_call<'a>(&'a self, _: &'a ChangeRequest, call: &'a str) -> BoxFuture<'a, Result<(), String>> {
        let mut calls = self.log.calls.lock().unwrap();
        let n = calls.iter().filter(|c| c.starts_with("journal")).count() + 1;
        calls.push(format!("journal {call}"));
        let refuse = self.refuse_from != 0 && n >= self.refuse_from;
        Box::pin(async move { if refuse { Err("lease held by node-b".into()) } else { Ok(()) } })
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn an_untouched_claim_with_a_valid_approval_goes_back_to_approved_and_can_run() {
    let (r, d) = (rec(1), decision(Outcome::Review, Some(2), 1));
    let c = claimed(&r, &d);
    let out = recover_interrupted(&c, &r, &d, 1, &claim(None), &always_open(), 10_000);
    assert_eq!((out.change.state, out.resolution), (ChangeState::Approved, Resolution::Requeued));
    assert_eq!(out.change.version, c.version + 1);
    assert_eq!(out.drafts.len(), 1);
    let d0 = &out.drafts[0];
    assert_eq!(d0.kind, "change.interrupted");
    assert_eq!((d0.payload["lease_holder"].as_str(), d0.payload["lease_expires_ms"].as_i64()), (Some("node-a:41:1700"), Some(9_000)));
    assert!(d0.reason.contains("node-a:41:1700"), "{}", d0.reason);
    assert!(interrupted_escalation(&out, &r, 10_000).is_none(), "nothing for a person to do");
    // What it went back to is runnable under every check again.
    let mut claimed_again = out.change.clone();
    claimed_again.state = ChangeState::Executing;
    assert!(crate::authorize_execution(&claimed_again, &r, &d, &always_open(), 11_000).is_ok());
}

#[test]
fn a_stale_approval_never_goes_back_to_approved() {
    let (r, d) = (rec(1), decision(Outcome::Review, Some(2), 1));
    let c = claimed(&r, &d);
    // A newer revision of the recommendation arrived while it was executing.
    let out = recover_interrupted(&c, &r, &d, 2, &claim(None), &always_open(), 10_000);
    assert_eq!((out.change.state, out.resolution), (ChangeState::Failed, Resolution::Stopped));
    assert!(out.reason.contains("revision 2"), "{}", out.reason);
    // The decision in force is under another policy version: the approval binds the old one.
    let mut d2 = d.clone();
    d2.policy_version = "sha256:p2".into();
    let out = recover_interrupted(&c, &r, &d2, 1, &claim(None), &always_open(), 10_000);
    assert_eq!(out.change.state, ChangeState::Failed);
    // The recommendation's content changed under the same revision: the digest no longer matches.
    let mut r2 = r.clone();
    r2.target.resource = "deploy/other".into();
    let out = recover_interrupted(&c, &r2, &d, 1, &claim(None), &always_open(), 10_000);
    assert_eq!(out.change.state, ChangeState::Failed);
    // The only approval was forged by the requester.
    let mut forged = c.clone();
    forged.approvals[0].subject = forged.requester.clone();
    let out = recover_interrupted(&forged, &r, &d, 1, &claim(None), &always_open(), 10_000);
    assert_eq!(out.change.state, ChangeState::Failed);
    assert_eq!(out.drafts[0].kind, "change.interrupted");
    assert!(interrupted_escalation(&out, &r, 10_000).is_some_and(|e| e.severity == "warning"));
}

#[test]
fn a_closed_window_does_not_void_the_approval() {
    let (r, d) = (rec(1), decision(Outcome::Review, Some(3), 2));
    let (c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
    let (c, _) = approve(&c, &r, &person("user:alice"), 1, "ok", 2_000).unwrap();
    let (mut c, _) = approve(&c, &r, &person("user:bob"), 1, "ok", 2_100).unwrap();
    c.state = ChangeState::Executing;
    c.version += 1;
    let no_window = crate::ExecutionGate::default();
    let out = recover_interrupted(&c, &r, &d, 1, &claim(None), &no_window, 10_000);
    assert_eq!((out.change.state, out.resolution), (ChangeState::Approved, Resolution::Requeued));
}

#[test]
fn a_change_whose_adapter_call_began_is_never_run_again() {
    let (r, d) = (rec(1), decision(Outcome::Review, Some(2), 1));
    let c = claimed(&r, &d);
    let out = recover_interrupted(&c, &r, &d, 1, &claim(Some("execute")), &always_open(), 10_000);
    assert_eq!((out.change.state, out.resolution), (ChangeState::Failed, Resolution::OutcomeUnknown));
    assert_eq!(out.drafts[0].payload["adapter_call"], "execute");
    let e = interrupted_escalation(&out, &r, 10_000).unwrap();
    assert_eq!((e.alertname.as_str(), e.severity.as_str()), ("CairnChangeInterrupted", "critical"));
    assert_eq!(e.labels["change_id"], c.id.0);
    // Even a still-valid approval does not bring it back.
    assert!(crate::authorize_execution(&out.change, &r, &d, &always_open(), 11_000).is_err());
}

/// Recovers a claimed staged change, then runs the undo the executor would run, returning what the
/// audit event said it would undo and what the adapter undid.
fn recover_and_undo(c: &ChangeRequest, claim: &AbandonedClaim) -> (Recovered, serde_json::Value, Vec<String>) {
    let (r, d) = (staged_rec(), decision(Outcome::Review, Some(2), 1));
    let out = recover_interrupted(c, &r, &d, 1, claim, &always_open(), 10_000);
    assert_eq!((out.change.state, out.resolution), (ChangeState::RollbackPending, Resolution::RollingBack), "{claim:?}");
    let stop = out.change.stop.as_ref().unwrap();
    assert_eq!((stop.cause, stop.subject.as_str()), (StopCause::Interrupted, CAIRN_SERVICE_SUBJECT));
    let d0 = &out.drafts[0];
    assert_eq!((d0.kind.as_str(), d0.payload["lease_holder"].as_str()), ("change.interrupted", Some("node-a:41:1700")));
    let said = d0.payload["roll_back"].clone();
    let adapter = Arc::new(Recording::default());
    let ex = Executor::new(adapter.clone()).with_gate(Arc::new(always_open()));
    let mut undo = out.change.clone();
    undo.state = ChangeState::Executing;
    let (_, done, _) = block_on(ex.roll_back_stopped(&undo, &r, 12_000)).unwrap();
    assert_eq!(done.state, ChangeState::RolledBack);
    let undone = adapter.calls.lock().unwrap().iter().map(|c| c.trim_start_matches("adapter rollback ").to_string()).collect();
    (out, said, undone)
}

#[test]
fn an_interrupted_rollout_rolls_back_what_ran_and_what_was_running() {
    let r = staged_rec();
    let d = decision(Outcome::Review, Some(2), 1);
    let mut paused = claimed(&r, &d);
    paused.stages_done = 1; // canary ran, verified and paused; 25% was approved and claimed

    // Nothing began, and the claim has no valid approval of stage 25%: canary is undone.
    let (_, said, undone) = recover_and_undo(&paused, &claim(None));
    assert_eq!((said, undone), (serde_json::json!(["canary"]), vec!["canary".to_string()]));

    // Stage 25% was running: it is undone too, first.
    let (out, said, undone) = recover_and_undo(&paused, &claim_at("execute stage 25%", 1));
    assert_eq!(said, serde_json::json!(["25%", "canary"]));
    assert_eq!(undone, ["25%", "canary"]);
    assert!(out.reason.contains("execute stage 25%"), "{}", out.reason);

    // An auto rollout runs its stages back to back: the store still says 0 stages done, the lease
    // knows two had verified when 100% began.
    let mut d0 = decision(Outcome::Auto, Some(0), 0);
    d0.stage_approval = false;
    let (mut auto, _) = open_change(&r, &d0, 1_000, &WorkflowConfig::default());
    auto.state = ChangeState::Executing;
    auto.version += 1;
    let (_, said, undone) = recover_and_undo(&auto, &claim_at("execute stage 100%", 2));
    assert_eq!(said, serde_json::json!(["100%", "25%", "canary"]));
    assert_eq!(undone, ["100%", "25%", "canary"]);

    // The first stage was running: it alone is undone, nothing is run forward.
    let (_, said, undone) = recover_and_undo(&auto, &claim_at("execute stage canary", 0));
    assert_eq!((said, undone), (serde_json::json!(["canary"]), vec!["canary".to_string()]));
}

#[test]
fn an_interrupted_rollback_after_a_failed_check_is_left_for_a_person() {
    let (r, d) = (rec(1), decision(Outcome::Review, Some(2), 1));
    let c = claimed(&r, &d);
    let out = recover_interrupted(&c, &r, &d, 1, &claim_at("rollback", 0), &always_open(), 10_000);
    assert_eq!((out.change.state, out.resolution), (ChangeState::RollbackFailed, Resolution::OutcomeUnknown));
}

#[test]
fn an_interrupted_undo_is_retried_only_if_nothing_was_undone_yet() {
    let r = staged_rec();
    let d = decision(Outcome::Review, Some(2), 1);
    let mut c = claimed(&r, &d);
    c.stages_done = 2;
    c.state = ChangeState::AwaitingStageApproval;
    let (mut stopped, _) = c.stop_rollout(RolloutStop::expired(&c, 5_000), 5_000);
    stopped.state = ChangeState::Executing;
    stopped.version += 1;
    let out = recover_interrupted(&stopped, &r, &d, 1, &claim(None), &always_open(), 10_000);
    assert_eq!((out.change.state, out.resolution), (ChangeState::RollbackPending, Resolution::Requeued));
    assert_eq!(out.change.stop.as_ref().map(|s| s.cause), Some(StopCause::Expired), "the original stop is kept");
    let out = recover_interrupted(&stopped, &r, &d, 1, &claim(Some("rollback stage 25%")), &always_open(), 10_000);
    assert_eq!((out.change.state, out.resolution), (ChangeState::RollbackFailed, Resolution::OutcomeUnknown));
    assert_eq!(out.drafts[0].kind, "change.interrupted");
}

#[test]
fn the_journal_hears_of_every_adapter_call_before_it_happens() {
    block_on(async {
        let r = staged_rec();
        let mut d = decision(Outcome::Auto, Some(0), 0);
        d.stage_approval = false;
        let (mut c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        assert_eq!(c.state, ChangeState::Approved);
        c.state = ChangeState::Executing;
        let log = Arc::new(Recording::default());
        let ex = Executor::new(log.clone()).with_journal(Arc::new(Journal { log: log.clone(), refuse_from: 0 }));
        let (_, done, _) = ex.run(&c, &r, &d, 2_000).await.unwrap();
        assert_eq!(done.state, ChangeState::Succeeded);
        assert_eq!(
            *log.calls.lock().unwrap(),
            [
                "journal execute stage canary",
                "adapter execute canary",
                "journal execute stage 25%",
                "adapter execute 25%",
                "journal execute stage 100%",
                "adapter execute 100%",
            ]
        );
    });
}

#[test]
fn a_lost_claim_stops_the_executor_before_it_touches_the_target_again() {
    block_on(async {
        let r = staged_rec();
        let mut d = decision(Outcome::Auto, Some(0), 0);
        d.stage_approval = false;
        let (mut c, _) = open_change(&r, &d, 1_000, &WorkflowConfig::default());
        c.state = ChangeState::Executing;
        let log = Arc::new(Recording::default());
        let ex = Executor::new(log.clone()).with_journal(Arc::new(Journal { log: log.clone(), refuse_from: 2 }));
        let err = ex.run(&c, &r, &d, 2_000).await.unwrap_err();
        assert!(matches!(err, ExecutionRefused::ClaimLost(ref why) if why.contains("node-b")), "{err:?}");
        assert_eq!(*log.calls.lock().unwrap(), ["journal execute stage canary", "adapter execute canary", "journal execute stage 25%"]);

        // A one-step change: the adapter is never called.
        let (mut one, _) = open_change(&rec(1), &decision(Outcome::Auto, Some(0), 0), 1_000, &WorkflowConfig::default());
        one.state = ChangeState::Executing;
        let log = Arc::new(Recording::default());
        let ex = Executor::new(log.clone()).with_journal(Arc::new(Journal { log: log.clone(), refuse_from: 1 }));
        assert!(matches!(ex.run(&one, &rec(1), &decision(Outcome::Auto, Some(0), 0), 2_000).await, Err(ExecutionRefused::ClaimLost(_))));
        assert_eq!(*log.calls.lock().unwrap(), ["journal execute"]);
    });
}
