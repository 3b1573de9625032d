//! The operator's commands against a running `cairn serve`: the binary is started as a user would
//! start it (a config file with a token, loopback ports), then driven with `cairn review …`,
//! `cairn incidents …` and `cairn audit …`. The server process is killed when the test ends, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]


use std::time::{Duration, Instant};

use crate::common::{Server, cairn, post_json, text};

#[test]
fn review_and_audit_commands_work_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "user:carol", "[executor]\npoll_interval_ms = 50", &[]);
    let (http, base) = (server.http, server.client_args());
    let deadline = Instant::now() + Duration::from_secs(30);

    post_json(
        http,
        "/api/v1/alerts/alertmanager",
        r#"{"version":"4","receiver":"cairn","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"DeploymentErrorsAfterRelease","service":"checkout","env":"production","instance":"checkout-1:8080"},"annotations":{"cairn_confidence":"0.9"},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"abc"}]}"#,
    );

    // Without a token the review API refuses, and says how to fix it.
    let anon = cairn(&["review", "list", "--server", &server.grpc_url]);
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

    // The incident behind it, as `cairn incidents` shows it: its root and the factors behind it.
    let incidents = cairn(&[&["incidents", "list", "--output", "json"], &base[..]].concat());
    assert!(incidents.status.success(), "{}", String::from_utf8_lossy(&incidents.stderr));
    let incidents: Vec<serde_json::Value> = serde_json::from_slice(&incidents.stdout).unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["id"], rec["incident_id"]);
    assert_eq!(incidents[0]["causes"][0]["entity"], "service:checkout");
    let table = cairn(&[&["incidents", "list"], &base[..]].concat());
    assert!(String::from_utf8_lossy(&table.stdout).contains("service:checkout"), "{}", String::from_utf8_lossy(&table.stdout));
    let one = cairn(&[&["incidents", "show", rec["incident_id"].as_str().unwrap()], &base[..]].concat());
    let text = String::from_utf8_lossy(&one.stdout);
    assert!(text.contains("cause 1") && text.contains("DeploymentErrorsAfterRelease") && text.contains("opened on service:checkout"), "{text}");
    // `cairn incidents watch` follows from the start: the stored incident comes first, with its cursor.
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([&["incidents", "watch", "--output", "json"], &base[..]].concat())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = watch.kill();
    let _ = watch.wait();
    let event: serde_json::Value = serde_json::from_str(&line.expect("incidents watch printed nothing in 20 s")).unwrap();
    assert!(event["cursor"].as_u64().unwrap() >= 1, "{event}");
    assert_eq!(event["incident"]["id"], rec["incident_id"], "{event}");
    let missing = cairn(&[&["incidents", "show", "inc-nope"], &base[..]].concat());
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&missing.stderr));

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

/// A CA and the PEM files it signs (the harness's `pki`): the server's certificate (localhost,
/// 127.0.0.1), a client CA and a client certificate.
fn tls_files(dir: &std::path::Path) {
    let (server_ca, client_ca) = (cairn_testkit::pki::Ca::new("cairn-ca"), cairn_testkit::pki::Ca::new("cairn-clients"));
    server_ca.server(dir, "server");
    let laptop = client_ca.client("carol-laptop", dir);
    std::fs::rename(&laptop.cert, dir.join("client.crt")).unwrap();
    std::fs::rename(&laptop.key, dir.join("client.key")).unwrap();
    server_ca.write(&dir.join("ca.crt"));
    client_ca.write(&dir.join("clients-ca.crt"));
}

