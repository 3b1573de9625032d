//! Who a caller is, as the domain sees it: a principal's kind (person or service), the scopes a
//! credential grants, how a person signed in, and how fresh that sign-in must be for the most
//! consequential acts ([`StepUp`]). The review desk reads these; which RPC needs which scope, and
//! how a token or certificate becomes an [`Identity`], is the server's business (`cairn-server`'s
//! `access.rs`, `auth.rs`, `oidc.rs`). This module never parses a credential.

use cairn_types::Principal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Whether an identity is a person or a machine (Prometheus, Alertmanager, a dashboard, CI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    Person,
    Service,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Person => "person",
            PrincipalKind::Service => "service",
        }
    }
}

/// What a credential allows. Governing scopes (`review`, `breakglass`, `freeze`, `policy`, `admin`)
/// are only ever honoured for persons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Send samples, alerts and change events.
    #[serde(rename = "ingest")]
    Ingest,
    /// Have an alert's `cairn_playbook` / `cairn_confidence` annotations honoured.
    #[serde(rename = "ingest:annotate")]
    IngestAnnotate,
    /// Read recommendations, decision cards, incidents, the audit log, guardrail status.
    #[serde(rename = "read")]
    Read,
    /// Approve and reject changes.
    #[serde(rename = "review")]
    Review,
    /// Open and revoke break-glass exceptions.
    #[serde(rename = "breakglass")]
    Breakglass,
    /// Switch the global freeze.
    #[serde(rename = "freeze")]
    Freeze,
    /// Propose a policy bundle (itself a tier-3 change) and shadow-evaluate one.
    #[serde(rename = "policy")]
    Policy,
    /// Re-enable an automation the loop guard disabled.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::Ingest,
        Scope::IngestAnnotate,
        Scope::Read,
        Scope::Review,
        Scope::Breakglass,
        Scope::Freeze,
        Scope::Policy,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::IngestAnnotate => "ingest:annotate",
            Scope::Read => "read",
            Scope::Review => "review",
            Scope::Breakglass => "breakglass",
            Scope::Freeze => "freeze",
            Scope::Policy => "policy",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|c| c.as_str() == s.trim())
    }

    /// Scopes that decide what runs: a service credential never holds them.
    pub fn governs(self) -> bool {
        matches!(self, Scope::Review | Scope::Breakglass | Scope::Freeze | Scope::Policy | Scope::Admin)
    }

    /// What a token entry written before kinds and scopes existed is read as: a person with every
    /// scope except ingest, so that upgrading never widens access.
    pub fn legacy_person() -> BTreeSet<Scope> {
        Scope::ALL.into_iter().filter(|s| !matches!(s, Scope::Ingest | Scope::IngestAnnotate)).collect()
    }
}

/// An authenticated caller: the principal approvals bind to, its kind and its scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    pub kind: PrincipalKind,
    pub scopes: BTreeSet<Scope>,
    /// How a person signed in at an OpenID Provider (none for static tokens and certificates).
    pub sign_in: Option<SignIn>,
}

/// A sign-in at an OpenID Provider, as the verified token states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignIn {
    pub issuer: String,
    /// The provider's own `sub` (the principal's subject may be another claim).
    pub subject: String,
    /// When the person last authenticated at the provider (`auth_time`), if the token says.
    pub auth_time_s: Option<i64>,
    /// How they authenticated (`amr`: `pwd`, `otp`, `hwk`, ...).
    pub amr: Vec<String>,
}

impl Identity {
    /// A caller known by a static token or a client certificate: no sign-in at a provider.
    pub fn without_sign_in(principal: Principal, kind: PrincipalKind, scopes: impl IntoIterator<Item = Scope>) -> Identity {
        Identity { principal, kind, scopes: scopes.into_iter().collect(), sign_in: None }
    }

