//! Cairn's end-to-end tests: a real server in-process (or the real programs it talks to), driven
//! only through its public HTTP and gRPC protocols. One test binary with a module per area, so the
//! whole server is linked once for all of them; the harness, the test PKI and the programs they
//! start are in `cairn-testkit`.
//!
//! Where the real programs (Prometheus, Alertmanager, node-exporter, promtool, Node.js for the
//! OpenID Provider) are missing, the tests that need them say SKIPPED and pass — except under
//! `CI=true`, where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Only people govern (invariant 11), with its TLS and OpenID Connect sign-in cases.
mod access;
/// The alert rules (governance, Cairn's own health), checked by the real promtool.
mod alert_rules;
/// The audit log written by a real server, edited behind its back.
mod audit_tamper;
/// Break-glass, guardrails and escalations, with the real Alertmanager and Prometheus.
mod governance;
/// Incidents followed live from a cursor.
mod incidents_grpc;
/// remote_write, the Alertmanager webhook and change events over real HTTP.
mod ingest_http;
/// The shipped multivariate model scoring hosts online.
mod multivariate_serve;
/// Policy bundles as tier-3 changes.
mod policy_grpc;
/// Staged rollouts.
mod progressive_grpc;
/// Prometheus, node-exporter and Alertmanager configured as the README says, end to end.
mod real_prometheus;
/// A change claimed by an executor that died, recovered by the next server.
mod recover_grpc;
/// The review path, trying to break the invariants.
mod review_grpc;
/// The test kit: a program that stalls at start is named with what it was doing.
mod testkit;
