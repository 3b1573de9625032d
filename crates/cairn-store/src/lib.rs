//! Cairn's durable state behind traits cut by what uses them ([`Store`] is their sum): signals
//! (alerts, anomalies, incidents), recommendation revisions with their decisions, change requests
//! and executions, guardrails, executor leases, and the audit log.
//!
//! Every method that changes the state of a recommendation or a change takes the audit drafts that
//! describe the change and appends them, sealed into the hash chain, **in the same transaction**: if
//! the append fails, nothing is written (invariant 8). Change requests carry a version, and a write
//! with a stale version is refused ([`StoreError::Conflict`]) so racing reviewers or replicas cannot
//! both win. Executor work is claimed atomically ([`ChangeStore::claim_approved`]), the shape that
//! `SELECT … FOR UPDATE SKIP LOCKED` takes on PostgreSQL.
//!
//! The store keeps what it is given; it never decides. The only rules it applies itself are
//! integrity rules tied to a write: a new revision supersedes the earlier revision's change that has
//! not started running, pending changes past their expiry become expired, and claimed changes become
//! executing — each with the audit event it generates (actor `system:cairn`).
//!
//! Beside the audit log the store keeps the RFC 6962 Merkle tree's perfect-subtree nodes
//! (`cairn_audit::merkle`), appended in the same transaction as the entries, so tree heads for
//! checkpoints and inclusion proofs for evidence bundles never re-read the log. Verification never
//! trusts those nodes: [`AuditProofs::verify_audit_anchored`] rebuilds the tree from the entries.
//! Verification, tree heads and evidence are [`cairn_audit::stored`]'s rules over one read of the
//! log ([`AuditLog::read_log`]); a backend gives the read, not the rules.
//! [`SqliteStore::open_read_only`] opens a stopped server's database (or a copy) for auditors.
//!
//! Acknowledged alerts wait for analysis in an intake journal ([`SignalStore::journal_alerts`]),
//! which the SQLite store keeps as a log of checksummed records beside its database rather than
//! in it, so an acknowledgement is one file write and never waits for an analysis pass;
//! [`SqliteStore::read_pending_intake`] reads what waits there without changing a byte.
//!
//! The traits are synchronous, and stay so for PostgreSQL: every caller already runs store calls on
//! blocking threads (the analysis worker is one, the gRPC handlers and the executor hand each call
//! to `spawn_blocking`), a write's audit append must share its transaction, which a synchronous
//! closure over one connection expresses directly, and a PostgreSQL backend can hold a blocking
//! client (`postgres`, over `tokio-postgres`) per connection of its pool without making the
//! domain crates async. No backend type appears in their signatures or errors, so a PostgreSQL
//! implementation can follow.

#![forbid(unsafe_code)]

mod guard;
mod lease;
mod sqlite;

pub use guard::GuardStore;
pub use lease::{DEFAULT_LEASE_MS, Lease, LeaseStore, LeaseTerms};

pub use cairn_audit::{ChainBreak, ChainSummary};
pub use sqlite::SqliteStore;

use cairn_types::{
    AlertEvent, Anomaly, AuditDraft, AuditEvent, ChangeId, ChangeRequest, ChangeState, Decision,
    Execution, Incident, IncidentChanges, IncidentId, Outcome, Recommendation, RecommendationId, Target,
};

