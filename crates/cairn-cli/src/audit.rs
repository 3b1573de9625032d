//! `cairn audit …`: query, verify, prove, verify-proof and export the audit trail.
//!
//! Two ways in. Against a live server (`--server`, the default) the commands call
//! `AuditService`. With `--data-dir` they open a stopped server's data directory (or a copy of it)
//! read-only and verify it here, trusting nothing the server says; `verify-proof` needs only a
//! bundle file and the log's public key.

use crate::client::{audit_client, status_error};
use crate::{ClientArgs, OutputFormat, output};
use anyhow::{Context, Result, bail};
use cairn_audit::bundle::{EvidenceBundle, verify_bundle};
use cairn_audit::checkpoint::{NoteVerifier, open_checkpoint};
use cairn_proto::v1 as pb;
use cairn_server::checkpoint::{
    DEFAULT_ORIGIN, default_checkpoint_dir, default_key_path, public_key_path, read_checkpoints, read_public_keys,
};
use cairn_store::{AuditLog, AuditProofs, AuditQuery, SqliteStore, StoreError};
use clap::{Args, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code of a verification that found a problem (distinct from usage or connection errors).
const EXIT_TAMPERED: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the whole trail: sequence gaps, hash links, the Merkle root at every signed
    /// checkpoint, signatures against pinned keys, consistency between checkpoints. Exits 3 naming
    /// the first bad entry; reports the entries after the last checkpoint (unanchored).
    Verify {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        offline: Offline,
    },
    /// Events matching every given filter.
    Query {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        recommendation: Option<String>,
        #[arg(long)]
        incident: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Inclusive time range, Unix milliseconds.
        #[arg(long)]
        since_ms: Option<i64>,
        #[arg(long)]
        until_ms: Option<i64>,
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Write an evidence bundle: every entry about a recommendation (or incident), its inclusion
    /// proof, and the signed checkpoint they are proven against.
    Prove {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        offline: Offline,
        #[arg(long, conflicts_with = "incident", required_unless_present = "incident")]
        recommendation: Option<String>,
        #[arg(long)]
        incident: Option<String>,
        /// Where to write the bundle (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an evidence bundle offline with only the log's public key. Exits 3 if it is refused.
    VerifyProof {
        /// The bundle written by `cairn audit prove`.
        file: PathBuf,
        /// A file with the log's public key(s), one signed-note verifier key per line. Repeatable.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Stream events as JSON lines (schema `cairn.audit.event.v1`, one event per line) for a SIEM.
    /// Resumable: pass the last `seq` you stored as `--after-seq`.
    Export {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        offline: Offline,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
    },
    /// Daily and weekly summaries for people: decisions by outcome and tier, approval latency,
    /// rollbacks, guardrail holds, break-glass exceptions and who opened them.
    #[cfg(feature = "offline")]
    Report(crate::audit_report::ReportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
}

/// Working on a data directory instead of a live server.
#[derive(Debug, Clone, Args)]
pub struct Offline {
    /// A stopped server's data directory, or a copy of it; opened read-only.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the checkpoints are [default: <data-dir>/checkpoints].
    #[arg(long, requires = "data_dir")]
    checkpoint_dir: Option<PathBuf>,
    /// Pinned public key file(s) [default: <data-dir>.audit-key.pub, if it exists]. Repeatable;
    /// pin the old keys too after a rotation.
    #[arg(long = "public-key", requires = "data_dir")]
    public_keys: Vec<PathBuf>,
    /// The log's origin line [default: cairn.local/audit].
    #[arg(long, default_value = DEFAULT_ORIGIN, requires = "data_dir")]
    origin: String,
    /// Accept entries no checkpoint covers (a crashed server's tail). Without it they fail the
    /// verification: a truncated tail would otherwise pass unseen.
    #[arg(long, requires = "data_dir")]
    allow_unanchored: bool,
    /// Use the public key found beside the data directory when no --public-key is given. Without
    /// it such a verification exits 4: a key next to the data proves nothing about who signed.
    #[arg(long, requires = "data_dir")]
    trust_key_beside_data: bool,
    /// A witness directory holding copies of the checkpoints (`audit.witness_dir`): the log must
    /// still contain what they signed, so truncation plus deletion of the checkpoints in the data
    /// directory is caught.
    #[arg(long, requires = "data_dir")]
    witness: Option<PathBuf>,
}

impl Offline {
    fn store(&self, dir: &Path) -> Result<SqliteStore> {
        let db = dir.join("cairn.db");
        SqliteStore::open_read_only(&db).with_context(|| format!("cannot open {} read-only", db.display()))
    }

    fn checkpoint_dir(&self, dir: &Path) -> PathBuf {
        self.checkpoint_dir.clone().unwrap_or_else(|| default_checkpoint_dir(dir))
    }

    /// The keys checkpoints must be signed with, and whether they were pinned by the caller (a key
    /// taken from beside the data directory could have been put there with a forged log).
    fn pinned(&self, dir: &Path) -> Result<(Vec<NoteVerifier>, bool)> {
        let mut paths = self.public_keys.clone();
        let pinned = !paths.is_empty();
        if !pinned {
            let beside = public_key_path(&default_key_path(dir));
            if !beside.exists() {
                bail!("no public key given: pass --public-key FILE (the .pub written beside the server's signing key)");
            }
            paths.push(beside);
        }
        Ok((read_public_keys(&paths).map_err(anyhow::Error::msg)?, pinned))
    }

    /// The data directory's checkpoints, with the witness's copies merged in by file name.
    fn checkpoints(&self, dir: &Path) -> Result<Vec<cairn_audit::verify::PresentedCheckpoint>> {
        let cdir = self.checkpoint_dir(dir);
        let mut all = read_checkpoints(&cdir).with_context(|| format!("cannot read checkpoints in {}", cdir.display()))?;
        if let Some(w) = &self.witness {
            let witnessed = read_checkpoints(w).with_context(|| format!("cannot read the witness's checkpoints in {}", w.display()))?;
            if witnessed.is_empty() {
                bail!("the witness directory {} holds no checkpoint: nothing to check the log against", w.display());
            }
            for c in witnessed {
                if !all.iter().any(|mine| mine.label == c.label) {
                    all.push(c);
                }
            }
            all.sort_by(|a, b| a.label.cmp(&b.label));
        }
        Ok(all)
    }
}

/// `audit verify` when the entries check out but some are covered by no checkpoint.
const EXIT_UNANCHORED: u8 = 3;
/// `audit verify` when no key was pinned: the checks passed, but against a key that proves nothing.
const EXIT_UNPINNED: u8 = 4;

pub async fn run(cmd: AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Verify { client, offline } => match &offline.data_dir {
            Some(dir) => verify_offline(&offline, dir, client.output),
            None => verify_live(&client).await,
        },
        AuditCmd::Query { client, recommendation, incident, actor, kind, since_ms, until_ms, after_seq, limit } => {
            let req = pb::AuditQueryRequest {
                recommendation_id: recommendation.unwrap_or_default(),
                incident_id: incident.unwrap_or_default(),
                actor: actor.unwrap_or_default(),
                kind: kind.unwrap_or_default(),
                since_ms: since_ms.unwrap_or(0),
                until_ms: until_ms.unwrap_or(0),
                after_seq,
                limit,
            };
            let r = audit_client(&client).await?.query(req).await.map_err(status_error)?.into_inner();
            for e in &r.events {
                match client.output {
                    OutputFormat::Json => println!("{}", output::audit_json(e)),
                    OutputFormat::Table => println!("{}", output::audit_line(e)),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Prove { client, offline, recommendation, incident, out } => {
            let json = match &offline.data_dir {
                Some(dir) => prove_offline(&offline, dir, recommendation, incident)?,
                None => {
                    let req = pb::ProveRequest {
                        recommendation_id: recommendation.unwrap_or_default(),
                        incident_id: incident.unwrap_or_default(),
                    };
                    let r = audit_client(&client).await?.prove(req).await.map_err(status_error)?.into_inner();
                    eprintln!("signed by {}; check it with that key pinned from a trusted source", r.public_key);
                    r.bundle_json
                }
            };
            match out {
                Some(path) => std::fs::write(&path, format!("{json}\n"))
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => println!("{json}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::VerifyProof { file, public_keys, output } => verify_proof(&file, &public_keys, output),
        AuditCmd::Export { client, offline, format: ExportFormat::Jsonl, after_seq } => {
            export(&client, &offline, after_seq).await.map(|()| ExitCode::SUCCESS)
        }
        #[cfg(feature = "offline")]
        AuditCmd::Report(args) => crate::audit_report::run(args).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn verify_live(client: &ClientArgs) -> Result<ExitCode> {
    let r = audit_client(client).await?.verify(pb::VerifyRequest {}).await.map_err(status_error)?.into_inner();
    match client.output {
        OutputFormat::Json => output::print_json(&serde_json::json!({
            "ok": r.ok, "entries": r.entries, "head_hash": r.head_hash,
            "first_bad_seq": r.first_bad_seq, "problem": r.problem,
            "tree_size": r.tree_size, "root_hash": r.root_hash,
            "checkpoints_checked": r.checkpoints_checked, "latest_checkpoint_size": r.latest_checkpoint_size,
            "unanchored_entries": r.unanchored_entries,
        })),
        OutputFormat::Table if r.ok => {
            println!("audit chain OK: {} entries, head {}", r.entries, r.head_hash);
            println!(
                "merkle root {} over {} entries; {} checkpoint(s) verified, latest at {}; {} unanchored entries after it",
                r.root_hash, r.tree_size, r.checkpoints_checked, r.latest_checkpoint_size, r.unanchored_entries
            );
        }
        OutputFormat::Table => println!("audit trail BROKEN at entry {}: {}", r.first_bad_seq, r.problem),
    }
    Ok(if r.ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_TAMPERED) })
}

fn verify_offline(offline: &Offline, dir: &Path, output: OutputFormat) -> Result<ExitCode> {
    let store = offline.store(dir)?;
    let (pinned, key_pinned) = offline.pinned(dir)?;
    let cdir = offline.checkpoint_dir(dir);
    let checkpoints = offline.checkpoints(dir)?;
    let result = store.verify_audit_anchored(&checkpoints, &pinned, Some(&offline.origin));
    let (ok, first_bad, problem, report) = match result {
        Ok(r) => (true, 0, String::new(), Some(r)),
        Err(StoreError::AuditBroken(b)) => (false, b.seq, b.to_string(), None),
        Err(StoreError::AuditAnchor(a)) => (false, a.first_bad_seq().unwrap_or(0), a.to_string(), None),
        Err(e) => return Err(e).context("cannot read the audit log"),
    };
    match (output, &report) {
        (OutputFormat::Json, _) => output::print_json(&serde_json::json!({
            "ok": ok, "first_bad_seq": first_bad, "problem": problem,
            "entries": report.as_ref().map(|r| r.chain.entries),
            "root_hash": report.as_ref().map(|r| hex::encode(r.root)),
            "checkpoints_checked": report.as_ref().map(|r| r.checkpoints_checked),
            "latest_checkpoint_size": report.as_ref().and_then(|r| r.latest.as_ref().map(|l| l.checkpoint.size)),
            "unanchored_entries": report.as_ref().map(|r| r.unanchored),
        })),
        (OutputFormat::Table, Some(r)) => {
            println!("audit chain OK: {} entries, head {}", r.chain.entries, r.chain.head_hash);
            match &r.latest {
                Some(l) => println!(
                    "merkle root {}; {} checkpoint(s) in {} verified, latest at size {} signed by {}; {} unanchored entries after it",
                    hex::encode(r.root),
                    r.checkpoints_checked,
                    cdir.display(),
                    l.checkpoint.size,
                    l.key_name,
                    r.unanchored
                ),
                None => println!(
                    "merkle root {}; NO checkpoints in {}: all {} entries are unanchored (a truncated tail could not be detected)",
                    hex::encode(r.root),
                    cdir.display(),
                    r.unanchored
                ),
            }
        }
        (OutputFormat::Table, None) => println!("audit trail BROKEN at entry {first_bad}: {problem}"),
    }
    if !ok {
        return Ok(ExitCode::from(EXIT_TAMPERED));
    }
    // Fail closed: what no checkpoint covers, and a key nobody pinned, prove nothing.
    let unanchored = report.as_ref().map_or(0, |r| r.unanchored);
    if unanchored > 0 && !offline.allow_unanchored {
        eprintln!(
            "FAILED: {unanchored} entries are covered by no signed checkpoint, so a truncation of them could not be detected; \
             let the server write its next checkpoint (it writes one on shutdown), check against a witness (--witness), \
             or accept them with --allow-unanchored"
        );
        return Ok(ExitCode::from(EXIT_UNANCHORED));
    }
    if !key_pinned {
        let beside = public_key_path(&default_key_path(dir));
        if !offline.trust_key_beside_data {
            eprintln!(
                "NOT PROVEN: the checkpoints verify against {}, found beside the data directory; whoever could rewrite the log \
                 could have put their own key there. Pin the key from a trusted source with --public-key, or accept this one \
                 with --trust-key-beside-data",
                beside.display()
            );
            return Ok(ExitCode::from(EXIT_UNPINNED));
        }
        eprintln!("note: trusted the public key beside the data directory ({}) as asked", beside.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn prove_offline(
    offline: &Offline,
    dir: &Path,
    recommendation: Option<String>,
    incident: Option<String>,
) -> Result<String> {
    let store = offline.store(dir)?;
    let (pinned, _) = offline.pinned(dir)?;
    let cdir = offline.checkpoint_dir(dir);
    let latest = read_checkpoints(&cdir)
        .with_context(|| format!("cannot read checkpoints in {}", cdir.display()))?
        .pop()
        .with_context(|| format!("no checkpoint in {}: nothing to prove against", cdir.display()))?;
    let opened = open_checkpoint(&latest.note, &pinned).with_context(|| format!("checkpoint {}", latest.label))?;
    let (query, subject) = match (recommendation, incident) {
        (Some(r), _) => (AuditQuery { recommendation_id: Some(r.clone()), ..Default::default() }, format!("recommendation {r}")),
        (None, Some(i)) => (AuditQuery { incident_id: Some(i.clone()), ..Default::default() }, format!("incident {i}")),
        (None, None) => bail!("give --recommendation or --incident"),
    };
    let bundle = store.audit_evidence(&query, &subject, &latest.note, opened.checkpoint.size)?;
    if bundle.entries.is_empty() && bundle.unanchored_seqs.is_empty() {
        bail!("no audit entries about {subject}");
    }
    if !bundle.unanchored_seqs.is_empty() {
        eprintln!(
            "note: entries {:?} are newer than the latest checkpoint and are listed but not proven",
            bundle.unanchored_seqs
        );
    }
    Ok(serde_json::to_string_pretty(&bundle)?)
}

fn verify_proof(file: &Path, keys: &[PathBuf], output: OutputFormat) -> Result<ExitCode> {
    let pinned = read_public_keys(keys).map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let result = serde_json::from_str::<EvidenceBundle>(&text)
        .map_err(|e| format!("{} is not an evidence bundle: {e}", file.display()))
        .and_then(|b| verify_bundle(&b, &pinned).map(|r| (b, r)).map_err(|e| e.to_string()));
    match (result, output) {
        (Ok((b, r)), OutputFormat::Json) => output::print_json(&serde_json::json!({
            "ok": true, "subject": b.subject, "proven_seqs": r.proven_seqs, "unanchored_seqs": r.unanchored_seqs,
            "checkpoint_size": r.checkpoint.checkpoint.size, "signed_by": r.checkpoint.key_name,
        })),
        (Ok((b, r)), OutputFormat::Table) => {
            println!(
                "evidence OK: {} entries about {} are in the log signed by {} at size {}",
                r.proven_seqs.len(),
                b.subject,
                r.checkpoint.key_name,
                r.checkpoint.checkpoint.size
            );
            for e in &b.entries {
                let e = &e.event;
                println!("{:>6}  {}  {:<28} {:<16} {}", e.seq, e.at_ms, e.kind, e.actor, e.reason);
            }
            if !r.unanchored_seqs.is_empty() {
                println!("not proven (newer than the checkpoint): {:?}", r.unanchored_seqs);
            }
        }
        (Err(problem), OutputFormat::Json) => {
            output::print_json(&serde_json::json!({ "ok": false, "problem": problem }));
            return Ok(ExitCode::from(EXIT_TAMPERED));
        }
        (Err(problem), OutputFormat::Table) => {
            println!("evidence REFUSED: {problem}");
            return Ok(ExitCode::from(EXIT_TAMPERED));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Pages through the log from `after_seq`, writing one line per event and flushing per page, so
/// a consumer that stops halfway resumes from the last `seq` it stored.
async fn export(client: &ClientArgs, offline: &Offline, after_seq: u64) -> Result<()> {
    const PAGE: usize = 1000;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut cursor = after_seq;
    match &offline.data_dir {
        Some(dir) => {
            let store = offline.store(dir)?;
            loop {
                let page =
                    store.audit_events(&AuditQuery { after_seq: Some(cursor), limit: PAGE, ..Default::default() })?;
                for e in &page {
                    writeln!(out, "{}", cairn_audit::export::export_value(e))?;
                    cursor = e.seq;
                }
                out.flush()?;
                if page.len() < PAGE {
                    return Ok(());
                }
            }
        }
        None => {
            let mut c = audit_client(client).await?;
            loop {
                let req = pb::AuditQueryRequest { after_seq: cursor, limit: PAGE as u32, ..Default::default() };
                let page = c.query(req).await.map_err(status_error)?.into_inner().events;
                for e in &page {
                    let event = cairn_server::convert::audit_from_pb(e)
                        .with_context(|| format!("entry {} has a payload that is not JSON", e.seq))?;
                    writeln!(out, "{}", cairn_audit::export::export_value(&event))?;
                    cursor = e.seq;
                }
                out.flush()?;
                if page.len() < PAGE {
                    return Ok(());
                }
            }
        }
    }
}
