//! The audit trail end to end, as an operator and an auditor would use it: the real `cairn serve`
//! with its checkpoints on a separate directory, a recommendation approved and executed, a
//! graceful stop that signs the last checkpoint, then offline checks of the stopped server's data
//! directory — before and after someone edits the SQLite file — and an evidence bundle checked
//! with nothing but the public key. The server process is killed when the test ends, also on
//! failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]


use std::time::{Duration, Instant};

use crate::common::{Server, cairn, post_json, text};
use std::path::Path;
use std::process::Output;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Edits the audit log as someone with file access would: drop the triggers, then run `sql`.
fn tamper(db: &Path, sql: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;").unwrap();
    c.execute_batch(sql).unwrap();
}

#[test]
fn a_remediation_is_provable_offline_and_tampering_with_the_stopped_servers_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let checkpoints = dir.path().join("other-volume/checkpoints");
    let key = dir.path().join("keys/audit.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    // Periodic checkpoints are far apart: the one this test sees is the shutdown checkpoint.
    let mut server = Server::start(
        dir.path(),
        "user:carol",
        "[executor]\npoll_interval_ms = 50\n\n[audit]\ncheckpoint_every_secs = 3600\ncheckpoint_every_entries = 100000",
        &["--checkpoint-dir", checkpoints.to_str().unwrap(), "--signing-key", key.to_str().unwrap()],
    );
    let (http, base) = (server.http, server.client_args());
    let deadline = Instant::now() + Duration::from_secs(30);
    post_json(
        http,
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
    let ok = cairn(&[&["review", "approve", &id, "--revision", "1", "--reason", "checked the rollback plan"], &base[..]].concat());
    assert!(ok.status.success(), "{}", text(&ok));

    // The state changes produce entries: proposal, decision, approval, execution.
    let kinds = loop {
        let q = cairn(&[&["audit", "query", "--recommendation", &id, "--output", "json"], &base[..]].concat());
        let kinds: Vec<String> = String::from_utf8_lossy(&q.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
            .collect();
        if kinds.iter().any(|k| k == "change.executed") {
            break kinds;
        }
        assert!(Instant::now() < deadline, "the change did not execute: {kinds:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for k in ["decision.made", "change.approved", "change.executed"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let live = cairn(&[&["audit", "verify"], &base[..]].concat());
    assert!(live.status.success(), "{}", text(&live));

    // A graceful stop signs a checkpoint covering everything, in the configured directory.
    assert!(!checkpoints.exists() || std::fs::read_dir(&checkpoints).unwrap().count() == 0, "no checkpoint before the stop");
    server.stop_gracefully();
    let files: Vec<_> = std::fs::read_dir(&checkpoints).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(!data.join("checkpoints").exists(), "nothing written to the default inside the data dir");
    let public = dir.path().join("keys/audit.key.pub");

    let offline = |data: &Path| -> Vec<String> {
        vec![
            "--data-dir".into(),
            data.to_str().unwrap().into(),
            "--checkpoint-dir".into(),
            checkpoints.to_str().unwrap().into(),
            "--public-key".into(),
            public.to_str().unwrap().into(),
        ]
    };
    let with = |head: &[&str], tail: &[String]| -> Output {
        let mut args: Vec<&str> = head.to_vec();
        args.extend(tail.iter().map(String::as_str));
        cairn(&args)
    };

    // Offline verification of the stopped server's data passes, with nothing unanchored.
    let v = with(&["audit", "verify"], &offline(&data));
    assert!(v.status.success(), "{}", text(&v));
    assert!(text(&v).contains("1 checkpoint(s)") && text(&v).contains("0 unanchored"), "{}", text(&v));

    // Export: resumable JSON lines, one event per line.
    let all = with(&["audit", "export", "--format", "jsonl"], &offline(&data)[..2]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&all.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 5, "{lines:?}");
    assert!(lines.iter().enumerate().all(|(i, l)| l["seq"] == (i as u64 + 1) && l["schema"] == "cairn.audit.event.v1"));
    let rest = with(&["audit", "export", "--format", "jsonl", "--after-seq", "2"], &offline(&data)[..2]);
    let rest: Vec<&str> = std::str::from_utf8(&rest.stdout).unwrap().lines().collect();
    assert_eq!(rest.len(), lines.len() - 2);
    assert_eq!(serde_json::from_str::<serde_json::Value>(rest[0]).unwrap()["seq"], 3);

    // Prove the remediation, check the bundle with only the public key; a modified bundle fails.
    let bundle = dir.path().join("evidence.json");
    let p = with(&["audit", "prove", "--recommendation", &id, "--out", bundle.to_str().unwrap()], &offline(&data));
    assert!(p.status.success(), "{}", text(&p));
    let vp = cairn(&["audit", "verify-proof", bundle.to_str().unwrap(), "--public-key", public.to_str().unwrap()]);
    assert!(vp.status.success(), "{}", text(&vp));
    assert!(text(&vp).contains("evidence OK"), "{}", text(&vp));
    let mut b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    let approved = b["entries"].as_array().unwrap().iter().position(|e| e["event"]["kind"] == "change.approved").unwrap();
    let approved_seq = b["entries"][approved]["event"]["seq"].as_u64().unwrap();
    b["entries"][approved]["event"]["actor"] = "user:mallory".into();
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, b.to_string()).unwrap();
    let vf = cairn(&["audit", "verify-proof", forged.to_str().unwrap(), "--public-key", public.to_str().unwrap()]);
    assert_eq!(vf.status.code(), Some(3), "{}", text(&vf));
    assert!(text(&vf).contains(&format!("entry {approved_seq}")), "{}", text(&vf));
    // The bundle checked with some other key is refused too.
    let other_key = dir.path().join("other.pub");
    let other = cairn_audit::checkpoint::NoteSigner::from_seed("cairn.local/audit", [7; 32]).unwrap();
    std::fs::write(&other_key, format!("{}\n", other.verifier().encode())).unwrap();
    let wrong = cairn(&["audit", "verify-proof", bundle.to_str().unwrap(), "--public-key", other_key.to_str().unwrap()]);
    assert_eq!(wrong.status.code(), Some(3), "{}", text(&wrong));
    assert!(text(&wrong).contains("not signed by any pinned key"), "{}", text(&wrong));

    // A truncated tail (on a copy): the chain alone still links, the checkpoint catches it.
    let truncated = dir.path().join("truncated");
    copy_dir(&data, &truncated);
    let total = lines.len() as u64;
    tamper(&truncated.join("cairn.db"), &format!("DELETE FROM audit_log WHERE seq > {}", total - 2));
    let t = with(&["audit", "verify"], &offline(&truncated));
    assert_eq!(t.status.code(), Some(3), "{}", text(&t));
    assert!(text(&t).contains(&format!("BROKEN at entry {}", total - 1)) && text(&t).contains("truncated"), "{}", text(&t));

    // Someone edits one stored row: verification fails and names it.
    tamper(&data.join("cairn.db"), &format!("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = {approved_seq}"));
    let v = with(&["audit", "verify"], &offline(&data));
    assert_eq!(v.status.code(), Some(3), "{}", text(&v));
    assert!(text(&v).contains(&format!("BROKEN at entry {approved_seq}")), "{}", text(&v));
}

/// `audit verify` fails closed: entries no checkpoint covers, a key found beside the data instead of
/// pinned, and a log re-signed by someone else's key are all failures; a witness's copy of the
/// checkpoints catches a truncation whose checkpoints were deleted with it.
#[test]
fn verification_fails_closed_and_the_witness_catches_truncation_with_deleted_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let checkpoints = dir.path().join("other-volume/checkpoints");
    let witness = dir.path().join("witness-volume/checkpoints");
    let config = format!(
        "[audit]\ncheckpoint_every_secs = 3600\ncheckpoint_every_entries = 100000\nwitness_dir = {:?}",
        witness.to_str().unwrap()
    );
    // The signing key is generated at its default place, beside the data directory.
    let mut server = Server::start(dir.path(), "user:carol", &config, &["--checkpoint-dir", checkpoints.to_str().unwrap()]);
    post_json(
        server.http,
        "/api/v1/alerts/alertmanager",
        r#"{"version":"4","receiver":"cairn","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"DeploymentErrorsAfterRelease","service":"checkout","env":"production","instance":"checkout-1:8080"},"annotations":{},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"abc"}]}"#,
    );
    let base = server.client_args().map(str::to_string);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cairn(&[&["review", "list", "--output", "json"], &base.each_ref().map(String::as_str)[..]].concat());
        if !serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no recommendation appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop_gracefully();
    let beside = dir.path().join("data.audit-key.pub");
    let real_key = dir.path().join("real.pub");
    std::fs::copy(&beside, &real_key).unwrap();
    assert_eq!(std::fs::read_dir(&witness).unwrap().count(), 1, "the witness holds the shutdown checkpoint");

    let verify = |data: &Path, cdir: &Path, extra: &[&str]| -> Output {
        let mut args = vec!["audit", "verify", "--data-dir", data.to_str().unwrap(), "--checkpoint-dir", cdir.to_str().unwrap()];
        args.extend_from_slice(extra);
        cairn(&args)
    };
    let pin = ["--public-key", real_key.to_str().unwrap()];

    // Pinned and anchored: proven.
    let v = verify(&data, &checkpoints, &pin);
    assert!(v.status.success(), "{}", text(&v));
    // The same check without a pinned key proves nothing about who signed.
    let v = verify(&data, &checkpoints, &[]);
    assert_eq!(v.status.code(), Some(4), "{}", text(&v));
    assert!(text(&v).contains("NOT PROVEN"), "{}", text(&v));
    let v = verify(&data, &checkpoints, &["--trust-key-beside-data"]);
    assert!(v.status.success(), "{}", text(&v));

    // Truncated, with every checkpoint deleted: nothing anchors the log any more.
    let cut = dir.path().join("cut");
    copy_dir(&data, &cut);
    tamper(&cut.join("cairn.db"), "DELETE FROM audit_log WHERE seq > (SELECT MAX(seq) - 2 FROM audit_log)");
    let no_checkpoints = dir.path().join("emptied");
    std::fs::create_dir_all(&no_checkpoints).unwrap();
    let v = verify(&cut, &no_checkpoints, &pin);
    assert_eq!(v.status.code(), Some(3), "{}", text(&v));
    assert!(text(&v).contains("covered by no signed checkpoint"), "{}", text(&v));
    let v = verify(&cut, &no_checkpoints, &[&pin[..], &["--allow-unanchored"]].concat());
    assert!(v.status.success(), "only an explicit flag accepts it: {}", text(&v));
    // The witness still holds what was signed: the truncation is named.
    let v = verify(&cut, &no_checkpoints, &[&pin[..], &["--witness", witness.to_str().unwrap()]].concat());
    assert_eq!(v.status.code(), Some(3), "{}", text(&v));
    assert!(text(&v).contains("BROKEN") && text(&v).contains("truncated"), "{}", text(&v));

    // Re-signed by an attacker's own key, whose .pub now stands beside the data directory.
    let forged = dir.path().join("forged");
    copy_dir(&data, &forged);
    std::fs::remove_file(dir.path().join("forged.audit-key")).ok();
    let forged_checkpoints = dir.path().join("forged-checkpoints");
    let store: std::sync::Arc<dyn cairn_store::Store> =
        std::sync::Arc::new(cairn_store::SqliteStore::open(&forged.join("cairn.db")).unwrap());
    let cfg = cairn_server::checkpoint::AuditConfig { checkpoint_dir: Some(forged_checkpoints.clone()), ..Default::default() };
    let attacker = cairn_server::checkpoint::Checkpointer::open(&cfg, &forged, store).unwrap();
    attacker.write_now().unwrap().expect("a forged checkpoint");
    let v = verify(&forged, &forged_checkpoints, &[]);
    assert_eq!(v.status.code(), Some(4), "an unpinned verification never passes: {}", text(&v));
    let v = verify(&forged, &forged_checkpoints, &pin);
    assert_eq!(v.status.code(), Some(3), "{}", text(&v));
}
