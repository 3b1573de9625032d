//! The operator's commands against a running `cairn serve`: the binary is started as a user would
//! start it (a config file with a token, loopback ports), then driven with `cairn review …` and
//! `cairn audit …`. The server process is killed when the test ends, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).env("CAIRN_LOG", "warn").output().unwrap()
}

fn post_json(port: u16, path: &str, body: &str) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn review_and_audit_commands_work_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc) = (free_port(), free_port());
    let token_out = cairn(&["token", "new", "--subject", "user:carol", "--group", "sre"]);
    assert!(token_out.status.success());
    let text = String::from_utf8(token_out.stdout).unwrap();
    let token = text.lines().nth(1).unwrap().trim().to_string();
    let entry = &text[text.find("[[auth.tokens]]").unwrap()..];
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, format!("[executor]\npoll_interval_ms = 50\n\n{entry}")).unwrap();
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--config", config.to_str().unwrap(), "--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--http-addr", &format!("127.0.0.1:{http}"), "--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server = format!("http://127.0.0.1:{grpc}");
    let base = ["--server", server.as_str(), "--token", token.as_str()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    post_json(
        http,
        "/api/v1/alerts/alertmanager",
        r#"{"version":"4","receiver":"cairn","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"DeploymentErrorsAfterRelease","service":"checkout","env":"production","instance":"checkout-1:8080"},"annotations":{"cairn_confidence":"0.9"},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"abc"}]}"#,
    );

    // Without a token the review API refuses, and says how to fix it.
    let anon = cairn(&["review", "list", "--server", &server]);
    assert!(!anon.status.success());
    assert!(String::from_utf8_lossy(&anon.stderr).contains("--token"));

    let mut list = Vec::new();
    while list.is_empty() {
        let out = cairn(&[&["review", "list", "--output", "json"], &base[..]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        list = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap();
        assert!(Instant::now() < deadline, "no recommendation appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rec = &list[0]["recommendation"];
    let id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["decision"]["outcome"], "review");

    let show = cairn(&[&["review", "show", &id], &base[..]].concat());
    let card = String::from_utf8_lossy(&show.stdout);
    assert!(card.contains("rollback_deploy") && card.contains("rollback (owner"), "{card}");

    let stale = cairn(&[&["review", "approve", &id, "--revision", "9", "--reason", "ok"], &base[..]].concat());
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains("stale"), "{}", String::from_utf8_lossy(&stale.stderr));
    let ok = cairn(&[&["review", "approve", &id, "--revision", "1", "--reason", "checked the rollback plan"], &base[..]].concat());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let query = cairn(&[&["audit", "query", "--recommendation", &id, "--output", "json"], &base[..]].concat());
    let kinds: Vec<String> = String::from_utf8_lossy(&query.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"change.approved".to_string()), "{kinds:?}");
    let verify = cairn(&[&["audit", "verify"], &base[..]].concat());
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("audit chain OK"));
}