/// What can go wrong in the store, by cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, a constraint, a lost connection), in its own words.
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("{what} was changed concurrently (expected version {expected}, found {found}); re-read and retry")]
    Conflict { what: String, expected: u64, found: u64 },
    #[error("{0} does not exist")]
    NotFound(String),
    /// A write that would move a change where its lifecycle does not go
    /// ([`cairn_types::ChangeState::may_become`]); nothing was written.
    #[error("change {change} cannot move from {from} to {to}: not a transition of the change lifecycle; nothing was written")]
    IllegalTransition { change: String, from: cairn_types::ChangeState, to: cairn_types::ChangeState },
    #[error("the database schema is version {found}, newer than this build understands ({known}); upgrade cairn")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("audit chain broken: {0}")]
    AuditBroken(ChainBreak),
    #[error("audit log does not match its checkpoints: {0}")]
    AuditAnchor(cairn_audit::verify::AnchorError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What [`AuditLog::on_audit_commit`] calls with the new audit head.
pub type AuditHook = Box<dyn Fn(u64) + Send + Sync>;

/// A recommendation revision with the decision that routed it and its change request.
#[derive(Clone, Debug, PartialEq)]
pub struct RecommendationRecord {
    pub recommendation: Recommendation,
    pub decision: Decision,
    pub change: ChangeRequest,
}

/// Filters for [`ChangeStore::list_recommendations`]; `None` means any.
#[derive(Clone, Debug, Default)]
pub struct RecommendationFilter {
    pub outcome: Option<Outcome>,
    pub state: Option<ChangeState>,
    pub service: Option<String>,
    pub limit: usize,
}

/// Filters for [`AuditLog::audit_events`]; every given filter must match. Ascending by sequence.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub recommendation_id: Option<String>,
    pub incident_id: Option<String>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only events with a greater sequence number: the cursor of live streams.
    pub after_seq: Option<u64>,
    pub limit: usize,
}

/// Durable state, cut by what uses it: signals ([`SignalStore`]), recommendations and their
/// changes ([`ChangeStore`]), guardrails ([`GuardStore`]), executor leases ([`LeaseStore`]) and the
/// audit log ([`AuditLog`]). Every backend implements the parts; `Store` is their sum, implemented
/// for any type that has them all. See the crate documentation for the transaction and audit rules.
pub trait Store: SignalStore + ChangeStore + GuardStore + LeaseStore + AuditLog + Send + Sync + std::fmt::Debug {}

impl<T: SignalStore + ChangeStore + GuardStore + LeaseStore + AuditLog + Send + Sync + std::fmt::Debug> Store for T {}

/// What analysis writes and reads about signals: alerts (and their intake journal), anomalies and
/// incidents.
/// An acknowledged alert waiting in the intake journal.
#[derive(Debug, Clone)]
pub struct JournaledAlert {
    /// Its place in the journal, shared by the alerts journaled by one call
    /// ([`SignalStore::finish_intake`] marks analysed through one).
    pub seq: i64,
    /// When it was acknowledged.
    pub received_ms: i64,
    pub alert: AlertEvent,
}

