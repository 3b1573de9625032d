use super::*;
use cairn_types::{Anomaly, IncidentId, STAGES_PARAMETER, SeriesId, Severity};
use proptest::prelude::*;

fn alert_member(name: &str, fp: &str, status: AlertStatus, annotations: &[(&str, &str)]) -> IncidentMember {
    IncidentMember::Alert {
        fingerprint: fp.into(),
        alertname: name.into(),
        status,
        labels: [("alertname", name), ("service", "checkout"), ("env", "production"), ("instance", "checkout-1:8080")]
            .into_iter()
            .collect(),
        annotations: annotations.iter().copied().collect(),
        severity: Severity::Critical,
        starts_at_ms: 1_000,
        summary: "s".into(),
    }
}

/// A new build of checkout: the change a rollback undoes.
fn release() -> IncidentMember {
    IncidentMember::Anomaly(Anomaly {
        series: SeriesId(99),
        labels: [("__name__", "build_info"), ("service", "checkout"), ("version", "2.14.0")].into_iter().collect(),
        timestamp_ms: 900,
        observed: 1.0,
        expected: 0.0,
        score: 0.9,
        severity: Severity::Medium,
        confidence: 0.9,
        anomaly_kind: "level_shift".into(),
        detector: "robust-z".into(),
        model_version: "robust-z/1".into(),
    })
}

fn incident(members: Vec<IncidentMember>) -> Incident {
    Incident {
        id: IncidentId("inc-1".into()),
        opened_ms: 0,
        updated_ms: 0,
        members,
        affected_services: vec!["checkout".into()],
        common_labels: Labels::new(),
        grouping_reasons: vec!["alert joined: opened on label service=\"checkout\"".into()],
        probable_causes: vec![],
        severity: Severity::Critical,
        version: 1,
        member_entities: vec![],
    }
}

#[test]
fn the_embedded_catalogue_is_valid_and_covers_every_action_class() {
    let c = Catalogue::embedded_default();
    // A policy activation is proposed by people through `cairn policy propose`, never by a playbook;
    // an investigation by Cairn when no playbook fits.
    for a in ActionClass::ALL.into_iter().filter(|a| !matches!(a, ActionClass::PolicyActivation | ActionClass::Investigate)) {
        assert!(c.playbooks().iter().any(|p| p.action() == a), "no playbook for {a}");
    }
    assert!(c.version().starts_with("sha256:"));
}

#[test]
fn each_playbook_is_triggered_by_its_alert() {
    let cases = [
        ("ProcessDown", ActionClass::RestartProcess),
        ("HighCPU", ActionClass::ScaleOut),
        ("DeploymentErrorsAfterRelease", ActionClass::RollbackDeploy),
        ("NodeNotReady", ActionClass::DrainNode),
        ("DatabasePrimaryDown", ActionClass::DatabaseFailover),
        ("DNSResolutionFailure", ActionClass::DnsChange),
        ("AccessDeniedSpike", ActionClass::IamChange),
        ("ConnectionsRefused", ActionClass::FirewallRelax),
    ];
    for (alert, action) in cases {
        let mut r = Recommender::new(Catalogue::embedded_default());
        let mut members = vec![alert_member(alert, "f1", AlertStatus::Firing, &[])];
        if action == ActionClass::RollbackDeploy {
            members.push(release());
        }
        let recs = r.recommend(&incident(members), 5);
        assert_eq!(recs.len(), 1, "{alert}");
        let rec = &recs[0];
        assert_eq!(rec.action, action, "{alert}");
        assert_eq!(rec.revision, 1);
        assert!(rec.rollback_plan.is_some());
        assert!(!rec.verification.is_empty());
        assert!(!rec.verification[0].query.contains("unknown"), "{}", rec.verification[0].query);
        assert!(!rec.verification[0].query.contains("{service}") && !rec.expected_benefit.contains('{'), "{:?}", rec.verification);
        assert_eq!(rec.target.service, "checkout");
        assert_eq!(rec.target.environment, "production");
        assert!(rec.parameters.contains_key("execution_window"));
        assert!(rec.rationale.contains(alert));
        assert_eq!(rec.requester, CAIRN_SERVICE_SUBJECT);
    }
}

