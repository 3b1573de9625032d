//! Caller identity: maps a presented bearer token to an [`Identity`] (principal, kind, scopes),
//! comparing SHA-256 hashes only, or, without a token, a verified client certificate to the
//! service `[[auth.certificates]]` names.

use crate::access::{Identity, PrincipalKind, Scope};
use crate::config::{AuthConfig, CertificateEntry};
use crate::tls::PeerCert;
use cairn_types::Principal;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Hex SHA-256 of a token, as stored in the configuration.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random token: 32 bytes, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("cairn_{}", hex::encode(bytes))
}

/// The token of an `Authorization: Bearer <token>` header value; `None` for another scheme or an
/// empty token.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let value = authorization.trim();
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then_some(token)
}

/// Looks identities up by token hash.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    by_hash: HashMap<String, Identity>,
    certificates: Vec<CertificateEntry>,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Authenticator {
        let by_hash = cfg.tokens.iter().map(|t| (t.token_sha256.to_ascii_lowercase(), t.identity())).collect();
        Authenticator { by_hash, certificates: cfg.certificates.clone() }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.certificates.is_empty()
    }

    /// The identity for an `Authorization` header value (`Bearer <token>`), if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Identity> {
        self.by_hash.get(&hash_token(bearer_token(authorization?)?)).cloned()
    }

    /// The identity of a request: its bearer token's when it presents one (a token is the more
    /// specific claim: a person's CLI may reach Cairn from a host with a machine certificate),
    /// otherwise the service its verified client certificate is mapped to. A presented token
    /// that is unknown is not replaced by the certificate: the caller meant to be someone else.
    pub fn authenticate_peer(&self, authorization: Option<&str>, cert: Option<&PeerCert>) -> Option<Identity> {
        if authorization.is_some_and(|a| !a.trim().is_empty()) {
            return self.authenticate(authorization);
        }
        let cert = cert?;
        self.certificates.iter().find(|c| c.matches(cert)).map(CertificateEntry::identity)
    }

    /// The people who may approve: persons holding `review`. Approvals by anyone else (a service,
    /// a person since removed or stripped of the scope) do not count at execution.
    pub fn reviewers(&self) -> impl Iterator<Item = Principal> + '_ {
        self.by_hash
            .values()
            .filter(|id| id.kind == PrincipalKind::Person && id.has(Scope::Review))
            .map(|id| id.principal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenEntry;

    fn entry(subject: &str, token: &str, kind: Option<PrincipalKind>, scopes: Option<Vec<Scope>>) -> TokenEntry {
        TokenEntry {
            subject: subject.into(),
            display_name: String::new(),
            groups: vec!["sre".into()],
            token_sha256: hash_token(token),
            kind,
            scopes,
        }
    }

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            tokens: vec![
                entry("user:alice", "s3cret", None, None),
                entry("service:prometheus", "prom", Some(PrincipalKind::Service), Some(vec![Scope::Ingest])),
            ],
            certificates: vec![CertificateEntry {
                subject: "service:alertmanager".into(),
                display_name: String::new(),
                groups: vec![],
                common_name: Some("alertmanager".into()),
                dns_name: None,
                uri: None,
                scopes: vec![Scope::Ingest],
            }],
            ..Default::default()
        })
    }

    #[test]
    fn known_token_maps_to_its_identity() {
        let id = auth().authenticate(Some("Bearer s3cret")).expect("known token");
        assert_eq!(id.principal.subject, "user:alice");
        assert_eq!(id.principal.groups, vec!["sre".to_string()]);
        assert_eq!(id.kind, PrincipalKind::Person);
        assert!(id.has(Scope::Review) && !id.has(Scope::Ingest), "a legacy entry is a person without ingest");
        let svc = auth().authenticate(Some("Bearer prom")).expect("known token");
        assert_eq!(svc.kind, PrincipalKind::Service);
        assert!(svc.has(Scope::Ingest) && !svc.has(Scope::Review));
    }

    #[test]
    fn only_people_with_review_are_reviewers() {
        let subjects: Vec<String> = auth().reviewers().map(|p| p.subject).collect();
        assert_eq!(subjects, ["user:alice"]);
    }

    #[test]
    fn unknown_missing_or_malformed_tokens_are_refused() {
        let a = auth();
        assert!(a.authenticate(Some("Bearer wrong")).is_none());
        assert!(a.authenticate(None).is_none());
        assert!(a.authenticate(Some("s3cret")).is_none());
        assert!(a.authenticate(Some("Basic s3cret")).is_none());
        assert!(a.authenticate(Some("Bearer ")).is_none());
    }

    #[test]
    fn a_certificate_identifies_a_service_only_without_a_token() {
        let a = auth();
        let cert = PeerCert { common_name: Some("alertmanager".into()), ..PeerCert::default() };
        let id = a.authenticate_peer(None, Some(&cert)).expect("mapped certificate");
        assert_eq!(id.principal.subject, "service:alertmanager");
        assert_eq!(id.kind, PrincipalKind::Service);
        assert_eq!(a.authenticate_peer(Some("Bearer s3cret"), Some(&cert)).unwrap().principal.subject, "user:alice", "a token wins");
        assert!(a.authenticate_peer(Some("Bearer wrong"), Some(&cert)).is_none(), "a wrong token is not rescued by the certificate");
        let stranger = PeerCert { common_name: Some("someone".into()), ..PeerCert::default() };
        assert!(a.authenticate_peer(None, Some(&stranger)).is_none());
        assert!(a.authenticate_peer(None, None).is_none());
        assert!(!a.reviewers().any(|p| p.subject == "service:alertmanager"), "a certificate never makes a reviewer");
    }
}
