use super::synthetic::{host_rows, Break, HOST_FEATURES};
use super::*;
use cairn_types::{Labels, MetricSample};
use ndarray::Array2;
use std::sync::Arc;

fn matrix(rows: &[[f64; 8]]) -> Array2<f64> {
    Array2::from_shape_fn((rows.len(), 8), |(i, j)| rows[i][j])
}

fn features() -> Vec<String> {
    HOST_FEATURES.iter().map(|s| s.to_string()).collect()
}

/// One fit shared by the tests (fitting is the slow part in a debug build).
fn trained() -> MultivariateModel {
    static MODEL: std::sync::OnceLock<MultivariateModel> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let (rows, _) = host_rows(3000, 1, &[]);
            MultivariateModel::fit(features(), matrix(&rows).view(), Hyperparameters { pca_components: 3, ..Default::default() })
                .expect("fit")
        })
        .clone()
}

#[test]
fn a_metric_that_breaks_the_correlation_scores_high_and_clean_rows_low() {
    let model = trained();
    let breaks = [Break { start: 500, len: 30, feature: 0 }, Break { start: 1200, len: 30, feature: 5 }];
    let (rows, labels) = host_rows(2000, 99, &breaks);
    let scores = model.score_rows(matrix(&rows).view());
    let unit: Vec<f64> = scores.iter().map(|s| score_to_unit(s.combined)).collect();
    // Every broken row is above the alert threshold ...
    for (i, (&u, &l)) in unit.iter().zip(&labels).enumerate() {
        if l {
            assert!(u >= 0.9, "broken row {i} scored {u}");
        }
    }
    // ... while clean rows of unseen data are almost all low.
    let clean: Vec<f64> = unit.iter().zip(&labels).filter(|(_, l)| !**l).map(|(u, _)| *u).collect();
    let high = clean.iter().filter(|u| **u >= 0.9).count();
    assert!(high * 200 < clean.len(), "{high} of {} clean rows scored high", clean.len());
    let median = {
        let mut c = clean.clone();
        c.sort_by(f64::total_cmp);
        c[c.len() / 2]
    };
    assert!(median < 0.5, "clean median {median}");
}

#[test]
fn each_value_of_a_broken_row_is_ordinary_on_its_own() {
    // The point of the test data: a per-metric range check would not catch the breaks.
    let (train, _) = host_rows(3000, 1, &[]);
    let (rows, labels) = host_rows(2000, 99, &[Break { start: 500, len: 30, feature: 0 }]);
    let (lo, hi) = train.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r[0]), hi.max(r[0])));
    for (r, l) in rows.iter().zip(&labels) {
        if *l {
            assert!(r[0] >= lo - 0.05 && r[0] <= hi + 0.05, "{} outside [{lo}, {hi}]", r[0]);
        }
    }
}

#[test]
fn fitting_is_deterministic_to_the_byte() {
    let (rows, _) = host_rows(2000, 5, &[]);
    let m = matrix(&rows);
    let a = serde_json::to_vec(&MultivariateModel::fit(features(), m.view(), Hyperparameters::default()).expect("fit")).expect("json");
    let b = serde_json::to_vec(&MultivariateModel::fit(features(), m.view(), Hyperparameters::default()).expect("fit")).expect("json");
    assert_eq!(a, b);
}

#[test]
fn scoring_is_deterministic_and_batch_equals_row_by_row() {
    let model = trained();
    let (rows, _) = host_rows(10_000, 3, &[Break { start: 100, len: 10, feature: 3 }]);
    let m = matrix(&rows);
    let batch = model.score_rows(m.view());
    assert_eq!(batch, model.score_rows(m.view()));
    for (r, s) in rows.iter().zip(&batch) {
        assert_eq!(model.score_row(r), *s);
    }
    // The model survives a round trip through its artifact form unchanged.
    let back: MultivariateModel = serde_json::from_slice(&serde_json::to_vec(&model).expect("json")).expect("parse");
    assert_eq!(back.score_rows(m.view()), batch);
}

#[test]
fn calibration_puts_the_training_quantile_at_raw_one() {
    let (rows, _) = host_rows(3000, 1, &[]);
    let model = trained();
    let scores = model.score_rows(matrix(&rows).view());
    let above = scores.iter().filter(|s| s.residual > model.calibration.residual).count();
    // 1% of the training rows lie above the 0.99 quantile ...
    assert!((20..=40).contains(&above), "{above}");
    // ... and the same holds for the smoothed score over the training rows in order.
    let smoothed = model.score_series(matrix(&rows).view());
    let above = smoothed.iter().filter(|s| **s > 1.0).count();
    assert!((20..=40).contains(&above), "{above}");
    assert!((score_to_unit(1.0) - 0.5).abs() < 1e-12);
    assert!(score_to_unit(1.83) > 0.9 && score_to_unit(1.8) < 0.9 && score_to_unit(0.0) == 0.0 && score_to_unit(f64::NAN) == 1.0);
}