#[test]
fn the_cli_reaches_a_tls_server_with_its_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tls_files(d);
    let config = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        d.join("server.crt"),
        d.join("server.key"),
        d.join("clients-ca.crt")
    );
    let server = Server::start(d, "user:carol", &config, &[]);
    let https = server.grpc_url.replace("http://", "https://");
    let path = |name: &str| d.join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (path("ca.crt"), path("client.crt"), path("client.key"));
    let base = ["review", "list", "--server", &https, "--token", &server.token];

    let out = cairn(&[&base[..], &["--tls-ca-file", &ca, "--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-server-name", "localhost"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    // The server requires a client certificate: without one the call fails.
    let out = cairn(&[&base[..], &["--tls-ca-file", &ca]].concat());
    assert!(!out.status.success(), "no client certificate: {}", text(&out));
    // The server's certificate is not in the system's store: without --tls-ca-file it is not trusted.
    let out = cairn(&[&base[..], &["--tls-cert-file", &cert, "--tls-key-file", &key]].concat());
    assert!(!out.status.success(), "untrusted server: {}", text(&out));
    // Plaintext to the TLS port fails, and TLS options on an http:// address are a usage error.
    let out = cairn(&["review", "list", "--server", &server.grpc_url, "--token", &server.token, "--tls-ca-file", &ca]);
    assert!(!out.status.success() && text(&out).contains("not https://"), "{}", text(&out));
}

/// `cairn login` against a real OpenID Provider (panva's `oidc-provider`, see `crates/cairn-testkit/oidc`): the
/// CLI prints the sign-in address, the "browser" signs alice in and is sent back to the CLI's
/// loopback listener, the token lands in a 0600 cache, and `cairn review list` without `--token`
/// uses it, refreshing it through the provider when it is about to expire.
#[test]
fn cairn_login_signs_in_at_the_provider_caches_the_token_and_refreshes_it() {
    use cairn_testkit::oidc_provider::{Browser, CLIENT_ID, Provider, provider_present};
    use std::io::BufRead;
    if !provider_present("cairn login") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // ID tokens live 20 s: inside the CLI's 30 s margin, so every use refreshes first.
    let op = rt.block_on(Provider::start_with_ttl("k1", dir.path(), 20));
    let config = format!(
        "[[auth.oidc]]\nname = \"corp\"\nissuer = \"{}\"\naudiences = [\"{CLIENT_ID}\"]\nclient_id = \"{CLIENT_ID}\"\n\
         [[auth.oidc.groups]]\nclaim = \"sre-leads\"\ngroups = [\"sre\"]\nscopes = [\"read\", \"review\"]\n",
        op.issuer
    );
    let server = Server::start(dir.path(), "user:carol", &config, &[]);
    let cache = dir.path().join("tokens");

    let mut login = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["login", "--server", &server.grpc_url, "--issuer", &op.issuer, "--no-browser", "--timeout-secs", "60"])
        .env("CAIRN_TOKEN_CACHE", &cache)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(login.stderr.take().unwrap());
    let mut line = String::new();
    let auth_url = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "cairn login ended without printing the sign-in address");
        if let Some(at) = line.find(&format!("{}/auth?", op.issuer)) {
            break line[at..].trim().to_string();
        }
    };
    assert!(auth_url.contains("code_challenge_method=S256") && auth_url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"), "{auth_url}");
    rt.block_on(async {
        let back = op.authorize(&mut Browser::default(), &auth_url, "alice").await;
        assert!(back.starts_with("http://127.0.0.1:") && back.contains("/callback?code="), "{back}");
        let page = reqwest::get(&back).await.unwrap().text().await.unwrap();
        assert!(page.contains("Signed in to Cairn"), "{page}");
    });
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(login.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("Signed in as alice"), "{rest}");

    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600, "only its owner reads the token");
    }
    let cached = |p: &std::path::Path| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).unwrap();
    let first = cached(&files[0]);
    assert!(first["refresh_token"].is_string(), "{first}");
    // RS256 signatures are deterministic: a token refreshed within the same second could be
    // byte-identical to the first one.
    std::thread::sleep(Duration::from_millis(1100));

    let list = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["review", "list", "--server", &server.grpc_url, "--output", "json"])
        .env("CAIRN_TOKEN_CACHE", &cache)
        .env("CAIRN_LOG", "warn")
        .output()
        .unwrap();
    assert!(list.status.success(), "the cached sign-in is used: {}", text(&list));
    let second = cached(&files[0]);
    assert_ne!(first["id_token"], second["id_token"], "the token about to expire was refreshed before use");
    assert_ne!(first["refresh_token"], second["refresh_token"], "the provider's rotated refresh token is kept");
    // Another server has no sign-in: refused, and told how to sign in.
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["review", "list", "--server", "http://127.0.0.1:1"])
        .env("CAIRN_TOKEN_CACHE", &cache)
        .output()
        .unwrap();
    assert!(!other.status.success());
}
