//! Break-glass: the time-bound, owner-bound exception to policy that the seed asks for. A person
//! opens one with a purpose, a linked incident or change, a scope (action classes and targets), an
//! expiry of at most four hours and optionally a maximum number of uses. While it is active, a
//! recommendation that policy *blocked* and that lies in its scope is opened for review by two
//! distinct people (tier 2, two approvals) instead of being refused. That is all it allows: it
//! never makes anything run by itself, and it never lowers the bar for `review` or `advisory`.
//!
//! Every rule here is checked at the moment of use ([`use_for`], through [`check_usable`]) and
//! again immediately before a change opened under a break-glass runs ([`check_in_force`], called
//! by the server's execution path), not only by the sweeper that marks expired ones ([`expire`]).
//! Opening, using, revoking and expiring each give audit drafts and escalations for Alertmanager.

use cairn_types::{
    AuditDraft, BREAKGLASS_MAX_MS, BreakGlass, BreakGlassScope, BreakGlassState, CAIRN_SERVICE_SUBJECT,
    Decision, Escalation, Outcome, Principal, Recommendation,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Approvals a change opened under a break-glass needs: the two-person rule.
pub const BREAKGLASS_APPROVALS: u8 = 2;

/// What a person asks for when opening a break-glass.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakGlassRequest {
    pub purpose: String,
    pub link: String,
    pub scope: BreakGlassScope,
    /// How long it stays open; at most four hours.
    pub duration_ms: i64,
    pub max_uses: Option<u32>,
}

/// Why a break-glass could not be opened, used or revoked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BreakGlassError {
    #[error("a break-glass needs a purpose: say why policy must be bypassed")]
    NoPurpose,
    #[error("a break-glass needs a linked incident or change id")]
    NoLink,
    #[error("a break-glass needs a scope: at least one action class and one target")]
    EmptyScope,
    #[error("a break-glass lasts between 1 ms and 4 hours; {requested_ms} ms was asked")]
    BadDuration { requested_ms: i64 },
    #[error("max uses must be at least 1 when given")]
    ZeroUses,
    #[error("Cairn's own identity cannot open or close a break-glass; a person must")]
    ServiceIdentity,
    #[error("break-glass {id} is {state}, not active")]
    NotActive { id: String, state: BreakGlassState },
    #[error("break-glass {id} expired at {expires_ms} ms")]
    Expired { id: String, expires_ms: i64 },
    #[error("break-glass {id} has been used {uses} of {max} times")]
    UsesExhausted { id: String, uses: u32, max: u32 },
    #[error("break-glass {id} does not cover this action and target")]
    OutOfScope { id: String },
    #[error("a reason is required")]
    NoReason,
}

fn draft(actor: &str, kind: &str, reason: String, bg: &BreakGlass, extra: serde_json::Value) -> AuditDraft {
    AuditDraft {
        actor: actor.to_string(),
        kind: kind.to_string(),
        reason,
        payload: json!({ "breakglass": bg, "detail": extra }),
        ..Default::default()
    }
}

fn alert(name: &str, severity: &str, bg: &BreakGlass, summary: String, starts_ms: i64, ends_ms: i64) -> Escalation {
    let mut labels = BTreeMap::new();
    labels.insert("breakglass_id".to_string(), bg.id.clone());
    labels.insert("owner".to_string(), bg.owner.clone());
    Escalation {
        alertname: name.to_string(),
        severity: severity.to_string(),
        labels,
        summary,
        description: format!(
            "purpose: {}; linked to {}; scope: {:?} on {} target(s); expires at {} ms; used {}{}",
            bg.purpose,
            bg.link,
            bg.scope.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            bg.scope.targets.len(),
            bg.expires_ms,
            bg.uses,
            bg.max_uses.map(|m| format!(" of {m}")).unwrap_or_default(),
        ),
        starts_ms,
        ends_ms: Some(ends_ms),
    }
}

/// How long the "it was used / it expired" alerts stay visible in Alertmanager.
const NOTICE_MS: i64 = 3_600_000;

/// Opens a break-glass owned by `owner`, with its audit draft and the alert that stays firing until
/// it expires. Its id includes a random part: the same person opening the same request twice in
/// the same millisecond (a double click, two replicas) gets two distinct break-glass records.
pub fn open(owner: &Principal, req: BreakGlassRequest, now_ms: i64) -> Result<(BreakGlass, Vec<AuditDraft>, Vec<Escalation>), BreakGlassError> {
    open_with_nonce(owner, req, now_ms, rand::random())
}