#[test]
fn bad_training_data_is_refused_with_a_reason() {
    let (rows, _) = host_rows(100, 1, &[]);
    let mut m = matrix(&rows);
    assert!(matches!(
        MultivariateModel::fit(features()[..7].to_vec(), m.view(), Hyperparameters::default()),
        Err(MultivariateError::FeatureMismatch { .. })
    ));
    assert!(matches!(
        MultivariateModel::fit(features(), m.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..5)), Hyperparameters::default()),
        Err(MultivariateError::TooFewRows { .. })
    ));
    m[[7, 2]] = f64::NAN;
    let e = MultivariateModel::fit(features(), m.view(), Hyperparameters::default()).unwrap_err();
    assert!(e.to_string().contains("memory_used_ratio"), "{e}");
    for hold_rows in [0, MAX_HOLD_ROWS + 1] {
        let bad = Hyperparameters { hold_rows, ..Default::default() };
        assert!(matches!(
            MultivariateModel::fit(features(), matrix(&rows).view(), bad),
            Err(MultivariateError::BadHyperparameter { what: "hold_rows", .. })
        ));
    }
    for bad in [
        Hyperparameters { smoothing_alpha: 0.0, ..Default::default() },
        Hyperparameters { smoothing_alpha: f64::NAN, ..Default::default() },
        Hyperparameters { residual_floor: 0.0, ..Default::default() },
    ] {
        let e = MultivariateModel::fit(features(), matrix(&rows).view(), bad).unwrap_err();
        assert!(e.to_string().contains("smoothing_alpha"), "{e}");
    }
    let bad = Hyperparameters { pca_components: 8, ..Default::default() };
    assert!(matches!(
        MultivariateModel::fit(features(), matrix(&rows).view(), bad),
        Err(MultivariateError::BadHyperparameter { what: "pca_components", .. })
    ));
}

#[test]
fn a_constant_training_column_does_not_explode_later() {
    let (rows, _) = host_rows(1000, 1, &[]);
    let mut m = matrix(&rows);
    m.column_mut(2).fill(0.0);
    let model = MultivariateModel::fit(features(), m.view(), Hyperparameters::default()).expect("fit");
    assert_eq!(model.scaler.scale[2], 1.0);
    let mut row = rows[10];
    row[2] = 0.01;
    assert!(model.score_row(&row).combined.is_finite());
    assert!(score_to_unit(model.score_row(&row).combined) < 0.9);
}

fn samples_for(host: &str, rows: &[[f64; 8]], skip_feature_at: Option<(usize, usize)>) -> Vec<MetricSample> {
    let mut out = Vec::new();
    for (t, r) in rows.iter().enumerate() {
        for (f, v) in r.iter().enumerate() {
            if skip_feature_at == Some((t, f)) {
                continue;
            }
            let labels: Labels = [("__name__", HOST_FEATURES[f]), ("instance", host), ("job", "node")].into_iter().collect();
            out.push(MetricSample { labels, timestamp_ms: 60_000 * t as i64 + f as i64, value: *v });
        }
    }
    out
}

#[test]
fn the_online_scorer_finds_the_broken_host_once_and_records_the_model_version() {
    let model = Arc::new(trained());
    let mut scorer = GroupScorer::new(model, "host-test/7", GroupScorerConfig::default());
    let (clean, _) = host_rows(400, 11, &[]);
    let (broken, _) = host_rows(400, 12, &[Break { start: 300, len: 20, feature: 0 }]);
    let mut samples = samples_for("web-1:9100", &clean, None);
    samples.extend(samples_for("web-2:9100", &broken, None));
    // Fed in small batches, as ingest hands them over.
    let mut found = Vec::new();
    for chunk in samples.chunks(97) {
        found.extend(scorer.observe(&chunk.iter().collect()));
    }
    let broken_host: Vec<_> = found.iter().filter(|a| a.labels.get("instance") == Some("web-2:9100")).collect();
    assert!(!broken_host.is_empty(), "the broken host was not found");
    let first = broken_host.iter().map(|a| a.timestamp_ms).min().expect("one");
    assert!((300 * 60_000..=302 * 60_000 + 8).contains(&first), "first anomaly at row {}", first / 60_000);
    // One anomaly per entry into the anomalous state, not one per row of the break.
    assert!(broken_host.len() <= 3, "{}", broken_host.len());
    let clean_host = found.iter().filter(|a| a.labels.get("instance") == Some("web-1:9100")).count();
    assert!(clean_host <= 2, "clean host raised {clean_host}");
    for a in &found {
        assert_eq!(a.model_version, "host-test/7");
        assert_eq!(a.detector, DETECTOR);
        assert!((0.9..=1.0).contains(&a.score));
    }
    assert_eq!(scorer.stats().rows_scored, 800);
    assert_eq!(scorer.group_count(), 2);
}

