//! The governance alert rules users load into Prometheus (`rules/cairn-governance.rules.yml`),
//! checked and unit-tested by the real `promtool` (Debian's `prometheus` package), and held to the
//! series Cairn actually exports so a renamed metric cannot silently disable an alert.
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

#[test]
fn governance_rules_pass_promtool_unit_tests() {
    if !cairn_testkit::programs::programs_present(&["promtool"], "governance rules test") {
        return;
    }
    let (ok, out) = promtool(&["check", "rules", "rules/cairn-governance.rules.yml"]);
    assert!(ok, "promtool check rules failed:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "rules/tests/cairn-governance.test.yml"]);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn governance_rules_use_only_series_cairn_exports() {
    let rules = std::fs::read_to_string(repo().join("rules/cairn-governance.rules.yml")).unwrap();
    let exported = cairn_server::metrics::Metrics::new().governance.names();
    let mut used = Vec::new();
    let mut rest = rules.as_str();
    while let Some(i) = rest.find("cairn_") {
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        // Recording rules (cairn:…) and histogram parts of an exported histogram.
        let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name).to_string();
        used.push((name, base));
    }
    assert!(used.len() >= 8, "the rules refer to Cairn's series: {used:?}");
    for (name, base) in &used {
        assert!(exported.contains(base) || exported.contains(name), "{name} is not exported by Cairn; exported: {exported:?}");
    }
}
