//! People signed in at a real OpenID Provider (panva's certified `oidc-provider`, on Node, from
//! `tests/oidc`): the authorization-code flow with PKCE as a browser runs it, the ID token as
//! the bearer, groups mapped to approvers, and every way a token should be refused: expired,
//! another audience, a foreign issuer, unsigned, tampered, signed with a key the provider has
//! rotated out. Tier-3 approvals want a recent sign-in. The provider is killed when each test
//! ends, also on failure.

use super::channel;
use cairn_e2e::programs::{Proc, free_port, wait_ready};
use cairn_e2e::*;
use cairn_proto::v1 as pb;
use cairn_server::config::ServerConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tonic::transport::Channel;

const CLIENT_ID: &str = "cairn-cli";
const DNS: &str = "DNSResolutionFailure";

/// The provider's people: alice and dave lead SREs, eve signs in fine but is in no mapped group.
const ACCOUNTS: &str = r#"{"alice":{"groups":["sre-leads"]},"dave":{"groups":["sre-leads"]},"eve":{"groups":["marketing"]}}"#;

fn op_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// Whether node and the provider's packages are here; a SKIPPED notice otherwise, a failure in CI.
fn provider_present(test: &str) -> bool {
    let node = Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    let modules = op_dir().join("node_modules/oidc-provider").is_dir();
    if node && modules {
        return true;
    }
    let msg = "the OpenID Provider needs node and its packages: apt-get install nodejs npm; (cd tests/oidc && npm ci)";
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("SKIPPED {test}: {msg}");
    false
}

struct Provider {
    _proc: Proc,
    port: u16,
    issuer: String,
}

impl Provider {
    async fn start(port: u16, kid: &str, dir: &Path) -> Provider {
        let log = std::fs::File::create(dir.join(format!("op-{kid}.log"))).unwrap();
        let child = Command::new("node")
            .arg(op_dir().join("op.mjs"))
            .env("OP_PORT", port.to_string())
            .env("OP_KID", kid)
            .env("OP_ACCOUNTS", ACCOUNTS)
            .env("OP_CLIENT_ID", CLIENT_ID)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start node");
        let mut proc = Proc { name: "oidc-provider", child };
        let issuer = format!("http://127.0.0.1:{port}");
        let ready = format!("{issuer}/.well-known/openid-configuration");
        wait_ready(&reqwest::Client::new(), &ready, "the OpenID Provider", &mut [&mut proc]).await;
        Provider { _proc: proc, port, issuer }
    }

    /// Signs `account` in as a browser would (authorization code + PKCE, the provider's
    /// cookies carried between steps) and returns the ID token.
    async fn sign_in(&self, account: &str) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut browser = Browser::default();
        let verifier = b64.encode(sha2::Sha256::digest(format!("{account}{:?}{}", std::time::Instant::now(), now_ms())));
        let challenge = b64.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let redirect = "http://127.0.0.1:8976/callback";
        let auth = reqwest::Url::parse_with_params(
            &format!("{}/auth", self.issuer),
            &[
                ("client_id", CLIENT_ID),
                ("response_type", "code"),
                ("scope", "openid groups"),
                ("redirect_uri", redirect),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
                ("state", "st"),
                ("nonce", "nn"),
            ],
        )
        .unwrap();
        let interaction = browser.get(auth.as_str()).await;
        assert!(interaction.contains("/interaction/"), "{interaction}");
        let resume = browser.post_form(&self.absolute(&format!("{interaction}/login")), &[("login", account), ("amr", "pwd,otp")]).await;
        let back = browser.get(&self.absolute(&resume)).await;
        let back = reqwest::Url::parse(&back).unwrap();
        let code =
            back.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).unwrap_or_else(|| panic!("no code in {back}"));
        let resp = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
                ("client_id", CLIENT_ID),
                ("code_verifier", verifier.as_str()),
            ])
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        body["id_token"].as_str().unwrap_or_else(|| panic!("no id_token: {body}")).to_string()
    }

    /// A token the provider signs with its current key but would never issue itself.
    async fn mint(&self, claims: serde_json::Value) -> String {
        let resp = reqwest::Client::new().post(format!("{}/_test/mint", self.issuer)).json(&claims).send().await.unwrap();
        assert!(resp.status().is_success(), "{resp:?}");
        resp.text().await.unwrap()
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http") { location.to_string() } else { format!("{}{location}", self.issuer) }
    }

    fn config(&self) -> cairn_server::oidc::OidcConfig {
        serde_json::from_value(serde_json::json!({
            "name": "corp",
            "issuer": self.issuer,
            "audiences": [CLIENT_ID],
            "client_id": CLIENT_ID,
            // Every unknown key id refetches, so a test sees a rotation at once.
            "jwks_min_refetch_ms": 0,
            "groups": [{"claim": "sre-leads", "groups": ["sre", "sre-leads"], "scopes": ["read", "review", "breakglass"]}],
        }))
        .unwrap()
    }
}

