# Unit tests for route.rego, run by `cargo test -p cairn-policy` (and later `cairn policy test`)
# through the same engine that routes in production. Each rule named test_* must be true.
package cairn.route_test

import data.cairn.route

base := {
	"action": "restart_process",
	"target": {"service": "search", "environment": "production", "resource": "search-7"},
	"confidence": 0.9,
	"blast_radius": "instance",
	"reversibility": "reversible",
	"rollback_plan": {"steps": ["restart again"], "owner": "team"},
	"verification": [{"name": "up", "query": "up", "comparator": ">=", "threshold": 1, "within_secs": 60}],
}

calm := {"recent_runs": 0, "recent_failures": 0, "frozen": false, "maintenance_window_open": false, "active_break_glass": [], "environment_criticality": "high"}

test_restart_on_one_instance_runs_by_itself if {
	d := route.decision with input as {"recommendation": base, "context": calm}
	d.outcome == "auto"
	d.tier == 0
}

test_scale_out_on_a_service_runs_and_notifies if {
	r := object.union(base, {"action": "scale_out", "blast_radius": "service"})
	d := route.decision with input as {"recommendation": r, "context": calm}
	d.outcome == "auto"
	d.tier == 1
}

test_low_confidence_is_advisory if {
	r := object.union(base, {"confidence": 0.3})
	d := route.decision with input as {"recommendation": r, "context": calm}
	d.outcome == "advisory"
}

test_dns_needs_two_people_and_a_window if {
	r := object.union(base, {"action": "dns_change", "blast_radius": "global", "reversibility": "partially_reversible"})
	d := route.decision with input as {"recommendation": r, "context": calm}
	d.outcome == "review"
	d.tier == 3
	d.approvals_required == 2
	d.requires_window
}

test_production_firewall_relaxation_is_blocked if {
	r := object.union(base, {"action": "firewall_relax", "blast_radius": "global", "reversibility": "partially_reversible"})
	d := route.decision with input as {"recommendation": r, "context": calm}
	d.outcome == "blocked"
}

test_staging_firewall_relaxation_is_tier3 if {
	r := object.union(base, {"action": "firewall_relax", "target": {"service": "s", "environment": "staging", "resource": "r"}})
	d := route.decision with input as {"recommendation": r, "context": calm}
	d.tier == 3
}

test_missing_rollback_plan_is_blocked if {
	r := object.union(base, {"rollback_plan": null})
	d := route.decision with input as {"recommendation": r, "context": calm}
	d.outcome == "blocked"
}

test_loop_guard_sends_repeats_to_a_person if {
	c := object.union(calm, {"recent_runs": 3})
	d := route.decision with input as {"recommendation": base, "context": c}
	d.outcome == "review"
	d.tier == 2
}

test_freeze_blocks_everything if {
	c := object.union(calm, {"frozen": true})
	d := route.decision with input as {"recommendation": base, "context": c}
	d.outcome == "blocked"
}

test_rollback_deploy_needs_one_approver if {
	r := object.union(base, {"action": "rollback_deploy", "blast_radius": "service"})
	d := route.decision with input as {"recommendation": r, "context": calm}
	d.outcome == "review"
	d.tier == 2
	d.approvals_required == 1
}

test_critical_service_never_runs_by_itself if {
	c := object.union(calm, {"service_criticality": "critical"})
	d := route.decision with input as {"recommendation": base, "context": c}
	d.outcome == "review"
	d.tier == 2
}

test_recent_failures_send_the_next_change_to_a_person if {
	c := object.union(calm, {"recent_failures": 2})
	d := route.decision with input as {"recommendation": base, "context": c}
	d.outcome == "review"
	d.tier == 2
}

test_provider_move_and_data_delete_are_tier3 if {
	every a in ["provider_move", "data_delete", "policy_activation", "iam_change", "database_failover"] {
		r := object.union(base, {"action": a})
		d := route.decision with input as {"recommendation": r, "context": calm}
		d.tier == 3
		d.approver_groups == ["sre-leads"]
	}
}

test_tier3_says_whether_a_window_is_open if {
	r := object.union(base, {"action": "dns_change"})
	closed := route.decision with input as {"recommendation": r, "context": calm}
	"no maintenance window is open for this target now: after approval it waits for one" in closed.reasons
	c := object.union(calm, {"maintenance_window_open": true})
	open := route.decision with input as {"recommendation": r, "context": c}
	"a maintenance window is open for this target now" in open.reasons
}

test_auto_stages_run_through_and_reviewed_stages_pause if {
	auto := route.decision with input as {"recommendation": base, "context": calm}
	auto.outcome == "auto"
	auto.stage_approval == false
	svc := route.decision with input as {"recommendation": object.union(base, {"action": "scale_out", "blast_radius": "service"}), "context": calm}
	svc.tier == 1
	svc.stage_approval == false
	t2 := route.decision with input as {"recommendation": object.union(base, {"action": "rollback_deploy"}), "context": calm}
	t2.tier == 2
	t2.stage_approval == true
	t3 := route.decision with input as {"recommendation": object.union(base, {"action": "dns_change"}), "context": calm}
	t3.tier == 3
	t3.stage_approval == true
}

test_every_decision_says_whether_stages_pause if {
	every r in [
		base,
		object.union(base, {"confidence": 0.3}),
		object.union(base, {"rollback_plan": null}),
		object.union(base, {"action": "rollback_deploy"}),
		object.union(base, {"action": "dns_change"}),
	] {
		d := route.decision with input as {"recommendation": r, "context": calm}
		is_boolean(d.stage_approval)
	}
}
