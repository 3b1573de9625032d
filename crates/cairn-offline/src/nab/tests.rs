//! The scorer on tiny hand-made corpora written to a temporary directory.

use super::*;

/// (category, file name, rows, windows as inclusive row ranges).
type FileSpec<'a> = (&'a str, &'a str, usize, &'a [(usize, usize)]);

/// Writes a corpus: each file is (category, name, rows, windows as row ranges). Rows are one minute
/// apart from 2020-01-01 00:00:00, values 0..rows.
fn corpus(files: &[FileSpec<'_>]) -> (tempfile::TempDir, NabCorpus) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut labels = serde_json::Map::new();
    for &(cat, name, rows, windows) in files {
        let d = dir.path().join("data").join(cat);
        std::fs::create_dir_all(&d).expect("mkdir");
        let ts = |i: usize| format!("2020-01-01 {:02}:{:02}:00", i / 60, i % 60);
        let mut text = String::from("timestamp,value\n");
        for i in 0..rows {
            text.push_str(&format!("{},{}\n", ts(i), i));
        }
        std::fs::write(d.join(format!("{name}.csv")), text).expect("write csv");
        let w: Vec<[String; 2]> = windows.iter().map(|&(a, b)| [format!("{}.000000", ts(a)), format!("{}.000000", ts(b))]).collect();
        labels.insert(format!("{cat}/{name}.csv"), serde_json::json!(w));
    }
    std::fs::create_dir_all(dir.path().join("labels")).expect("mkdir");
    std::fs::write(dir.path().join("labels/combined_windows.json"), serde_json::Value::Object(labels).to_string()).expect("write labels");
    let c = NabCorpus::read(dir.path()).expect("read corpus");
    (dir, c)
}

fn two_files() -> (tempfile::TempDir, NabCorpus) {
    corpus(&[("catA", "one", 100, &[(40, 59)]), ("catB", "two", 200, &[(60, 79), (140, 159)])])
}

fn fire_at(c: &NabCorpus, rows: &[&[usize]]) -> Vec<Vec<f64>> {
    c.series
        .iter()
        .zip(rows)
        .map(|(s, r)| (0..s.values.len()).map(|i| if r.contains(&i) { 1.0 } else { 0.0 }).collect())
        .collect()
}

/// NAB's scaled sigmoid written out again, independently of the code under test.
fn sigmoid_ref(x: f64) -> f64 {
    if x >= 3.0 {
        -1.0
    } else {
        2.0 * (1.0 / (1.0 + (5.0 * x).exp())) - 1.0
    }
}

#[test]
fn corpus_is_read_in_order_with_windows_as_rows() {
    let (_d, c) = two_files();
    assert_eq!(c.series.len(), 2);
    assert_eq!(c.series[0].key(), "catA/one.csv");
    assert_eq!(c.series[1].windows, vec![(60, 79), (140, 159)]);
    assert_eq!(c.window_count(), 3);
    assert_eq!(c.series[0].labels().iter().filter(|&&l| l == 1).count(), 20);
}

#[test]
fn timestamps_parse_as_utc() {
    assert_eq!(parse_timestamp_ms("2014-02-19 10:50:00.000000"), Some(1_392_807_000_000));
    assert_eq!(parse_timestamp_ms("1970-01-01 00:00:01"), Some(1000));
    assert_eq!(parse_timestamp_ms("2016-02-29 23:59:59.5"), Some(1_456_790_399_500));
    assert_eq!(parse_timestamp_ms("2014-13-01 00:00:00"), None);
    assert_eq!(parse_timestamp_ms("yesterday"), None);
}

#[test]
fn probation_is_15_percent_capped_at_750_rows() {
    assert_eq!(probation_rows(100), 15);
    assert_eq!(probation_rows(1001), 150);
    assert_eq!(probation_rows(4032), 604);
    assert_eq!(probation_rows(20_000), 750);
}

#[test]
fn a_perfect_detector_scores_100_and_the_null_detector_0() {
    let (_d, c) = two_files();
    let perfect = fire_at(&c, &[&[40], &[60, 140]]);
    for r in evaluate(&c, &perfect) {
        assert!((r.normalized - 100.0).abs() < 1e-9, "{}: {}", r.profile.name, r.normalized);
        assert_eq!((r.windows_detected, r.windows_missed, r.false_positive_rows), (3, 0, 0));
    }
    let null = fire_at(&c, &[&[], &[]]);
    for r in evaluate(&c, &null) {
        assert!(r.normalized.abs() < 1e-9, "{}: {}", r.profile.name, r.normalized);
        assert_eq!(r.null, -3.0 * r.profile.fn_);
    }
}

#[test]
fn hand_computed_case_matches_nab_weights() {
    let (_d, c) = corpus(&[("cat", "f", 100, &[(40, 59)])]);
    // Row 10 is in probation (free), row 20 is a false positive with no window before it (full
    // cost), row 50 is halfway into the window, row 55 a later detection in it (earns nothing
    // more), row 80 a false positive 21 rows after a 20-row window.
    let scores = fire_at(&c, &[&[10, 20, 50, 55, 80]]);
    let tp = sigmoid_ref(-(59.0 - 50.0 + 1.0) / 20.0) / sigmoid_ref(-1.0);
    assert!((tp - 0.8598).abs() < 1e-3, "{tp}");
    let after = sigmoid_ref(21.0 / 19.0);
    for r in evaluate(&c, &scores) {
        let p = r.profile;
        let want_raw = p.tp * tp - p.fp + p.fp * after;
        assert!((r.raw - want_raw).abs() < 1e-12, "{}: {} vs {want_raw}", p.name, r.raw);
        assert_eq!(r.threshold, 1.0);
        let want = 100.0 * (want_raw + p.fn_) / (p.tp + p.fn_);
        assert!((r.normalized - want).abs() < 1e-9, "{}: {} vs {want}", p.name, r.normalized);
        assert_eq!((r.windows_detected, r.false_positive_rows), (1, 2));
    }
}

#[test]
fn an_earlier_detection_in_a_window_earns_more() {
    let (_d, c) = corpus(&[("cat", "f", 100, &[(40, 59)])]);
    let early = evaluate(&c, &fire_at(&c, &[&[41]]))[0].raw;
    let late = evaluate(&c, &fire_at(&c, &[&[58]]))[0].raw;
    assert!(early > late && late > 0.0, "{early} {late}");
    // A false positive long after the window costs more than one just after it.
    let near = evaluate(&c, &fire_at(&c, &[&[40, 61]]))[0].raw;
    let far = evaluate(&c, &fire_at(&c, &[&[40, 99]]))[0].raw;
    assert!(near > far, "{near} {far}");
}

#[test]
fn one_threshold_is_chosen_for_the_whole_corpus_and_it_is_the_best() {
    let (_d, c) = two_files();
    // Graded scores: each file would prefer a different threshold on its own.
    let scores: Vec<Vec<f64>> = c
        .series
        .iter()
        .enumerate()
        .map(|(f, s)| (0..s.values.len()).map(|i| ((i * 37 + f * 11) % 97) as f64 / 97.0).collect())
        .collect();
    for r in evaluate(&c, &scores) {
        let pts = corpus_points(&c, &scores, &r.profile);
        // Brute force over every candidate threshold.
        let mut candidates: Vec<f64> = scores.iter().flatten().copied().collect();
        candidates.push(1.1);
        let best = candidates
            .iter()
            .map(|&t| pts.iter().map(|p| score_at(p, t, r.profile.fn_).score).sum::<f64>())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!((r.raw - best).abs() < 1e-9, "{}: {} vs brute force {best}", r.profile.name, r.raw);
        let again: f64 = pts.iter().map(|p| score_at(p, r.threshold, r.profile.fn_).score).sum();
        assert!((again - r.raw).abs() < 1e-9);
    }
}

#[test]
fn results_are_written_in_nab_layout() {
    let (d, c) = two_files();
    let scores = fire_at(&c, &[&[40], &[60]]);
    let out = d.path().join("results");
    write_results(&out, "cairn", &c, &scores).expect("write");
    let text = std::fs::read_to_string(out.join("cairn/catB/cairn_two.csv")).expect("result file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "timestamp,value,anomaly_score,label");
    assert_eq!(lines.len(), 201);
    assert_eq!(lines[61], "2020-01-01 01:00:00,60,1,1");
    assert_eq!(lines[60], "2020-01-01 00:59:00,59,0,0");
    write_summary(&out, "cairn", &evaluate(&c, &scores)).expect("summary");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("final_results.json")).expect("read")).expect("json");
    assert!(v["cairn"]["standard"].is_number());
}

