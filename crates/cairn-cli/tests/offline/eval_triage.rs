//! `cairn eval triage` as a user runs it, on the labelled development corpus beside the checkout
//! (`../shared/datasets/incidents-dev`): every recording is replayed through a real server over
//! remote_write and the Alertmanager webhook, and the triage must stay above the floors measured
//! when the entity- and topology-aware correlator landed, with confidence calibrated on held-out
//! recordings. It is skipped, saying so, where the corpus is absent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn corpus() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/incidents-dev");
    p.join("index.json").exists().then_some(p)
}

/// `cairn eval triage --output json` on `data` with `extra` arguments, as a user runs it.
fn eval_triage(data: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["eval", "triage", "--output", "json", "--data", data.to_str().unwrap()])
        .args(extra)
        .env("CAIRN_LOG", "error")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn triage_on_the_development_corpus_stays_above_its_floors_and_never_autos_unsafely() {
    let Some(data) = corpus() else {
        eprintln!("skipped: ../shared/datasets/incidents-dev is not beside the checkout");
        return;
    };
    // The refitted calibration table goes to a scratch file, not over the crate's own.
    let scratch = std::env::temp_dir().join(format!("cairn-eval-triage-{}.rs", std::process::id()));
    let v = eval_triage(&data, &["--calibrate", "--calibration-table", scratch.to_str().unwrap()]);
    let all = &v["summary"]["groups"]["all"];
    let f = |k: &str| all[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {all}"));
    assert_eq!(all["incidents"], 20, "12 isolated incidents and 8 in two storms: {all}");
    assert_eq!(all["unsafe_autos"], 0, "{}", serde_json::to_string_pretty(&v["recordings"]).unwrap());
    assert!(all["below_min_tier"].as_u64().unwrap() <= 2, "reviews below the least tier: {all}");
    // Floors a little below what was measured (remediation and root cause 1.00, F1 micro 0.99 and
    // 1.00 in storms, noise kept out 1.00, once a link needs trouble on both sides and the direction
    // a failure travels): a regression fails, run-to-run noise (one recording) does not.
    assert!(f("remediation_at_1") >= 0.95, "{all}");
    assert!(f("root_at_1") >= 0.95, "{all}");
    assert!(f("root_at_3") >= 0.95, "{all}");
    assert!(f("f1_micro") >= 0.93, "{all}");
    assert!(f("noise_kept_out") >= 0.95, "{all}");
    let storm = &v["summary"]["groups"]["storm"];
    assert!(storm["f1_micro"].as_f64().unwrap() >= 0.93, "storms are told apart: {storm}");
    // Confidence is a probability: below the base rate's Brier score on recordings the map did not
    // see (measured 0.004 and ECE 0.02 against 0.167), and with the embedded map.
    let cal = &v["calibration"];
    let c = |k: &str| cal[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {cal}"));
    assert!(c("leave_one_out_brier") < 0.5 * c("base_rate_brier"), "{cal}");
    assert!(c("leave_one_out_ece") <= 0.10, "{cal}");
    assert!(c("two_fold_brier") < 0.5 * c("base_rate_brier"), "{cal}");
    let summary = &v["summary"];
    assert!(summary["brier"].as_f64().unwrap() < summary["brier_base_rate"].as_f64().unwrap(), "{summary}");
    std::fs::remove_file(&scratch).ok();
    // Every recording's answers were read back through the public API.
    for r in v["recordings"].as_array().unwrap() {
        assert!(r["incidents_out"].as_u64().unwrap() > 0, "{r}");
    }
}

/// Kinds the corpus does not have (`--synth`: a config push, a cache and a DNS service down, a
/// noisy neighbour, an expired certificate, a queue's consumer falling behind, a release that
/// crash-loops), laid over two of its recordings, alone and four at once: the triage names the
/// root and the right action (or none) for each, tells a storm's apart, and never lets a tier-2
/// action run by itself. Replayed with node-exporter at its node's address (`--node-addresses`),
/// as a cluster without kube-prometheus's relabelling sends it: the noisy neighbour is found on
/// its node all the same.
#[test]
fn triage_holds_on_incident_kinds_the_corpus_does_not_have() {
    let Some(data) = corpus() else {
        eprintln!("skipped: ../shared/datasets/incidents-dev is not beside the checkout");
        return;
    };
    let v = eval_triage(&data, &["--synth", "--node-addresses"]);
    let all = &v["summary"]["groups"]["all"];
    let f = |k: &str| all[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {all}"));
    assert_eq!(all["incidents"], 22, "seven kinds over two recordings, and a storm of four over each: {all}");
    assert_eq!(all["unsafe_autos"], 0, "{}", serde_json::to_string_pretty(&v["recordings"]).unwrap());
    // Measured: root cause and remediation 1.00, F1 micro 0.99 alone (a noise alert on a noisy
    // node's service joins it) and 1.00 in storms, noise kept out 0.98. Before an instance at a
    // node's address was read as the node: remediation 0.91, noise kept out 0.97.
    assert!(f("root_at_1") >= 0.9, "{all}");
    assert!(f("remediation_at_1") >= 0.95, "{all}");
    assert!(f("f1_micro") >= 0.9, "{all}");
    assert!(f("noise_kept_out") >= 0.9, "{all}");
    let storm = &v["summary"]["groups"]["storm"];
    assert!(storm["f1_micro"].as_f64().unwrap() >= 0.9, "a storm's kinds are told apart: {storm}");
    for r in v["recordings"].as_array().unwrap() {
        let name = r["recording"].as_str().unwrap();
        assert!(name.contains('@'), "a synthesised recording is named kind@base: {name}");
    }
}
