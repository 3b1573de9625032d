//! People signed in at a real OpenID Provider (panva's certified `oidc-provider`, on Node, from
//! `crates/cairn-testkit/oidc`): the authorization-code flow with PKCE as a browser runs it, the ID token as
//! the bearer, groups mapped to approvers, and every way a token should be refused: expired,
//! another audience, a foreign issuer, unsigned, tampered, signed with a key the provider has
//! rotated out. Tier-3 approvals want a recent sign-in. The provider is killed when each test
//! ends, also on failure.

use super::channel;
use cairn_testkit::oidc_provider::{CLIENT_ID, Provider, provider_present};
use cairn_testkit::programs::free_port;
use cairn_testkit::*;
use cairn_proto::v1 as pb;
use cairn_server::config::ServerConfig;
use tonic::transport::Channel;

const DNS: &str = "DNSResolutionFailure";

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

/// The provider (key `k1`) and a Cairn that trusts it with `step_up.max_age_s`; `None` (the test
/// skips) without node and the provider's packages.
async fn setup(test: &str, max_age_s: i64) -> Option<(tempfile::TempDir, Provider, Harness)> {
    if !provider_present(test) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let op = Provider::start("k1", dir.path()).await;
    let h = Harness::start_with(with_provider(&op, max_age_s)).await;
    Some((dir, op, h))
}

fn approve(r: &pb::Recommendation, reason: &str) -> pb::ApproveRequest {
    pb::ApproveRequest { recommendation_id: r.id.clone(), revision: r.revision, reason: reason.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_signed_in_at_the_provider_approve_a_tier3_change_and_the_record_says_how() {
    let Some((_dir, op, mut h)) = setup("oidc approvals", 900).await else { return };
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
    let Some((_dir, op, mut h)) = setup("oidc refusals", 900).await else { return };
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
    let Some((dir, op, mut h)) = setup("oidc key rotation", 900).await else { return };
    let port = op.port;
    let old = op.sign_in("alice").await;
    assert!(list(&h, &old).await.is_ok());

    // The provider restarts with a new key and no longer publishes k1.
    drop(op);
    let op = Provider::restart_on(port, "k2", dir.path()).await;
    let new = op.sign_in("alice").await;
    assert!(list(&h, &new).await.is_ok(), "the new key is fetched on first sight of its id");
    let e = list(&h, &old).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("\"k1\"") && e.message().contains("does not publish"), "{e:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier3_approval_wants_a_recent_sign_in() {
    let Some((_dir, op, mut h)) = setup("oidc step-up", 2).await else { return };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_be_reached_is_unavailable_not_a_bad_token() {
    use base64::Engine as _;
    // An issuer on a loopback port nothing listens on: its keys can never be fetched.
    let issuer = format!("http://127.0.0.1:{}", free_port());
    let cfg: cairn_server::oidc::OidcConfig =
        serde_json::from_value(serde_json::json!({"name": "corp", "issuer": issuer, "audiences": [CLIENT_ID], "timeout_ms": 500})).unwrap();
    let mut h = Harness::start_with(move |c| c.auth.oidc = vec![cfg]).await;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let now = now_ms() / 1000;
    let claims = serde_json::json!({"iss": issuer, "sub": "alice", "aud": CLIENT_ID, "exp": now + 600}).to_string();
    let token = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256","kid":"k1"}"#), b64(&claims));
    let e = list(&h, &token).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "the caller should retry, not sign in again: {e:?}");
    assert!(e.message().contains("cannot reach issuer corp"), "{e:?}");
    h.stop().await;
}