/// The names the public rule sets give (kubernetes-mixin, node-mixin, awesome-prometheus-alerts,
/// CoreDNS, pyrra) reach the playbook an SRE would pick, each alone and firing; and the ones no
/// remedy answers (a filling disk, a failed job, an expiring certificate, a lone crash loop)
/// propose no action.
#[test]
fn common_rule_names_reach_their_playbook_and_others_propose_no_action() {
    let cases = [
        ("KubernetesContainerOomKiller", Some(ActionClass::RestartProcess)),
        ("RedisDown", Some(ActionClass::RestartProcess)),
        ("CoreDNSDown", Some(ActionClass::RestartProcess)),
        ("KubernetesHpaScaleMaximum", Some(ActionClass::ScaleOut)),
        ("RabbitmqTooManyMessagesInQueue", Some(ActionClass::ScaleOut)),
        ("KafkaConsumersGroupLag", Some(ActionClass::ScaleOut)),
        ("NginxHighHttp5xxErrorRate", Some(ActionClass::RollbackDeploy)),
        ("KubeDeploymentGenerationMismatch", Some(ActionClass::RollbackDeploy)),
        ("PrometheusConfigurationReloadFailure", Some(ActionClass::RollbackDeploy)),
        ("KubeletDown", Some(ActionClass::DrainNode)),
        ("KubernetesNodeNotReady", Some(ActionClass::DrainNode)),
        ("MongodbDown", Some(ActionClass::DatabaseFailover)),
        ("PostgresqlReplicationLagBytes", Some(ActionClass::DatabaseFailover)),
        ("NodeFilesystemSpaceFillingUp", None),
        ("KubeJobFailed", None),
        ("CertificateExpiresIn30Days", None),
        ("Watchdog", None),
        ("KubePodCrashLooping", None),
    ];
    for (alert, want) in cases {
        let mut r = Recommender::new(Catalogue::embedded_default());
        let mut members = vec![alert_member(alert, "f1", AlertStatus::Firing, &[])];
        if want == Some(ActionClass::RollbackDeploy) {
            members.push(release());
        }
        let got = r.recommend(&incident(members), 5).into_iter().map(|rec| rec.action).find(|a| *a != ActionClass::Investigate);
        assert_eq!(got, want, "{alert}");
    }
}

#[test]
fn unchanged_evidence_gives_nothing_new_and_a_new_member_gives_revision_2() {
    let mut r = Recommender::new(Catalogue::embedded_default());
    let one = incident(vec![alert_member("ProcessDown", "f1", AlertStatus::Firing, &[])]);
    let first = r.recommend(&one, 5);
    assert_eq!(first.len(), 1);
    assert!(r.recommend(&one, 6).is_empty());
    let two = incident(vec![
        alert_member("ProcessDown", "f1", AlertStatus::Firing, &[]),
        alert_member("ProcessDown", "f2", AlertStatus::Firing, &[]),
    ]);
    let second = r.recommend(&two, 7);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].revision, 2);
    // The calibration is monotone: corroboration raises the fit, and never lowers the confidence.
    assert!(uncalibrated(&second[0]) > uncalibrated(&first[0]), "corroboration raises the fit");
    assert!(second[0].confidence >= first[0].confidence);
    let resolved = incident(vec![
        alert_member("ProcessDown", "f1", AlertStatus::Resolved, &[]),
        alert_member("ProcessDown", "f2", AlertStatus::Resolved, &[]),
    ]);
    let third = r.recommend(&resolved, 8);
    assert_eq!(third[0].revision, 3);
    assert!(uncalibrated(&third[0]) < uncalibrated(&second[0]), "a resolved-only incident lowers it");
    assert!(third[0].confidence <= second[0].confidence);
}

