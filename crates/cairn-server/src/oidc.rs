//! People signed in at an OpenID Provider: verifies the JWT (ID or access token) a caller presents
//! against the issuers in `[[auth.oidc]]`, and maps its groups claim to Cairn's groups and scopes.
//!
//! Each issuer's keys come from its discovery document's `jwks_uri` and are cached. A token signed
//! with a key id the cache does not hold triggers one refetch (single-flight, at most one per
//! `jwks_min_refetch_ms`), so a provider's key rotation is followed without a restart, and a key
//! the provider stopped publishing stops verifying. Only the algorithms an issuer allows are
//! accepted: never `none`, never a symmetric (HS*) algorithm, so a public key can never be used as
//! an HMAC secret.
//!
//! This module only says who a caller is. What they may do is `access.rs`; how fresh a sign-in
//! must be for a governing call is [`crate::access::StepUp`].

use crate::access::{Identity, PrincipalKind, Scope, SignIn};
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Longest bearer JWT accepted; real ID tokens are 1-4 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest discovery document or JWKS read from an issuer.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWKS.
const MAX_KEYS: usize = 32;

/// Algorithms an issuer may be configured to use: asymmetric only.
const ASYMMETRIC: [&str; 9] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// `[[auth.oidc]]`: one OpenID Provider whose signed-in people Cairn accepts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Short name; subjects from this issuer are `<name>:<subject claim>` (e.g. `corp:alice`), so
    /// they can never collide with a static token's or a certificate's subject.
    pub name: String,
    /// The issuer identifier, exactly as the provider's tokens carry it in `iss`. HTTPS, except on
    /// a loopback host.
    pub issuer: String,
    /// Accepted `aud` values: a token must name at least one (the client id of `cairn login`, or
    /// the API's audience for access tokens).
    pub audiences: Vec<String>,
    /// The public client `cairn login` signs in with (authorization code + PKCE, loopback redirect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The claim that names the person (`sub`, or e.g. `email`, `preferred_username`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim holding the person's groups or roles; a dotted path reaches into objects
    /// (Keycloak: `realm_access.roles`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Signature algorithms accepted from this issuer (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerance, in seconds, for `exp`, `nbf` and `iat` against this server's clock.
    #[serde(default = "default_clock_skew_s")]
    pub clock_skew_s: u64,
    /// Keys older than this are refetched before use (the provider may have rotated).
    #[serde(default = "default_jwks_max_age_s")]
    pub jwks_max_age_s: u64,
    /// A token with an unknown key id refetches the keys at most this often.
    #[serde(default = "default_jwks_min_refetch_ms")]
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub jwks_min_refetch_ms: u64,
    /// Timeout of one request to the provider.
    #[serde(default = "default_timeout_ms")]
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub timeout_ms: u64,
    /// PEM bundle to trust for the provider's HTTPS instead of the system store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `[[auth.oidc.groups]]`: what a value of the groups claim grants in Cairn.
    #[serde(default)]
    pub groups: Vec<GroupMapping>,
}

/// One value of an issuer's groups claim, and the Cairn groups and scopes it stands for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    /// The value in the token's groups claim (`sre`, `/ops/oncall`, an Azure AD object id).
    pub claim: String,
    /// Cairn groups (as named in policy approver lists).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Scopes held by people in this group.
    #[serde(default)]
    pub scopes: Vec<Scope>,
}

fn default_subject_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256"].map(String::from).to_vec()
}
fn default_clock_skew_s() -> u64 {
    60
}
fn default_jwks_max_age_s() -> u64 {
    3600
}
fn default_jwks_min_refetch_ms() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    5_000
}

impl OidcConfig {
    /// The prefix of every subject from this issuer.
    pub fn subject_prefix(&self) -> String {
        format!("{}:", self.name)
    }

    /// Whether a person from this issuer can hold `review` (and so count as an approver).
    pub fn grants_review(&self) -> bool {
        self.groups.iter().any(|g| g.scopes.contains(&Scope::Review))
    }

