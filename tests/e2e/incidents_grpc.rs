//! Incidents followed live through the real gRPC API (`WatchIncidents`): a follower sees each
//! incident as it is written, and one that reconnects from its last cursor misses no change and is
//! not sent again what it already had.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_proto::v1 as pb;
use cairn_testkit::*;
use std::time::Duration;
use tokio_stream::StreamExt;

/// Reads the stream until an incident holding an alert with `fingerprint` arrives; returns every
/// event read on the way, that one last.
async fn until_member(
    stream: &mut tonic::Streaming<pb::IncidentEvent>,
    fingerprint: &str,
) -> Vec<pb::IncidentEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let event = next.unwrap_or_else(|_| panic!("no incident holding {fingerprint} within 20 s; saw {seen:#?}"));
        let event = event.expect("the stream ended").expect("the stream failed");
        let holds = event.incident.as_ref().is_some_and(|i| i.members.iter().any(|m| m.id == format!("alert:{fingerprint}")));
        seen.push(event);
        if holds {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_followed_live_and_a_follower_resumes_from_its_cursor_missing_nothing() {
    let mut h = Harness::start().await;
    let mut follower = h.incidents("user:carol").await;
    let mut stream = follower.watch_incidents(pb::WatchIncidentsRequest::default()).await.unwrap().into_inner();

    h.fire_alert("KubePodCrashLooping", "checkout", "0.5", "fp-checkout").await;
    let first = until_member(&mut stream, "fp-checkout").await;
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
    let resumed = until_member(&mut stream, "fp-orders").await;
    assert!(resumed.iter().all(|e| e.cursor > resume_after), "nothing at or before the cursor is sent again: {resumed:#?}");

    // A new follower from the start is sent every stored incident, each once.
    let mut stream = follower.watch_incidents(pb::WatchIncidentsRequest::default()).await.unwrap().into_inner();
    let all = until_member(&mut stream, "fp-orders").await;
    let mut ids: Vec<&str> = all.iter().filter_map(|e| e.incident.as_ref()).map(|i| i.id.as_str()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an incident comes once, in its latest state: {all:#?}");
    assert!(all.iter().any(|e| e.incident.as_ref().is_some_and(|i| i.members.iter().any(|m| m.id == "alert:fp-checkout"))));

    // Following incidents needs the read scope, which a sender does not have.
    let mut sender = h.incidents(SENDER).await;
    let err = sender.watch_incidents(pb::WatchIncidentsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    h.stop().await;
}