#[test]
fn explicit_playbook_wins_and_confidence_can_be_pinned() {
    let mut r = Recommender::new(Catalogue::embedded_default());
    let inc = incident(vec![alert_member(
        "ProcessDown",
        "f1",
        AlertStatus::Firing,
        &[("cairn_playbook", "scale-out"), ("cairn_confidence", "0.42")],
    )]);
    let recs = r.recommend(&inc, 5);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].action, ActionClass::ScaleOut);
    assert_eq!(recs[0].confidence, 0.42);
    assert!(recs[0].rationale.contains("pinned"));
}

#[test]
fn an_anomaly_on_a_matching_metric_triggers_and_records_its_model() {
    let a = Anomaly {
        series: SeriesId(7),
        labels: [("__name__", "http_request_duration_seconds"), ("service", "checkout")].into_iter().collect(),
        timestamp_ms: 1,
        observed: 0.9,
        expected: 0.1,
        score: 0.97,
        severity: Severity::High,
        confidence: 0.9,
        anomaly_kind: "level_shift".into(),
        detector: "robust-z".into(),
        model_version: "robust-z/1".into(),
    };
    let mut r = Recommender::new(Catalogue::embedded_default());
    let recs = r.recommend(&incident(vec![IncidentMember::Anomaly(a.clone()), release()]), 5);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].action, ActionClass::RollbackDeploy);
    assert_eq!(recs[0].model_version, "robust-z/1");
    // Without a change on the service there is nothing seen to roll back: the fit halves.
    let mut r = Recommender::new(Catalogue::embedded_default());
    let without = r.recommend(&incident(vec![IncidentMember::Anomaly(a)]), 5);
    assert!(without.is_empty() || without[0].confidence < recs[0].confidence / 1.9, "{without:?}");
}

#[test]
fn the_best_playbook_is_proposed_on_the_root_entity_with_the_runners_up_named() {
    // A database outage seen from its caller: the caller's error budget burns (a rollback's
    // signal, but no change) and the database is down; the correlator ranked the database first.
    let mut db = alert_member("PostgresqlDown", "f1", AlertStatus::Firing, &[]);
    if let IncidentMember::Alert { labels, .. } = &mut db {
        labels.insert("service", "users-pg");
        labels.insert("instance", "10.0.0.6:9187");
    }
    let mut inc = incident(vec![alert_member("ErrorBudgetBurn", "f2", AlertStatus::Firing, &[]), db]);
    inc.member_entities = vec!["service:checkout".into(), "service:users-pg".into()];
    inc.probable_causes = vec![cairn_types::ProbableCause {
        description: "users-pg".into(),
        score: 1.0,
        entity: "service:users-pg".into(),
        factors: vec!["upstream of service:checkout (+0.30)".into()],
        members: vec!["alert:f1".into()],
    }];
    let mut r = Recommender::new(Catalogue::embedded_default());
    let recs = r.recommend(&inc, 5);
    assert_eq!(recs.len(), 1, "one proposal per incident: the best fit");
    assert_eq!(recs[0].action, ActionClass::DatabaseFailover);
    assert_eq!(recs[0].target.service, "users-pg");
    assert_eq!(recs[0].target.resource, "10.0.0.6:9187", "the root's own instance, from the trigger on it");
    assert!(recs[0].rationale.contains("Runners-up: rollback-deploy"), "{}", recs[0].rationale);
    assert!(recs[0].rationale.contains("not on the root"), "{}", recs[0].rationale);
    assert!(recs[0].rationale.contains("Most probable root: service:users-pg"), "{}", recs[0].rationale);
}

#[test]
fn an_unknown_action_class_is_an_error_naming_the_playbook() {
    let text = include_str!("../playbooks/default.toml").replacen("action = \"restart_process\"", "action = \"reboot_universe\"", 1);
    let err = Catalogue::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("restart-process") && err.contains("reboot_universe"), "{err}");
}