    /// Problems with this entry, as `(key, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            out.push(("auth.oidc.name", format!("{:?}: use letters, digits, '-' or '_'", self.name)));
        }
        match reqwest::Url::parse(&self.issuer) {
            Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url)) => {}
            Ok(_) => out.push(("auth.oidc.issuer", format!("{}: must be https (plain http only on a loopback host)", self.issuer))),
            Err(e) => out.push(("auth.oidc.issuer", format!("{}: {e}", self.issuer))),
        }
        if self.audiences.iter().all(|a| a.is_empty()) {
            out.push(("auth.oidc.audiences", format!("issuer {}: name at least one accepted audience", self.name)));
        }
        if self.algorithms.is_empty() {
            out.push(("auth.oidc.algorithms", "name at least one algorithm".into()));
        }
        for alg in &self.algorithms {
            if !ASYMMETRIC.contains(&alg.as_str()) {
                out.push((
                    "auth.oidc.algorithms",
                    format!("{alg}: not accepted (only asymmetric signatures: {})", ASYMMETRIC.join(", ")),
                ));
            }
        }
        if self.subject_claim.is_empty() || self.groups_claim.is_empty() {
            out.push(("auth.oidc.subject_claim", "subject_claim and groups_claim must not be empty".into()));
        }
        out
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a presented JWT was refused: each case its own message, naming what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token issuer {iss:?} is not configured (accepted: {accepted})")]
    UnknownIssuer { iss: String, accepted: String },
    #[error("unsigned token (alg none) refused")]
    Unsigned,
    #[error("signature algorithm {alg} is not accepted from issuer {issuer} (accepted: {accepted})")]
    AlgorithmNotAllowed { alg: String, issuer: String, accepted: String },
    #[error("token is signed with key {kid:?}, which issuer {issuer} does not publish (rotated out, or not its key)")]
    UnknownKey { kid: String, issuer: String },
    #[error("bad signature for key {kid:?} of issuer {issuer}")]
    BadSignature { kid: String, issuer: String },
    #[error("token expired {ago_s} s ago; sign in again (`cairn login`)")]
    Expired { ago_s: i64 },
    #[error("token is not valid before {nbf} (server time {now}); check the clocks")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("token audience {aud} is not accepted by issuer {issuer} (accepted: {accepted})")]
    WrongAudience { aud: String, issuer: String, accepted: String },
    #[error("token lacks claim {claim:?} (issuer {issuer})")]
    MissingClaim { claim: String, issuer: String },
    #[error("cannot reach issuer {issuer}: {reason}")]
    Unavailable { issuer: String, reason: String },
}

