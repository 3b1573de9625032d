//! What Cairn's tests share, in one place: a real Cairn server on free loopback ports with a
//! temporary store and a few known people ([`Harness`]), clients that speak the real protocols
//! (remote_write over HTTP, the Alertmanager webhook, gRPC with bearer tokens), the test PKI
//! ([`pki`]: certificates made by the test), the real programs the tests start and always end
//! ([`programs`]: Prometheus, Alertmanager, node-exporter; [`oidc_provider`]: an OpenID Provider on
//! Node.js), a clock the test moves ([`ManualClock`], the core's), and the domain fixtures
//! ([`fixtures`], from `cairn-types`).
//!
//! The server runs inside the test's tokio runtime, so it ends with the test even when the test
//! fails. This crate is for tests and benches only: nothing in Cairn's own binaries depends on it,
//! and it never stands in for a real peer where the real one can run here.
//!
//! The fixtures are defined in `cairn-types` (feature `fixtures`), not here, because the unit tests
//! of the crates below the server use them too, and those crates cannot depend on a kit that links
//! the server.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

pub mod oidc_provider;
pub mod pki;
pub mod programs;

pub use cairn_server::engine::ManualClock;
pub use cairn_types::fixtures;

use cairn_proto::v1 as pb;
use cairn_server::config::{ServerConfig, TokenEntry};
use cairn_server::RunningServer;
use prost::Message;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// People the harness configures: (subject, groups).
pub const PEOPLE: &[(&str, &[&str])] = &[
    ("user:alice", &["sre", "sre-leads"]),
    ("user:bob", &["sre", "sre-leads"]),
    ("user:carol", &["sre"]),
    ("user:mallory", &[]),
];

/// The service identity the harness's Prometheus and Alertmanager traffic authenticates as: it
/// may ingest and steer with annotations, and nothing else (it is not a person).
pub const SENDER: &str = "service:alertmanager";

pub fn token_of(subject: &str) -> String {
    format!("test-token-{subject}")
}

pub struct Harness {
    pub server: Option<RunningServer>,
    pub http: SocketAddr,
    pub grpc: String,
    pub data_dir: PathBuf,
    pub _dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

pub fn default_config(data_dir: PathBuf) -> ServerConfig {
    let mut cfg = ServerConfig {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir,
        ..ServerConfig::default()
    };
    cfg.executor.poll_interval_ms = 50;
    cfg.auth.tokens = PEOPLE
        .iter()
        .map(|(s, g)| TokenEntry {
            subject: s.to_string(),
            display_name: String::new(),
            groups: g.iter().map(|g| g.to_string()).collect(),
            token_sha256: cairn_server::auth::hash_token(&token_of(s)),
            kind: None,
            scopes: None,
        })
        .collect();
    cfg.auth.tokens.push(TokenEntry {
        subject: SENDER.into(),
        display_name: String::new(),
        groups: vec![],
        token_sha256: cairn_server::auth::hash_token(&token_of(SENDER)),
        kind: Some(cairn_server::access::PrincipalKind::Service),
        scopes: Some(vec![cairn_server::access::Scope::Ingest, cairn_server::access::Scope::IngestAnnotate]),
    });
    // As a production install runs: senders authenticate, so automation is possible at all, and
    // held or break-glass changes name who may approve them.
    cfg.ingest.require_token = true;
    cfg.guardrails.approver_groups = vec!["sre".into()];
    cfg
}

/// A maintenance window that is always open, for tests of tier-3 changes that need one.
pub fn always_open_window(cfg: &mut ServerConfig) {
    cfg.maintenance_windows.push(cairn_workflow::MaintenanceWindow {
        name: "always".into(),
        service: "*".into(),
        environment: "*".into(),
        weekly: Some(cairn_workflow::WeeklySchedule { days: vec!["mon".into()], start: "00:00".into(), duration_minutes: 7 * 24 * 60 }),
        start: None,
        end: None,
    });
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// Starts with the default test configuration, adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
        Self::start_on(Arc::new(cairn_server::engine::SystemClock), |cfg, _| tweak(cfg)).await
    }