#[test]
fn glob_and_fill_behave() {
    assert!(glob("*_duration_seconds", "http_request_duration_seconds"));
    assert!(!glob("*_duration_seconds", "http_request_duration_seconds_bucket"));
    assert!(glob("a*b*c", "a--b--c"));
    assert!(!glob("ab", "abc"));
    let l: Labels = [("service", "x")].into_iter().collect();
    assert_eq!(fill("up{service=\"{service}\"} {missing}", &l), "up{service=\"x\"} unknown");
}

proptest! {
    #[test]
    fn confidence_stays_in_bounds(members in 1usize..40, resolved in any::<bool>()) {
        let status = if resolved { AlertStatus::Resolved } else { AlertStatus::Firing };
        let inc = incident((0..members).map(|i| alert_member("ProcessDown", &format!("f{i}"), status, &[])).collect());
        let mut r = Recommender::new(Catalogue::embedded_default());
        for rec in r.recommend(&inc, 0) {
            prop_assert!((0.0..=1.0).contains(&rec.confidence));
        }
    }
}

/// A recommendation built by the embedded catalogue, for other modules' tests.
pub(crate) fn sample_recommendation() -> Recommendation {
    let mut r = Recommender::new(Catalogue::embedded_default());
    let inc = incident(vec![alert_member("DeploymentErrorsAfterRelease", "fp-1", AlertStatus::Firing, &[]), release()]);
    r.recommend(&inc, 1_000).into_iter().next().expect("the rollback playbook matches")
}

#[test]
fn a_playbook_with_stages_puts_them_on_its_recommendation_and_bad_stages_are_refused() {
    let text = include_str!("../playbooks/default.toml").replacen(
        "name = \"rollback-deploy\"\n",
        "name = \"rollback-deploy\"\nstages = [\"canary\", \"25%\", \"100%\"]\n",
        1,
    );
    assert_ne!(text, include_str!("../playbooks/default.toml"), "the replacement applied");
    let mut r = Recommender::new(Catalogue::from_toml(&text).unwrap());
    let recs = r.recommend(&incident(vec![alert_member("DeploymentErrorsAfterRelease", "f1", AlertStatus::Firing, &[]), release()]), 5);
    assert_eq!(recs[0].stages(), ["canary", "25%", "100%"]);
    let mut plain = Recommender::new(Catalogue::embedded_default());
    let recs = plain.recommend(&incident(vec![alert_member("DeploymentErrorsAfterRelease", "f1", AlertStatus::Firing, &[]), release()]), 5);
    assert!(recs[0].stages().is_empty() && !recs[0].parameters.contains_key(STAGES_PARAMETER));
    for bad in ["[\"canary\", \"canary\"]", "[\"a,b\"]", "[\"\"]", "[\" canary\"]"] {
        let text = include_str!("../playbooks/default.toml").replacen("name = \"rollback-deploy\"\n", &format!("name = \"rollback-deploy\"\nstages = {bad}\n"), 1);
        let err = Catalogue::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("rollback-deploy") && err.contains("stage"), "{bad}: {err}");
    }
}

#[test]
fn confidence_is_the_calibrated_probability_and_says_what_it_was_calibrated_from() {
    let mut r = Recommender::new(Catalogue::embedded_default());
    let two = incident(vec![
        alert_member("ProcessDown", "f1", AlertStatus::Firing, &[]),
        alert_member("ProcessDown", "f2", AlertStatus::Firing, &[]),
    ]);
    let rec = r.recommend(&two, 1).remove(0);
    let cal = crate::calibration::Calibration::embedded();
    let raw = uncalibrated(&rec);
    assert!((rec.confidence - cal.apply(raw)).abs() < 1e-3, "{} vs {raw}", rec.confidence);
    assert!(rec.playbook_version.ends_with(&format!("+{}", cal.version())), "{}", rec.playbook_version);
    assert!(rec.rationale.contains(&cal.version()));
}