impl OidcError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            OidcError::Malformed(_) => "malformed",
            OidcError::UnknownIssuer { .. } => "unknown_issuer",
            OidcError::Unsigned => "unsigned",
            OidcError::AlgorithmNotAllowed { .. } => "algorithm",
            OidcError::UnknownKey { .. } => "unknown_key",
            OidcError::BadSignature { .. } => "bad_signature",
            OidcError::Expired { .. } => "expired",
            OidcError::NotYetValid { .. } => "not_yet_valid",
            OidcError::WrongAudience { .. } => "audience",
            OidcError::MissingClaim { .. } => "claim",
            OidcError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Whether a bearer value is shaped like a JWS compact serialisation (three base64url parts, a
/// JSON header): the only tokens handed to [`Verifier`]. Static Cairn tokens never are.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The configured issuers and their key caches.
#[derive(Debug, Default)]
pub struct Verifier {
    issuers: Vec<Issuer>,
}

#[derive(Debug)]
struct Issuer {
    cfg: OidcConfig,
    algorithms: Vec<Algorithm>,
    http: Fetcher,
    keys: tokio::sync::RwLock<KeySet>,
    /// Held while fetching, so concurrent callers with the same unknown key wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    fetched: Option<Instant>,
    /// The last fetch attempt, successful or not (rate limit of refetches).
    attempted: Option<Instant>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("kids", &self.by_kid.keys().collect::<Vec<_>>()).field("fetched", &self.fetched).finish()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Verifier {
    pub fn new(configs: &[OidcConfig]) -> Result<Verifier, String> {
        let mut issuers = Vec::with_capacity(configs.len());
        for cfg in configs {
            let algorithms = cfg
                .algorithms
                .iter()
                .map(|a| a.parse::<Algorithm>().map_err(|_| format!("auth.oidc.algorithms: unknown {a}")))
                .collect::<Result<Vec<_>, _>>()?;
            let http = Fetcher::new(cfg.ca_file.as_ref(), Duration::from_millis(cfg.timeout_ms))
                .map_err(|e| format!("auth.oidc {}: {e}", cfg.name))?;
            issuers.push(Issuer {
                cfg: cfg.clone(),
                algorithms,
                http,
                keys: tokio::sync::RwLock::new(KeySet::default()),
                fetching: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Verifier { issuers })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Every issuer's subject prefix, for issuers whose people can hold `review`.
    pub fn reviewer_prefixes(&self) -> Vec<String> {
        self.issuers.iter().filter(|i| i.cfg.grants_review()).map(|i| i.cfg.subject_prefix()).collect()
    }

    /// Verifies `token` and returns the person it names, with what their groups grant.
    pub async fn verify(&self, token: &str, now_s: i64) -> Result<Identity, OidcError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(OidcError::Malformed("not three dot-separated parts".into()));
        };
        let header: Header = decode_part(h, "header")?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(OidcError::Unsigned);
        }
        let unverified: serde_json::Value = decode_part(p, "payload")?;
        let iss = unverified.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
        let issuer = self.issuers.iter().find(|i| i.cfg.issuer == iss).ok_or_else(|| OidcError::UnknownIssuer {
            iss: iss.to_string(),
            accepted: self.issuers.iter().map(|i| i.cfg.issuer.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        issuer.verify(token, &header, now_s).await
    }

    /// Fetches every issuer's keys now (at start: the first sign-in then costs no round trip). A
    /// provider that cannot be reached is logged and tried again on first use.
    pub async fn prefetch(&self) {
        for issuer in &self.issuers {
            if let Err(e) = issuer.refetch(true).await {
                warn!(issuer = %issuer.cfg.name, error = %e, "OpenID issuer keys not fetched at start; will retry on first sign-in");
            }
        }
    }
}

impl Issuer {
    fn refused_alg(&self, alg: &str) -> OidcError {
        OidcError::AlgorithmNotAllowed {
            alg: alg.to_string(),
            issuer: self.cfg.name.clone(),
            accepted: self.cfg.algorithms.join(", "),
        }
    }

    async fn verify(&self, token: &str, header: &Header, now_s: i64) -> Result<Identity, OidcError> {
        let alg: Algorithm = header.alg.parse().map_err(|_| self.refused_alg(&header.alg))?;
        if !self.algorithms.contains(&alg) {
            return Err(self.refused_alg(&header.alg));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = match self.key(&kid).await? {
            Some(k) => k,
            None => {
                // Unknown key id: the provider may have rotated. One refetch, then give up.
                self.refetch(false).await?;
                self.key(&kid).await?.ok_or_else(|| OidcError::UnknownKey { kid: kid.clone(), issuer: self.cfg.name.clone() })?
            }
        };
        if key.1.is_some_and(|a| a != alg) {
            return Err(self.refused_alg(&header.alg));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = self.cfg.clock_skew_s;
        validation.validate_exp = false; // checked below against our clock, with a precise message
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.0, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                OidcError::BadSignature { kid: kid.clone(), issuer: self.cfg.name.clone() }
            }
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => self.refused_alg(&header.alg),
            other => OidcError::Malformed(format!("{other:?}")),
        })?;
        self.identity(&data.claims, now_s)
    }

    /// Checks the verified claims' times and audience and maps them to an identity.
    fn identity(&self, claims: &serde_json::Value, now_s: i64) -> Result<Identity, OidcError> {
        let skew = self.cfg.clock_skew_s as i64;
        let number = |name: &str| claims.get(name).and_then(|v| v.as_i64());
        let missing = |claim: &str| OidcError::MissingClaim { claim: claim.to_string(), issuer: self.cfg.name.clone() };
        let exp = number("exp").ok_or_else(|| missing("exp"))?;
        if now_s > exp + skew {
            return Err(OidcError::Expired { ago_s: now_s - exp });
        }
        if let Some(nbf) = number("nbf")
            && now_s + skew < nbf {
                return Err(OidcError::NotYetValid { nbf, now: now_s });
            }
        if let Some(iat) = number("iat")
            && now_s + skew < iat {
                return Err(OidcError::NotYetValid { nbf: iat, now: now_s });
            }
        let aud: Vec<&str> = match claims.get("aud") {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => return Err(missing("aud")),
        };
        if !aud.iter().any(|a| self.cfg.audiences.iter().any(|ok| ok == a)) {
            return Err(OidcError::WrongAudience {
                aud: format!("{aud:?}"),
                issuer: self.cfg.name.clone(),
                accepted: self.cfg.audiences.join(", "),
            });
        }
        let sub = claims.get("sub").and_then(|v| v.as_str()).ok_or_else(|| missing("sub"))?;
        let who = claim_path(claims, &self.cfg.subject_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing(&self.cfg.subject_claim))?;
        let member_of: Vec<&str> = match claim_path(claims, &self.cfg.groups_claim) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        };
        let mut groups = BTreeSet::new();
        let mut scopes = BTreeSet::new();
        for m in self.cfg.groups.iter().filter(|m| member_of.contains(&m.claim.as_str())) {
            groups.extend(m.groups.iter().cloned());
            scopes.extend(m.scopes.iter().copied());
        }
        let display_name = ["name", "preferred_username", "email"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(|v| v.as_str()))
            .unwrap_or(who)
            .to_string();
        let amr = match claims.get("amr") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            principal: cairn_types::Principal {
                subject: format!("{}{who}", self.cfg.subject_prefix()),
                display_name,
                groups: groups.into_iter().collect(),
            },
            kind: PrincipalKind::Person,
            scopes,
            sign_in: Some(SignIn {
                issuer: self.cfg.issuer.clone(),
                subject: sub.to_string(),
                auth_time_s: number("auth_time"),
                amr,
            }),
        })
    }

    /// The key for `kid`: `Ok(None)` when the current set does not hold it. Fetches first when
    /// nothing was fetched yet or the set is older than `jwks_max_age_s`.
    async fn key(&self, kid: &str) -> Result<Option<(DecodingKey, Option<Algorithm>)>, OidcError> {
        let stale = {
            let keys = self.keys.read().await;
            keys.fetched.is_none_or(|t| t.elapsed() > Duration::from_secs(self.cfg.jwks_max_age_s))
        };
        if stale {
            // Rate-limited like an unknown key: a provider that is down is not asked on every call.
            if let Err(e) = self.refetch(false).await {
                // Keys past their age are still the provider's last word: use them while it is away.
                if self.keys.read().await.fetched.is_none() {
                    return Err(e);
                }
                warn!(issuer = %self.cfg.name, error = %e, "OpenID issuer keys past jwks_max_age_s and not refreshed; using the cached set");
            }
        }
        let keys = self.keys.read().await;
        if keys.fetched.is_none() {
            return Err(OidcError::Unavailable {
                issuer: self.cfg.name.clone(),
                reason: "its keys could not be fetched yet (the last attempt failed; retried after jwks_min_refetch_ms)".into(),
            });
        }
        if kid.is_empty() && keys.by_kid.len() == 1 {
            return Ok(keys.by_kid.values().next().cloned());
        }
        Ok(keys.by_kid.get(kid).cloned())
    }

    /// Fetches discovery and the JWKS and replaces the key set. Unless `forced`, at most once per
    /// `jwks_min_refetch_ms`: a stream of tokens with made-up key ids cannot flood the provider.
    async fn refetch(&self, forced: bool) -> Result<(), OidcError> {
        let attempted_before = self.keys.read().await.attempted;
        let _one = self.fetching.lock().await;
        let keys = self.keys.read().await;
        if keys.attempted != attempted_before {
            return Ok(()); // someone else fetched while we waited
        }
        let min = Duration::from_millis(self.cfg.jwks_min_refetch_ms);
        if !forced && keys.attempted.is_some_and(|t| t.elapsed() < min) {
            return Ok(());
        }
        drop(keys);
        let result = self.fetch_keys().await;
        let mut keys = self.keys.write().await;
        keys.attempted = Some(Instant::now());
        let by_kid = result?;
        info!(issuer = %self.cfg.name, keys = by_kid.len(), "OpenID issuer keys fetched");
        keys.by_kid = by_kid;
        keys.fetched = Some(Instant::now());
        Ok(())
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, (DecodingKey, Option<Algorithm>)>, OidcError> {
        let unavailable = |reason: String| OidcError::Unavailable { issuer: self.cfg.name.clone(), reason };
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer.trim_end_matches('/'));
        let discovery: Discovery = self.get_json(&url).await.map_err(unavailable)?;
        if discovery.issuer != self.cfg.issuer {
            return Err(unavailable(format!(
                "its discovery document names issuer {:?}, not {:?}",
                discovery.issuer, self.cfg.issuer
            )));
        }
        let jwks: serde_json::Value = self.get_json(&discovery.jwks_uri).await.map_err(unavailable)?;
        let mut out = HashMap::new();
        for raw in jwks.get("keys").and_then(|k| k.as_array()).map(Vec::as_slice).unwrap_or_default() {
            // Symmetric keys and encryption keys never verify a signature here.
            if raw.get("kty").and_then(|v| v.as_str()) == Some("oct") || raw.get("use").and_then(|v| v.as_str()) == Some("enc") {
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(raw.clone()) else { continue };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
            let alg = raw.get("alg").and_then(|v| v.as_str()).and_then(|a| a.parse::<Algorithm>().ok());
            out.insert(jwk.common.key_id.clone().unwrap_or_default(), (key, alg));
            if out.len() == MAX_KEYS {
                break;
            }
        }
        Ok(out)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        self.http.get_json(url).await
    }
}

/// A JWT's claims *without checking its signature*: for a client showing who it signed in as and
/// when its token expires (`cairn login`). Never a basis for trusting the token.
pub fn unverified_claims(token: &str) -> Result<serde_json::Value, OidcError> {
    let payload = token.split('.').nth(1).ok_or_else(|| OidcError::Malformed("not three dot-separated parts".into()))?;
    decode_part(payload, "payload")
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, OidcError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| OidcError::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| OidcError::Malformed(format!("{what} is not the expected JSON: {e}")))
}

/// `a.b.c` inside a claims object.
fn claim_path<'a>(claims: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

/// Talks to an OpenID Provider (discovery, JWKS, and for `cairn login` its token endpoint): one
/// HTTP/1.1 connection per request (they are rare), rustls with the ring provider and the system
/// roots or `ca_file`, plain HTTP only to a loopback host, no redirects, a deadline and a size
/// bound. Hand-written on hyper rather than reqwest so that no process-wide TLS provider has to
/// be installed for every other HTTP client in the workspace.
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("timeout", &self.timeout).finish()
    }
}

