//! Who may call what: principals' kinds and scopes, and the one table that says which scope each
//! RPC needs and whether only a person may call it (invariant 11: only people govern).
//!
//! Every gRPC call passes [`check`] in the interceptor (`grpc.rs`) before its handler runs; the HTTP
//! ingest endpoints use the same rule for `ingest`. This module decides access; it never decides
//! what a change may do (that is `cairn-policy` and `cairn-workflow`).

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

    fn scope_list(&self) -> String {
        if self.scopes.is_empty() {
            return "no scopes".into();
        }
        self.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// What one RPC needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The call, as a person reads it ("approve", "open a break-glass").
    pub what: &'static str,
    pub scope: Scope,
    /// Only a person may make this call, whatever scopes a credential lists.
    pub person_only: bool,
}

const fn read(what: &'static str) -> Rule {
    Rule { what, scope: Scope::Read, person_only: false }
}

const fn govern(what: &'static str, scope: Scope) -> Rule {
    Rule { what, scope, person_only: true }
}

/// The access rule of every `cairn.v1` RPC, by its gRPC path. A path missing here is refused.
pub fn rule_for(path: &str) -> Option<Rule> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let rule = match (service, method) {
        ("cairn.v1.IngestService", "Push") => Rule { what: "push signals", scope: Scope::Ingest, person_only: false },
        ("cairn.v1.ReviewService", "ListRecommendations") => read("list recommendations"),
        ("cairn.v1.ReviewService", "GetDecisionCard") => read("read a decision card"),
        ("cairn.v1.ReviewService", "WatchRecommendations") => read("watch recommendations"),
        ("cairn.v1.ReviewService", "Approve") => govern("approve", Scope::Review),
        ("cairn.v1.ReviewService", "Reject") => govern("reject", Scope::Review),
        ("cairn.v1.ReviewService", "ProposePolicy") => govern("propose a policy", Scope::Policy),
        ("cairn.v1.ReviewService", "ShadowPolicy") => read("shadow-evaluate a policy"),
        ("cairn.v1.GuardrailService", "OpenBreakGlass") => govern("open a break-glass", Scope::Breakglass),
        ("cairn.v1.GuardrailService", "RevokeBreakGlass") => govern("revoke a break-glass", Scope::Breakglass),
        ("cairn.v1.GuardrailService", "SetFreeze") => govern("switch the freeze", Scope::Freeze),
        ("cairn.v1.GuardrailService", "EnableAutomation") => govern("re-enable an automation", Scope::Admin),
        ("cairn.v1.GuardrailService", "ListBreakGlass") => read("list break-glass exceptions"),
        ("cairn.v1.GuardrailService", "GetGuardrailStatus") => read("read guardrail status"),
        ("cairn.v1.AuditService", "Query") => read("query the audit log"),
        ("cairn.v1.AuditService", "Verify") => read("verify the audit log"),
        ("cairn.v1.AuditService", "Prove") => read("prove audit inclusion"),
        ("cairn.v1.IncidentService", _) => read("read incidents"),
        _ => return None,
    };
    Some(rule)
}