// Each part is shared across threads on its own (the core hands a part to each of its users), so
// each is `Send + Sync + Debug` by itself, not only through [`Store`].
pub trait SignalStore: Send + Sync + std::fmt::Debug {
    /// Upserts alerts by fingerprint (status, end, last seen). Returns how many rows changed.
    fn record_alerts(&self, alerts: &[AlertEvent], now_ms: i64) -> Result<usize>;
    /// Appends acknowledged alerts to the intake journal, durably, before their sender is
    /// answered (invariant 12). The analysis worker reads them back with [`SignalStore::pending_intake`]
    /// and marks them analysed with [`SignalStore::finish_intake`], so a crash in between replays
    /// them instead of losing them. Concurrent callers may share a commit (group commit): each
    /// returns after the commit that holds its rows, and when that commit fails every caller in it
    /// gets the error and none of their rows is stored. The journal is written apart from the
    /// store's other writes: a call does not wait for a write pass, nor joins one.
    fn journal_alerts(&self, alerts: Vec<AlertEvent>, now_ms: i64) -> Result<()>;
    /// The oldest journaled alerts not yet analysed, oldest first: those of whole journal rows
    /// (one per [`SignalStore::journal_alerts`] call), from the oldest row, until at least `limit`
    /// alerts are read or none is left. So it may return up to one call's alerts past `limit`,
    /// and [`SignalStore::finish_intake`] through the last one's `seq` marks exactly these.
    fn pending_intake(&self, limit: usize) -> Result<Vec<JournaledAlert>>;
    /// Marks journaled alerts up to and including `through_seq` analysed: they are never handed
    /// out again. Written like any other write, so inside a write pass it is committed with the
    /// analysis it follows, or not at all.
    fn finish_intake(&self, through_seq: i64) -> Result<()>;
    /// How many journaled alerts wait for analysis (read at start-up to bound the backlog).
    fn pending_intake_len(&self) -> Result<u64>;
    /// Opens a write pass on the calling thread: until it is committed, every write this thread
    /// makes through this store (through any of its traits) joins one transaction, each write
    /// still all or nothing by itself (a failed one leaves the pass's other writes), and this
    /// thread's reads see the pass's writes. What the analysis of a batch writes then costs one
    /// commit instead of one per incident and revision. Other threads' writes wait for it; a long
    /// pass commits what it has and lets them in at intervals of milliseconds, so a pass is not
    /// atomic and no caller may count on it being so. Dropped without `commit`, what the pass
    /// wrote since its last such commit is rolled back. A pass opened inside another is empty.
    /// The default has no pass: every write is its own transaction.
    fn write_pass(&self) -> Result<Box<dyn WritePass + '_>> {
        Ok(Box::new(NoPass))
    }
    fn record_anomalies(&self, anomalies: &[Anomaly]) -> Result<()>;
    /// Most recently seen first.
    fn list_alerts(&self, limit: usize) -> Result<Vec<AlertEvent>>;
    /// The alerts firing now whose `service` label is `service`, most recently seen first, by
    /// index: however many alerts other services have.
    fn firing_alerts_on_service(&self, service: &str, limit: usize) -> Result<Vec<AlertEvent>>;

    fn upsert_incident(&self, incident: &Incident) -> Result<()>;
    /// [`SignalStore::upsert_incident`] told what changed since the correlator last handed the
    /// incident out ([`IncidentChanges`]): only those rows are looked at, when this store holds
    /// the version the changes are relative to; otherwise as `upsert_incident`. What it stores is
    /// the same either way, as long as the changes name every row that differs.
    fn upsert_incident_changes(&self, incident: &Incident, changes: &IncidentChanges) -> Result<()>;
    fn get_incident(&self, id: &IncidentId) -> Result<Option<Incident>>;
    /// Incidents changed at or after `updated_since_ms` with at least `min_members` members (and
    /// at least one: an incident merged into another is empty), most recently changed first, at
    /// most `limit`.
    fn list_incidents(&self, updated_since_ms: i64, min_members: usize, limit: usize) -> Result<Vec<Incident>>;
    /// The incidents written after change cursor `after`, oldest change first, at most `limit`,
    /// each with the cursor of its latest write and its latest state: an incident written several
    /// times since `after` comes once. Those with fewer than `min_members` members are left out,
    /// except an emptied one (merged into another), so that a follower can drop it. Every write of
    /// an incident takes the next cursor, so a follower that resumes from the last cursor it saw
    /// misses no change.
    fn incidents_changed_after(&self, after: u64, min_members: usize, limit: usize) -> Result<Vec<(u64, Incident)>>;
    /// Writes incidents a person regrouped (merged or split) and the audit entries that say who
    /// did it and why, in one transaction.
    fn regroup_incidents(&self, incidents: &[Incident], audit: &[AuditDraft], now_ms: i64) -> Result<()>;
}

/// A write pass ([`SignalStore::write_pass`]).
pub trait WritePass: std::fmt::Debug {
    /// Commits what the pass wrote. An error means that what it wrote since its last intermediate
    /// commit is not stored.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// The pass of a backend without passes: every write was already committed by itself.
#[derive(Debug)]
struct NoPass;

impl WritePass for NoPass {
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Recommendation revisions, their decisions and change requests, and executions: what routing,
/// the review desk and the executor loop write and read. Every write takes its audit drafts and
/// appends them in its own transaction.
pub trait ChangeStore: Send + Sync + std::fmt::Debug {
    /// Stores a new recommendation revision, its decision and its change request, supersedes the
    /// earlier revision's change if it has not started running (a half-done staged rollout is
    /// stopped for rollback instead), and appends `audit` — one transaction.
    fn propose(
        &self,
        rec: &Recommendation,
        decision: &Decision,
        change: &ChangeRequest,
        audit: &[AuditDraft],
        now_ms: i64,
    ) -> Result<()>;
    /// `revision: None` means the latest.
    fn get_recommendation(&self, id: &RecommendationId, revision: Option<u32>) -> Result<Option<RecommendationRecord>>;
    /// The latest revision of each recommendation, newest first.
    fn list_recommendations(&self, filter: &RecommendationFilter) -> Result<Vec<RecommendationRecord>>;
    /// Revisions on `service` in `environment` whose change people or the executor decided
    /// (rejected, succeeded, failed, rolled back, rollback failed), newest first, at most `limit`,
    /// leaving out recommendation `except`: what learning reads, found by index rather than by
    /// decoding every recommendation on the service.
    fn decided_changes_on_service(
        &self,
        service: &str,
        environment: &str,
        except: &RecommendationId,
        limit: usize,
    ) -> Result<Vec<RecommendationRecord>>;

