//! TLS on both listeners, with certificates made by the test: a client certificate stands for the
//! service it is mapped to, a client without one (or with one from another CA) is refused at the
//! handshake, and rotated files reach new connections while open ones carry on.

use cairn_testkit::pki::{Ca, Leaf, grpc_channel, https};
use cairn_testkit::*;
use cairn_proto::v1 as pb;
use cairn_server::access::Scope;
use cairn_server::config::{CertificateEntry, ServerConfig};
use cairn_server::tls::{ClientAuth, TlsConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Cairn with `[tls]` (server certificate from `ca`, clients verified against `client_ca`) and
/// `[[auth.certificates]]` mapping common name `prometheus` to a service that may ingest.
fn with_tls(cfg: &mut ServerConfig, dir: &Path, ca: &Ca, client_ca: &Ca, client_auth: ClientAuth) {
    let server = ca.server(dir, "server");
    cfg.tls = Some(TlsConfig {
        cert_file: server.cert,
        key_file: server.key,
        client_ca_file: Some(client_ca.write(&dir.join("clients-ca.crt"))),
        client_auth,
        reload_interval_ms: 100,
    });
    cfg.auth.certificates.push(CertificateEntry {
        subject: "service:prometheus".into(),
        display_name: String::new(),
        groups: vec![],
        common_name: Some("prometheus".into()),
        dns_name: None,
        uri: None,
        scopes: vec![Scope::Ingest],
    });
}

fn grpc_addr(h: &Harness) -> SocketAddr {
    h.grpc.trim_start_matches("http://").parse().unwrap()
}

fn remote_write_request(body: &[u8], token: Option<&str>) -> Vec<u8> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let mut req = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: localhost\r\nContent-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn sample_body() -> Vec<u8> {
    remote_write_body(&[(vec![("__name__", "tls_probe"), ("service", "edge")], vec![(now_ms(), 1.0)])])
}

fn handshake_failures(h: &Harness, listener: &str, reason: &str) -> u64 {
    h.engine().metrics().tls_handshake_failures.with_label_values(&[listener, reason]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_stands_for_its_service_and_others_are_refused_at_the_handshake() {
    let (ca, clients, stranger_ca) = (Ca::new("cairn-test-ca"), Ca::new("cairn-clients"), Ca::new("someone-else"));
    let mut h = Harness::start_on(std::sync::Arc::new(cairn_server::engine::SystemClock), |cfg, dir| {
        with_tls(cfg, dir, &ca, &clients, ClientAuth::Required)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = clients.client("prometheus", dir.path());
    let unmapped = clients.client("grafana", dir.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let forged: Leaf = stranger_ca.client("prometheus", elsewhere.path());

    // The mapped certificate ingests with no token at all: it is the sender's identity.
    let answer = https(h.http, &ca.pem(), Some(&prometheus), &remote_write_request(&sample_body(), None)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    // A verified certificate that no entry names is anonymous, and tokens are required here.
    let answer = https(h.http, &ca.pem(), Some(&unmapped), &remote_write_request(&sample_body(), None)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // Over gRPC the certificate is a service: it may not read reviews, and is told so by scope
    // (PERMISSION_DENIED, not UNAUTHENTICATED: it was recognised).
    let channel = grpc_channel(grpc_addr(&h), &ca.pem(), Some(&prometheus)).await.unwrap();
    let mut as_service = pb::review_service_client::ReviewServiceClient::new(channel.clone());
    let e = as_service.list_recommendations(pb::ListRecommendationsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // A person's token on the same connection is the person.
    let mut as_alice = pb::review_service_client::ReviewServiceClient::with_interceptor(channel, Bearer::of("user:alice"));
    as_alice.list_recommendations(pb::ListRecommendationsRequest::default()).await.unwrap();

    // No certificate, a certificate from another CA, plaintext: refused before any request.
    let before = handshake_failures(&h, "http", "no_certificate");
    let answer = https(h.http, &ca.pem(), None, &remote_write_request(&sample_body(), Some(&token_of(SENDER)))).await;
    assert!(answer.as_ref().map_or(true, |a| a.is_empty()), "no certificate, no answer: {answer:?}");
    let before_bad = handshake_failures(&h, "http", "bad_certificate");
    let answer = https(h.http, &ca.pem(), Some(&forged), &remote_write_request(&sample_body(), Some(&token_of(SENDER)))).await;
    assert!(answer.as_ref().map_or(true, |a| a.is_empty()), "a foreign CA's certificate, no answer: {answer:?}");
    let no_cert_grpc = grpc_channel(grpc_addr(&h), &ca.pem(), None).await;
    if let Ok(c) = no_cert_grpc {
        let mut c = pb::review_service_client::ReviewServiceClient::with_interceptor(c, Bearer::of("user:alice"));
        assert!(c.list_recommendations(pb::ListRecommendationsRequest::default()).await.is_err(), "gRPC without a certificate is refused");
    }
    let plain = h.client.get(format!("http://{}/healthz", h.http)).send().await;
    assert!(plain.is_err(), "plaintext to the TLS port gets no answer: {plain:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while handshake_failures(&h, "http", "no_certificate") == before || handshake_failures(&h, "http", "bad_certificate") == before_bad {
        assert!(Instant::now() < deadline, "the refusals are counted by reason");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(handshake_failures(&h, "grpc", "no_certificate") >= 1);
    // Nothing refused reached the pipeline: the only samples are the mapped sender's one.
    assert_eq!(h.engine().metrics().samples_accepted.with_label_values(&["remote_write"]).get(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_let_token_holders_in_but_still_check_a_presented_one() {
    let (ca, clients, stranger_ca) = (Ca::new("cairn-test-ca"), Ca::new("cairn-clients"), Ca::new("someone-else"));
    let mut h = Harness::start_on(std::sync::Arc::new(cairn_server::engine::SystemClock), |cfg, dir| {
        with_tls(cfg, dir, &ca, &clients, ClientAuth::Optional)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let channel = grpc_channel(grpc_addr(&h), &ca.pem(), None).await.unwrap();
    let mut alice = pb::review_service_client::ReviewServiceClient::with_interceptor(channel, Bearer::of("user:alice"));
    alice.list_recommendations(pb::ListRecommendationsRequest::default()).await.unwrap();
    let forged = stranger_ca.client("prometheus", dir.path());
    let answer = https(h.http, &ca.pem(), Some(&forged), &remote_write_request(&sample_body(), None)).await;
    assert!(answer.as_ref().map_or(true, |a| a.is_empty()), "a presented certificate must verify: {answer:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_files_reach_new_connections_while_open_ones_carry_on() {
    let (old_ca, new_ca, clients) = (Ca::new("cairn-ca-2026"), Ca::new("cairn-ca-2027"), Ca::new("cairn-clients"));
    let dir = tempfile::tempdir().unwrap();
    let mut server_dir = None;
    let mut h = Harness::start_on(std::sync::Arc::new(cairn_server::engine::SystemClock), |cfg, d| {
        with_tls(cfg, d, &old_ca, &clients, ClientAuth::Required);
        server_dir = Some(d.to_owned());
    })
    .await;
    let server_dir = server_dir.unwrap();
    let client = clients.client("prometheus", dir.path());
    let open = grpc_channel(grpc_addr(&h), &old_ca.pem(), Some(&client)).await.unwrap();
    let mut open = pb::review_service_client::ReviewServiceClient::with_interceptor(open, Bearer::of("user:alice"));
    open.list_recommendations(pb::ListRecommendationsRequest::default()).await.unwrap();
    let expiry_before = h.engine().metrics().tls_certificate_expiry.get();
    assert!(expiry_before > now_ms() / 1000, "the serving certificate's expiry is exported");

    // Rotation: the new certificate replaces the old one under the same file names.
    new_ca.server(&server_dir, "server");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if grpc_channel(grpc_addr(&h), &new_ca.pem(), Some(&client)).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.engine().metrics().tls_reloads.with_label_values(&["ok"]).get() >= 1);
    let request = remote_write_request(&sample_body(), None);
    assert!(https(h.http, &new_ca.pem(), Some(&client), &request).await.unwrap().starts_with("HTTP/1.1 204"), "HTTP serves the new certificate too");
    assert!(https(h.http, &old_ca.pem(), Some(&client), &request).await.is_err(), "new connections no longer get the old certificate");
    // The connection opened before the rotation still works: it drains on its own.
    open.list_recommendations(pb::ListRecommendationsRequest::default()).await.unwrap();

    // A broken rotation (a key without its certificate) keeps the last good pair in use.
    std::fs::write(server_dir.join("server.crt"), "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.engine().metrics().tls_reloads.with_label_values(&["error"]).get() == 0 {
        assert!(Instant::now() < deadline, "the broken files were not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(https(h.http, &new_ca.pem(), Some(&client), &request).await.unwrap().starts_with("HTTP/1.1 204"), "the last good certificate serves on");
    h.stop().await;
}