/// Just enough of a browser: cookies by name, redirects returned rather than followed.
#[derive(Default)]
struct Browser {
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn client() -> reqwest::Client {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// Keeps the response's cookies and returns its `Location`.
    fn follow(&mut self, resp: reqwest::Response) -> String {
        for c in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies.insert(k.trim().to_string(), v.to_string());
            }
        }
        assert!(resp.status().is_redirection(), "expected a redirect, got {}", resp.status());
        resp.headers()[reqwest::header::LOCATION].to_str().unwrap().to_string()
    }

    async fn get(&mut self, url: &str) -> String {
        let resp = Self::client().get(url).header(reqwest::header::COOKIE, self.cookie_header()).send().await.unwrap();
        self.follow(resp)
    }

    async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> String {
        let resp = Self::client().post(url).header(reqwest::header::COOKIE, self.cookie_header()).form(form).send().await.unwrap();
        self.follow(resp)
    }
}

#[derive(Clone)]
struct Jwt(String);

impl tonic::service::Interceptor for Jwt {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", format!("Bearer {}", self.0).parse().unwrap());
        Ok(req)
    }
}

type JwtReview = pb::review_service_client::ReviewServiceClient<tonic::service::interceptor::InterceptedService<Channel, Jwt>>;

async fn review_as(h: &Harness, token: &str) -> JwtReview {
    pb::review_service_client::ReviewServiceClient::with_interceptor(channel(h).await, Jwt(token.to_string()))
}

async fn list(h: &Harness, token: &str) -> Result<usize, tonic::Status> {
    let r = review_as(h, token).await.list_recommendations(pb::ListRecommendationsRequest::default()).await?;
    Ok(r.into_inner().recommendations.len())
}

fn with_provider(p: &Provider, max_age_s: i64) -> impl FnOnce(&mut ServerConfig) + '_ {
    move |cfg| {
        cfg.auth.oidc = vec![p.config()];
        cfg.auth.step_up.max_age_s = max_age_s;
        always_open_window(cfg);
    }
}

async fn dns_change(h: &Harness, fingerprint: &str) -> pb::Recommendation {
    h.fire_alert(DNS, "edge", "0.9", fingerprint).await;
    let views = h
        .wait_for_views("dns_change on edge", |v| v.iter().any(|v| v.recommendation.as_ref().is_some_and(|r| r.action == "dns_change")))
        .await;
    let r = views.iter().find_map(|v| v.recommendation.clone().filter(|r| r.action == "dns_change")).unwrap();
    assert_eq!(views.iter().find(|v| v.recommendation.as_ref() == Some(&r)).unwrap().decision.as_ref().unwrap().tier, Some(3));
    r
}

