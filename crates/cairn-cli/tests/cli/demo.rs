//! The README's first command, end to end: `cairn demo` replays the bundled scenario through a
//! running server and must show what both detectors found, all four routing outcomes, an approved
//! change executing, and a verified audit chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn demo_produces_the_four_outcomes_executes_an_approval_and_verifies_the_audit_chain() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("demo")
        .env("CAIRN_LOG", "warn")
        .output()
        .expect("the cairn binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let outcomes = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("outcomes:"))
        .unwrap_or_else(|| panic!("no outcomes line in:\n{stdout}"));
    for word in ["auto", "review", "advisory", "blocked"] {
        assert!(outcomes.contains(word), "outcome {word} missing from {outcomes:?}");
    }
    // Both detectors judged the generated metrics: the queue jump (per series), the host whose
    // CPU stopped following its traffic (multivariate), and the jump alone brought a scale-out.
    assert!(stdout.contains(r#"{detector="multivariate-pca-kmeans",kind="correlation_break"}"#), "{stdout}");
    assert!(stdout.contains(r#"{detector="univariate","#), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.contains("scale_out") && l.contains("production/orders/orders-1:8080")),
        "no scale_out answered the orders queue jump:\n{stdout}"
    );
    assert!(stdout.contains("approves revision"), "{stdout}");
    assert!(stdout.contains("is succeeded"), "{stdout}");
    assert!(stdout.contains("dry_run"), "{stdout}");
    assert!(stdout.contains("audit chain verified"), "{stdout}");
}
