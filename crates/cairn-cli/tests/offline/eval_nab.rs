//! `cairn eval nab` as a user runs it, on a tiny generated corpus in NAB's layout: two noisy series,
//! one with a level shift inside its labelled window, one clean. The command must find the shift,
//! score it above the null detector, and write NAB-layout results.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn noise(i: usize) -> f64 {
    let x = ((i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33) as f64;
    (x / (1u64 << 31) as f64) - 0.5
}

/// Rows five minutes apart from 2020-01-01 00:00:00.
fn ts(i: usize) -> String {
    let (day, min) = (i * 5 / 1440, i * 5 % 1440);
    format!("2020-01-{:02} {:02}:{:02}:00", day + 1, min / 60, min % 60)
}

fn write_series(dir: &Path, cat: &str, name: &str, values: impl Iterator<Item = f64>) {
    let d = dir.join("data").join(cat);
    std::fs::create_dir_all(&d).unwrap();
    let mut text = String::from("timestamp,value\n");
    for (i, v) in values.enumerate() {
        text.push_str(&format!("{},{v}\n", ts(i)));
    }
    std::fs::write(d.join(format!("{name}.csv")), text).unwrap();
}

#[test]
fn eval_nab_finds_a_shift_and_writes_nab_results() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_series(root, "synthetic", "shift", (0..2000).map(|i| if i < 1400 { 50.0 } else { 80.0 } + 4.0 * noise(i)));
    write_series(root, "synthetic", "clean", (0..2000).map(|i| 50.0 + 4.0 * noise(i + 7)));
    std::fs::create_dir_all(root.join("labels")).unwrap();
    let labels = format!(
        r#"{{"synthetic/shift.csv": [["{}.000000", "{}.000000"]], "synthetic/clean.csv": []}}"#,
        ts(1350),
        ts(1450)
    );
    std::fs::write(root.join("labels/combined_windows.json"), labels).unwrap();

    let results = root.join("results");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["eval", "nab", "--data"])
        .arg(root)
        .arg("--results")
        .arg(&results)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("standard") && stdout.contains("reward_low_FP_rate"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("[  2/2]"), "progress is shown");

    let rows = std::fs::read_to_string(results.join("cairn/synthetic/cairn_shift.csv")).unwrap();
    assert_eq!(rows.lines().next(), Some("timestamp,value,anomaly_score,label"));
    assert_eq!(rows.lines().count(), 2001);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("final_results.json")).unwrap()).unwrap();
    let standard = summary["cairn"]["standard"].as_f64().unwrap();
    assert!(standard > 50.0, "the shift is found early in its window: {standard}\n{stdout}");

    // Cross-validated: two folds, one file each; the threshold (and the declared candidate) is
    // chosen on the other fold. The clean file's fold has no window and is not averaged.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["eval", "nab", "--folds", "2", "--deals", "3", "--tune", "alert_score=0.5,0.7", "--leave-one-category-out", "--data"])
        .arg(root)
        .arg("--results")
        .arg(&results)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("cross-validated over 2 folds") && stdout.contains("2 candidate configuration(s)"), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("standard ")).expect("a standard line");
    let mean: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((0.0..=100.0).contains(&mean), "{line}");
    assert!(stdout.contains("leave one category out"), "{stdout}");
    assert!(stdout.contains("over 3 deals of the files into 2 folds"), "{stdout}");
    // Each candidate alone, the second against the first deal by deal.
    let alone = stdout.lines().skip_while(|l| !l.starts_with("standard profile, each candidate alone")).nth(2).expect("a second candidate line");
    assert!(alone.trim_start().starts_with("alert_score=0.7") && alone.contains("of 3"), "{alone}\n{stdout}");
    let brier = stdout.lines().find(|l| l.starts_with("calibration refit on each fold")).expect("a held-out Brier line");
    let calibrated: f64 = brier.split("calibrated ").nth(1).and_then(|t| t.split(',').next()).unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&calibrated), "{brier}");
    let bad = Command::new(env!("CARGO_BIN_EXE_cairn")).args(["eval", "nab", "--folds", "2", "--tune", "alert_score", "--data"]).arg(root).arg("--results").arg(&results).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("KEY=V1,V2"), "{}", String::from_utf8_lossy(&bad.stderr));
}
