//! Cairn's protocol-free core: the orchestration that moves values between the stage crates and
//! the store, in order, with the ids in tracing spans. It sits between the stage crates
//! (`cairn-detect`, `cairn-correlate`, `cairn-recommend`, `cairn-policy`, `cairn-workflow`) and
//! the store (`cairn-store`) below, and `cairn-server` above, which only wires it to listeners.
//!
//! It is cut by lifecycle into three parts, each given only what it needs — its slice of the store
//! ([`Signals`], [`Changes`], [`Guards`], [`Leases`]), the active router, the guardrail settings
//! with an [`Escalator`], a [`Clock`] — and each with its own error:
//!
//! | part | what it does | error |
//! |---|---|---|
//! | [`Pipeline`] (`pipeline.rs`) | detect → correlate → recommend → learn → route → open | [`AnalysisError`] |
//! | [`ReviewDesk`] (`desk.rs`, `card.rs`, `policy::propose`) | approve, reject, break-glass, freeze, guard enable, policy proposal, the decision card | [`ReviewDeskError`] |
//! | [`ExecutorLoop`] (`executor.rs`, `recover.rs`) | recover → expire → claim → guard → run → verify → record → escalate | [`ExecutorError`] |
//!
//! [`Engine`] composes the three from one store and [`EngineParts`] for the server; each part can
//! also be built and used alone (`parts_alone.rs`). Also here: who a caller is as the domain sees
//! it ([`identity`]: kinds, scopes, step-up), Cairn's own metrics registry ([`metrics`]), the
//! multivariate models the pipeline scores with ([`models`]), and policy bundles as changes
//! ([`policy`]).
//!
//! Takes: a store, a router, the workflow executor (with its adapters, gate and journal), settings,
//! a clock, an escalator. Gives: methods that do one domain act each and return domain values or a
//! domain error.
//!
//! It must never:
//! - know a protocol: no gRPC, no HTTP, no wire types (`cairn-proto`), no status codes; the server
//!   maps its errors (`cairn-server/src/error.rs`) and converts its values (`convert.rs`);
//! - write the store outside the store's own transactions: every state change goes through one
//!   store call that writes the change and its audit events together (invariant 8), and live
//!   streams learn of it from the store's commit hook, not from callers;
//! - decide what may run: routing is `cairn-policy`'s, review rules and the executor's gate are
//!   `cairn-workflow`'s; the core calls them and records what they decide;
//! - reach an adapter other than through `cairn_workflow::Executor` (policy activations included);
//! - parse a credential or read configuration files: it is handed identities and settings.

#![forbid(unsafe_code)]

pub mod card;
pub mod clock;
pub mod desk;
pub mod engine;
pub mod executor;
pub mod governance;
pub mod identity;
mod learning;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod policy;
pub mod recover;
#[cfg(test)]
mod parts_alone;
#[cfg(test)]
mod sequences;

pub use desk::{ReviewDesk, ReviewDeskDeps, ReviewDeskError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Changes, Engine, EngineParts, Guards, Leases, Signals};
pub use executor::{ExecutorError, ExecutorLoop, ExecutorLoopDeps};
pub use governance::{Escalator, Governance};
pub use pipeline::{Analysis, AnalysisError, Batch, Pipeline, PipelineDeps, Regroup, RegroupReply};
