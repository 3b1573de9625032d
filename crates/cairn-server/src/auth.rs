//! Bearer-token identity: maps a presented token to a principal, comparing SHA-256 hashes only.

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

/// Looks principals up by token hash.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    by_hash: HashMap<String, Principal>,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Authenticator {
        let by_hash = cfg
            .tokens
            .iter()
            .map(|t| {
                let display = if t.display_name.is_empty() { t.subject.clone() } else { t.display_name.clone() };
                (
                    t.token_sha256.to_ascii_lowercase(),
                    Principal { subject: t.subject.clone(), display_name: display, groups: t.groups.clone() },
                )
            })
            .collect();
        Authenticator { by_hash }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The principal for an `Authorization` header value (`Bearer <token>`), if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Principal> {
        let value = authorization?.trim();
        let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
        if token.is_empty() {
            return None;
        }
        self.by_hash.get(&hash_token(token)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenEntry;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            tokens: vec![TokenEntry {
                subject: "user:alice".into(),
                display_name: "Alice".into(),
                groups: vec!["sre".into()],
                token_sha256: hash_token("s3cret"),
            }],
        })
    }

    #[test]
    fn known_token_maps_to_its_principal() {
        let p = auth().authenticate(Some("Bearer s3cret")).expect("known token");
        assert_eq!(p.subject, "user:alice");
        assert_eq!(p.groups, vec!["sre".to_string()]);
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
