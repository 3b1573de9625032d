//! How client results are shown: aligned tables and cards for people, stable JSON for scripts.

use cairn_proto::v1 as pb;
use serde_json::{Value, json};
use std::fmt::Write;

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

pub fn outcome_name(o: i32) -> &'static str {
    match pb::Outcome::try_from(o) {
        Ok(pb::Outcome::Auto) => "auto",
        Ok(pb::Outcome::Review) => "review",
        Ok(pb::Outcome::Advisory) => "advisory",
        Ok(pb::Outcome::Blocked) => "blocked",
        _ => "unspecified",
    }
}

pub fn severity_name(s: i32) -> &'static str {
    match pb::Severity::try_from(s) {
        Ok(pb::Severity::Low) => "low",
        Ok(pb::Severity::Medium) => "medium",
        Ok(pb::Severity::High) => "high",
        Ok(pb::Severity::Critical) => "critical",
        _ => "unspecified",
    }
}

fn tier(d: &pb::Decision) -> String {
    d.tier.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
}

pub fn target_string(t: Option<&pb::Target>) -> String {
    t.map(|t| format!("{}/{}/{}", t.environment, t.service, t.resource)).unwrap_or_default()
}

pub fn views_table(views: &[pb::RecommendationView]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "REV".into(),
        "OUTCOME".into(),
        "TIER".into(),
        "STATE".into(),
        "ACTION".into(),
        "TARGET".into(),
        "CONF".into(),
        "SEVERITY".into(),
    ]];
    for v in views {
        let (Some(r), Some(d), Some(c)) = (&v.recommendation, &v.decision, &v.change) else { continue };
        rows.push([
            r.id.clone(),
            r.revision.to_string(),
            outcome_name(d.outcome).into(),
            tier(d),
            c.state.clone(),
            r.action.clone(),
            target_string(r.target.as_ref()),
            format!("{:.2}", r.confidence),
            severity_name(r.severity).into(),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if views.is_empty() {
        out.push_str("(no recommendations)\n");
    }
    out
}

pub fn recommendation_json(r: &pb::Recommendation) -> Value {
    json!({
        "id": r.id, "revision": r.revision, "incident_id": r.incident_id,
        "playbook": r.playbook, "playbook_version": r.playbook_version, "action": r.action,
        "target": r.target.as_ref().map(|t| json!({"service": t.service, "environment": t.environment, "resource": t.resource})),
        "parameters": r.parameters, "confidence": r.confidence, "severity": severity_name(r.severity),
        "blast_radius": r.blast_radius, "reversibility": r.reversibility,
        "rollback_plan": r.rollback_plan.as_ref().map(|p| json!({"steps": p.steps, "owner": p.owner})),
        "verification": r.verification.iter().map(|c| json!({"name": c.name, "query": c.query, "comparator": c.comparator, "threshold": c.threshold, "within_secs": c.within_secs})).collect::<Vec<_>>(),
        "expected_benefit": r.expected_benefit, "rationale": r.rationale,
        "evidence": r.evidence.iter().map(|e| json!({"kind": e.kind, "description": e.description, "timestamp_ms": e.timestamp_ms})).collect::<Vec<_>>(),
        "model_version": r.model_version, "created_ms": r.created_ms, "requester": r.requester,
    })
}

pub fn decision_json(d: &pb::Decision) -> Value {
    json!({
        "outcome": outcome_name(d.outcome), "tier": d.tier, "approvals_required": d.approvals_required,
        "approver_groups": d.approver_groups, "requires_window": d.requires_window, "reasons": d.reasons,
        "policy_version": d.policy_version, "policy_failed": d.policy_failed, "decided_ms": d.decided_ms,
    })
}

pub fn change_json(c: &pb::ChangeRequest) -> Value {
    json!({
        "id": c.id, "recommendation_id": c.recommendation_id, "revision": c.revision, "state": c.state,
        "approvals": c.approvals.iter().map(|a| json!({"subject": a.subject, "revision": a.revision, "policy_version": a.policy_version, "action_digest": a.action_digest, "reason": a.reason, "at_ms": a.at_ms})).collect::<Vec<_>>(),
        "approvals_required": c.approvals_required, "rejected_by": c.rejected_by,
        "rejection_reason": c.rejection_reason, "requester": c.requester, "action_digest": c.action_digest,
        "created_ms": c.created_ms, "expires_ms": c.expires_ms, "updated_ms": c.updated_ms, "version": c.version,
        "stages": c.stages, "stages_done": c.stages_done, "next_stage": c.next_stage,
        "stage_approvals": c.stage_approvals.iter().map(|a| json!({"subject": a.subject, "reason": a.reason, "at_ms": a.at_ms})).collect::<Vec<_>>(),
    })
}

pub fn views_json(views: &[pb::RecommendationView]) -> Value {
    Value::Array(
        views
            .iter()
            .map(|v| {
                json!({
                    "recommendation": v.recommendation.as_ref().map(recommendation_json),
                    "decision": v.decision.as_ref().map(decision_json),
                    "change": v.change.as_ref().map(change_json),
                })
            })
            .collect(),
    )
}

pub fn card_json(c: &pb::DecisionCard) -> Value {
    json!({
        "recommendation": c.recommendation.as_ref().map(recommendation_json),
        "decision": c.decision.as_ref().map(decision_json),
        "change": c.change.as_ref().map(change_json),
        "incident": c.incident.as_ref().map(incident_json),
        "related_changes": c.related_changes.iter().map(change_json).collect::<Vec<_>>(),
        "target_state": c.target_state,
        "executions": c.executions.iter().map(|e| json!({"adapter": e.adapter, "status": e.status, "error": e.error, "output": e.output, "started_ms": e.started_ms, "finished_ms": e.finished_ms})).collect::<Vec<_>>(),
        "missing_fields": c.missing_fields,
        "service_criticality": c.service_criticality,
        "maintenance_window_open": c.maintenance_window_open,
        "maintenance_window": c.maintenance_window,
        "blast_radius": c.blast_radius,
        "reversibility": c.reversibility,
        "rollback_confidence": c.rollback_confidence,
        "recent_incidents": c.recent_incidents,
        "learning": c.learning,
        "active_policy_version": c.active_policy_version,
    })
}

/// A decision card for a person: what, why, how risky, how to undo, who has to agree.
pub fn card_text(c: &pb::DecisionCard) -> String {
    let mut o = String::new();
    let (Some(r), Some(d), Some(ch)) = (&c.recommendation, &c.decision, &c.change) else {
        return "(incomplete decision card)\n".into();
    };
    let _ = writeln!(o, "{} revision {}  —  {} on {}", r.id, r.revision, r.action, target_string(r.target.as_ref()));
    let _ = writeln!(
        o,
        "  outcome {} (tier {}), state {}, approvals {}/{}{}",
        outcome_name(d.outcome),
        tier(d),
        ch.state,
        ch.approvals.len(),
        ch.approvals_required,
        if d.requires_window { ", needs an open maintenance window" } else { "" }
    );
    if !ch.stages.is_empty() {
        let _ = writeln!(o, "  {}", crate::stages::stages_line(ch));
    }
    let _ = writeln!(
        o,
        "  confidence {:.2}, severity {}, blast radius {}, {}",
        r.confidence,
        severity_name(r.severity),
        r.blast_radius,
        r.reversibility
    );
    let _ = writeln!(o, "  service criticality {}, {}", c.service_criticality, if c.maintenance_window_open {
        format!("maintenance window {:?} open now", c.maintenance_window)
    } else {
        "no maintenance window open now".to_string()
    });
    if !c.learning.is_empty() {
        let _ = writeln!(o, "  learned: {}", c.learning);
    }
    if !c.rollback_confidence.is_empty() {
        let _ = writeln!(o, "  rollback confidence: {}", c.rollback_confidence);
    }
    if !c.recent_incidents.is_empty() {
        let _ = writeln!(o, "  recent incidents on this service: {}", c.recent_incidents.join(", "));
    }
    let _ = writeln!(o, "  why: {}", r.rationale);
    let _ = writeln!(o, "  expected benefit: {}", r.expected_benefit);
    let _ = writeln!(o, "  policy {}{}:", d.policy_version, if d.policy_failed { " (FAILED, fail-closed)" } else { "" });
    if !c.active_policy_version.is_empty() && c.active_policy_version != d.policy_version {
        let _ = writeln!(o, "    (the active policy is now {}: this decision is from an earlier version)", c.active_policy_version);
    }
    for reason in &d.reasons {
        let _ = writeln!(o, "    - {reason}");
    }
    match &r.rollback_plan {
        Some(p) => {
            let _ = writeln!(o, "  rollback (owner {}):", p.owner);
            for s in &p.steps {
                let _ = writeln!(o, "    - {s}");
            }
        }
        None => {
            let _ = writeln!(o, "  rollback: NONE");
        }
    }
    for v in &r.verification {
        let _ = writeln!(o, "  verify: {} — {} {} {} within {}s", v.name, v.query, v.comparator, v.threshold, v.within_secs);
    }
    if let Some(i) = &c.incident {
        let _ = writeln!(o, "  incident {} ({} members, services {:?}):", i.id, i.members.len(), i.affected_services);
        for m in &i.members {
            let _ = writeln!(o, "    - {} {} [{}] {}", m.kind, m.name, severity_name(m.severity), m.detail);
        }
        for g in &i.grouping_reasons {
            let _ = writeln!(o, "    grouped: {g}");
        }
        for p in &i.probable_causes {
            let _ = writeln!(o, "    probable cause: {p}");
        }
    }
    let _ = writeln!(o, "  target now: {}", c.target_state);
    if !c.related_changes.is_empty() {
        let _ = writeln!(o, "  recent changes on this target:");
        for rc in &c.related_changes {
            let _ = writeln!(o, "    - {} rev {} {}", rc.id, rc.revision, rc.state);
        }
    }
    for a in &ch.approvals {
        let _ = writeln!(o, "  approved by {} (rev {}): {}", a.subject, a.revision, a.reason);
    }
    if !ch.rejected_by.is_empty() {
        let _ = writeln!(o, "  rejected by {}: {}", ch.rejected_by, ch.rejection_reason);
    }
    for e in &c.executions {
        let _ = writeln!(o, "  execution via {}: {} {}", e.adapter, e.status, e.error);
        for line in e.output.lines() {
            let _ = writeln!(o, "    | {line}");
        }
    }
    if !c.missing_fields.is_empty() {
        let _ = writeln!(o, "  MISSING (cannot be approved): {}", c.missing_fields.join(", "));
    }
    o
}

pub fn watch_line(e: &pb::WatchEvent) -> String {
    format!(
        "[{}] {:<28} {} rev {} {} by {} {}",
        e.cursor, e.kind, e.recommendation_id, e.revision, e.change_id, e.actor, e.reason
    )
}

pub fn watch_json(e: &pb::WatchEvent) -> Value {
    json!({
        "cursor": e.cursor, "kind": e.kind, "recommendation_id": e.recommendation_id, "revision": e.revision,
        "change_id": e.change_id, "actor": e.actor, "reason": e.reason, "at_ms": e.at_ms,
        "payload": serde_json::from_str::<Value>(&e.payload_json).unwrap_or(Value::Null),
    })
}

pub fn audit_line(e: &pb::AuditEvent) -> String {
    format!(
        "{:>6}  {}  {:<28} {:<16} {} {}",
        e.seq, e.at_ms, e.kind, e.actor, e.recommendation_id, e.reason
    )
}

pub fn audit_json(e: &pb::AuditEvent) -> Value {
    json!({
        "seq": e.seq, "at_ms": e.at_ms, "actor": e.actor, "kind": e.kind, "incident_id": e.incident_id,
        "recommendation_id": e.recommendation_id, "revision": e.revision, "change_id": e.change_id,
        "policy_version": e.policy_version, "reason": e.reason,
        "payload": serde_json::from_str::<Value>(&e.payload_json).unwrap_or(Value::Null),
        "prev_hash": e.prev_hash, "hash": e.hash,
    })
}

/// One incident as JSON: members with their ids and entities, ranked causes with their factors.
pub fn incident_json(i: &pb::Incident) -> Value {
    json!({
        "id": i.id, "opened_ms": i.opened_ms, "updated_ms": i.updated_ms, "version": i.version,
        "affected_services": i.affected_services, "entities": i.entities, "grouping_reasons": i.grouping_reasons,
        "probable_causes": i.probable_causes, "severity": severity_name(i.severity),
        "causes": i.causes.iter().map(|c| json!({"entity": c.entity, "score": c.score, "description": c.description, "factors": c.factors, "members": c.members})).collect::<Vec<_>>(),
        "members": i.members.iter().map(|m| json!({"id": m.id, "entity": m.entity, "kind": m.kind, "name": m.name, "severity": severity_name(m.severity), "timestamp_ms": m.timestamp_ms, "detail": m.detail})).collect::<Vec<_>>(),
    })
}

/// Incidents, a line each: id, size, severity, the most probable root and its score.
pub fn incidents_table(list: &[pb::Incident]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:<22} {:>7} {:<9} {:<40} {:>5}  entities", "incident", "members", "severity", "most probable root", "score");
    for i in list {
        let _ = writeln!(o, "{}", incident_row(i));
    }
    o
}

/// One incident's line of [`incidents_table`].
fn incident_row(i: &pb::Incident) -> String {
    let (root, score) = i.causes.first().map(|c| (c.entity.as_str(), c.score)).unwrap_or(("-", 0.0));
    format!(
        "{:<22} {:>7} {:<9} {:<40} {:>5.2}  {}",
        i.id,
        i.members.len(),
        severity_name(i.severity),
        root,
        score,
        i.entities.join(", ")
    )
}

/// One `WatchIncidents` event, a line: its cursor, then the incident as `incidents list` shows it,
/// or that it was merged away.
pub fn incident_event_line(e: &pb::IncidentEvent) -> String {
    match &e.incident {
        Some(i) if i.members.is_empty() => format!("[{}] {} merged into another incident", e.cursor, i.id),
        Some(i) => format!("[{}] {}", e.cursor, incident_row(i)),
        None => format!("[{}] (no incident)", e.cursor),
    }
}

pub fn incident_event_json(e: &pb::IncidentEvent) -> Value {
    json!({"cursor": e.cursor, "incident": e.incident.as_ref().map(incident_json)})
}

/// One incident for a person: its causes with their factors, its members, and why each joined.
pub fn incident_text(i: &pb::Incident) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "incident {} (version {}, {} members, {})", i.id, i.version, i.members.len(), severity_name(i.severity));
    for (n, c) in i.causes.iter().enumerate() {
        let _ = writeln!(o, "  cause {} ({:.2}): {}", n + 1, c.score, c.description);
        for f in &c.factors {
            let _ = writeln!(o, "      {f}");
        }
    }
    for m in &i.members {
        let _ = writeln!(o, "  - [{}] {} {} {}", m.entity, m.kind, m.name, m.detail);
    }
    for g in &i.grouping_reasons {
        let _ = writeln!(o, "  grouped: {g}");
    }
    o
}
