//! A `cairn serve` killed with SIGKILL while its adapter is changing a target, then started again
//! on the same SQLite file: the change it was running is not lost (it does not stay `executing`
//! forever) and not run again silently — its outcome is unknown, so it fails for a person, with one
//! `change.interrupted` audit event naming the dead process's lease, and the audit chain verifies.
//!
//! The real binary, as a user runs it; the adapter is the real `command` adapter running `sleep`.
//! Each server runs in its own process group, killed (with the adapter's child) when the test
//! ends, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]


use crate::common::{cairn, ok, post_json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `cairn serve` in a process group of its own.
struct Serve {
    child: Child,
    http: u16,
    grpc_url: String,
}

impl Serve {
    fn start(dir: &Path, config: &str, log: &str) -> Serve {
        let path = dir.join("cairn.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(["serve", "--config", path.to_str().unwrap(), "--data-dir", dir.join("data").to_str().unwrap()]).process_group(0);
        let (child, http, grpc) = cairn_testkit::programs::spawn_cairn_serve(cmd, &dir.join(log));
        Serve { child, http, grpc_url: format!("http://127.0.0.1:{grpc}") }
    }

    /// SIGKILL to the whole group: the server and the adapter's `sleep` die at once, as on an OOM
    /// kill or a power cut, with no chance to write anything.
    fn kill_group(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill_group();
    }
}

fn db(dir: &Path) -> PathBuf {
    dir.join("data").join("cairn.db")
}

/// One row of the store, read beside the running server (WAL lets a reader in).
fn query_db(dir: &Path, sql: &str) -> Option<String> {
    use rusqlite::OptionalExtension;
    let c = rusqlite::Connection::open_with_flags(db(dir), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row(sql, [], |r| r.get::<_, Option<String>>(0)).optional().unwrap().flatten()
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn change_state(base: &[&str], id: &str) -> Option<String> {
    let out = ok(cairn(&[&["review", "list", "--output", "json"], base].concat()));
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    list.iter()
        .find(|v| v["recommendation"]["id"] == id)
        .and_then(|v| v["change"]["state"].as_str().map(String::from))
}

fn interrupted_events(base: &[&str], id: &str) -> Vec<serde_json::Value> {
    let out = ok(cairn(&[&["audit", "query", "--recommendation", id, "--kind", "change.interrupted", "--output", "json"], base].concat()));
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn metrics(http: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

#[test]
fn a_change_whose_server_was_killed_mid_adapter_call_fails_for_a_person_and_is_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let token_text = ok(cairn(&["token", "new", "--subject", "user:carol", "--group", "sre", "--kind", "person", "--scopes", "read,review,breakglass,freeze,policy,admin"]));
    let token = token_text.lines().nth(1).unwrap().trim().to_string();
    let entry = token_text[token_text.find("[[auth.tokens]]").unwrap()..].to_string();
    let executor = "[executor]\npoll_interval_ms = 50\nlease_ms = 1000\n";

    // 1. A server whose adapter takes a minute: the approved change is claimed and its adapter
    //    call begins.
    let slow = format!(
        "{executor}adapter = \"command\"\n[executor.command]\nexecute = [\"sleep\", \"60\"]\nrollback = [\"true\"]\ntimeout_ms = 120000\n\n{entry}"
    );
    let mut first = Serve::start(dir.path(), &slow, "first.log");
    let first_pid = first.child.id();
    let base1 = ["--server".to_string(), first.grpc_url.clone(), "--token".to_string(), token.clone()];
    let base1: Vec<&str> = base1.iter().map(String::as_str).collect();
    post_json(
        first.http,
        "/api/v1/alerts/alertmanager",
        r#"{"version":"4","receiver":"cairn","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"DeploymentErrorsAfterRelease","service":"checkout","env":"production","instance":"checkout-1:8080"},"annotations":{"cairn_confidence":"0.9"},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"abc"}]}"#,
    );
    let id = wait_until("a recommendation", || {
        let out = ok(cairn(&[&["review", "list", "--output", "json"], &base1[..]].concat()));
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        list.first().and_then(|v| v["recommendation"]["id"].as_str().map(String::from))
    });
    ok(cairn(&[&["review", "approve", &id, "--revision", "1", "--reason", "rollback plan checked"], &base1[..]].concat()));
    let holder = wait_until("the adapter call to begin", || {
        query_db(dir.path(), "SELECT holder FROM change_leases WHERE adapter_call = 'execute'")
    });
    assert!(holder.contains(&format!(":{first_pid}:")), "the lease names the process: {holder}");
    assert_eq!(change_state(&base1, &id).as_deref(), Some("executing"));
    // While the adapter works, the lease keeps moving ahead of the clock (renewed every ~333 ms),
    // so another process sweeping this store would leave the change alone.
    let expiry = || query_db(dir.path(), "SELECT expires_ms || '' FROM change_leases").unwrap().parse::<i64>().unwrap();
    let before = expiry();
    std::thread::sleep(Duration::from_millis(1_500));
    let after = expiry();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(after > before && after > now_ms, "renewed: {before} -> {after}, now {now_ms}");

    // 2. Killed mid-call. Nothing was recorded about the result.
    first.kill_group();
    assert_eq!(query_db(dir.path(), "SELECT state FROM changes").as_deref(), Some("executing"));

    // 3. Restarted on the same file (dry-run adapter now): the lease lapses within a second, and
    //    the change is recovered once — failed, for a person, never run again.
    let second = Serve::start(dir.path(), &format!("{executor}\n{entry}"), "second.log");
    let base2 = ["--server".to_string(), second.grpc_url.clone(), "--token".to_string(), token.clone()];
    let base2: Vec<&str> = base2.iter().map(String::as_str).collect();
    wait_until("the interrupted change to be recovered", || (change_state(&base2, &id)? == "failed").then_some(()));
    // Many more sweeps (every 50 ms) find nothing left to recover.
    std::thread::sleep(Duration::from_millis(600));
    let events = interrupted_events(&base2, &id);
    assert_eq!(events.len(), 1, "recovered exactly once: {events:#?}");
    let p = &events[0]["payload"];
    assert_eq!(p["lease_holder"].as_str(), Some(holder.as_str()), "{p}");
    assert!(p["lease_expires_ms"].as_i64().is_some_and(|ms| ms > 0), "{p}");
    assert_eq!((p["resolution"].as_str(), p["adapter_call"].as_str(), p["from_state"].as_str()), (Some("outcome_unknown"), Some("execute"), Some("executing")));
    assert_eq!(events[0]["actor"], "system:cairn");
    assert!(events[0]["reason"].as_str().unwrap().contains(&holder), "{}", events[0]);
    let ran = ok(cairn(&[&["audit", "query", "--recommendation", &id, "--kind", "change.executed", "--output", "json"], &base2[..]].concat()));
    assert!(ran.trim().is_empty(), "nothing ran it again: {ran}");
    assert_eq!(query_db(dir.path(), "SELECT COUNT(*) || '' FROM change_leases").as_deref(), Some("0"));
    assert!(metrics(second.http).contains("cairn_changes_interrupted_total{resolution=\"outcome_unknown\"} 1"));

    let verify = cairn(&[&["audit", "verify"], &base2[..]].concat());
    assert!(verify.status.success() && String::from_utf8_lossy(&verify.stdout).contains("audit chain OK"), "{}", crate::common::text(&verify));
}