/// The uncalibrated confidence a recommendation's rationale states.
fn uncalibrated(rec: &Recommendation) -> f64 {
    let stated = rec.rationale.split(crate::UNCALIBRATED).nth(1).and_then(|s| s.split_whitespace().next());
    stated.and_then(|s| s.trim_end_matches([',', ')']).parse().ok()).unwrap_or_else(|| panic!("{}", rec.rationale))
}

#[test]
fn a_lone_critical_alert_keeps_at_least_its_prior_and_a_lone_warning_does_not() {
    let lone = |severity: &str| {
        let mut r = Recommender::new(Catalogue::embedded_default());
        let mut m = alert_member("QueueBacklog", "f1", AlertStatus::Firing, &[]);
        if let IncidentMember::Alert { severity: s, labels, .. } = &mut m {
            *s = match severity {
                "critical" => Severity::Critical,
                _ => Severity::Medium,
            };
            labels.insert("severity", severity);
        }
        r.recommend(&incident(vec![m]), 1).remove(0)
    };
    let critical = lone("critical");
    // scale-out's prior is 0.7: a lone critical alert's fit 0.75 gives 0.525, a person reviews it.
    assert!(critical.confidence >= 0.75 * 0.7 - 1e-9, "{}", critical.rationale);
    let warning = lone("warning");
    assert!(warning.confidence < critical.confidence, "{} vs {}", warning.confidence, critical.confidence);
}

#[test]
fn a_catalogues_high_prior_cannot_lift_a_critical_alerts_floor_to_auto() {
    // A prior of 1.0, and a fit in the band the calibration finds unreliable: a critical and a
    // medium alert of one playbook.
    let text = include_str!("../playbooks/default.toml").replace("base_confidence = 0.75", "base_confidence = 1.0");
    let mut r = Recommender::new(Catalogue::from_toml(&text).unwrap());
    let mut medium = alert_member("ProcessDown", "f2", AlertStatus::Firing, &[]);
    if let IncidentMember::Alert { severity, .. } = &mut medium {
        *severity = Severity::Medium;
    }
    let recs = r.recommend(&incident(vec![alert_member("ProcessDown", "f1", AlertStatus::Firing, &[]), medium]), 1);
    let rec = recs.iter().find(|r| r.action == ActionClass::RestartProcess).expect("a restart");
    let raw = uncalibrated(rec);
    assert!(raw > 0.75, "the fit is above the cap, so the prior alone would pass it: {raw}");
    assert!(rec.confidence <= CRITICAL_FLOOR_CAP.max(CALIBRATION.apply(raw)) + 1e-9, "{}", rec.rationale);
    assert!(rec.confidence < 0.8 || CALIBRATION.apply(raw) >= 0.8, "{}", rec.rationale);
}