    fn get_change(&self, id: &ChangeId) -> Result<Option<ChangeRequest>>;
    /// Writes `change` (whose version must be `expected_version + 1`) if the stored version is
    /// still `expected_version`, with its audit events.
    fn update_change(&self, change: &ChangeRequest, expected_version: u64, audit: &[AuditDraft], now_ms: i64) -> Result<()>;
    /// Atomically moves up to `limit` approved changes to executing and returns them, each under
    /// a lease of the store's [`LeaseTerms`] (see [`LeaseStore`]).
    fn claim_approved(&self, limit: usize, now_ms: i64) -> Result<Vec<ChangeRequest>>;
    /// Like [`ChangeStore::claim_approved`], but leaves the changes named in `except` approved: those
    /// that may not run yet (a tier-3 change waiting for its maintenance window).
    fn claim_approved_except(&self, limit: usize, now_ms: i64, except: &[ChangeId]) -> Result<Vec<ChangeRequest>>;
    /// Approved changes not yet claimed, oldest first.
    fn approved_changes(&self, limit: usize) -> Result<Vec<ChangeRequest>> {
        self.approved_changes_after(None, limit)
    }
    /// Approved changes not yet claimed, oldest first, after `after` (created_ms, id) in that order:
    /// a page of a walk over all of them, however many there are.
    fn approved_changes_after(&self, after: Option<(i64, &ChangeId)>, limit: usize) -> Result<Vec<ChangeRequest>>;
    /// Stores an execution and the change's resulting state in one transaction. A staged change
    /// left waiting for its next stage while a newer revision arrived is stopped for rollback in
    /// the same transaction.
    fn record_execution(
        &self,
        execution: &Execution,
        change: &ChangeRequest,
        expected_version: u64,
        audit: &[AuditDraft],
        now_ms: i64,
    ) -> Result<()>;
    fn executions_for(&self, change: &ChangeId) -> Result<Vec<Execution>>;
    /// The policy activation that succeeded last (recorded by [`ChangeStore::record_execution`]
    /// in the same transaction), if any: what the server routes with after a restart.
    fn active_policy(&self) -> Result<Option<RecommendationRecord>>;
    /// Pending changes past their expiry become expired; staged changes past the deadline of
    /// their stage approval are stopped (`rollback_pending`), each with its audit event. Returns
    /// their ids.
    fn expire_pending(&self, now_ms: i64) -> Result<Vec<ChangeId>>;
    /// Every revision's change of `id` that has not started running is superseded (a half-run
    /// rollout is stopped and rolled back), with `reason` in the audit trail: the recommendation's
    /// incident no longer exists (it was merged into another, which has its own).
    fn withdraw_recommendation(&self, id: &RecommendationId, reason: &str, now_ms: i64) -> Result<()>;
    /// Atomically moves up to `limit` stopped rollouts from `rollback_pending` to `executing` and
    /// returns them: the executor then undoes their executed stages.
    fn claim_rollbacks(&self, limit: usize, now_ms: i64) -> Result<Vec<ChangeRequest>>;
    /// Changes on the same target (service, environment, resource) created since `since_ms`,
    /// newest first, leaving out revisions superseded before they ran: they changed nothing, and a
    /// growing incident leaves many.
    fn recent_changes_on_target(&self, target: &Target, since_ms: i64) -> Result<Vec<RecommendationRecord>>;
    /// The same changes as [`ChangeStore::recent_changes_on_target`], in the same order, as the
    /// action of each and the state of its newest change: what routing counts, without reading
    /// and decoding each card (a routed revision read one or more).
    fn recent_runs_on_target(&self, target: &Target, since_ms: i64) -> Result<Vec<(cairn_types::ActionClass, ChangeState)>>;
}

/// The audit log: appends outside another write, queries, the head and its commit hook, and one
/// consistent read of the entries and tree nodes, over which [`AuditProofs`] verifies and proves.
pub trait AuditLog {
    /// Appends audit events that record something outside this store's own state (a policy
    /// reload, an alert sent), in a transaction of their own.
    fn record_audit(&self, audit: &[AuditDraft], now_ms: i64) -> Result<()>;
    fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;
    /// The sequence number of the last audit event (0 when empty).
    fn audit_head(&self) -> Result<u64>;
    /// Calls `hook` with the new audit head after every committed write that appended to the log
    /// (live streams wake on it); replaces an earlier hook. The store says when, so no caller has
    /// to remember to.
    fn on_audit_commit(&self, hook: AuditHook);
    /// Calls `read` with one consistent read of the log (its entries and its Merkle tree nodes), for
    /// the checks and proofs of [`AuditProofs`], whose rules live in [`cairn_audit::stored`].
    fn read_log(&self, read: &mut dyn FnMut(&dyn AuditSnapshot) -> Result<()>) -> Result<()>;
}

/// One consistent read of the audit log: what [`cairn_audit::stored`] reads, and the query that
/// selects a bundle's events from the same read.
pub trait AuditSnapshot: cairn_audit::stored::StoredLog<Error = StoreError> {
    fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;
}

impl From<cairn_audit::stored::StoredLogError> for StoreError {
    fn from(e: cairn_audit::stored::StoredLogError) -> StoreError {
        match e {
            cairn_audit::stored::StoredLogError::Anchor(a) => StoreError::AuditAnchor(a),
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}

/// Verification, tree heads and evidence, for every [`AuditLog`]: each is one read of the log
/// through [`AuditLog::read_log`] handed to [`cairn_audit::stored`], so no backend repeats them.
pub trait AuditProofs: AuditLog {
    /// Streams the whole log through the chain verifier.
    fn verify_audit(&self) -> Result<ChainSummary> {
        read_with(self, |log| cairn_audit::stored::verify(log))
    }
    /// The audit log's Merkle tree head (size, root), from the stored tree nodes.
    fn audit_tree_head(&self) -> Result<(u64, cairn_audit::merkle::Hash)> {
        read_with(self, |log| cairn_audit::stored::tree_head(log))
    }
    /// The root of the stored tree's first `size` leaves (`None` past the tree's size).
    fn audit_tree_root_at(&self, size: u64) -> Result<Option<cairn_audit::merkle::Hash>> {
        read_with(self, |log| cairn_audit::stored::tree_root_at(log, size))
    }
    /// An evidence bundle: the events matching `query`, each with its inclusion proof in the tree
    /// of `checkpoint_size` entries signed by `checkpoint_note`; later events are listed unproven.
    fn audit_evidence(&self, query: &AuditQuery, subject: &str, checkpoint_note: &str, checkpoint_size: u64) -> Result<cairn_audit::bundle::EvidenceBundle> {
        read_with(self, |log| cairn_audit::stored::evidence(log, log.query(query)?, subject, checkpoint_note, checkpoint_size))
    }
    /// Streams the whole log through the chain verifier while rebuilding the Merkle tree from the
    /// entries (never trusting the stored nodes), then checks the checkpoints, in written order.
    fn verify_audit_anchored(
        &self,
        checkpoints: &[cairn_audit::verify::PresentedCheckpoint],
        pinned: &[cairn_audit::checkpoint::NoteVerifier],
        origin: Option<&str>,
    ) -> Result<cairn_audit::verify::LogReport> {
        read_with(self, |log| cairn_audit::stored::verify_anchored(log, checkpoints, pinned, origin))
    }
}

impl<T: AuditLog + ?Sized> AuditProofs for T {}

/// Runs `f` on one read of `log` and returns what it gave.
fn read_with<L: AuditLog + ?Sized, T>(log: &L, f: impl FnOnce(&dyn AuditSnapshot) -> Result<T>) -> Result<T> {
    let mut f = Some(f);
    let mut out = None;
    log.read_log(&mut |snap| {
        if let Some(f) = f.take() {
            out = Some(f(snap)?);
        }
        Ok(())
    })?;
    out.ok_or_else(|| StoreError::Database("the audit log read did not run".into()))
}
