//! `cairn audit report --data-dir`: a store written through the real workflow (open, approve,
//! reject) at driven times, then the binary's report must show exact counts and latency
//! percentiles, the same in both formats, and leave out what `--since` excludes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::{Server, cairn, post_json};

use cairn_store::{ChangeStore, SqliteStore};
use cairn_types::*;
use cairn_workflow::WorkflowConfig;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// Monday 2026-11-16 00:00 UTC (ISO week 47).
const MON: i64 = 1_794_787_200_000;

/// The shared example, under `id`, on a service of its own, created at `at_ms`.
fn rec(id: &str, at_ms: i64) -> Recommendation {
    Recommendation {
        id: RecommendationId(id.into()),
        incident_id: IncidentId(format!("inc-{id}")),
        target: Target { service: format!("svc-{id}"), environment: "production".into(), resource: format!("deploy/{id}") },
        parameters: BTreeMap::new(),
        created_ms: at_ms,
        ..cairn_types::fixtures::recommendation(1)
    }
}

fn decision(r: &Recommendation, outcome: Outcome, tier: Option<u8>) -> Decision {
    Decision {
        recommendation_id: r.id.clone(),
        revision: 1,
        outcome,
        tier,
        approvals_required: 1,
        approver_groups: vec!["sre".into()],
        requires_window: false,
        stage_approval: true,
        breakglass_owner: None,
        reasons: vec!["test".into()],
        policy_version: "sha256:p".into(),
        policy_failed: false,
        decided_ms: r.created_ms,
    }
}

/// Routes and stores one proposal; returns its change and recommendation.
fn propose(s: &SqliteStore, id: &str, at_ms: i64, outcome: Outcome, tier: Option<u8>) -> (ChangeRequest, Recommendation) {
    let r = rec(id, at_ms);
    let d = decision(&r, outcome, tier);
    let (change, drafts) = cairn_workflow::open_change(&r, &d, at_ms, &WorkflowConfig::default());
    s.propose(&r, &d, &change, &drafts, at_ms).unwrap();
    (change, r)
}

fn alice() -> Principal {
    Principal { subject: "user:alice".into(), display_name: "Alice".into(), groups: vec!["sre".into()] }
}

fn report(dir: &std::path::Path, since: &str, format: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["audit", "report", "--data-dir", dir.to_str().unwrap(), "--since", since, "--format", format])
        .args(["--now-ms", &(MON + 3 * DAY).to_string()])
        .env("CAIRN_LOG", "warn")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout.into_owned()
}

#[test]
fn report_from_a_data_dir_shows_exact_counts_and_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("cairn.db")).unwrap();
    // Ten days before "now": outside a 7d window.
    propose(&s, "old", MON - 7 * DAY, Outcome::Advisory, None);
    // Monday: four tier-2 reviews approved after 2, 4, 6 and 8 minutes; one rejected; one auto.
    for i in 1..=4_i64 {
        let at = MON + i * HOUR;
        let (change, r) = propose(&s, &format!("r{i}"), at, Outcome::Review, Some(2));
        let done = at + 2 * i * MIN;
        let (next, drafts) = cairn_workflow::approve(&change, &r, &alice(), 1, "looks right", done).unwrap();
        s.update_change(&next, change.version, &drafts, done).unwrap();
    }
    let (change, r) = propose(&s, "no", MON + 5 * HOUR, Outcome::Review, Some(2));
    let (next, drafts) = cairn_workflow::reject(&change, &r, &alice(), 1, "not now", MON + 5 * HOUR + MIN).unwrap();
    s.update_change(&next, change.version, &drafts, MON + 5 * HOUR + MIN).unwrap();
    propose(&s, "auto", MON + 6 * HOUR, Outcome::Auto, Some(0));
    drop(s);

    let md = report(dir.path(), "7d", "markdown");
    assert!(md.contains("| day | auto t0 | review t2 |"), "{md}");
    assert!(md.contains("| 2026-11-16 | 1 | 5 |"), "{md}");
    // 2, 4, 6, 8 minutes with linear interpolation: 5, 7.4 and 7.94 minutes.
    assert!(md.contains("| 2026-11-16 | 2 | 4 | 300.0 | 444.0 | 476.4 |"), "{md}");
    assert!(md.contains("| 2026-W47 | 2 | 4 | 300.0 | 444.0 | 476.4 |"), "{md}");
    assert!(md.contains("| 2026-11-16 | 4 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |"), "{md}");
    assert!(!md.contains("advisory") && !md.contains("2026-11-09"), "the old proposal is outside 7d:\n{md}");

    let table = report(dir.path(), "7d", "table");
    let latency = table.lines().find(|l| l.trim_start().starts_with("2026-11-16") && l.contains("300.0")).unwrap();
    assert_eq!(latency.split_whitespace().collect::<Vec<_>>(), ["2026-11-16", "2", "4", "300.0", "444.0", "476.4"]);

    let wide = report(dir.path(), "30d", "markdown");
    assert!(wide.contains("| day | advisory | auto t0 | review t2 |"), "{wide}");
    assert!(wide.contains("| 2026-11-09 | 1 | 0 | 0 |"), "{wide}");
}

#[test]
fn a_directory_without_a_database_is_an_error_not_an_empty_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["audit", "report", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Cairn database"));
    assert!(!dir.path().join("cairn.db").exists(), "the report must not create a database");
}

fn data_rows(md: &str) -> Vec<&str> {
    md.lines().filter(|l| l.starts_with("| 20")).collect()
}

/// The same report over gRPC (`AuditService.Query`) as from the server's data directory.
#[test]
fn report_from_the_server_matches_the_data_dir() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    // The executor stays idle so that no event lands between the two reports.
    let server = Server::start(dir.path(), "user:carol", "[executor]\npoll_interval_ms = 600000", &[]);
    let (data, base) = (dir.path().join("data"), server.client_args());
    let deadline = Instant::now() + Duration::from_secs(20);
    post_json(
        server.http,
        "/api/v1/alerts/alertmanager",
        r#"{"version":"4","receiver":"cairn","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"DeploymentErrorsAfterRelease","service":"checkout","env":"production","instance":"checkout-1:8080"},"annotations":{"cairn_confidence":"0.9"},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"abc"}]}"#,
    );

    let mut list = Vec::new();
    while list.is_empty() {
        let out = cairn(&[&["review", "list", "--output", "json"], &base[..]].concat());
        list = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default();
        assert!(Instant::now() < deadline, "no recommendation appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = list[0]["recommendation"]["id"].as_str().unwrap().to_string();
    let tier = list[0]["decision"]["tier"].as_u64().unwrap();
    let ok = cairn(&[&["review", "approve", &id, "--revision", "1", "--reason", "checked"], &base[..]].concat());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let remote = cairn(&[&["audit", "report", "--since", "1d", "--format", "markdown"], &base[..]].concat());
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    let remote = String::from_utf8(remote.stdout).unwrap();
    let local = cairn(&["audit", "report", "--data-dir", data.to_str().unwrap(), "--since", "1d", "--format", "markdown"]);
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let local = String::from_utf8(local.stdout).unwrap();

    assert!(remote.contains(&format!("| review t{tier} |")), "{remote}");
    // One approval at tier `tier`: its latency row has one sample.
    let latency: Vec<&str> = data_rows(&remote).into_iter().filter(|l| l.contains(&format!(" | {tier} | 1 | "))).collect();
    assert_eq!(latency.len(), 2, "a daily and a weekly latency row:\n{remote}");
    assert_eq!(data_rows(&remote), data_rows(&local));
}
