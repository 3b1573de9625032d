//! Conversions between the pipeline's types and the `cairn.v1` wire messages. The one place that
//! knows both shapes.

use cairn_proto::v1 as pb;
use cairn_types as t;

pub fn labels_to_pb(l: &t::Labels) -> Vec<pb::Label> {
    l.iter().map(|(n, v)| pb::Label { name: n.to_string(), value: v.to_string() }).collect()
}

/// Wire labels to a label set; a repeated name is reported, not silently overwritten.
pub fn labels_from_pb(l: &[pb::Label]) -> Result<t::Labels, String> {
    let mut out = t::Labels::new();
    for lab in l {
        if out.get(&lab.name).is_some() {
            return Err(format!("label {:?} appears more than once", lab.name));
        }
        out.insert(lab.name.clone(), lab.value.clone());
    }
    Ok(out)
}

pub fn severity_to_pb(s: t::Severity) -> i32 {
    (match s {
        t::Severity::Low => pb::Severity::Low,
        t::Severity::Medium => pb::Severity::Medium,
        t::Severity::High => pb::Severity::High,
        t::Severity::Critical => pb::Severity::Critical,
    }) as i32
}

pub fn outcome_to_pb(o: t::Outcome) -> i32 {
    (match o {
        t::Outcome::Auto => pb::Outcome::Auto,
        t::Outcome::Review => pb::Outcome::Review,
        t::Outcome::Advisory => pb::Outcome::Advisory,
        t::Outcome::Blocked => pb::Outcome::Blocked,
    }) as i32
}

/// `None` for UNSPECIFIED (no filter) or an unknown number.
pub fn outcome_from_pb(o: i32) -> Option<t::Outcome> {
    match pb::Outcome::try_from(o).ok()? {
        pb::Outcome::Unspecified => None,
        pb::Outcome::Auto => Some(t::Outcome::Auto),
        pb::Outcome::Review => Some(t::Outcome::Review),
        pb::Outcome::Advisory => Some(t::Outcome::Advisory),
        pb::Outcome::Blocked => Some(t::Outcome::Blocked),
    }
}

pub fn sample_from_pb(s: &pb::MetricSample) -> Result<t::MetricSample, String> {
    Ok(t::MetricSample { labels: labels_from_pb(&s.labels)?, timestamp_ms: s.timestamp_ms, value: s.value })
}

pub fn alert_from_pb(a: &pb::AlertEvent) -> Result<t::AlertEvent, String> {
    let status = match a.status.as_str() {
        "firing" => t::AlertStatus::Firing,
        "resolved" => t::AlertStatus::Resolved,
        other => return Err(format!("status must be \"firing\" or \"resolved\", got {other:?}")),
    };
    let labels = labels_from_pb(&a.labels)?;
    let fingerprint = if a.fingerprint.is_empty() {
        labels.series_id().to_string()
    } else {
        a.fingerprint.clone()
    };
    Ok(t::AlertEvent {
        fingerprint,
        status,
        annotations: labels_from_pb(&a.annotations)?,
        labels,
        starts_at_ms: a.starts_at_ms,
        ends_at_ms: (a.ends_at_ms != 0).then_some(a.ends_at_ms),
        generator_url: a.generator_url.clone(),
        source: if a.source.is_empty() { "grpc".into() } else { a.source.clone() },
    })
}

pub fn recommendation_to_pb(r: &t::Recommendation) -> pb::Recommendation {
    pb::Recommendation {
        id: r.id.0.clone(),
        revision: r.revision,
        incident_id: r.incident_id.0.clone(),
        playbook: r.playbook.clone(),
        playbook_version: r.playbook_version.clone(),
        action: r.action.as_str().into(),
        target: Some(pb::Target {
            service: r.target.service.clone(),
            environment: r.target.environment.clone(),
            resource: r.target.resource.clone(),
        }),
        parameters: r.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        confidence: r.confidence,
        severity: severity_to_pb(r.severity),
        blast_radius: r.blast_radius.as_str().into(),
        reversibility: r.reversibility.as_str().into(),
        rollback_plan: r
            .rollback_plan
            .as_ref()
            .map(|p| pb::RollbackPlan { steps: p.steps.clone(), owner: p.owner.clone() }),
        verification: r
            .verification
            .iter()
            .map(|c| pb::VerificationCheck {
                name: c.name.clone(),
                query: c.query.clone(),
                comparator: c.comparator.clone(),
                threshold: c.threshold,
                within_secs: c.within_secs,
            })
            .collect(),
        expected_benefit: r.expected_benefit.clone(),
        rationale: r.rationale.clone(),
        evidence: r
            .evidence
            .iter()
            .map(|e| pb::Evidence {
                kind: e.kind.clone(),
                description: e.description.clone(),
                timestamp_ms: e.timestamp_ms,
            })
            .collect(),
        model_version: r.model_version.clone(),
        created_ms: r.created_ms,
        requester: r.requester.clone(),
    }
}