impl Fetcher {
    pub fn new(ca_file: Option<&PathBuf>, timeout: Duration) -> Result<Fetcher, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                    roots.add(cert).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Fetcher { tls: Arc::new(tls), timeout })
    }

    /// GETs `url`; anything but a 2xx answer is an error.
    pub async fn get(&self, url: &str) -> Result<bytes::Bytes, String> {
        let (status, body) = self.send(url, None).await?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        Ok(body)
    }

    /// GETs `url` and decodes its JSON body.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let body = self.get(url).await.map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`) and returns the status and the body,
    /// whatever the status (a token endpoint explains a refusal in a 400's JSON body).
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<(http::StatusCode, bytes::Bytes), String> {
        let mut encoder = reqwest::Url::parse("http://form.invalid/").map_err(|e| e.to_string())?;
        encoder.query_pairs_mut().extend_pairs(form);
        self.send(url, Some(encoder.query().unwrap_or_default().to_string())).await
    }

    async fn send(&self, url: &str, form: Option<String>) -> Result<(http::StatusCode, bytes::Bytes), String> {
        let url = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        let https = match url.scheme() {
            "https" => true,
            "http" if is_loopback(&url) => false,
            other => return Err(format!("scheme {other}: only https (plain http to a loopback host)")),
        };
        let host = url.host_str().ok_or("no host")?.trim_matches(['[', ']']).to_string();
        let port = url.port_or_known_default().ok_or("no port")?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let fetch = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
            if https {
                let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
                exchange(hyper_util::rt::TokioIo::new(tls), &authority, &target, form).await
            } else {
                exchange(hyper_util::rt::TokioIo::new(tcp), &authority, &target, form).await
            }
        };
        tokio::time::timeout(self.timeout, fetch).await.map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// One request on a fresh connection: a GET, or a form POST when `form` is given.
