//! Who may call what: the one table that says which scope each RPC needs and whether only a
//! person may call it (invariant 11: only people govern).
//!
//! Every gRPC call passes [`check`] in the interceptor (`grpc.rs`) before its handler runs; the HTTP
//! ingest endpoints use the same rule for `ingest`. This module decides access by RPC path; the
//! identities and scopes it checks are domain ideas and live in `cairn_service::identity`. It never
//! decides what a change may do (that is `cairn-policy` and `cairn-workflow`).

pub use cairn_service::identity::{Identity, PrincipalKind, Scope, SignIn, StepUp, StepUpDenied};

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
        ("cairn.v1.IncidentService", "Merge") => govern("merge incidents", Scope::Review),
        ("cairn.v1.IncidentService", "Split") => govern("split an incident", Scope::Review),
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

/// The ingest rule, shared by the HTTP endpoints and `Push`.
pub const INGEST: Rule = Rule { what: "send signals", scope: Scope::Ingest, person_only: false };

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::Principal;

    fn identity(kind: PrincipalKind, scopes: &[Scope]) -> Identity {
        let principal = Principal { subject: "x:y".into(), display_name: "Y".into(), groups: vec!["sre".into()] };
        Identity::without_sign_in(principal, kind, scopes.iter().copied())
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