pub fn decision_to_pb(d: &t::Decision) -> pb::Decision {
    pb::Decision {
        outcome: outcome_to_pb(d.outcome),
        tier: d.tier.map(u32::from),
        approvals_required: u32::from(d.approvals_required),
        approver_groups: d.approver_groups.clone(),
        requires_window: d.requires_window,
        reasons: d.reasons.clone(),
        policy_version: d.policy_version.clone(),
        policy_failed: d.policy_failed,
        decided_ms: d.decided_ms,
    }
}

pub fn change_to_pb(c: &t::ChangeRequest) -> pb::ChangeRequest {
    pb::ChangeRequest {
        id: c.id.0.clone(),
        recommendation_id: c.recommendation_id.0.clone(),
        revision: c.revision,
        state: c.state.as_str().into(),
        approvals: c
            .approvals
            .iter()
            .map(|a| pb::Approval {
                subject: a.subject.clone(),
                revision: a.revision,
                policy_version: a.policy_version.clone(),
                action_digest: a.action_digest.clone(),
                reason: a.reason.clone(),
                at_ms: a.at_ms,
            })
            .collect(),
        approvals_required: u32::from(c.approvals_required),
        rejected_by: c.rejection.as_ref().map(|r| r.subject.clone()).unwrap_or_default(),
        rejection_reason: c.rejection.as_ref().map(|r| r.reason.clone()).unwrap_or_default(),
        requester: c.requester.clone(),
        action_digest: c.action_digest.clone(),
        created_ms: c.created_ms,
        expires_ms: c.expires_ms,
        updated_ms: c.updated_ms,
        version: c.version,
        stages: c.stages.clone(),
        stages_done: c.stages_done,
        next_stage: c.next_stage().unwrap_or_default().to_string(),
        stage_approval: c.stage_approval,
        stop_cause: c.stop.as_ref().map(|s| s.cause.as_str().to_string()).unwrap_or_default(),
        stopped_by: c.stop.as_ref().map(|s| s.subject.clone()).unwrap_or_default(),
        stop_reason: c.stop.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
        stage_approvals: c
            .stage_approvals
            .iter()
            .map(|s| pb::Approval {
                subject: s.approval.subject.clone(),
                revision: s.approval.revision,
                policy_version: s.approval.policy_version.clone(),
                action_digest: s.approval.action_digest.clone(),
                reason: format!("stage {}: {}", s.stage, s.approval.reason),
                at_ms: s.approval.at_ms,
            })
            .collect(),
    }
}

pub fn execution_to_pb(e: &t::Execution) -> pb::Execution {
    let (status, error) = match &e.outcome {
        t::ExecutionOutcome::Succeeded => ("succeeded", String::new()),
        t::ExecutionOutcome::DryRun => ("dry_run", String::new()),
        t::ExecutionOutcome::Failed { error } => ("failed", error.clone()),
    };
    pb::Execution {
        adapter: e.adapter.clone(),
        status: status.into(),
        error,
        output: e.output.clone(),
        started_ms: e.started_ms,
        finished_ms: e.finished_ms,
    }
}

pub fn decision_card_to_pb(c: &cairn_service::card::DecisionCard) -> pb::DecisionCard {
    let rec = &c.recommendation;
    pb::DecisionCard {
        recommendation: Some(recommendation_to_pb(rec)),
        decision: Some(decision_to_pb(&c.decision)),
        change: Some(change_to_pb(&c.change)),
        incident: c.incident.as_ref().map(incident_to_pb),
        related_changes: c.related_changes.iter().map(change_to_pb).collect(),
        target_state: c.target_state.clone(),
        executions: c.executions.iter().map(execution_to_pb).collect(),
        missing_fields: c.missing_fields.clone(),
        service_criticality: c.service_criticality.clone(),
        maintenance_window_open: c.maintenance_window.is_some(),
        maintenance_window: c.maintenance_window.clone().unwrap_or_default(),
        blast_radius: rec.blast_radius.as_str().into(),
        reversibility: rec.reversibility.as_str().into(),
        rollback_confidence: c.rollback_confidence.clone(),
        recent_incidents: c.recent_incidents.clone(),
        learning: c.learning.clone(),
        active_policy_version: c.active_policy_version.clone(),
    }
}