/// Why a call was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("missing or unknown bearer token")]
    Unauthenticated,
    #[error("{what} needs a person with scope `{scope}`; {kind} `{subject}` may not (only people govern)", scope = scope.as_str(), kind = kind.as_str())]
    NotAPerson { what: &'static str, scope: Scope, kind: PrincipalKind, subject: String },
    #[error("{what} needs scope `{scope}`; `{subject}` has {has}", scope = scope.as_str())]
    MissingScope { what: &'static str, scope: Scope, subject: String, has: String },
    #[error("no access rule for {0}: refused")]
    UnknownCall(String),
}

/// Whether `identity` may make the call at `path`. `anonymous_ok` lets an unauthenticated caller
/// through (ingest on loopback without `ingest.require_token`); it never opens a governing call.
pub fn check(path: &str, identity: Option<&Identity>, anonymous_ok: bool) -> Result<(), Denied> {
    let rule = rule_for(path).ok_or_else(|| Denied::UnknownCall(path.to_string()))?;
    check_rule(rule, identity, anonymous_ok)
}

/// [`check`] for a known rule (the HTTP ingest endpoints use the `Push` rule's scope).
pub fn check_rule(rule: Rule, identity: Option<&Identity>, anonymous_ok: bool) -> Result<(), Denied> {
    let Some(id) = identity else {
        return if anonymous_ok && !rule.person_only { Ok(()) } else { Err(Denied::Unauthenticated) };
    };
    if rule.person_only && id.kind != PrincipalKind::Person {
        return Err(Denied::NotAPerson { what: rule.what, scope: rule.scope, kind: id.kind, subject: id.principal.subject.clone() });
    }
    if !id.has(rule.scope) {
        // Where anonymous callers are let in, a token without the scope is no worse than none.
        if anonymous_ok && !rule.person_only {
            return Ok(());
        }
        return Err(Denied::MissingScope { what: rule.what, scope: rule.scope, subject: id.principal.subject.clone(), has: id.scope_list() });
    }
    Ok(())
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

/// The ingest rule, shared by the HTTP endpoints and `Push`.
pub const INGEST: Rule = Rule { what: "send signals", scope: Scope::Ingest, person_only: false };

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(kind: PrincipalKind, scopes: &[Scope]) -> Identity {
        Identity {
            principal: Principal { subject: "x:y".into(), display_name: "Y".into(), groups: vec!["sre".into()] },
            kind,
            scopes: scopes.iter().copied().collect(),
            sign_in: None,
        }
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

    const GOVERNING: [&str; 7] = [
        "/cairn.v1.ReviewService/Approve",
        "/cairn.v1.ReviewService/Reject",
        "/cairn.v1.ReviewService/ProposePolicy",
        "/cairn.v1.GuardrailService/OpenBreakGlass",
        "/cairn.v1.GuardrailService/RevokeBreakGlass",
        "/cairn.v1.GuardrailService/SetFreeze",
        "/cairn.v1.GuardrailService/EnableAutomation",
    ];

    #[test]
    fn a_service_holding_every_scope_is_refused_every_governing_call() {
        let svc = identity(PrincipalKind::Service, &Scope::ALL);
        for path in GOVERNING {
            let e = check(path, Some(&svc), true).unwrap_err();
            assert!(matches!(e, Denied::NotAPerson { .. }), "{path}: {e}");
            assert!(e.to_string().contains("only people govern"), "{e}");
        }
    }

    #[test]
    fn a_person_needs_the_scope_of_the_call() {
        let reader = identity(PrincipalKind::Person, &[Scope::Read]);
        assert!(check("/cairn.v1.ReviewService/ListRecommendations", Some(&reader), false).is_ok());
        let e = check("/cairn.v1.ReviewService/Approve", Some(&reader), false).unwrap_err();
        assert!(e.to_string().contains("needs scope `review`"), "{e}");
        let reviewer = identity(PrincipalKind::Person, &[Scope::Review]);
        assert!(check("/cairn.v1.ReviewService/Approve", Some(&reviewer), false).is_ok());
    }

    #[test]
    fn anonymous_callers_reach_only_ingest_and_only_where_allowed() {
        assert!(check("/cairn.v1.IngestService/Push", None, true).is_ok());
        assert_eq!(check("/cairn.v1.IngestService/Push", None, false), Err(Denied::Unauthenticated));
        assert_eq!(check("/cairn.v1.ReviewService/Approve", None, true), Err(Denied::Unauthenticated));
    }

    #[test]
    fn an_unknown_call_is_refused() {
        let admin = identity(PrincipalKind::Person, &Scope::ALL);
        assert!(matches!(check("/cairn.v1.ReviewService/DropTables", Some(&admin), false), Err(Denied::UnknownCall(_))));
    }

    #[test]
    fn legacy_tokens_read_as_people_without_ingest() {
        let s = Scope::legacy_person();
        assert!(s.contains(&Scope::Review) && s.contains(&Scope::Read));
        assert!(!s.contains(&Scope::Ingest) && !s.contains(&Scope::IngestAnnotate));
    }
}