async fn exchange<T>(io: T, authority: &str, target: &str, form: Option<String>) -> Result<(http::StatusCode, bytes::Bytes), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let builder = http::Request::builder()
        .method(if form.is_some() { http::Method::POST } else { http::Method::GET })
        .uri(target)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("cairn/", env!("CARGO_PKG_VERSION")));
    let req = match form {
        Some(f) => builder.header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(http_body_util::Full::new(bytes::Bytes::from(f))),
        None => builder.body(http_body_util::Full::new(bytes::Bytes::new())),
    }
    .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|e| if e.is::<http_body_util::LengthLimitError>() { format!("larger than {MAX_DOCUMENT_BYTES} bytes") } else { e.to_string() })?
        .to_bytes();
    conn.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OidcConfig {
        toml::from_str(
            r#"
            name = "corp"
            issuer = "https://login.example.com"
            audiences = ["cairn"]
            groups_claim = "realm_access.roles"
            [[groups]]
            claim = "sre"
            groups = ["sre"]
            scopes = ["read", "review"]
            "#,
        )
        .expect("config")
    }

    fn issuer() -> Issuer {
        Verifier::new(&[cfg()]).expect("verifier").issuers.remove(0)
    }

    #[test]
    fn the_groups_claim_maps_to_groups_and_scopes() {
        let claims = serde_json::json!({
            "iss": "https://login.example.com", "sub": "u-1", "aud": ["other", "cairn"], "exp": 2000,
            "auth_time": 900, "amr": ["pwd", "otp"], "name": "Alice",
            "realm_access": {"roles": ["sre", "unmapped"]}
        });
        let id = issuer().identity(&claims, 1000).expect("valid");
        assert_eq!(id.principal.subject, "corp:u-1");
        assert_eq!(id.principal.display_name, "Alice");
        assert_eq!(id.principal.groups, ["sre"]);
        assert!(id.has(Scope::Review) && id.has(Scope::Read) && !id.has(Scope::Breakglass));
        let s = id.sign_in.expect("sign-in");
        assert_eq!((s.auth_time_s, s.amr.as_slice()), (Some(900), ["pwd".to_string(), "otp".to_string()].as_slice()));
        let nobody = serde_json::json!({"sub": "u-2", "aud": "cairn", "exp": 2000});
        assert!(issuer().identity(&nobody, 1000).expect("valid").scopes.is_empty(), "no mapped group, no scope");
    }

    #[test]
    fn times_and_audience_are_checked_with_the_skew() {
        let i = issuer();
        let at = |exp: i64, aud: &str| serde_json::json!({"sub": "u", "aud": aud, "exp": exp});
        assert!(i.identity(&at(1000, "cairn"), 1059).is_ok(), "inside the 60 s skew");
        assert_eq!(i.identity(&at(1000, "cairn"), 1061).unwrap_err(), OidcError::Expired { ago_s: 61 });
        assert!(matches!(i.identity(&at(2000, "someone-else"), 1000), Err(OidcError::WrongAudience { .. })));
        let early = serde_json::json!({"sub": "u", "aud": "cairn", "exp": 5000, "nbf": 1100});
        assert!(matches!(i.identity(&early, 1000), Err(OidcError::NotYetValid { .. })));
        let no_exp = serde_json::json!({"sub": "u", "aud": "cairn"});
        assert!(matches!(i.identity(&no_exp, 1000), Err(OidcError::MissingClaim { .. })));
    }

    #[test]
    fn configuration_refuses_symmetric_algorithms_and_plain_http_off_loopback() {
        let mut c = cfg();
        c.algorithms = vec!["HS256".into()];
        c.issuer = "http://login.example.com".into();
        let problems = c.problems();
        assert!(problems.iter().any(|(k, m)| *k == "auth.oidc.algorithms" && m.contains("HS256")), "{problems:?}");
        assert!(problems.iter().any(|(k, _)| *k == "auth.oidc.issuer"), "{problems:?}");
        c.algorithms = default_algorithms();
        c.issuer = "http://127.0.0.1:9000".into();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    #[tokio::test]
    async fn unsigned_foreign_and_malformed_tokens_are_refused_before_any_fetch() {
        let v = Verifier::new(&[cfg()]).expect("verifier");
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = b64(r#"{"iss":"https://login.example.com","sub":"u","aud":"cairn","exp":9999999999}"#);
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none"}"#));
        assert_eq!(v.verify(&none, 0).await.unwrap_err(), OidcError::Unsigned);
        let hs = format!("{}.{payload}.c2ln", b64(r#"{"alg":"HS256","kid":"k"}"#));
        assert!(matches!(v.verify(&hs, 0).await, Err(OidcError::AlgorithmNotAllowed { .. })));
        let foreign = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(r#"{"iss":"https://evil.example"}"#));
        assert!(matches!(v.verify(&foreign, 0).await, Err(OidcError::UnknownIssuer { .. })));
        assert!(matches!(v.verify("eyJ.x", 0).await, Err(OidcError::Malformed(_))));
        assert!(looks_like_jwt(&none) && !looks_like_jwt("cairn_0123abcd"));
    }
}