    /// How this caller authenticated, for approval records: what an auditor reads to see whether
    /// an approval came from a fresh sign-in, a static token or a certificate.
    pub fn authentication(&self) -> serde_json::Value {
        match (&self.sign_in, self.kind) {
            (Some(s), _) => serde_json::json!({
                "method": "oidc", "issuer": s.issuer, "subject": s.subject,
                "auth_time": s.auth_time_s, "amr": s.amr,
            }),
            (None, PrincipalKind::Person) => serde_json::json!({"method": "token"}),
            (None, PrincipalKind::Service) => serde_json::json!({"method": "token_or_certificate"}),
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// The scopes, as a person reads them ("read, review"), for refusals.
    pub fn scope_list(&self) -> String {
        if self.scopes.is_empty() {
            return "no scopes".into();
        }
        self.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// How recent a sign-in must be for the most consequential calls: approving a tier-3 change,
/// opening a break-glass, proposing a policy. A session token minted hours ago at the provider
/// is not enough for those; the person signs in again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepUp {
    /// Most seconds since the person authenticated at the provider (`auth_time`).
    pub max_age_s: i64,
    /// Whether a static person token (no sign-in time) may make these calls. Absent: yes while
    /// no OpenID issuer is configured (tokens are then the only way in), no once one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_tokens: Option<bool>,
}

impl Default for StepUp {
    fn default() -> Self {
        StepUp { max_age_s: 900, static_tokens: None }
    }
}

/// Why a step-up check refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepUpDenied {
    #[error("{what} needs a sign-in no older than {max_s} s; yours is {age_s} s old: sign in again with `cairn login`")]
    Stale { what: &'static str, max_s: i64, age_s: i64 },
    #[error("{what} needs a sign-in time, and issuer {issuer} sent no auth_time: configure the provider to include it (require_auth_time / max_age)")]
    NoAuthTime { what: &'static str, issuer: String },
    #[error("{what} needs a recent sign-in at an OpenID Provider; a static token cannot do it here (auth.step_up.static_tokens = false): use `cairn login`")]
    StaticToken { what: &'static str },
}

impl StepUp {
    /// Whether `identity` signed in recently enough for `what`. `oidc_configured` decides the
    /// default for static tokens.
    pub fn check(&self, what: &'static str, identity: &Identity, oidc_configured: bool, now_s: i64) -> Result<(), StepUpDenied> {
        match &identity.sign_in {
            None if self.static_tokens.unwrap_or(!oidc_configured) => Ok(()),
            None => Err(StepUpDenied::StaticToken { what }),
            Some(s) => {
                let at = s.auth_time_s.ok_or_else(|| StepUpDenied::NoAuthTime { what, issuer: s.issuer.clone() })?;
                let age_s = (now_s - at).max(0);
                if age_s > self.max_age_s {
                    return Err(StepUpDenied::Stale { what, max_s: self.max_age_s, age_s });
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(kind: PrincipalKind, scopes: &[Scope]) -> Identity {
        let principal = Principal { subject: "x:y".into(), display_name: "Y".into(), groups: vec!["sre".into()] };
        Identity::without_sign_in(principal, kind, scopes.iter().copied())
    }

    #[test]
    fn step_up_wants_a_fresh_sign_in_and_refuses_static_tokens_once_oidc_is_configured() {
        let step = StepUp { max_age_s: 900, static_tokens: None };
        let mut id = identity(PrincipalKind::Person, &[Scope::Review]);
        assert!(step.check("approve", &id, false, 10_000).is_ok(), "tokens are the only way in without OIDC");
        assert!(matches!(step.check("approve", &id, true, 10_000), Err(StepUpDenied::StaticToken { .. })));
        let allowed = StepUp { static_tokens: Some(true), ..step };
        assert!(allowed.check("approve", &id, true, 10_000).is_ok());
        id.sign_in = Some(SignIn { issuer: "https://idp".into(), subject: "u".into(), auth_time_s: Some(9_000), amr: vec![] });
        assert!(step.check("approve", &id, true, 9_900).is_ok(), "900 s old: at the limit");
        let e = step.check("approve", &id, true, 9_901).unwrap_err();
        assert_eq!(e, StepUpDenied::Stale { what: "approve", max_s: 900, age_s: 901 });
        assert!(e.to_string().contains("cairn login"), "{e}");
        id.sign_in.as_mut().unwrap().auth_time_s = None;
        assert!(matches!(step.check("approve", &id, true, 9_000), Err(StepUpDenied::NoAuthTime { .. })));
    }
}