/// [`open`] with the random part of the id given, for tests that need a fixed id.
pub fn open_with_nonce(
    owner: &Principal,
    req: BreakGlassRequest,
    now_ms: i64,
    nonce: u64,
) -> Result<(BreakGlass, Vec<AuditDraft>, Vec<Escalation>), BreakGlassError> {
    if owner.subject == CAIRN_SERVICE_SUBJECT {
        return Err(BreakGlassError::ServiceIdentity);
    }
    if req.purpose.trim().is_empty() {
        return Err(BreakGlassError::NoPurpose);
    }
    if req.link.trim().is_empty() {
        return Err(BreakGlassError::NoLink);
    }
    if req.scope.actions.is_empty() || req.scope.targets.is_empty() {
        return Err(BreakGlassError::EmptyScope);
    }
    if req.duration_ms <= 0 || req.duration_ms > BREAKGLASS_MAX_MS {
        return Err(BreakGlassError::BadDuration { requested_ms: req.duration_ms });
    }
    if req.max_uses == Some(0) {
        return Err(BreakGlassError::ZeroUses);
    }
    let mut h = Sha256::new();
    h.update(owner.subject.as_bytes());
    h.update(now_ms.to_be_bytes());
    h.update(req.purpose.as_bytes());
    h.update(req.link.as_bytes());
    h.update(nonce.to_be_bytes());
    let bg = BreakGlass {
        id: format!("bg-{}", &hex::encode(h.finalize())[..16]),
        owner: owner.subject.clone(),
        purpose: req.purpose,
        link: req.link,
        scope: req.scope,
        opened_ms: now_ms,
        expires_ms: now_ms + req.duration_ms,
        max_uses: req.max_uses,
        uses: 0,
        state: BreakGlassState::Active,
        closed_ms: None,
        closed_by: None,
        close_reason: None,
        version: 1,
    };
    let d = draft(&owner.subject, "breakglass.opened", bg.purpose.clone(), &bg, json!({}));
    let a = alert("CairnBreakGlassOpen", "warning", &bg, format!("break-glass {} opened by {}", bg.id, bg.owner), now_ms, bg.expires_ms);
    Ok((bg, vec![d], vec![a]))
}

/// Whether `bg` allows anything at `now_ms`: active, unexpired (whatever the sweeper has done) and
/// with uses left.
pub fn check_usable(bg: &BreakGlass, now_ms: i64) -> Result<(), BreakGlassError> {
    if bg.state != BreakGlassState::Active {
        return Err(BreakGlassError::NotActive { id: bg.id.clone(), state: bg.state });
    }
    if now_ms >= bg.expires_ms {
        return Err(BreakGlassError::Expired { id: bg.id.clone(), expires_ms: bg.expires_ms });
    }
    if let Some(max) = bg.max_uses
        && bg.uses >= max
    {
        return Err(BreakGlassError::UsesExhausted { id: bg.id.clone(), uses: bg.uses, max });
    }
    Ok(())
}

/// Whether a change opened under `bg` may still run at `now_ms`: the break-glass was not revoked
/// and has not expired. (Its last use closes it as exhausted; the change that use opened may
/// still run until the expiry.)
pub fn check_in_force(bg: &BreakGlass, now_ms: i64) -> Result<(), BreakGlassError> {
    if !matches!(bg.state, BreakGlassState::Active | BreakGlassState::Exhausted) {
        return Err(BreakGlassError::NotActive { id: bg.id.clone(), state: bg.state });
    }
    if now_ms >= bg.expires_ms {
        return Err(BreakGlassError::Expired { id: bg.id.clone(), expires_ms: bg.expires_ms });
    }
    Ok(())
}

/// The first of `candidates` that covers `rec` and is usable now.
pub fn find_usable<'a>(candidates: &'a [BreakGlass], rec: &Recommendation, now_ms: i64) -> Option<&'a BreakGlass> {
    candidates.iter().find(|bg| bg.scope.covers(rec.action, &rec.target) && check_usable(bg, now_ms).is_ok())
}

