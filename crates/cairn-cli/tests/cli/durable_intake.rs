//! Acknowledged means stored (invariant 12), tried against the real `cairn serve`: a storm of
//! Alertmanager webhooks cut by SIGKILL at varied points loses none of the alerts answered 200, and
//! a full disk (a small tmpfs) turns answers into retryable 503s and `/readyz` into 503 instead of
//! 200s that keep nothing; once space returns the resent alerts are stored. Every server is killed
//! and every mount undone when the test ends, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]


use crate::common::Server;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// POSTs `body` and returns the status code and the whole response (0 when the server is gone).
fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = String::new();
    if s.read_to_string(&mut resp).is_err() {
        return (0, resp);
    }
    let code = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, resp)
}

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    (resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0), resp)
}

/// One webhook carrying an alert per fingerprint; `pad` bytes of annotation make it heavy.
fn webhook(fingerprints: &[String], pad: usize) -> String {
    let filler = "x".repeat(pad);
    let alerts: Vec<String> = fingerprints
        .iter()
        .map(|f| {
            format!(
                r#"{{"status":"firing","labels":{{"alertname":"StormAlert","service":"svc-{f}","env":"staging"}},"annotations":{{"summary":"{filler}"}},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"{f}"}}"#
            )
        })
        .collect();
    format!(r#"{{"version":"4","receiver":"cairn","status":"firing","alerts":[{}]}}"#, alerts.join(","))
}

/// Fingerprints in the store: analysed alerts and those still waiting in the intake journal (read
/// as a person looking into the data directory would, without changing a byte).
fn stored(data: &Path) -> BTreeSet<String> {
    let c = rusqlite::Connection::open_with_flags(data.join("cairn.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out: BTreeSet<String> = BTreeSet::new();
    let mut q = c.prepare("SELECT fingerprint FROM alerts").unwrap();
    out.extend(q.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap));
    out.extend(waiting(data).into_iter().map(|j| j.alert.fingerprint));
    out
}

/// The journaled alerts not yet analysed.
fn waiting(data: &Path) -> Vec<cairn_store::JournaledAlert> {
    cairn_store::SqliteStore::read_pending_intake(&data.join("cairn.db")).unwrap()
}

fn journal_len(data: &Path) -> usize {
    waiting(data).len()
}

#[test]
fn sigkill_during_a_webhook_storm_loses_no_acknowledged_alert() {
    for kill_after in [25usize, 150, 400] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let server = Server::start(dir.path(), "user:carol", "", &[]);
        let port = server.http;
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let (acked, stop) = (acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    for i in 0..100_000 {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let fps: Vec<String> = (0..5).map(|k| format!("{t:02}{i:06}{k}")).collect();
                        match post(port, "/api/v1/alerts/alertmanager", &webhook(&fps, 0)).0 {
                            200 => acked.lock().unwrap().extend(fps),
                            0 => return, // the server is gone
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < kill_after {
            assert!(Instant::now() < deadline, "the storm did not get {kill_after} alerts acknowledged");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(server); // SIGKILL, mid-storm
        stop.store(true, Ordering::SeqCst);
        for s in senders {
            s.join().unwrap();
        }
        let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
        assert!(acked.len() >= kill_after);
        let after_crash = stored(&data);
        let lost: Vec<&String> = acked.difference(&after_crash).collect();
        assert!(lost.is_empty(), "kill after {kill_after}: {} of {} acknowledged alerts lost: {lost:?}", lost.len(), acked.len());

        // A restart analyses what was journaled but not yet analysed.
        let server = Server::start(dir.path(), "user:carol", "", &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while journal_len(&data) > 0 {
            assert!(Instant::now() < deadline, "the journal was not replayed after the restart");
            std::thread::sleep(Duration::from_millis(50));
        }
        let c = rusqlite::Connection::open_with_flags(data.join("cairn.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let analysed: i64 = c.query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0)).unwrap();
        assert!(analysed as usize >= acked.len(), "every acknowledged alert is analysed and stored: {analysed} < {}", acked.len());
        drop(server);
    }
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", self.0.to_str().unwrap()]).status();
    }
}

#[test]
fn a_full_disk_answers_503_and_not_ready_and_the_resends_are_stored_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(&dir.path().join("volume"), "64m") else {
        assert!(std::env::var_os("CI").is_none(), "CI must be able to mount a tmpfs (root)");
        println!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let volume = dir.path().join("volume");
    let data = volume.join("data");
    // The signing key and checkpoints live elsewhere: only the store is on the small volume.
    let keys = dir.path().join("keys/audit.key");
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    let cdir = dir.path().join("checkpoints");
    let server = Server::start(
        &volume,
        "user:carol",
        "",
        &["--signing-key", keys.to_str().unwrap(), "--checkpoint-dir", cdir.to_str().unwrap()],
    );
    let port = server.http;
    let mut acked = BTreeSet::new();
    let first: Vec<String> = (0..5).map(|k| format!("before{k}")).collect();
    assert_eq!(post(port, "/api/v1/alerts/alertmanager", &webhook(&first, 100)).0, 200);
    acked.extend(first);

    // Fill the volume with ballast until nothing more fits.
    let ballast = volume.join("ballast");
    {
        let mut f = std::fs::File::create(&ballast).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Heavy alerts (16 KiB annotations) need pages the store does not have.
    let mut refused = Vec::new();
    for round in 0..6 {
        let fps: Vec<String> = (0..20).map(|k| format!("full{round:02}{k:02}")).collect();
        let (code, resp) = post(port, "/api/v1/alerts/alertmanager", &webhook(&fps, 16_000));
        match code {
            200 => acked.extend(fps),
            503 => {
                assert!(resp.to_ascii_lowercase().contains("retry-after:"), "{resp}");
                refused.push(fps);
            }
            other => panic!("a full disk must answer 200 (stored) or 503, got {other}: {resp}"),
        }
    }
    assert!(!refused.is_empty(), "with the volume full some request must have been refused");
    let (ready, body) = get(port, "/readyz");
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("cannot be stored"), "{body}");
    let (_, metrics) = get(port, "/metrics");
    assert!(metrics.lines().any(|l| l.starts_with("cairn_intake_failures_total ") && !l.ends_with(" 0")), "{metrics}");

    // Space returns: Alertmanager's resends are stored, not dropped as duplicates.
    std::fs::remove_file(&ballast).unwrap();
    for fps in &refused {
        let (code, resp) = post(port, "/api/v1/alerts/alertmanager", &webhook(fps, 16_000));
        assert_eq!(code, 200, "{resp}");
        acked.extend(fps.iter().cloned());
    }
    assert_eq!(get(port, "/readyz").0, 200, "ready again once writes succeed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_len(&data) > 0 {
        assert!(
            Instant::now() < deadline,
            "the journal did not drain: {}",
            std::fs::read_to_string(volume.join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let have = stored(&data);
    let lost: Vec<&String> = acked.difference(&have).collect();
    assert!(lost.is_empty(), "acknowledged alerts lost: {lost:?}");
    drop(server);
}

/// Peak resident memory of a process, from /proc (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

#[test]
fn sixteen_compression_bombs_at_once_are_refused_with_bounded_memory() {
    use prost::Message;
    // One tiny series, repeated until the request is just under the 32 MiB decompressed limit:
    // snappy packs it into a body far below the 8 MiB body limit.
    let series = cairn_ingest::prompb::TimeSeries {
        labels: vec![cairn_ingest::prompb::Label { name: "__name__".into(), value: "a".into() }],
        samples: vec![cairn_ingest::prompb::Sample { value: 1.0, timestamp: 1 }],
        ..Default::default()
    }
    .encode_to_vec();
    let mut one = vec![0x0a, series.len() as u8];
    one.extend_from_slice(&series);
    let raw: Vec<u8> = one.iter().copied().cycle().take((32 << 20) - one.len() * 2).collect();
    let bomb = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
    assert!(bomb.len() < 8 << 20, "the body passes the body limit: {}", bomb.len());

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "user:carol", "", &[]);
    let (port, pid) = (server.http, server.pid());
    let before = peak_rss_mib(pid);
    let bomb = Arc::new(bomb);
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let bomb = bomb.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let head = format!(
                    "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bomb.len()
                );
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(&bomb).unwrap();
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                resp
            })
        })
        .collect();
    for t in senders {
        let resp = t.join().unwrap();
        assert!(resp.starts_with("HTTP/1.1 400"), "a bomb is refused: {}", resp.lines().last().unwrap_or(""));
        assert!(resp.contains("more than 10000 series"), "{resp}");
    }
    let after = peak_rss_mib(pid);
    println!("peak RSS of cairn serve: {before:.0} MiB before, {after:.0} MiB after 16 concurrent 32 MiB bombs");
    // Unbounded, each of the 16 would hold its 32 MiB buffer and its decoded vectors at once
    // (about 1.2 GiB); two decodes at a time hold about a tenth of that.
    assert!(after - before < 300.0, "peak RSS grew by {:.0} MiB", after - before);
    drop(server);
}