pub fn incident_to_pb(i: &t::Incident) -> pb::Incident {
    pb::Incident {
        id: i.id.0.clone(),
        opened_ms: i.opened_ms,
        updated_ms: i.updated_ms,
        members: i
            .members
            .iter()
            .enumerate()
            .map(|(n, m)| match m {
                t::IncidentMember::Alert { alertname, status, labels, severity, starts_at_ms, summary, .. } => {
                    pb::IncidentMember {
                        kind: "alert".into(),
                        name: alertname.clone(),
                        labels: labels_to_pb(labels),
                        severity: severity_to_pb(*severity),
                        timestamp_ms: *starts_at_ms,
                        detail: if summary.is_empty() {
                            status.as_str().to_string()
                        } else {
                            format!("{}: {summary}", status.as_str())
                        },
                        id: m.id(),
                        entity: i.entity_of(n).to_string(),
                    }
                }
                t::IncidentMember::Anomaly(a) => pb::IncidentMember {
                    kind: "anomaly".into(),
                    name: a.labels.to_string(),
                    labels: labels_to_pb(&a.labels),
                    severity: severity_to_pb(a.severity),
                    timestamp_ms: a.timestamp_ms,
                    detail: format!(
                        "score={:.3} observed={} expected={} kind={} detector={} model={}",
                        a.score, a.observed, a.expected, a.anomaly_kind, a.detector, a.model_version
                    ),
                    id: m.id(),
                    entity: i.entity_of(n).to_string(),
                },
            })
            .collect(),
        affected_services: i.affected_services.clone(),
        grouping_reasons: i.grouping_reasons.clone(),
        probable_causes: i
            .probable_causes
            .iter()
            .map(|c| format!("{} ({:.2})", c.description, c.score))
            .collect(),
        severity: severity_to_pb(i.severity),
        causes: i
            .probable_causes
            .iter()
            .map(|c| pb::ProbableCause {
                entity: c.entity.clone(),
                score: c.score,
                description: c.description.clone(),
                factors: c.factors.clone(),
                members: c.members.clone(),
            })
            .collect(),
        entities: i.entities(),
        version: i.version,
    }
}

pub fn audit_to_pb(e: &t::AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: e.seq,
        at_ms: e.at_ms,
        actor: e.actor.clone(),
        kind: e.kind.clone(),
        incident_id: e.incident_id.clone().unwrap_or_default(),
        recommendation_id: e.recommendation_id.clone().unwrap_or_default(),
        revision: e.revision,
        change_id: e.change_id.clone().unwrap_or_default(),
        policy_version: e.policy_version.clone().unwrap_or_default(),
        reason: e.reason.clone(),
        payload_json: e.payload.to_string(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
        signal_id: e.signal_id.clone().unwrap_or_default(),
        model_version: e.model_version.clone().unwrap_or_default(),
        reason_codes: e.reason_codes.clone(),
        diff_summary: e.diff_summary.clone().unwrap_or_default(),
        affected_resources: e.affected_resources.clone(),
    }
}

/// The inverse of [`audit_to_pb`], for clients that re-check what the server sent.
pub fn audit_from_pb(e: &pb::AuditEvent) -> Result<t::AuditEvent, serde_json::Error> {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(t::AuditEvent {
        seq: e.seq,
        at_ms: e.at_ms,
        actor: e.actor.clone(),
        kind: e.kind.clone(),
        incident_id: some(&e.incident_id),
        recommendation_id: some(&e.recommendation_id),
        revision: e.revision,
        change_id: some(&e.change_id),
        policy_version: some(&e.policy_version),
        reason: e.reason.clone(),
        payload: serde_json::from_str(&e.payload_json)?,
        signal_id: some(&e.signal_id),
        model_version: some(&e.model_version),
        reason_codes: e.reason_codes.clone(),
        diff_summary: some(&e.diff_summary),
        affected_resources: e.affected_resources.clone(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    })
}

pub fn watch_event_from_audit(e: &t::AuditEvent) -> pb::WatchEvent {
    pb::WatchEvent {
        cursor: e.seq,
        kind: e.kind.clone(),
        recommendation_id: e.recommendation_id.clone().unwrap_or_default(),
        revision: e.revision.unwrap_or(0),
        change_id: e.change_id.clone().unwrap_or_default(),
        actor: e.actor.clone(),
        reason: e.reason.clone(),
        at_ms: e.at_ms,
        payload_json: e.payload.to_string(),
    }
}
