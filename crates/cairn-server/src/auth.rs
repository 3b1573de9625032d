//! Bearer-token identity: maps a presented token to an [`Identity`] (principal, kind, scopes),
//! comparing SHA-256 hashes only.

use crate::access::{Identity, PrincipalKind, Scope};
use crate::config::AuthConfig;
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

/// Looks identities up by token hash.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    by_hash: HashMap<String, Identity>,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Authenticator {
        let by_hash = cfg.tokens.iter().map(|t| (t.token_sha256.to_ascii_lowercase(), t.identity())).collect();
        Authenticator { by_hash }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The identity for an `Authorization` header value (`Bearer <token>`), if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Identity> {
        let value = authorization?.trim();
        let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
        if token.is_empty() {
            return None;
        }
        self.by_hash.get(&hash_token(token)).cloned()
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
}
