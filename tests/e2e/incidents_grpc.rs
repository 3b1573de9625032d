//! Incidents followed live through the real gRPC API (`WatchIncidents`): a follower sees each
//! incident as it is written, and one that reconnects from its last cursor misses no change and is
//! not sent again what it already had.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_proto::v1 as pb;
use cairn_testkit::*;
use std::time::Duration;
use tokio_stream::StreamExt;

/// Reads the stream until incidents holding an alert with each of `fingerprints` have arrived;
/// returns every event read on the way.
async fn until_held(stream: &mut tonic::Streaming<pb::IncidentEvent>, fingerprints: &[String]) -> Vec<pb::IncidentEvent> {
    let holds = |e: &pb::IncidentEvent, fp: &str| {
        e.incident.as_ref().is_some_and(|i| i.members.iter().any(|m| m.id == format!("alert:{fp}")))
    };
    let mut seen: Vec<pb::IncidentEvent> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !fingerprints.iter().all(|fp| seen.iter().any(|e| holds(e, fp))) {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let event = next.unwrap_or_else(|_| panic!("not every one of {fingerprints:?} within 20 s; saw {seen:#?}"));
        seen.push(event.expect("the stream ended").expect("the stream failed"));
    }
    seen
}

fn fps(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_followed_live_and_a_follower_resumes_from_its_cursor_missing_nothing() {
    let mut h = Harness::start().await;
    let mut follower = h.incidents("user:carol").await;
    let mut stream = follower.watch_incidents(pb::WatchIncidentsRequest::default()).await.unwrap().into_inner();

    h.fire_alert("KubePodCrashLooping", "checkout", "0.5", "fp-checkout").await;
    let first = until_held(&mut stream, &fps(&["fp-checkout"])).await;
    let cursors: Vec<u64> = first.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "cursors rise: {cursors:?}");
    let resume_after = *cursors.last().unwrap();
    drop(stream);

    // Written while nobody follows.
    h.fire_alert("PostgresqlDown", "orders-pg", "0.5", "fp-orders").await;
    let mut stream = follower
        .watch_incidents(pb::WatchIncidentsRequest { after_cursor: resume_after, min_members: 0 })
        .await
        .unwrap()
        .into_inner();
    let resumed = until_held(&mut stream, &fps(&["fp-orders"])).await;
    assert!(resumed.iter().all(|e| e.cursor > resume_after), "nothing at or before the cursor is sent again: {resumed:#?}");

    // A new follower from the start is sent every stored incident, each once, over more than one
    // page of the change index.
    for n in 0..20 {
        h.fire_alert("KubePodCrashLooping", &format!("svc-{n}"), "0.5", &format!("fp-svc-{n}")).await;
    }
    // Once analysis has settled (every alert in a stored incident), nothing is written while it reads.
    let settled = tokio::time::Instant::now() + Duration::from_secs(20);
    while follower.list_incidents(pb::ListIncidentsRequest::default()).await.unwrap().into_inner().incidents.len() < 22 {
        assert!(tokio::time::Instant::now() < settled, "22 incidents were not stored within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = follower.watch_incidents(pb::WatchIncidentsRequest::default()).await.unwrap().into_inner();
    let every: Vec<String> = ["fp-checkout", "fp-orders"].into_iter().map(String::from).chain((0..20).map(|n| format!("fp-svc-{n}"))).collect();
    let all = until_held(&mut stream, &every).await;
    let mut ids: Vec<&str> = all.iter().filter_map(|e| e.incident.as_ref()).map(|i| i.id.as_str()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an incident comes once, in its latest state: {all:#?}");

    // Following incidents needs the read scope, which a sender does not have.
    let mut sender = h.incidents(SENDER).await;
    let err = sender.watch_incidents(pb::WatchIncidentsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    h.stop().await;
}

/// The incident holding an alert with `fingerprint`, once analysis has stored it.
async fn incident_holding(incidents: &mut Incidents, fingerprint: &str) -> pb::Incident {
    let member = format!("alert:{fingerprint}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = incidents.list_incidents(pb::ListIncidentsRequest::default()).await.unwrap().into_inner().incidents;
        if let Some(i) = listed.into_iter().find(|i| i.members.iter().any(|m| m.id == member)) {
            return i;
        }
        assert!(tokio::time::Instant::now() < deadline, "no incident holds {member} within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_merges_and_splits_incidents_audited_and_recommended_for_again() {
    let mut h = Harness::start().await;
    h.fire_alert("DeploymentErrorsAfterRelease", "checkout", "0.9", "fp-a").await;
    h.fire_alert("DeploymentErrorsAfterRelease", "payments", "0.9", "fp-b").await;
    let mut alice = h.incidents("user:alice").await;
    let a = incident_holding(&mut alice, "fp-a").await;
    let b = incident_holding(&mut alice, "fp-b").await;
    assert_ne!(a.id, b.id, "two services with no link are two incidents");

    // A sender may not regroup, and a person must say why.
    let mut sender = h.incidents(SENDER).await;
    let merge = pb::MergeIncidentsRequest { into_id: a.id.clone(), from_id: b.id.clone(), reason: "one bad node".into() };
    assert_eq!(sender.merge(merge.clone()).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    let unexplained = pb::MergeIncidentsRequest { reason: " ".into(), ..merge.clone() };
    assert_eq!(alice.merge(unexplained).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    let b_id = b.id.clone();
    h.wait_for_views("a recommendation for each incident", |v| {
        v.iter().filter(|x| x.recommendation.as_ref().is_some_and(|r| r.incident_id == a.id || r.incident_id == b_id)).count() == 2
    })
    .await;
    let merged = alice.merge(merge.clone()).await.unwrap().into_inner().incidents;
    // The merged-away incident's recommendation is withdrawn: nothing of it can be approved or run.
    h.wait_for_views("the merged-away incident's change superseded", |v| {
        v.iter().any(|x| {
            x.recommendation.as_ref().is_some_and(|r| r.incident_id == b_id) && x.change.as_ref().is_some_and(|c| c.state == "superseded")
        })
    })
    .await;
    assert_eq!(merged.len(), 2);
    assert_eq!(merged[0].id, a.id);
    let ids: Vec<&str> = merged[0].members.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(&"alert:fp-a") && ids.contains(&"alert:fp-b"), "{ids:?}");
    assert!(merged[0].grouping_reasons.iter().any(|r| r.contains("one bad node (user:alice)")), "{:?}", merged[0].grouping_reasons);
    assert_eq!(merged[1].id, b.id);
    assert!(merged[1].members.is_empty(), "the other incident is emptied");
    // Merging what is gone is refused, and says why.
    let again = alice.merge(merge).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again}");
    assert!(again.message().contains("not open"), "{again}");

    // Split b's alert out again: a new incident holds it.
    let split = pb::SplitIncidentRequest { id: a.id.clone(), member_ids: vec!["alert:fp-b".into()], reason: "payments is its own problem".into() };
    let parts = alice.split(split).await.unwrap().into_inner().incidents;
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].id, a.id);
    assert_eq!(parts[0].members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["alert:fp-a"]);
    assert_ne!(parts[1].id, a.id);
    assert_eq!(parts[1].members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["alert:fp-b"]);
    let stored = alice.get_incident(pb::GetIncidentRequest { id: parts[1].id.clone() }).await.unwrap().into_inner();
    assert_eq!(stored.members.len(), 1, "the new incident is stored");
    // Each incident is recommended for again: the split-off one has a recommendation of its own.
    let new_id = parts[1].id.clone();
    h.wait_for_views("a recommendation for the split-off incident", |v| {
        v.iter().any(|x| x.recommendation.as_ref().is_some_and(|r| r.incident_id == new_id))
    })
    .await;

    // Both acts are in the audit trail with the person and the reason.
    let mut audit = h.audit("user:alice").await;
    let events = audit.query(pb::AuditQueryRequest { limit: 1000, ..Default::default() }).await.unwrap().into_inner().events;
    let merged_ev = events.iter().find(|e| e.kind == "incident.merged").expect("an incident.merged entry");
    assert_eq!((merged_ev.actor.as_str(), merged_ev.reason.as_str()), ("user:alice", "one bad node"));
    let split_ev = events.iter().find(|e| e.kind == "incident.split").expect("an incident.split entry");
    assert_eq!(split_ev.actor, "user:alice");
    assert!(split_ev.payload_json.contains("alert:fp-b"), "{}", split_ev.payload_json);
    h.stop().await;
}
