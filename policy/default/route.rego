# Cairn's default routing policy: the risk tiers of "humans in the lead".
#
# Input:  {"recommendation": <Recommendation as JSON>, "context": <RoutingContext as JSON>}
# Output: data.cairn.route.decision =
#   {"outcome": "auto"|"review"|"advisory"|"blocked", "tier": 0..3 | null,
#    "approvals_required": n, "approver_groups": [...], "requires_window": bool, "reasons": [...],
#    "stage_approval": bool}
# stage_approval: whether a staged change (canary, 25%, 100%) waits for a person before each stage
# after the first. Left out, Cairn pauses (fail closed); not a boolean, the decision fails closed.
#
# Rules are tried in order (else-chain): blocked, advisory, tier 3, tier 0, tier 1, tier 2.
# Thresholds and lists live in data.json so that tuning them is a data change, not a code change;
# either way it is a new policy version, recorded on every decision.
package cairn.route

rec := input.recommendation

ctx := input.context

env := rec.target.environment

# --- blocked: not executable under this policy version -----------------------------------------

blocked_reasons contains "no rollback plan: a change without a way back is never executed" if {
	rec.rollback_plan == null
}

blocked_reasons contains "no verification check: nobody could tell whether the change worked" if {
	count(rec.verification) == 0
}

blocked_reasons contains "the global freeze is on: nothing runs until it is lifted" if {
	ctx.frozen
}

blocked_reasons contains msg if {
	rec.action in object.get(data.blocked, env, [])
	msg := sprintf("%s in %s is blocked by policy: it needs a new policy version or a break-glass exception", [rec.action, env])
}

blocked_reasons contains "irreversible with a global blast radius: Cairn will not run this" if {
	rec.reversibility == "irreversible"
	rec.blast_radius == "global"
}

# --- advisory: shown to people, never executed ---------------------------------------------------

low_confidence if rec.confidence < data.thresholds.advisory_below

# --- tier 3: two distinct approvers and a maintenance window ------------------------------------

tier3_reasons contains msg if {
	rec.action in data.tier3_actions
	msg := sprintf("%s always needs two people and a maintenance window (tier 3)", [rec.action])
}

tier3_reasons contains "irreversible: two people and a maintenance window (tier 3)" if {
	rec.reversibility == "irreversible"
}

tier3_reasons contains "global blast radius: two people and a maintenance window (tier 3)" if {
	rec.blast_radius == "global"
}

# Said on every tier-3 decision so the reviewer knows whether it can run right after approval.
window_note := "a maintenance window is open for this target now" if {
	ctx.maintenance_window_open
} else := "no maintenance window is open for this target now: after approval it waits for one"

# --- tiers 0 and 1: runs by itself inside the rails ----------------------------------------------

auto_eligible if {
	rec.action in data.auto_actions
	rec.reversibility == "reversible"
	rec.confidence >= data.thresholds.auto_min
	not loop_guard_tripped
	not failing_target
	not critical_service
}

loop_guard_tripped if ctx.recent_runs >= data.loop_guard.max_runs

failing_target if ctx.recent_failures >= data.loop_guard.max_failures

critical_service if object.get(ctx, "service_criticality", "medium") in data.no_auto_criticality

tier2_reasons contains msg if {
	failing_target
	msg := sprintf("%d recent changes on this target failed (limit %d): a person must look before the next one", [ctx.recent_failures, data.loop_guard.max_failures])
}

tier2_reasons contains msg if {
	critical_service
	msg := sprintf("service %s is %s: nothing runs there by itself (tier 2)", [rec.target.service, ctx.service_criticality])
}

tier2_reasons contains msg if {
	loop_guard_tripped
	msg := sprintf("loop guard: %s ran %d times on this target recently (limit %d); a person must look", [rec.action, ctx.recent_runs, data.loop_guard.max_runs])
}

tier2_reasons contains msg if {
	not loop_guard_tripped
	not rec.action in data.auto_actions
	msg := sprintf("%s is not on the list of actions that may run by themselves: one approver (tier 2)", [rec.action])
}

tier2_reasons contains msg if {
	not loop_guard_tripped
	not failing_target
	not critical_service
	rec.action in data.auto_actions
	msg := sprintf("%s (%s, %s blast radius, confidence %.2f) does not meet the auto rules: one approver (tier 2)", [rec.action, rec.reversibility, rec.blast_radius, rec.confidence])
}

# --- the decision --------------------------------------------------------------------------------

decision := d if {
	count(blocked_reasons) > 0
	d := {"outcome": "blocked", "tier": null, "approvals_required": 0, "approver_groups": [], "requires_window": false, "stage_approval": true, "reasons": sort(blocked_reasons)}
} else := d if {
	low_confidence
	d := {"outcome": "advisory", "tier": null, "approvals_required": 0, "approver_groups": [], "requires_window": false, "stage_approval": true, "reasons": [sprintf("confidence %.2f is below %.2f: advisory only, never executed", [rec.confidence, data.thresholds.advisory_below])]}
} else := d if {
	count(tier3_reasons) > 0
	d := {"outcome": "review", "tier": 3, "approvals_required": 2, "approver_groups": data.approvers.tier3, "requires_window": true, "stage_approval": true, "reasons": array.concat(sort(tier3_reasons), [window_note])}
} else := d if {
	auto_eligible
	rec.blast_radius == "instance"
	d := {"outcome": "auto", "tier": 0, "approvals_required": 0, "approver_groups": [], "requires_window": false, "stage_approval": false, "reasons": [sprintf("%s on one instance is reversible and confidence %.2f >= %.2f: runs by itself (tier 0)", [rec.action, rec.confidence, data.thresholds.auto_min])]}
} else := d if {
	auto_eligible
	rec.blast_radius == "service"
	d := {"outcome": "auto", "tier": 1, "approvals_required": 0, "approver_groups": [], "requires_window": false, "stage_approval": false, "reasons": [sprintf("%s on a service is reversible and confidence %.2f >= %.2f: runs by itself and notifies (tier 1)", [rec.action, rec.confidence, data.thresholds.auto_min])]}
} else := d if {
	d := {"outcome": "review", "tier": 2, "approvals_required": 1, "approver_groups": data.approvers.tier2, "requires_window": false, "stage_approval": true, "reasons": sort(tier2_reasons)}
}
