#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::Adapter;
use crate::review::open_change;
use crate::review::tests::{decision, rec};
use cairn_types::{ChangeRequest, ExecutionOutcome, Outcome, Recommendation};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn change_for(r: &Recommendation) -> ChangeRequest {
    open_change(r, &decision(Outcome::Auto, Some(0), 0), 1_000, &crate::WorkflowConfig::default()).0
}

/// One HTTP request as the loopback receiver saw it.
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 receiver on loopback that answers `status` to one request and hands it back.
async fn receiver(status: u16) -> (String, tokio::task::JoinHandle<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the headers ended");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        sock.write_all(resp.as_bytes()).await.unwrap();
        Received { headers, body: buf[head_end..head_end + len].to_vec() }
    });
    (url, handle)
}

#[tokio::test]
async fn webhook_body_is_hmac_signed() {
    let key = b"shared-secret-from-a-file".to_vec();
    let (url, got) = receiver(200).await;
    let adapter = WebhookAdapter::new(url, Duration::from_secs(5), Some(key.clone())).unwrap();
    let r = rec(1);
    let c = change_for(&r);
    let (outcome, _) = adapter.execute(&r, &c).await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    let got = got.await.unwrap();

    // Verified the way a receiver would, with the hmac crate directly, over the bytes received.
    let sig = got.header(SIGNATURE_HEADER).expect("signature header present");
    let hex_mac = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(&got.body);
    mac.verify_slice(&hex::decode(hex_mac).unwrap()).expect("signature matches the body received");

    // A different key, or one changed byte, does not verify.
    let mut wrong = <Hmac<Sha256> as Mac>::new_from_slice(b"another key").unwrap();
    wrong.update(&got.body);
    assert!(wrong.verify_slice(&hex::decode(hex_mac).unwrap()).is_err());
    let mut tampered = got.body.clone();
    tampered[0] ^= 1;
    assert_ne!(sign(&key, &tampered), sig);

    assert_eq!(got.header("Idempotency-Key"), Some(format!("{}:execute", c.action_digest).as_str()));
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["phase"], "execute");
    assert_eq!(body["change"]["id"], c.id.0.as_str());
}

#[tokio::test]
async fn webhook_non_2xx_is_a_failure() {
    let (url, got) = receiver(500).await;
    let adapter = WebhookAdapter::new(url, Duration::from_secs(5), None).unwrap();
    let r = rec(1);
    let (outcome, _) = adapter.rollback(&r, &change_for(&r)).await;
    assert!(matches!(outcome, ExecutionOutcome::Failed { ref error } if error.contains("500")), "{outcome:?}");
    assert!(got.await.unwrap().header(SIGNATURE_HEADER).is_none(), "no key, no signature");
}

fn command(execute: &[&str], rollback: &[&str], timeout_ms: u64) -> CommandAdapter {
    CommandAdapter::new(CommandConfig {
        execute: execute.iter().map(|s| s.to_string()).collect(),
        rollback: rollback.iter().map(|s| s.to_string()).collect(),
        timeout_ms,
        max_output_bytes: 1024,
    })
}

#[tokio::test]
async fn command_adapter_never_uses_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let witness = dir.path().join("pwned");
    let mut r = rec(1);
    // A resource name written by an attacker: under `sh -c` this would create the witness file.
    r.target.resource = format!("x; touch {} && echo $(id) `id` | cat", witness.display());
    let c = change_for(&r);
    let adapter = command(&["/bin/echo", "resource={resource}", "{action}"], &["/bin/true"], 5_000);
    let (outcome, out) = adapter.execute(&r, &c).await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    assert_eq!(out, format!("resource={} rollback_deploy\n", r.target.resource), "the value arrives as one literal argument");
    assert!(!witness.exists(), "nothing after ';' ran");
    let argv = CommandAdapter::argv(&["{resource}".into()], &r, &c);
    assert_eq!(argv.len(), 1, "a substituted value never splits into more arguments");
}

#[tokio::test]
async fn command_exit_status_decides_success_and_rollback_runs_its_own_argv() {
    let r = rec(1);
    let c = change_for(&r);
    let adapter = command(&["/bin/sh", "-c", "echo doing; echo oops >&2; exit 3"], &["/bin/echo", "undo {change_id}"], 5_000);
    let (outcome, out) = adapter.execute(&r, &c).await;
    assert!(matches!(outcome, ExecutionOutcome::Failed { ref error } if error.contains("exit status: 3")), "{outcome:?}");
    assert!(out.contains("doing") && out.contains("--- stderr ---\noops"), "{out}");
    let (outcome, out) = adapter.rollback(&r, &c).await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    assert_eq!(out, format!("undo {}\n", c.id));
}

#[tokio::test]
async fn command_output_is_bounded_and_a_slow_command_is_killed() {
    let r = rec(1);
    let c = change_for(&r);
    let noisy = command(&["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a"], &["/bin/true"], 5_000);
    let (outcome, out) = noisy.execute(&r, &c).await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    assert!(out.len() < 1200 && out.contains("truncated at 1024 bytes"), "{} bytes", out.len());

    let slow = command(&["/bin/sleep", "30"], &["/bin/true"], 200);
    let started = std::time::Instant::now();
    let (outcome, _) = slow.execute(&r, &c).await;
    assert!(matches!(outcome, ExecutionOutcome::Failed { ref error } if error.contains("killed")), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "the deadline ended the run");
}

#[test]
fn command_config_names_the_missing_key() {
    let cfg = CommandConfig { execute: vec!["/bin/true".into()], rollback: vec![], timeout_ms: 1, max_output_bytes: 0 };
    assert_eq!(cfg.problem().map(|p| p.0), Some("executor.command.rollback"));
}

#[tokio::test]
async fn adapters_are_told_the_stage() {
    let (url, got) = receiver(200).await;
    let adapter = WebhookAdapter::new(url, Duration::from_secs(5), None).unwrap();
    let r = rec(1);
    let mut c = change_for(&r);
    c.stage = Some("25%".into());
    let (outcome, _) = adapter.execute(&r, &c).await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    let got = got.await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["stage"], "25%");
    assert_eq!(got.header("Idempotency-Key"), Some(format!("{}:execute:25%", c.action_digest).as_str()), "each stage is its own request");

    let adapter = command(&["/bin/echo", "stage={stage}"], &["/bin/echo", "undo {stage}"], 5_000);
    assert_eq!(adapter.execute(&r, &c).await.1, "stage=25%\n");
    assert_eq!(adapter.rollback(&r, &c).await.1, "undo 25%\n");
    c.stage = None;
    assert_eq!(adapter.execute(&r, &c).await.1, "stage=\n");
}