#[test]
fn a_row_is_scored_only_when_every_feature_has_a_fresh_value() {
    let model = Arc::new(trained());
    let mut scorer = GroupScorer::new(model, "m/1", GroupScorerConfig::default());
    let (rows, _) = host_rows(3, 1, &[]);
    // Row 1 lacks one metric: rows 0 and 2 are complete, row 1's values wait for row 2's missing one.
    scorer.observe(&samples_for("h", &rows, Some((1, 4))).iter().collect());
    assert_eq!(scorer.stats().rows_scored, 2);
    // Samples of other metrics, other groups' labels, and unknown names are ignored.
    let stray: Labels = [("__name__", "unrelated"), ("instance", "h")].into_iter().collect();
    let no_group: Labels = [("__name__", HOST_FEATURES[0])].into_iter().collect();
    scorer.observe(
        &[
            MetricSample { labels: stray, timestamp_ms: 1_000_000, value: 1.0 },
            MetricSample { labels: no_group, timestamp_ms: 1_000_000, value: 1.0 },
        ]
        .iter()
        .collect(),
    );
    assert_eq!(scorer.stats().rows_scored, 2);
    assert_eq!(scorer.group_count(), 1);
}

#[test]
fn groups_beyond_the_cap_are_refused_and_counted() {
    let model = Arc::new(trained());
    let mut scorer = GroupScorer::new(model, "m/1", GroupScorerConfig { max_groups: 3, ..Default::default() });
    let (rows, _) = host_rows(2, 1, &[]);
    let samples: Vec<_> = (0..10).flat_map(|h| samples_for(&format!("h{h}"), &rows, None)).collect();
    scorer.observe(&samples.iter().collect());
    assert_eq!(scorer.group_count(), 3);
    assert_eq!(scorer.stats().refused_groups, 7);
}


/// `rows` of `host` as samples, the first at minute `from`.
fn samples_from(host: &str, rows: &[[f64; 8]], from: usize) -> Vec<MetricSample> {
    let mut out = samples_for(host, rows, None);
    out.iter_mut().for_each(|s| s.timestamp_ms += 60_000 * from as i64);
    out
}

#[test]
fn a_group_silent_past_the_idle_limit_is_forgotten_and_frees_its_slot() {
    let model = Arc::new(trained());
    let cfg = GroupScorerConfig { max_groups: 2, idle_evict_ms: 10 * 60_000, ..Default::default() };
    let mut scorer = GroupScorer::new(model, "m/1", cfg);
    let (rows, _) = host_rows(60, 4, &[]);
    let minute = |m: i64| m * 60_000;
    // Both hosts report for 5 minutes (samples at minutes 0..4), then only `stays` goes on.
    scorer.observe(&samples_from("gone", &rows[..5], 0).iter().collect());
    scorer.observe(&samples_from("stays", &rows[..5], 0).iter().collect());
    assert_eq!(scorer.group_count(), 2);
    // Ten minutes after `gone`'s last sample: within the limit, still tracked; a third host is
    // refused by the cap.
    scorer.observe(&samples_from("stays", &rows[5..13], 5).iter().collect());
    assert_eq!(scorer.evict_idle(minute(14)), 0);
    scorer.observe(&samples_from("new", &rows[..1], 13).iter().collect());
    assert_eq!(scorer.group_count(), 2);
    assert_eq!(scorer.stats().refused_groups, 1);
    assert_eq!(scorer.stats().evicted_groups, 0);
    // Past the limit, `gone` is forgotten and `new` takes its slot.
    scorer.observe(&samples_from("stays", &rows[13..20], 13).iter().collect());
    assert_eq!(scorer.evict_idle(minute(20)), 1);
    scorer.observe(&samples_from("new", &rows[..1], 20).iter().collect());
    assert_eq!(scorer.stats().evicted_groups, 1);
    assert_eq!(scorer.group_count(), 2);
    assert_eq!(scorer.stats().refused_groups, 1, "the slot was freed for the new host");
    // Rows scored stay counted after their group is gone.
    assert_eq!(scorer.stats().rows_scored, 5 + 20 + 1);
    // A host that comes back later starts afresh as a new group.
    scorer.observe(&samples_from("stays", &rows[20..40], 20).iter().collect());
    assert_eq!(scorer.evict_idle(minute(40)), 1, "`new` went silent and was evicted");
    scorer.observe(&samples_from("gone", &rows[..1], 40).iter().collect());
    assert_eq!(scorer.group_count(), 2);
}

