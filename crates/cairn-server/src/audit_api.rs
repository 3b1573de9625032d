//! What the audit service answers, apart from the gRPC plumbing in `grpc.rs`: a whole-log
//! verification against the checkpoint directory, and evidence bundles over a fresh checkpoint.

use crate::checkpoint::{Checkpointer, read_checkpoints};
use crate::error::ApiError;
use cairn_proto::v1 as pb;
use cairn_store::{AuditProofs, AuditQuery, Store, StoreError};

/// Verifies the chain, the tree and every checkpoint. A failed check is a successful call that
/// says `ok = false` and names the first bad entry where it can be known; only a store or file
/// failure is an error.
pub fn verify(store: &dyn Store, checkpoints: &Checkpointer) -> Result<pb::VerifyResponse, ApiError> {
    let found = read_checkpoints(checkpoints.dir()).map_err(|e| {
        ApiError::Internal(format!("cannot read the checkpoint directory {}: {e}", checkpoints.dir().display()))
    })?;
    let failed = |first_bad_seq: u64, problem: String| pb::VerifyResponse {
        ok: false,
        first_bad_seq,
        problem,
        ..Default::default()
    };
    match store.verify_audit_anchored(&found, checkpoints.pinned(), Some(checkpoints.origin())) {
        Ok(r) => Ok(pb::VerifyResponse {
            ok: true,
            entries: r.chain.entries,
            head_hash: r.chain.head_hash,
            first_bad_seq: 0,
            problem: String::new(),
            tree_size: r.chain.entries,
            root_hash: hex::encode(r.root),
            checkpoints_checked: r.checkpoints_checked as u32,
            latest_checkpoint_size: r.latest.map_or(0, |l| l.checkpoint.size),
            unanchored_entries: r.unanchored,
        }),
        Err(StoreError::AuditBroken(b)) => Ok(failed(b.seq, b.to_string())),
        Err(StoreError::AuditAnchor(a)) => Ok(failed(a.first_bad_seq().unwrap_or(0), a.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Signs a checkpoint covering everything written so far and proves the subject's entries in it.
pub fn prove(store: &dyn Store, checkpoints: &Checkpointer, req: pb::ProveRequest) -> Result<pb::ProveResponse, ApiError> {
    let (query, subject) = match (req.recommendation_id.is_empty(), req.incident_id.is_empty()) {
        (false, true) => (
            AuditQuery { recommendation_id: Some(req.recommendation_id.clone()), ..Default::default() },
            format!("recommendation {}", req.recommendation_id),
        ),
        (true, false) => (
            AuditQuery { incident_id: Some(req.incident_id.clone()), ..Default::default() },
            format!("incident {}", req.incident_id),
        ),
        _ => return Err(ApiError::InvalidArgument("give exactly one of recommendation_id and incident_id".into())),
    };
    checkpoints.write_now().map_err(ApiError::Internal)?;
    let latest = read_checkpoints(checkpoints.dir())
        .map_err(|e| ApiError::Internal(format!("cannot read the checkpoint directory: {e}")))?
        .pop()
        .ok_or_else(|| ApiError::NotFound("no checkpoint has been written yet: the audit log is empty".into()))?;
    let opened = cairn_audit::checkpoint::open_checkpoint(&latest.note, checkpoints.pinned())
        .map_err(|e| ApiError::Internal(format!("checkpoint {}: {e}", latest.label)))?;
    let bundle = store.audit_evidence(&query, &subject, &latest.note, opened.checkpoint.size)?;
    if bundle.entries.is_empty() && bundle.unanchored_seqs.is_empty() {
        return Err(ApiError::NotFound(format!("no audit entries about {subject}")));
    }
    let bundle_json = serde_json::to_string_pretty(&bundle).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(pb::ProveResponse { bundle_json, public_key: checkpoints.pinned()[0].encode() })
}