    /// Starts on `clock` with the default test configuration, adjusted by `tweak`, which also
    /// gets the test's temporary directory (for files the configuration names, e.g. playbooks).
    pub async fn start_on(
        clock: Arc<dyn cairn_server::engine::Clock>,
        tweak: impl FnOnce(&mut ServerConfig, &std::path::Path),
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = default_config(dir.path().join("data"));
        tweak(&mut cfg, dir.path());
        let data_dir = cfg.data_dir.clone();
        let server = cairn_server::start(cfg, clock).await.unwrap();
        Harness {
            http: server.http_addr,
            grpc: format!("http://{}", server.grpc_addr),
            server: Some(server),
            data_dir,
            _dir: dir,
            client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// How many rows `table` of the server's store holds, read on a connection of the test's own:
    /// the store's API has no counts, since nothing in Cairn needs them.
    pub fn stored_rows(&self, table: &str) -> u64 {
        let db = rusqlite::Connection::open(self.data_dir.join("cairn.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get::<_, i64>(0)).unwrap() as u64
    }

    pub fn engine(&self) -> &cairn_server::engine::Engine {
        &self.server.as_ref().unwrap().engine
    }

    /// POSTs as the harness's sender ([`SENDER`]) unless `headers` carry their own Authorization
    /// (an empty value sends none).
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
        let mut req = self.client.post(format!("http://{}{path}", self.http)).body(body);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
            req = req.bearer_auth(token_of(SENDER));
        }
        let headers: Vec<(&str, &str)> = headers.iter().copied().filter(|(_, v)| !v.is_empty()).collect();
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    pub async fn remote_write(&self, body: Vec<u8>) -> (u16, String) {
        self.post(
            "/api/v1/write",
            &[("Content-Encoding", "snappy"), ("Content-Type", "application/x-protobuf")],
            body,
        )
        .await
    }

    /// Delivers one firing, critical alert for `service` in production (instance `<service>-1:8080`)
    /// with its confidence pinned, as Alertmanager would, and requires a 200.
    pub async fn fire_alert(&self, alertname: &str, service: &str, confidence: &str, fingerprint: &str) {
        let p = webhook_payload(
            alertname,
            &[("service", service), ("env", "production"), ("instance", &format!("{service}-1:8080")), ("severity", "critical")],
            &[("summary", "test"), ("cairn_confidence", confidence)],
            "firing",
            fingerprint,
        );
        let (status, msg) = self.webhook(&p).await;
        assert_eq!(status, 200, "{msg}");
    }

    pub async fn webhook(&self, payload: &serde_json::Value) -> (u16, String) {
        self.post(
            "/api/v1/alerts/alertmanager",
            &[("Content-Type", "application/json")],
            serde_json::to_vec(payload).unwrap(),
        )
        .await
    }

    pub async fn metrics_text(&self) -> String {
        self.client.get(format!("http://{}/metrics", self.http)).send().await.unwrap().text().await.unwrap()
    }

    pub async fn review(&self, subject: &str) -> Review {
        let channel = Channel::from_shared(self.grpc.clone()).unwrap().connect().await.unwrap();
        pb::review_service_client::ReviewServiceClient::with_interceptor(channel, Bearer::of(subject))
    }

    pub async fn audit(&self, subject: &str) -> Audit {
        let channel = Channel::from_shared(self.grpc.clone()).unwrap().connect().await.unwrap();
        pb::audit_service_client::AuditServiceClient::with_interceptor(channel, Bearer::of(subject))
    }

    pub async fn incidents(&self, subject: &str) -> Incidents {
        let channel = Channel::from_shared(self.grpc.clone()).unwrap().connect().await.unwrap();
        pb::incident_service_client::IncidentServiceClient::with_interceptor(channel, Bearer::of(subject))
    }

    /// Polls ListRecommendations until `pred` holds, or panics after 15 s.
    pub async fn wait_for_views(
        &self,
        what: &str,
        pred: impl Fn(&[pb::RecommendationView]) -> bool,
    ) -> Vec<pb::RecommendationView> {
        self.wait_for_views_within(what, Duration::from_secs(15), pred).await
    }

    /// Polls ListRecommendations until `pred` holds, or panics after `limit`.
    pub async fn wait_for_views_within(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[pb::RecommendationView]) -> bool,
    ) -> Vec<pb::RecommendationView> {
        let mut c = self.review("user:alice").await;
        let deadline = Instant::now() + limit;
        loop {
            let views = c
                .list_recommendations(pb::ListRecommendationsRequest { limit: 1000, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .recommendations;
            if pred(&views) {
                return views;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; have {views:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the decision card of `id` until its change is in one of `states`.
    /// The audit events of one recommendation, oldest first, as alice reads them.
    pub async fn audit_events(&self, rec_id: &str) -> Vec<pb::AuditEvent> {
        let q = pb::AuditQueryRequest { recommendation_id: rec_id.into(), ..Default::default() };
        self.audit("user:alice").await.query(q).await.unwrap().into_inner().events
    }

    /// The decision card of a recommendation as alice sees it; revision 0 is the latest.
    pub async fn card(&self, id: &str, revision: u32) -> pb::DecisionCard {
        self.review("user:alice")
            .await
            .get_decision_card(pb::GetDecisionCardRequest { recommendation_id: id.into(), revision })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn wait_for_state(&self, id: &str, states: &[&str]) -> pb::DecisionCard {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let card = self.card(id, 0).await;
            let state = card.change.as_ref().map(|c| c.state.clone()).unwrap_or_default();
            if states.contains(&state.as_str()) {
                return card;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {id} to reach {states:?}; it is {state}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Clone)]
pub struct Bearer(String);

impl Bearer {
    pub fn of(subject: &str) -> Bearer {
        Bearer(format!("Bearer {}", token_of(subject)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.parse().unwrap());
        Ok(req)
    }
}

pub type Review = pb::review_service_client::ReviewServiceClient<InterceptedService<Channel, Bearer>>;
pub type Audit = pb::audit_service_client::AuditServiceClient<InterceptedService<Channel, Bearer>>;
pub type Incidents = pb::incident_service_client::IncidentServiceClient<InterceptedService<Channel, Bearer>>;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// One series for [`remote_write_body`]: its labels and its (timestamp ms, value) samples.
pub type SeriesSpec<'a> = (Vec<(&'a str, &'a str)>, Vec<(i64, f64)>);

/// A remote_write body (snappy block-compressed protobuf) for the given series.
pub fn remote_write_body(series: &[SeriesSpec<'_>]) -> Vec<u8> {
    use cairn_ingest::prompb::{Label, Sample, TimeSeries, WriteRequest};
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| TimeSeries {
                labels: labels.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
                samples: samples.iter().map(|(t, v)| Sample { value: *v, timestamp: *t }).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

/// An Alertmanager webhook payload (version 4) with one alert.
pub fn webhook_payload(
    alertname: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    status: &str,
    fingerprint: &str,
) -> serde_json::Value {
    let mut l = serde_json::Map::new();
    l.insert("alertname".into(), alertname.into());
    for (k, v) in labels {
        l.insert(k.to_string(), (*v).into());
    }
    let a: serde_json::Map<String, serde_json::Value> =
        annotations.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    let ends_at = if status == "resolved" { "2026-11-24T10:05:00Z" } else { "0001-01-01T00:00:00Z" };
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\"}}"),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "cairn",
        "groupLabels": {"alertname": alertname},
        "commonLabels": l.clone(),
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.test:9093",
        "alerts": [{
            "status": status,
            "labels": l,
            "annotations": a,
            "startsAt": "2026-11-24T10:00:00Z",
            "endsAt": ends_at,
            "generatorURL": "http://prometheus.test:9090/graph",
            "fingerprint": fingerprint,
        }]
    })
}
