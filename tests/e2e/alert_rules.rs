//! The alert rules users load into the Prometheus that scrapes Cairn (`rules/*.rules.yml`: its
//! governance and its own health), checked and unit-tested by the real `promtool` (Debian's
//! `prometheus` package), and held to the series Cairn actually exports so a renamed metric cannot
//! silently disable an alert.
//!
//! Without promtool the promtool test says SKIPPED and passes — except under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool").args(args).current_dir(repo()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Each rule file and its promtool unit tests.
const RULES: &[(&str, &str)] = &[
    ("rules/cairn-governance.rules.yml", "rules/tests/cairn-governance.test.yml"),
    ("rules/cairn-operations.rules.yml", "rules/tests/cairn-operations.test.yml"),
];

#[test]
fn rules_pass_promtool_unit_tests() {
    if !cairn_testkit::programs::programs_present(&["promtool"], "alert rules test") {
        return;
    }
    for (rules, tests) in RULES {
        let (ok, out) = promtool(&["check", "rules", rules]);
        assert!(ok, "promtool check rules {rules} failed:\n{out}");
        let (ok, out) = promtool(&["test", "rules", tests]);
        assert!(ok, "promtool test rules {tests} failed:\n{out}");
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn rules_use_only_series_cairn_exports_and_every_alert_is_tested() {
    let exported = cairn_server::metrics::Metrics::new().names();
    for (rules_file, tests_file) in RULES {
        let rules = std::fs::read_to_string(repo().join(rules_file)).unwrap();
        let mut used = Vec::new();
        let mut rest = rules.as_str();
        while let Some(i) = rest.find("cairn_") {
            let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[i + name.len()..];
            // Recording rules (cairn:…) and histogram parts of an exported histogram.
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name).to_string();
            used.push((name, base));
        }
        assert!(used.len() >= 6, "{rules_file} refers to Cairn's series: {used:?}");
        for (name, base) in &used {
            assert!(exported.contains(base) || exported.contains(name), "{rules_file}: {name} is not exported by Cairn; exported: {exported:?}");
        }
        let tests = std::fs::read_to_string(repo().join(tests_file)).unwrap();
        for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
            assert!(tests.contains(&format!("alertname: {alert}")), "{rules_file}: {alert} has no promtool test in {tests_file}");
        }
    }
}