/// Uses `bg` for the blocked recommendation `rec` whose change will be `change_id`: counts the use
/// (closing it as exhausted on its last one), with the audit draft and the alert.
pub fn use_for(bg: &BreakGlass, rec: &Recommendation, change_id: &str, now_ms: i64) -> Result<(BreakGlass, Vec<AuditDraft>, Vec<Escalation>), BreakGlassError> {
    check_usable(bg, now_ms)?;
    if !bg.scope.covers(rec.action, &rec.target) {
        return Err(BreakGlassError::OutOfScope { id: bg.id.clone() });
    }
    let mut next = bg.clone();
    next.uses += 1;
    next.version += 1;
    if next.max_uses.is_some_and(|m| next.uses >= m) {
        next.state = BreakGlassState::Exhausted;
        next.closed_ms = Some(now_ms);
        next.closed_by = Some(CAIRN_SERVICE_SUBJECT.to_string());
        next.close_reason = Some("maximum uses reached".into());
    }
    let mut d = draft(
        CAIRN_SERVICE_SUBJECT,
        "breakglass.used",
        format!("blocked {} on {} opened for two-person review under {}", rec.action, rec.target, bg.id),
        &next,
        json!({ "change_id": change_id, "action": rec.action.as_str(), "target": rec.target }),
    );
    d.recommendation_id = Some(rec.id.0.clone());
    d.revision = Some(rec.revision);
    d.change_id = Some(change_id.to_string());
    let mut used = alert("CairnBreakGlassUsed", "warning", &next, format!("break-glass {} used for {} on {}", bg.id, rec.action, rec.target), now_ms, now_ms + NOTICE_MS);
    used.labels.insert("change_id".into(), change_id.to_string());
    let mut alerts = vec![used];
    if next.state == BreakGlassState::Exhausted {
        alerts.push(alert("CairnBreakGlassOpen", "warning", &next, format!("break-glass {} closed: maximum uses reached", bg.id), bg.opened_ms, now_ms));
    }
    Ok((next, vec![d], alerts))
}

/// The decision under which a blocked, in-scope recommendation is opened for review: review at
/// tier 2 with two approvals, the policy version unchanged, the break-glass named in the reasons,
/// and `approver_groups` when the policy named none.
pub fn apply_to_decision(decision: &Decision, bg: &BreakGlass, approver_groups: &[String]) -> Decision {
    debug_assert_eq!(decision.outcome, Outcome::Blocked);
    let mut d = decision.clone();
    if d.approver_groups.is_empty() {
        d.approver_groups = approver_groups.to_vec();
    }
    d.outcome = Outcome::Review;
    d.tier = Some(d.tier.unwrap_or(2).max(2));
    d.approvals_required = d.approvals_required.max(BREAKGLASS_APPROVALS);
    // A blocked action opened by exception: a person looks before each stage, whatever was said.
    d.stage_approval = true;
    // Whoever opened the exception does not also approve what it lets through.
    d.breakglass_owner = Some(bg.owner.clone());
    d.reasons.push(format!(
        "blocked by policy; opened for two-person review under break-glass {} (owner {}, purpose: {})",
        bg.id, bg.owner, bg.purpose
    ));
    d
}

/// Closes `bg` early on a person's word.
pub fn revoke(bg: &BreakGlass, by: &Principal, reason: &str, now_ms: i64) -> Result<(BreakGlass, Vec<AuditDraft>, Vec<Escalation>), BreakGlassError> {
    if by.subject == CAIRN_SERVICE_SUBJECT {
        return Err(BreakGlassError::ServiceIdentity);
    }
    if reason.trim().is_empty() {
        return Err(BreakGlassError::NoReason);
    }
    if bg.state != BreakGlassState::Active {
        return Err(BreakGlassError::NotActive { id: bg.id.clone(), state: bg.state });
    }
    let mut next = bg.clone();
    next.state = BreakGlassState::Revoked;
    next.version += 1;
    next.closed_ms = Some(now_ms);
    next.closed_by = Some(by.subject.clone());
    next.close_reason = Some(reason.to_string());
    let d = draft(&by.subject, "breakglass.revoked", reason.to_string(), &next, json!({}));
    // Resolves the "open" alert.
    let a = alert("CairnBreakGlassOpen", "warning", &next, format!("break-glass {} revoked by {}", bg.id, by.subject), bg.opened_ms, now_ms);
    Ok((next, vec![d], vec![a]))
}

/// Marks an active break-glass whose expiry has passed as expired. `None` when nothing is due.
pub fn expire(bg: &BreakGlass, now_ms: i64) -> Option<(BreakGlass, Vec<AuditDraft>, Vec<Escalation>)> {
    if bg.state != BreakGlassState::Active || now_ms < bg.expires_ms {
        return None;
    }
    let mut next = bg.clone();
    next.state = BreakGlassState::Expired;
    next.version += 1;
    next.closed_ms = Some(now_ms);
    next.closed_by = Some(CAIRN_SERVICE_SUBJECT.to_string());
    next.close_reason = Some("expired".into());
    let d = draft(
        CAIRN_SERVICE_SUBJECT,
        "breakglass.expired",
        format!("expired at {} ms after {} use(s)", bg.expires_ms, bg.uses),
        &next,
        json!({ "late_ms": now_ms - bg.expires_ms }),
    );
    let alerts = vec![
        alert("CairnBreakGlassExpired", "info", &next, format!("break-glass {} expired", bg.id), now_ms, now_ms + NOTICE_MS),
        alert("CairnBreakGlassOpen", "warning", &next, format!("break-glass {} expired", bg.id), bg.opened_ms, now_ms),
    ];
    Some((next, vec![d], alerts))
}

#[cfg(test)]
mod tests;
