//! The default adapter: says what it would do and touches nothing.

use crate::{Adapter, AdapterFuture};
use cairn_types::{ChangeRequest, ExecutionOutcome, Recommendation};

/// Describes what it would do and touches nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRunAdapter;

impl Adapter for DryRunAdapter {
    fn name(&self) -> &str {
        "dry_run"
    }

    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(async move {
            let mut out = format!(
                "would run {} on {} (change {}, digest {})\n",
                rec.action,
                rec.target,
                change.id,
                &change.action_digest[..change.action_digest.len().min(16)]
            );
            if let Some(stage) = &change.stage {
                out.push_str(&format!("  stage {stage}\n"));
            }
            for (k, v) in &rec.parameters {
                out.push_str(&format!("  parameter {k} = {v}\n"));
            }
            if let Some(p) = &rec.rollback_plan {
                out.push_str(&format!("  rollback ready ({} steps, owner {})\n", p.steps.len(), p.owner));
            }
            (ExecutionOutcome::DryRun, out)
        })
    }

    fn rollback<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(async move {
            let steps = rec.rollback_plan.as_ref().map(|p| p.steps.join("; ")).unwrap_or_default();
            let stage = change.stage.as_ref().map(|s| format!(" stage {s}")).unwrap_or_default();
            (ExecutionOutcome::DryRun, format!("would roll back change {}{stage}: {steps}\n", change.id))
        })
    }
}
