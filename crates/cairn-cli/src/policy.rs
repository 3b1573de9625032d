//! `cairn policy …`: test a bundle with its own Rego tests, shadow it against recent
//! recommendations, and propose it as the tier-3 change that activates it (invariant 10).
//!
//! `test` and `shadow --data-dir` work offline through the same engine as production
//! (`cairn-policy`); `shadow` without `--data-dir` and `propose` call the server's gRPC API.

use crate::client::review_client;
use crate::{ClientArgs, OutputFormat};
use anyhow::{Context, Result, bail};
use cairn_policy::{PolicyBundle, PolicyFile, Router, RouterConfig, ShadowChange};
use cairn_proto::v1 as pb;
use cairn_store::{ChangeStore, RecommendationFilter};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Run a bundle's Rego unit tests (`*_test.rego`, rules named `test_*`) through the production
    /// engine. Exit status 1 when any fails.
    Test {
        /// Bundle directory (default: the embedded `policy/default`).
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
    /// List every recent recommendation whose outcome, tier or approvals a candidate bundle would
    /// change. Reads the live server, or a data directory with `--data-dir`. Changes nothing.
    Shadow {
        #[command(flatten)]
        client: ClientArgs,
        /// The candidate bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// Read recommendations from this data directory (`cairn.db`) instead of the server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How many recent recommendations to evaluate.
        #[arg(long, default_value_t = 500)]
        limit: u32,
    },
    /// Open the change request that activates a bundle: tier 3, two approvers from the policy's
    /// tier-3 group, run inside a maintenance window. You cannot approve your own proposal.
    Propose {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        bundle: PathBuf,
        /// Why the policy should change (the change's expected benefit).
        #[arg(long)]
        reason: String,
        /// When it should run, in words, e.g. "Sunday window".
        #[arg(long)]
        window: String,
    },
}