#[test]
fn a_firing_alert_no_playbook_fits_asks_people_to_investigate_and_says_what_is_missing() {
    let mut r = Recommender::new(Catalogue::embedded_default());
    let unknown = incident(vec![alert_member("SomethingNobodyWroteAPlaybookFor", "f1", AlertStatus::Firing, &[])]);
    let recs = r.recommend(&unknown, 5);
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!((rec.action, rec.playbook.as_str(), rec.confidence), (ActionClass::Investigate, INVESTIGATE, 0.0));
    assert_eq!(rec.target.service, "checkout");
    assert!(rec.rollback_plan.is_none() && rec.verification.is_empty() && rec.parameters.is_empty(), "it proposes no action");
    assert!(rec.rationale.contains("No playbook fits"), "{}", rec.rationale);
    assert!(rec.rationale.contains("no metric series of checkout was anomalous"), "{}", rec.rationale);
    assert!(rec.rationale.contains("no change event"), "{}", rec.rationale);
    assert_eq!(rec.evidence.len(), 1);
    // The same evidence again is nothing new; a release joining it is a new revision.
    assert!(r.recommend(&unknown, 6).is_empty());
    let with_release = incident(vec![alert_member("SomethingNobodyWroteAPlaybookFor", "f1", AlertStatus::Firing, &[]), release()]);
    let again = r.recommend(&with_release, 7);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].revision, 2);
    // A lone warning is not enough to ask; with another signal beside it, it is.
    let mut warned = Recommender::new(Catalogue::embedded_default());
    let mut warning = alert_member("SomethingNobodyWroteAPlaybookFor", "f5", AlertStatus::Firing, &[]);
    if let IncidentMember::Alert { severity, .. } = &mut warning {
        *severity = Severity::Medium;
    }
    assert!(warned.recommend(&incident(vec![warning.clone()]), 5).is_empty());
    let beside = warned.recommend(&incident(vec![warning, release()]), 6);
    assert!(beside.iter().any(|r| r.action == ActionClass::Investigate || r.action == ActionClass::RollbackDeploy), "{beside:?}");
    // Without a firing alert (a lone anomaly, or alerts that resolved), nothing is asked.
    let mut quiet = Recommender::new(Catalogue::embedded_default());
    let mut lone = incident(vec![release()]);
    lone.id = IncidentId("inc-2".into());
    let resolved = incident(vec![alert_member("SomethingNobodyWroteAPlaybookFor", "f9", AlertStatus::Resolved, &[])]);
    assert!(quiet.recommend(&resolved, 5).is_empty());
    assert!(quiet.recommend(&lone, 5).iter().all(|r| r.action != ActionClass::Investigate));
}

#[test]
fn a_playbook_may_not_name_investigate() {
    let text = include_str!("../playbooks/default.toml").replacen("action = \"restart_process\"", "action = \"investigate\"", 1);
    let err = Catalogue::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("what Cairn proposes when no playbook fits"), "{err}");
}

#[test]
fn evidence_lists_the_root_first_and_counts_the_rest_so_a_revision_does_not_grow_with_the_incident() {
    // A fleet's worth of one alert, a release on the root, and a few resolved ones.
    let mut members: Vec<IncidentMember> =
        (0..300).map(|i| alert_member("HighErrorRate", &format!("f{i}"), AlertStatus::Firing, &[])).collect();
    members.extend((0..5).map(|i| alert_member("HighErrorRate", &format!("r{i}"), AlertStatus::Resolved, &[])));
    // A kind that comes back after another is counted once, whole.
    members.extend((0..7).map(|i| alert_member("HighErrorRate", &format!("g{i}"), AlertStatus::Firing, &[])));
    let mut release = release();
    if let IncidentMember::Anomaly(a) = &mut release {
        a.labels.insert("service", "payments".to_string());
    }
    members.push(release);
    let mut inc = incident(members);
    inc.member_entities = (0..inc.members.len()).map(|i| if i < 312 { "service:checkout" } else { "service:payments" }.to_string()).collect();
    inc.probable_causes = vec![cairn_types::ProbableCause {
        description: "a release".into(),
        score: 0.9,
        entity: "service:payments".into(),
        factors: vec![],
        members: vec![],
    }];
    let (evidence, _) = evidence_of(&inc);
    assert_eq!(evidence.len(), MAX_EVIDENCE_ITEMS + 1, "{evidence:?}");
    // The root's member leads, though it joined last.
    assert!(evidence[0].description.contains("build_info"), "{:?}", evidence[0]);
    let more = evidence.last().unwrap();
    assert_eq!(more.kind, "more");
    let listed = MAX_EVIDENCE_ITEMS - 1;
    assert!(
        more.description.starts_with(&format!("{} more signal(s)", 312 - listed))
            && more.description.contains(&format!("HighErrorRate firing ×{}", 307 - listed))
            && more.description.contains("HighErrorRate resolved ×5"),
        "{}",
        more.description
    );
    // A small incident is listed whole.
    let (small, _) = evidence_of(&incident(vec![alert_member("HighErrorRate", "f1", AlertStatus::Firing, &[])]));
    assert_eq!(small.len(), 1);
    assert_eq!(small[0].kind, "alert");
}

