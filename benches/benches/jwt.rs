//! What authenticating one call costs: a static bearer token (SHA-256 and a map lookup) next to a
//! signed-in person's JWT verified by `cairn_server::oidc::Verifier` with its issuer's keys
//! cached (header and claims decoded, signature checked, times, audience and groups mapped), for
//! the signature algorithms providers use: RS256 (Keycloak, Okta, Azure AD, Auth0 by default),
//! ES256 and EdDSA. The issuer is a loopback responder serving discovery and the JWKS once; the
//! keys are fetched before measuring, so no iteration touches the network.
//!
//! `cargo bench -p cairn-bench --bench jwt`. RS256 needs `openssl` on PATH (for a 2048-bit key);
//! without it that case is skipped with a notice.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

use base64::Engine as _;
use cairn_server::oidc::{OidcConfig, Verifier};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::hint::black_box;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUD: &str = "cairn-cli";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One signing key: its public JWK and what signs with it.
struct Key {
    kid: &'static str,
    alg: Algorithm,
    jwk: serde_json::Value,
    encoding: EncodingKey,
}

fn ec_key() -> Key {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw(); // 0x04 || x || y
    Key {
        kid: "ec",
        alg: Algorithm::ES256,
        jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": "ec", "alg": "ES256", "use": "sig"}),
        encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
    }
}

fn ed_key() -> Key {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    Key {
        kid: "ed",
        alg: Algorithm::EdDSA,
        jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key_raw()), "kid": "ed", "alg": "EdDSA", "use": "sig"}),
        encoding: EncodingKey::from_ed_der(&kp.serialize_der()),
    }
}

/// A 2048-bit RSA key from `openssl` (ring cannot generate RSA keys), or `None` without it.
fn rsa_key() -> Option<Key> {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("rsa.pem");
    let run = |args: &[&str]| std::process::Command::new("openssl").args(args).stderr(std::process::Stdio::null()).output().ok().filter(|o| o.status.success());
    run(&["genrsa", "-traditional", "-out", pem.to_str()?, "2048"])
        .or_else(|| run(&["genrsa", "-out", pem.to_str().unwrap(), "2048"]))?;
    let der = run(&["rsa", "-in", pem.to_str()?, "-traditional", "-outform", "DER"])?.stdout;
    let modulus = String::from_utf8(run(&["rsa", "-in", pem.to_str()?, "-modulus", "-noout"])?.stdout).ok()?;
    let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).ok()?;
    Some(Key {
        kid: "rsa",
        alg: Algorithm::RS256,
        jwk: serde_json::json!({"kty": "RSA", "n": b64(&n), "e": "AQAB", "kid": "rsa", "alg": "RS256", "use": "sig"}),
        encoding: EncodingKey::from_rsa_der(&der),
    })
}

/// Serves `discovery` and `jwks` on loopback until the runtime ends; the issuer URL.
async fn issuer(jwks: serde_json::Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let discovery = serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string();
    let jwks = jwks.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let body = if String::from_utf8_lossy(&buf[..n]).starts_with("GET /jwks") { &jwks } else { &discovery };
            let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = conn.write_all(resp.as_bytes()).await;
        }
    });
    issuer
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut keys = vec![ec_key(), ed_key()];
    match rsa_key() {
        Some(k) => keys.insert(0, k),
        None => eprintln!("SKIPPED RS256: no openssl on PATH to make an RSA key"),
    }
    let jwks = serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    let iss = rt.block_on(issuer(jwks));
    let cfg: OidcConfig = serde_json::from_value(serde_json::json!({
        "name": "corp", "issuer": iss, "audiences": [AUD],
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "groups": [{"claim": "sre", "groups": ["sre"], "scopes": ["read", "review"]}],
    }))
    .unwrap();
    let verifier = Verifier::new(&[cfg]).unwrap();
    rt.block_on(verifier.prefetch());
    let now = chrono::Utc::now().timestamp();
    // Claims the size a real provider sends (Keycloak's ID tokens carry a dozen).
    let claims = serde_json::json!({
        "iss": iss, "sub": "f3b1c2d4-5e6f-4a1b-9c8d-7e6f5a4b3c2d", "aud": AUD, "iat": now, "exp": now + 3600,
        "auth_time": now, "amr": ["pwd", "otp"], "name": "Alice Example", "preferred_username": "alice",
        "email": "alice@example.com", "email_verified": true, "groups": ["sre", "employees", "vpn-users"],
        "sid": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "azp": AUD,
    });

    let mut g = c.benchmark_group("authenticate one call");
    let token = "cairn_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let auth = cairn_server::auth::Authenticator::new(&cairn_server::config::AuthConfig {
        tokens: vec![cairn_server::config::TokenEntry {
            subject: "user:alice".into(),
            display_name: String::new(),
            groups: vec!["sre".into()],
            token_sha256: cairn_server::auth::hash_token(token),
            kind: None,
            scopes: None,
        }],
        ..Default::default()
    });
    let header = format!("Bearer {token}");
    g.bench_function("static token (sha256 + lookup)", |b| b.iter(|| black_box(auth.authenticate(Some(black_box(&header))))));
    for k in &keys {
        let mut h = Header::new(k.alg);
        h.kid = Some(k.kid.into());
        let jwt = jsonwebtoken::encode(&h, &claims, &k.encoding).unwrap();
        assert!(rt.block_on(verifier.verify(&jwt, now)).is_ok(), "{:?} verifies", k.alg);
        g.bench_function(format!("JWT {:?}, keys cached", k.alg), |b| {
            b.iter(|| black_box(rt.block_on(verifier.verify(black_box(&jwt), now)).is_ok()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