#[test]
fn a_sample_stamped_far_in_the_future_does_not_make_other_hosts_idle() {
    let model = Arc::new(trained());
    let cfg = GroupScorerConfig { idle_evict_ms: 10 * 60_000, ..Default::default() };
    let mut scorer = GroupScorer::new(model, "m/1", cfg);
    let (rows, _) = host_rows(10, 4, &[]);
    scorer.observe(&samples_from("a", &rows[..5], 0).iter().collect());
    scorer.observe(&samples_from("b", &rows[..5], 0).iter().collect());
    // A third host with a clock a year ahead.
    scorer.observe(&samples_from("skewed", &rows[..1], 525_600).iter().collect());
    assert_eq!(scorer.evict_idle(5 * 60_000), 0, "by the caller's clock nobody is idle");
    assert_eq!(scorer.group_count(), 3);
}

#[test]
fn eviction_never_forgets_a_group_that_keeps_reporting() {
    let model = Arc::new(trained());
    let cfg = GroupScorerConfig { idle_evict_ms: 2 * 60_000, ..Default::default() };
    let mut scorer = GroupScorer::new(model, "m/1", cfg);
    let (rows, _) = host_rows(200, 4, &[]);
    // Each host reports every minute, in batches of one minute, in turn; the sweep runs each minute.
    for t in 0..200 {
        for h in ["a", "b", "c"] {
            scorer.observe(&samples_from(h, &rows[t..t + 1], t).iter().collect());
        }
        scorer.evict_idle(t as i64 * 60_000 + 59_999);
    }
    assert_eq!(scorer.stats().evicted_groups, 0);
    assert_eq!(scorer.stats().rows_scored, 600);
}

#[test]
fn the_online_scorer_gives_exactly_the_offline_series_score_row_by_row() {
    let model = Arc::new(trained());
    let mut scorer = GroupScorer::new(model.clone(), "m/1", GroupScorerConfig::default());
    let breaks = [Break { start: 40, len: 12, feature: 2 }, Break { start: 150, len: 3, feature: 6 }];
    let (a, _) = host_rows(240, 21, &breaks);
    let (b, _) = host_rows(240, 22, &[Break { start: 90, len: 20, feature: 0 }]);
    let offline_a = model.score_series(matrix(&a).view());
    let offline_b = model.score_series(matrix(&b).view());
    // The smoothing matters: the series score is not the row score.
    let rows_a = model.score_rows(matrix(&a).view());
    assert!(offline_a.iter().zip(&rows_a).filter(|(s, r)| (**s - r.combined).abs() > 1e-6).count() > 100);
    // Two hosts interleaved, each minute in one batch with the samples of both shuffled together.
    for t in 0..240 {
        let mut batch = samples_from("a", &a[t..t + 1], t);
        batch.extend(samples_from("b", &b[t..t + 1], t));
        batch.reverse();
        scorer.observe(&batch.iter().collect());
        assert_eq!(scorer.last_score("a"), Some(offline_a[t]), "host a, row {t}");
        assert_eq!(scorer.last_score("b"), Some(offline_b[t]), "host b, row {t}");
    }
}

#[test]
fn the_smoother_holds_a_peak_for_hold_rows_then_lets_it_decay() {
    let model = trained();
    let hp = &model.hyperparameters;
    let row = |combined: f64| RowScore { pca: 0.0, residual: 0.0, kmeans: 0.0, combined };
    let mut s = Smoother::default();
    let cal = model.calibration.score;
    let first = s.push(&model, &row(1.0));
    assert_eq!(first, 1.0 / cal);
    // A spike lifts the average by alpha of its height ...
    let spike = s.push(&model, &row(11.0));
    assert!((spike * cal - (1.0 + hp.smoothing_alpha * 10.0)).abs() < 1e-12, "{spike}");
    // ... and the peak is held for `hold_rows` rows in all, while the average decays under it.
    for _ in 1..hp.hold_rows {
        assert_eq!(s.push(&model, &row(1.0)), spike);
    }
    let after = s.push(&model, &row(1.0));
    assert!(after < spike, "{after} {spike}");
    // Long streams do not grow the state: it is a fixed-size value.
    for _ in 0..10_000 {
        s.push(&model, &row(1.0));
    }
    assert!((s.push(&model, &row(1.0)) * cal - 1.0).abs() < 1e-9);
}
