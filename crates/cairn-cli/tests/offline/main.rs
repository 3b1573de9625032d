//! The offline tools as a user runs them (`cairn eval nab`, `cairn eval triage`, `cairn audit
//! report`): they link polars, so they are one test binary of their own, built with the `offline`
//! feature (the default).

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The real `cairn serve` and the `cairn` binary as a subprocess, shared with the `cli` tests.
#[path = "../cli/common.rs"]
mod common;

/// `cairn audit report` from a data directory and from a running server.
mod audit_report;
/// `cairn eval nab` on a generated corpus in NAB's layout.
mod eval_nab;
/// `cairn eval triage` on the labelled development corpus, when it is beside the checkout.
mod eval_triage;
