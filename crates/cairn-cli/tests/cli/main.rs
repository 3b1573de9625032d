//! The `cairn` binary as people use it: `cairn serve` started as a user would start it (a config
//! file, a token made by `cairn token new`, loopback ports), driven by the operator's commands and
//! the real protocols, killed and restarted. One test binary with a module per area; the offline
//! tools (`eval`, `audit report`) are tested beside it, behind the `offline` feature.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// What these tests share: the real `cairn serve`, the `cairn` binary as a subprocess, a bare POST.
mod common;

/// The audit trail as an operator and an auditor use it, checkpoints and evidence included.
mod audit_trail;
/// `cairn review …`, `cairn incidents …`, `cairn audit …` and `cairn login` against a running server.
mod client;
/// The README's first command.
mod demo;
/// Acknowledged means stored (invariant 12): SIGKILL and a full disk.
mod durable_intake;
/// `cairn breakglass …`, `cairn freeze …` and `cairn guard …`.
mod guardrails;
/// A server killed mid-change, restarted on the same store.
mod recover_serve;