fn approve(r: &pb::Recommendation, reason: &str) -> pb::ApproveRequest {
    pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: reason.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_signed_in_at_the_provider_approve_a_tier3_change_and_the_record_says_how() {
    if !provider_present("oidc approvals") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let op = Provider::start(free_port(), "k1", dir.path()).await;
    let mut h = Harness::start_with(with_provider(&op, 900)).await;
    let r = dns_change(&h, "fp-oidc-1").await;

    let alice = op.sign_in("alice").await;
    let resp = review_as(&h, &alice).await.approve(approve(&r, "checked the zone diff")).await.unwrap().into_inner();
    assert_eq!(resp.change.as_ref().unwrap().state, "pending_approval", "{}", resp.message);
    assert_eq!(resp.change.as_ref().unwrap().approvals[0].subject, "corp:alice");

    // Signed in, but in no group that grants review.
    let eve = op.sign_in("eve").await;
    let e = review_as(&h, &eve).await.approve(approve(&r, "lgtm")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("needs scope `review`") && e.message().contains("corp:eve"), "{e:?}");
    // A static person token holds review, but once an issuer is configured a tier-3 approval
    // wants a sign-in with a time on it.
    let e = h.review("user:bob").await.approve(approve(&r, "lgtm")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("static token") && e.message().contains("cairn login"), "{e:?}");

    // A second lead completes the quorum, and the executor counts both (the roster trusts the
    // issuer for its people): the change runs.
    let dave = op.sign_in("dave").await;
    review_as(&h, &dave).await.approve(approve(&r, "checked too")).await.unwrap();
    let card = h.wait_for_state(&r.id, &["succeeded"]).await;
    let approvers: Vec<_> = card.change.unwrap().approvals.iter().map(|a| a.subject.clone()).collect();
    assert_eq!(approvers, ["corp:alice", "corp:dave"]);

    let approvals: Vec<serde_json::Value> = h
        .audit_events(&r.id)
        .await
        .iter()
        .filter(|e| e.kind.contains("approv") && e.actor.starts_with("corp:"))
        .map(|e| serde_json::from_str(&e.payload_json).unwrap())
        .collect();
    assert!(!approvals.is_empty(), "approval events are in the audit log");
    for a in &approvals {
        let how = &a["authentication"];
        assert_eq!(how["method"], "oidc", "{a}");
        assert_eq!(how["issuer"], op.issuer.as_str(), "{a}");
        assert!(how["auth_time"].as_i64().is_some_and(|t| (t - now_ms() / 1000).abs() < 120), "{a}");
        assert_eq!(how["amr"], serde_json::json!(["pwd", "otp"]), "{a}");
    }
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("cairn_oidc_verifications_total{result=\"ok\"}"), "verifications are counted");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_the_provider_would_not_stand_behind_are_refused_naming_why() {
    if !provider_present("oidc refusals") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let op = Provider::start(free_port(), "k1", dir.path()).await;
    let mut h = Harness::start_with(with_provider(&op, 900)).await;
    let now = now_ms() / 1000;
    let claims = |over: serde_json::Value| {
        let mut c =
            serde_json::json!({"iss": op.issuer, "sub": "alice", "aud": CLIENT_ID, "iat": now, "exp": now + 600, "groups": ["sre-leads"]});
        c.as_object_mut().unwrap().extend(over.as_object().unwrap().clone());
        c
    };
    let good = op.mint(claims(serde_json::json!({}))).await;
    assert_eq!(list(&h, &good).await.unwrap(), 0, "a token the provider signed is accepted");

    let cases = [
        (claims(serde_json::json!({"exp": now - 3600, "iat": now - 4200})), "expired"),
        (claims(serde_json::json!({"aud": "some-other-app"})), "audience"),
        (claims(serde_json::json!({"iss": "http://127.0.0.1:1"})), "not configured"),
        (claims(serde_json::json!({"nbf": now + 3600})), "not valid before"),
    ];
    for (c, needle) in cases {
        let t = op.mint(c.clone()).await;
        let e = list(&h, &t).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{c}: {e:?}");
        assert!(e.message().contains(needle), "{c}: {e:?}");
    }
    // The good token's claims with alg none, and with its payload swapped under the signature.
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let unsigned = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let e = list(&h, &unsigned).await.unwrap_err();
    assert!(e.message().contains("unsigned"), "{e:?}");
    let forged_payload = b64.encode(claims(serde_json::json!({"sub": "mallory"})).to_string());
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    let e = list(&h, &forged).await.unwrap_err();
    assert!(e.message().contains("bad signature"), "{e:?}");
    let metrics = h.metrics_text().await;
    for reason in ["expired", "audience", "unknown_issuer", "unsigned", "bad_signature"] {
        assert!(metrics.contains(&format!("cairn_oidc_verifications_total{{result=\"{reason}\"}}")), "{reason} counted");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_at_the_provider_is_followed_without_restarting_cairn() {
    if !provider_present("oidc key rotation") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let op = Provider::start(port, "k1", dir.path()).await;
    let mut h = Harness::start_with(with_provider(&op, 900)).await;
    let old = op.sign_in("alice").await;
    assert!(list(&h, &old).await.is_ok());

    // The provider restarts with a new key and no longer publishes k1.
    drop(op);
    let op = Provider::start(port, "k2", dir.path()).await;
    let new = op.sign_in("alice").await;
    assert!(list(&h, &new).await.is_ok(), "the new key is fetched on first sight of its id");
    let e = list(&h, &old).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("\"k1\"") && e.message().contains("does not publish"), "{e:?}");
    assert_eq!(op.port, port);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier3_approval_wants_a_recent_sign_in() {
    if !provider_present("oidc step-up") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let op = Provider::start(free_port(), "k1", dir.path()).await;
    let mut h = Harness::start_with(with_provider(&op, 2)).await;
    let r = dns_change(&h, "fp-oidc-step").await;
    let alice = op.sign_in("alice").await;
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    // The token itself is still valid for reading...
    assert!(list(&h, &alice).await.is_ok());
    // ...but the sign-in behind it is too old for a tier-3 approval, and for a break-glass.
    let e = review_as(&h, &alice).await.approve(approve(&r, "checked")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("no older than 2 s") && e.message().contains("sign in again"), "{e:?}");
    let card = h.card(&r.id, 0).await;
    assert!(card.change.unwrap().approvals.is_empty(), "a refused approval leaves nothing behind");
    let mut guard = pb::guardrail_service_client::GuardrailServiceClient::with_interceptor(channel(&h).await, Jwt(alice.clone()));
    let open = pb::OpenBreakGlassRequest { purpose: "dns outage".into(), duration_secs: 600, ..Default::default() };
    let e = guard.open_break_glass(open).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("opening a break-glass"), "{e:?}");

    // Signing in again (a new browser: the provider asks again) gives a fresh auth_time.
    let fresh = op.sign_in("alice").await;
    let resp = review_as(&h, &fresh).await.approve(approve(&r, "checked")).await.unwrap().into_inner();
    assert_eq!(resp.change.unwrap().approvals.len(), 1);
    h.stop().await;
}
