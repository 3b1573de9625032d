//! Cairn's protocol-free core: the orchestration that moves values between the stage crates and
//! the store, in order, with the ids in tracing spans.
//!
//! This crate must never know a protocol: no gRPC, no HTTP, no wire types (`cairn-proto`). The
//! server turns its errors into statuses; it turns nothing into a response itself.

#![forbid(unsafe_code)]

pub mod card;
pub mod engine;
pub mod error;
pub mod governance;
pub mod identity;
mod learning;
pub mod metrics;
pub mod models;
pub mod policy;
pub mod recover;
#[cfg(test)]
mod sequences;

pub use engine::{Analysis, Batch, Clock, Engine, SystemClock};
pub use error::ServiceError;
pub use governance::{Escalator, Governance};