pub async fn run(cmd: PolicyCmd) -> Result<ExitCode> {
    match cmd {
        PolicyCmd::Test { bundle } => test(bundle.as_deref()),
        PolicyCmd::Shadow { client, bundle, data_dir, limit } => {
            let changes = match data_dir {
                Some(dir) => shadow_local(&bundle, &dir, limit as usize)?,
                None => shadow_remote(&client, &bundle, limit).await?,
            };
            print_shadow(&changes, client.output);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Propose { client, bundle, reason, window } => propose(&client, &bundle, &reason, &window).await,
    }
}

fn load(dir: Option<&Path>) -> Result<PolicyBundle> {
    match dir {
        Some(d) => PolicyBundle::load_dir(d).with_context(|| format!("loading the policy bundle in {}", d.display())),
        None => Ok(PolicyBundle::embedded_default()),
    }
}

fn test(dir: Option<&Path>) -> Result<ExitCode> {
    let bundle = load(dir)?;
    let report = cairn_policy::run_policy_tests(&bundle)?;
    for (rule, ok, msg) in &report.results {
        println!("{} {rule}{}", if *ok { "PASS" } else { "FAIL" }, if msg.is_empty() { String::new() } else { format!(": {msg}") });
    }
    let failed = report.results.iter().filter(|r| !r.1).count();
    println!("bundle {}: {} passed, {failed} failed", bundle.version(), report.results.len() - failed);
    if report.results.is_empty() {
        eprintln!("no tests found: add *_test.rego files with test_* rules");
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Shadows against the recommendations stored in `data_dir`, opened read-only: SQLite in WAL mode
/// lets this read while a server is running on the same directory, and it changes nothing there.
pub fn shadow_local(bundle: &Path, data_dir: &Path, limit: usize) -> Result<Vec<ShadowChange>> {
    let db = data_dir.join("cairn.db");
    if !db.exists() {
        bail!("{} does not exist; --data-dir must be a Cairn data directory", db.display());
    }
    let store = cairn_store::SqliteStore::open_read_only(&db).with_context(|| format!("opening {}", db.display()))?;
    let candidate = Router::new(load(Some(bundle))?, RouterConfig::default())?;
    let recorded: Vec<_> = store
        .list_recommendations(&RecommendationFilter { limit, ..Default::default() })?
        .into_iter()
        .map(|r| (r.recommendation, r.decision))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    eprintln!("candidate {}: {} recommendation(s) evaluated", candidate.version(), recorded.len());
    Ok(cairn_policy::shadow(&candidate, &recorded, now))
}

fn files_pb(dir: &Path) -> Result<Vec<pb::PolicyFile>> {
    Ok(load(Some(dir))?
        .files()
        .into_iter()
        .map(|PolicyFile { name, text }| pb::PolicyFile { name, text })
        .collect())
}

async fn shadow_remote(client: &ClientArgs, bundle: &Path, limit: u32) -> Result<Vec<ShadowChange>> {
    let resp = review_client(client)
        .await?
        .shadow_policy(pb::ShadowPolicyRequest { files: files_pb(bundle)?, limit })
        .await
        .context("shadow evaluation failed")?
        .into_inner();
    eprintln!(
        "active {} → candidate {}: {} recommendation(s) evaluated",
        resp.active_version, resp.candidate_version, resp.evaluated
    );
    Ok(resp
        .changed
        .into_iter()
        .map(|c| ShadowChange {
            recommendation_id: c.recommendation_id,
            revision: c.revision,
            action: c.action,
            target: c.target,
            before: c.before,
            after: c.after,
            reasons: c.reasons,
        })
        .collect())
}

fn print_shadow(changes: &[ShadowChange], format: OutputFormat) {
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(changes).unwrap_or_default());
        return;
    }
    if changes.is_empty() {
        println!("no outcome would change");
        return;
    }
    println!("{} outcome(s) would change:", changes.len());
    for c in changes {
        println!("{} r{}  {} on {}: {} → {}", c.recommendation_id, c.revision, c.action, c.target, c.before, c.after);
        for r in &c.reasons {
            println!("    because {r}");
        }
    }
}

async fn propose(client: &ClientArgs, bundle: &Path, reason: &str, window: &str) -> Result<ExitCode> {
    let resp = review_client(client)
        .await?
        .propose_policy(pb::ProposePolicyRequest {
            files: files_pb(bundle)?,
            reason: reason.into(),
            execution_window: window.into(),
        })
        .await
        .context("the proposal was refused")?
        .into_inner();
    if client.output == OutputFormat::Json {
        let view = resp.proposal.as_ref();
        let rec = view.and_then(|v| v.recommendation.as_ref());
        println!(
            "{}",
            serde_json::json!({
                "recommendation_id": rec.map(|r| r.id.clone()),
                "revision": rec.map(|r| r.revision),
                "change_id": view.and_then(|v| v.change.as_ref()).map(|c| c.id.clone()),
                "active_version": resp.active_version,
                "proposed_version": resp.proposed_version,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(view) = resp.proposal else { bail!("the server answered without the proposal") };
    let rec = view.recommendation.unwrap_or_default();
    let decision = view.decision.unwrap_or_default();
    println!("proposed policy {} (active: {})", resp.proposed_version, resp.active_version);
    println!(
        "change request {} r{}: tier {} needs {} approvals from {}",
        rec.id,
        rec.revision,
        decision.tier.map_or("-".to_string(), |t| t.to_string()),
        decision.approvals_required,
        if decision.approver_groups.is_empty() { "anyone".to_string() } else { decision.approver_groups.join(", ") }
    );
    println!("review it: cairn review show {}", rec.id);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_types::*;

    fn write_bundle(dir: &Path, auto_min: &str) {
        for f in PolicyBundle::embedded_default().files() {
            let text = if f.name == "data.json" { f.text.replace("\"auto_min\": 0.8", &format!("\"auto_min\": {auto_min}")) } else { f.text };
            std::fs::write(dir.join(&f.name), text).unwrap();
        }
    }

    fn restart(id: &str, confidence: f64) -> Recommendation {
        Recommendation {
            id: RecommendationId(id.into()),
            revision: 1,
            incident_id: IncidentId("inc".into()),
            playbook: "p".into(),
            playbook_version: "1".into(),
            action: ActionClass::RestartProcess,
            target: Target { service: "search".into(), environment: "production".into(), resource: "search-1".into() },
            parameters: Default::default(),
            confidence,
            severity: Severity::High,
            blast_radius: BlastRadius::Instance,
            reversibility: Reversibility::Reversible,
            rollback_plan: Some(RollbackPlan { steps: vec!["restart".into()], owner: "team".into() }),
            verification: vec![VerificationCheck { name: "up".into(), query: "up".into(), comparator: ">=".into(), threshold: 1.0, within_secs: 60 }],
            expected_benefit: "back up".into(),
            rationale: "down".into(),
            evidence: vec![],
            model_version: "none".into(),
            created_ms: 0,
            requester: CAIRN_SERVICE_SUBJECT.into(),
        }
    }

    #[test]
    fn shadow_from_a_data_dir_lists_changed_outcomes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = cairn_store::SqliteStore::open(&tmp.path().join("cairn.db")).unwrap();
        let active = Router::new(PolicyBundle::embedded_default(), RouterConfig::default()).unwrap();
        for (id, conf) in [("rec-a", 0.85), ("rec-b", 0.99)] {
            let r = restart(id, conf);
            let d = active.route(&r, &cairn_policy::RoutingContext::for_environment("production"), 0);
            assert_eq!(d.outcome, Outcome::Auto);
            let (c, drafts) = cairn_workflow::open_change(&r, &d, 0, &Default::default());
            store.propose(&r, &d, &c, &drafts, 0).unwrap();
        }
        drop(store);
        let bundle = tmp.path().join("candidate");
        std::fs::create_dir(&bundle).unwrap();
        write_bundle(&bundle, "0.9");
        let changed = shadow_local(&bundle, tmp.path(), 100).unwrap();
        assert_eq!(changed.len(), 1, "{changed:#?}");
        assert_eq!(changed[0].recommendation_id, "rec-a");
        assert_eq!(changed[0].before, "auto tier 0");
        assert!(changed[0].after.starts_with("review tier 2"), "{}", changed[0].after);
        assert!(shadow_local(&bundle, &tmp.path().join("missing"), 100).is_err());
    }

    #[test]
    fn policy_test_fails_for_a_bundle_whose_tests_fail() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), "0.8");
        assert_eq!(test(Some(tmp.path())).unwrap(), ExitCode::SUCCESS);
        // Raising the threshold above the tests' confidence 0.9 breaks test_restart_on_one_instance_runs_by_itself.
        write_bundle(tmp.path(), "0.95");
        assert_eq!(test(Some(tmp.path())).unwrap(), ExitCode::FAILURE);
        assert_eq!(test(None).unwrap(), ExitCode::SUCCESS, "the embedded bundle passes");
    }
}