#[test]
fn a_file_without_labels_is_refused_by_name() {
    let (d, _c) = two_files();
    std::fs::write(d.path().join("data/catA/extra.csv"), "timestamp,value\n2020-01-01 00:00:00,1\n").expect("write");
    let err = NabCorpus::read(d.path()).expect_err("must refuse");
    assert!(err.to_string().contains("catA/extra.csv"), "{err}");
}

#[test]
fn calibration_split_alternates_within_each_category() {
    let (_d, c) = corpus(&[("a", "1", 50, &[]), ("a", "2", 50, &[]), ("a", "3", 50, &[]), ("b", "1", 50, &[])]);
    assert_eq!(calibration_split(&c), vec![true, false, true, true]);
}

#[test]
fn breakdown_matches_the_file_score_and_names_each_point() {
    let (_d, c) = corpus(&[("cat", "f", 100, &[(40, 59), (70, 79)])]);
    // Row 20: a false positive with no window before it; row 50 detects the first window halfway
    // (row 55 adds nothing); the second window is missed though row 75 scores 0.4; row 90 is a false
    // positive after the second window.
    let mut scores = fire_at(&c, &[&[20, 50, 55, 90]]);
    scores[0][75] = 0.4;
    let p = PROFILES[0];
    let b = breakdown::breakdown(&c.series[0], &scores[0], &p, 1.0);
    let pts = sweep_points(&c.series[0], &scores[0], &p, 0);
    let file = score_at(&pts, 1.0, p.fn_);
    assert!((b.total() - file.score).abs() < 1e-12, "{} vs {}", b.total(), file.score);
    assert_eq!(b.windows[0].first_detection, Some(50));
    let tp = sigmoid_ref(-(59.0 - 50.0 + 1.0) / 20.0) / sigmoid_ref(-1.0);
    assert!((b.windows[0].credit.expect("scored") - tp).abs() < 1e-12);
    assert_eq!(b.windows[1].first_detection, None);
    assert_eq!(b.windows[1].credit, Some(-p.fn_));
    assert_eq!(b.windows[1].best, Some((75, 0.4)));
    let rows: Vec<usize> = b.false_positives.iter().map(|f| f.row).collect();
    assert_eq!(rows, vec![20, 90]);
    assert!((b.false_positives[0].weight + p.fp).abs() < 1e-12, "no window before row 20: full cost");
    assert!(b.false_positives[1].weight > -p.fp, "just after a window: less than the full cost");
}
