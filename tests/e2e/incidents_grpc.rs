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
