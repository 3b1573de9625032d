//! The one place where errors of the pipeline become gRPC statuses and HTTP responses: the
//! core's (`cairn-service`: analysis pipeline, review desk, executor loop), ingest's, the
//! store's and access's.

use axum::http::StatusCode;
use cairn_ingest::{ErrorKind, IngestError};
use cairn_service::{AnalysisError, ExecutorError, ReviewDeskError};
use cairn_store::StoreError;
use cairn_workflow::ReviewError;

/// Everything a request can fail with, by domain.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("missing or unknown bearer token; present one as 'authorization: Bearer <token>'")]
    Unauthenticated,
    /// A signed-in person's token that does not verify (expired, foreign issuer, unknown key...).
    #[error("sign-in token refused: {0}")]
    TokenRefused(String),
    /// A sign-in too old (or a static token) for a call that needs a recent one.
    #[error("{0}")]
    StaleSignIn(String),
    #[error("analysis queue is full; retry after {retry_after_secs}s")]
    Overloaded { retry_after_secs: u64 },
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    BreakGlass(#[from] cairn_workflow::BreakGlassError),
    /// The store could not make the request durable (a full disk, a failing store): nothing was
    /// acknowledged, and the sender should resend.
    #[error("{reason}; nothing was acknowledged, retry after {retry_after_secs}s")]
    NotStored { retry_after_secs: u64, reason: String },
    /// Authenticated, but the call needs a scope or a person the caller is not (`access.rs`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A well-formed request the state of things refuses (e.g. regrouping an incident that has
    /// closed); nothing changed.
    #[error("{0}")]
    FailedPrecondition(String),
}

impl From<crate::access::Denied> for ApiError {
    fn from(d: crate::access::Denied) -> ApiError {
        match d {
            crate::access::Denied::Unauthenticated => ApiError::Unauthenticated,
            other => ApiError::PermissionDenied(other.to_string()),
        }
    }
}

// The core's errors keep the statuses and messages they had when the core lived in this crate:
// each variant maps to the request error that names the same problem.

impl From<AnalysisError> for ApiError {
    fn from(e: AnalysisError) -> ApiError {
        match e {
            AnalysisError::Store(e) => ApiError::Store(e),
            AnalysisError::Regroup(refused) => ApiError::FailedPrecondition(refused.to_string()),
        }
    }
}

impl From<ReviewDeskError> for ApiError {
    fn from(e: ReviewDeskError) -> ApiError {
        use ReviewDeskError as D;
        match e {
            D::Store(e) => ApiError::Store(e),
            D::Routing(e) => e.into(),
            D::Review(e) => ApiError::Review(e),
            D::BreakGlass(e) => ApiError::BreakGlass(e),
            D::UnknownRecommendation { .. } | D::UnknownBreakGlass(_) => ApiError::NotFound(e.to_string()),
            D::StaleSignIn(_) => ApiError::StaleSignIn(e.to_string()),
            D::GuardrailRefused(_) | D::InvalidBundle(_) => ApiError::InvalidArgument(e.to_string()),
            D::Contended | D::ProposalNotStored | D::Encoding(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ExecutorError> for ApiError {
    fn from(e: ExecutorError) -> ApiError {
        match e {
            ExecutorError::Store(e) => ApiError::Store(e),
            ExecutorError::Routing(e) => e.into(),
            ExecutorError::Orphaned(_) | ExecutorError::WorkerPanicked(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            ApiError::Ingest(e) => match e.kind() {
                ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
                ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                // Prometheus treats every 4xx alike (drop); 400 is what its docs and our README promise.
                ErrorKind::UnsupportedMediaType => StatusCode::BAD_REQUEST,
                // The remote_write 2.0 spec: a receiver that does not speak the message answers 415.
                ErrorKind::UnsupportedMessage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            },
            ApiError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthenticated | ApiError::TokenRefused(_) | ApiError::StaleSignIn(_) => StatusCode::UNAUTHORIZED,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            // Never a 4xx for overload: Prometheus drops data on 4xx and retries on 5xx.
            ApiError::Overloaded { .. } | ApiError::NotStored { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Review(_) | ApiError::BreakGlass(_) | ApiError::FailedPrecondition(_) => StatusCode::CONFLICT,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short label for the rejected-requests counter.
    pub fn reason_label(&self) -> &'static str {
        match self {
            ApiError::Ingest(e) => match e.kind() {
                ErrorKind::BadRequest => "bad_request",
                ErrorKind::PayloadTooLarge => "too_large",
                ErrorKind::UnsupportedMediaType | ErrorKind::UnsupportedMessage => "unsupported_media_type",
            },
            ApiError::InvalidArgument(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthenticated | ApiError::TokenRefused(_) => "unauthenticated",
            ApiError::StaleSignIn(_) => "stale_sign_in",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::NotStored { .. } => "not_stored",
            ApiError::Review(_) | ApiError::BreakGlass(_) | ApiError::FailedPrecondition(_) => "refused",
            ApiError::Store(_) | ApiError::Internal(_) => "internal",
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let msg = e.to_string();
        match &e {
            ApiError::Ingest(_) | ApiError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::Unauthenticated | ApiError::TokenRefused(_) | ApiError::StaleSignIn(_) => tonic::Status::unauthenticated(msg),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            ApiError::Overloaded { .. } | ApiError::NotStored { .. } => tonic::Status::unavailable(msg),
            ApiError::Review(r) => review_status(r, msg),
            ApiError::BreakGlass(b) => breakglass_status(b, msg),
            ApiError::Store(StoreError::Conflict { .. }) => tonic::Status::aborted(msg),
            ApiError::Store(StoreError::IllegalTransition { .. }) | ApiError::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(msg)
            }
            ApiError::Store(_) | ApiError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

fn breakglass_status(b: &cairn_workflow::BreakGlassError, msg: String) -> tonic::Status {
    use cairn_workflow::BreakGlassError as B;
    match b {
        B::ServiceIdentity => tonic::Status::permission_denied(msg),
        B::NotActive { .. } | B::Expired { .. } | B::UsesExhausted { .. } | B::OutOfScope { .. } => {
            tonic::Status::failed_precondition(msg)
        }
        _ => tonic::Status::invalid_argument(msg),
    }
}

fn review_status(r: &ReviewError, msg: String) -> tonic::Status {
    use ReviewError as R;
    match r {
        R::MissingFields { .. } | R::EmptyReason => tonic::Status::invalid_argument(msg),
        R::SelfApproval { .. } | R::ServiceIdentity | R::NotInApproverGroup { .. } | R::BreakGlassOwner { .. } => {
            tonic::Status::permission_denied(msg)
        }
        _ => tonic::Status::failed_precondition(msg),
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status = self.http_status();
        let mut resp = (status, format!("{self}\n")).into_response();
        if let ApiError::Overloaded { retry_after_secs } | ApiError::NotStored { retry_after_secs, .. } = self
            && let Ok(v) = axum::http::HeaderValue::from_str(&retry_after_secs.to_string())
        {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}
