//! What the core can fail with, named for the domain problem. The server maps each variant to a
//! gRPC status and an HTTP status in its `error.rs`; nothing here knows either.

use cairn_store::StoreError;
use cairn_types::{ChangeId, RecommendationId};

/// Why an act of the analysis pipeline, the review desk or the executor loop did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store refused or failed a read or a write.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The review rules refused an approval or a rejection.
    #[error(transparent)]
    Review(#[from] cairn_workflow::ReviewError),
    /// The break-glass rules refused to open, use or revoke one.
    #[error(transparent)]
    BreakGlass(#[from] cairn_workflow::BreakGlassError),
    #[error("no recommendation {id}{}", revision.map(|r| format!(" at revision {r}")).unwrap_or_default())]
    UnknownRecommendation { id: RecommendationId, revision: Option<u32> },
    #[error("no break-glass {0}")]
    UnknownBreakGlass(String),
    /// A sign-in too old (or a static token) for an act that needs a recent one.
    #[error(transparent)]
    StaleSignIn(#[from] crate::identity::StepUpDenied),
    /// The freeze switch or an automation's re-enabling was refused (no reason, not a person).
    #[error("{0}")]
    GuardrailRefused(String),
    /// A policy proposal without a reason, or a proposed or shadow-evaluated bundle that does not
    /// load or whose own tests fail.
    #[error("{0}")]
    InvalidBundle(String),
    /// A change whose recommendation revision is missing from the store.
    #[error("change {0} has no recommendation")]
    Orphaned(ChangeId),
    /// Concurrent reviews kept moving the change between our read and our write.
    #[error("the change kept changing under concurrent reviews; try again")]
    Contended,
    /// A proposal that was routed but cannot be read back.
    #[error("the proposal was not stored")]
    ProposalNotStored,
    /// The bundle's files could not be written into the proposal.
    #[error("the proposal cannot be encoded: {0}")]
    Encoding(String),
    /// Blocking store work panicked on its thread.
    #[error("worker panicked: {0}")]
    WorkerPanicked(String),
}