#[test]
fn a_storm_of_one_alert_kind_is_revised_when_the_card_would_say_more_not_for_every_alert() {
    let mut r = Recommender::new(Catalogue::embedded_default());
    let fleet = |n: usize| (0..n).map(|i| alert_member("ProcessDown", &format!("f{i}"), AlertStatus::Firing, &[])).collect::<Vec<_>>();
    let mut revisions = Vec::new();
    for n in 1..=200 {
        for rec in r.recommend(&incident(fleet(n)), n as i64) {
            assert_eq!(rec.action, ActionClass::RestartProcess, "a playbook fits: {}", rec.rationale);
            revisions.push((n, rec.revision));
        }
    }
    // Each of the first members is listed on the card, so each is new evidence; past them, a new
    // revision comes when the count of the rest doubles (1, 2, 4, ... 128 more).
    let at: Vec<usize> = revisions.iter().map(|(n, _)| *n).collect();
    let listed: Vec<usize> = (1..=MAX_EVIDENCE_ITEMS).collect();
    let doublings: Vec<usize> = [1, 2, 4, 8, 16, 32, 64, 128].iter().map(|k| MAX_EVIDENCE_ITEMS + k).collect();
    assert_eq!(at, [listed, doublings].concat(), "{revisions:?}");
    // A new kind of signal is new evidence at once, however many were counted before it.
    let mut with_release = fleet(200);
    with_release.push(release());
    assert_eq!(r.recommend(&incident(with_release.clone()), 300).len(), 1);
    // So is an alert that resolves: the count of a state that was not there before.
    if let IncidentMember::Alert { status, .. } = &mut with_release[150] {
        *status = AlertStatus::Resolved;
    }
    assert_eq!(r.recommend(&incident(with_release.clone()), 301).len(), 1);
    // And so is a new root, though every member is the same.
    let mut rooted = incident(with_release);
    rooted.member_entities = vec!["service:checkout".into(); rooted.members.len()];
    rooted.probable_causes = vec![cairn_types::ProbableCause {
        description: "checkout".into(),
        score: 0.9,
        entity: "service:checkout".into(),
        factors: vec![],
        members: vec![],
    }];
    assert_eq!(r.recommend(&rooted, 302).len(), 1);
    assert!(r.recommend(&rooted, 303).is_empty(), "the same again is nothing new");
}

#[test]
fn revisions_forget_without_a_scan_stay_bounded_and_evict_the_oldest_live_one() {
    let id = |i: usize| RecommendationId(format!("rec-{i}"));
    let mut r = Revisions::default();
    for i in 0..MAX_TRACKED {
        assert_eq!(r.next_revision(&id(i), "d".into()), Some(1));
    }
    // Forget the older half, then track the first one again: its old place in the order is stale.
    for i in 0..MAX_TRACKED / 2 {
        r.forget(&id(i));
    }
    assert!(r.order.len() <= 2 * r.by_id.len() + 1, "stale places are swept: {} for {}", r.order.len(), r.by_id.len());
    assert_eq!(r.next_revision(&id(0), "d".into()), Some(1), "forgotten, so tracked afresh");
    // Filling up evicts the oldest live ones (from MAX_TRACKED / 2 on), never the re-tracked one
    // through its stale place.
    for i in MAX_TRACKED..MAX_TRACKED + MAX_TRACKED / 2 {
        r.next_revision(&id(i), "d".into());
    }
    assert_eq!(r.by_id.len(), MAX_TRACKED);
    assert!(r.by_id.contains_key(&id(0)));
    assert!(!r.by_id.contains_key(&id(MAX_TRACKED / 2)), "the oldest live one went first");
    assert_eq!(r.next_revision(&id(0), "d".into()), None, "unchanged evidence is no new revision");
    assert_eq!(r.next_revision(&id(0), "e".into()), Some(2));
}
