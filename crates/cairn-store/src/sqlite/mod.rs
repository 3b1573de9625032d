//! The SQLite implementation: one writer connection behind a mutex and a few read-only connections
//! beside it (WAL mode, so a long read neither waits for nor delays a write; the WAL is checkpointed
//! by a thread of its own, not inside a writer's commit), the intake journal in a log of its own
//! (`intake/`), numbered migrations tracked in
//! `PRAGMA user_version`, an append-only audit table guarded by triggers. An incident is its row
//! plus a row per member and per grouping reason, written by what changed (`write_incident`).

mod audit;
mod intake;

use crate::{AuditQuery, LeaseStore, RecommendationFilter, RecommendationRecord, Result, StoreError};
use cairn_types::{
    AlertEvent, Anomaly, AuditDraft, AuditEvent, ChangeId, ChangeRequest,
    ChangeState, Decision, EXPIRING_STATES, Execution, Incident, IncidentChanges, IncidentId, Recommendation, RecommendationId,
    SUPERSEDABLE_STATES, Target,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod guard;
mod lease;

/// Migrations, applied in order; `user_version` is the number applied. Never edit a released one:
/// append.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE alerts (
        fingerprint   TEXT PRIMARY KEY,
        status        TEXT NOT NULL,
        service       TEXT,
        last_seen_ms  INTEGER NOT NULL,
        body          TEXT NOT NULL
    );
    CREATE TABLE anomalies (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        series        TEXT NOT NULL,
        timestamp_ms  INTEGER NOT NULL,
        score         REAL NOT NULL,
        body          TEXT NOT NULL
    );
    CREATE TABLE incidents (
        id            TEXT PRIMARY KEY,
        version       INTEGER NOT NULL,
        updated_ms    INTEGER NOT NULL,
        body          TEXT NOT NULL
    );
    CREATE TABLE recommendations (
        id            TEXT NOT NULL,
        revision      INTEGER NOT NULL,
        incident_id   TEXT NOT NULL,
        service       TEXT NOT NULL,
        environment   TEXT NOT NULL,
        resource      TEXT NOT NULL,
        action        TEXT NOT NULL,
        created_ms    INTEGER NOT NULL,
        body          TEXT NOT NULL,
        PRIMARY KEY (id, revision)
    );
    CREATE INDEX recommendations_target ON recommendations (service, environment, resource, created_ms);
    CREATE TABLE decisions (
        recommendation_id TEXT NOT NULL,
        revision          INTEGER NOT NULL,
        outcome           TEXT NOT NULL,
        body              TEXT NOT NULL,
        PRIMARY KEY (recommendation_id, revision)
    );
    CREATE TABLE changes (
        id                TEXT PRIMARY KEY,
        recommendation_id TEXT NOT NULL,
        revision          INTEGER NOT NULL,
        state             TEXT NOT NULL,
        version           INTEGER NOT NULL,
        expires_ms        INTEGER NOT NULL,
        created_ms        INTEGER NOT NULL,
        body              TEXT NOT NULL
    );
    CREATE INDEX changes_by_rec ON changes (recommendation_id, revision);
    CREATE INDEX changes_by_state ON changes (state, expires_ms);
    CREATE TABLE executions (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        change_id     TEXT NOT NULL,
        started_ms    INTEGER NOT NULL,
        body          TEXT NOT NULL
    );
    CREATE INDEX executions_by_change ON executions (change_id);
    CREATE TABLE audit_log (
        seq               INTEGER PRIMARY KEY,
        at_ms             INTEGER NOT NULL,
        actor             TEXT NOT NULL,
        kind              TEXT NOT NULL,
        incident_id       TEXT,
        recommendation_id TEXT,
        revision          INTEGER,
        change_id         TEXT,
        policy_version    TEXT,
        reason            TEXT NOT NULL,
        payload           TEXT NOT NULL,
        prev_hash         TEXT NOT NULL,
        hash              TEXT NOT NULL
    );
    CREATE INDEX audit_by_rec ON audit_log (recommendation_id);
    CREATE INDEX audit_by_incident ON audit_log (incident_id);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE refused'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE refused'); END;
    "#,
    // 2: audit entries gain the signal, model version, reason codes, diff summary and affected
    // resources; the Merkle tree's perfect-subtree nodes are kept beside the log (append-only too).
    r#"
    ALTER TABLE audit_log ADD COLUMN signal_id TEXT;
    ALTER TABLE audit_log ADD COLUMN model_version TEXT;
    ALTER TABLE audit_log ADD COLUMN reason_codes TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE audit_log ADD COLUMN diff_summary TEXT;
    ALTER TABLE audit_log ADD COLUMN affected_resources TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX audit_by_actor ON audit_log (actor);
    CREATE INDEX audit_by_time ON audit_log (at_ms);
    CREATE TABLE audit_tree (
        level INTEGER NOT NULL,
        idx   INTEGER NOT NULL,
        hash  BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID;
    CREATE TRIGGER audit_tree_no_update BEFORE UPDATE ON audit_tree
        BEGIN SELECT RAISE(ABORT, 'the audit tree is append-only: UPDATE refused'); END;
    CREATE TRIGGER audit_tree_no_delete BEFORE DELETE ON audit_tree
        BEGIN SELECT RAISE(ABORT, 'the audit tree is append-only: DELETE refused'); END;
    "#,
    // 3: break-glass records and uses, the freeze switch, automations the loop guard disabled.
    guard::MIGRATION,
    // 4: leases on claimed executor work (who holds it, until when, whether an adapter call began).
    lease::MIGRATION,
    // 5: the alert intake journal: alerts acknowledged to their sender and not yet analysed.
    r#"
    CREATE TABLE IF NOT EXISTS alert_intake (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        received_ms  INTEGER NOT NULL,
        body         TEXT NOT NULL
    );
    "#,
    // 6: the lookups that scanned: alerts by service (the decision card) and by recency, audit
    // entries by kind.
    r#"
    CREATE INDEX IF NOT EXISTS alerts_by_service ON alerts (service, status, last_seen_ms);
    CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (last_seen_ms);
    CREATE INDEX IF NOT EXISTS audit_by_kind ON audit_log (kind, seq);
    "#,
    // 7: each recommendation's latest revision is marked, so listing latest revisions reads an
    // index instead of grouping the whole table by id; a revision's newest change is found in the
    // index without a sort, and the changes in one state newest first.
    r#"
    ALTER TABLE recommendations ADD COLUMN latest INTEGER NOT NULL DEFAULT 0;
    UPDATE recommendations SET latest = 1
     WHERE revision = (SELECT MAX(r2.revision) FROM recommendations r2 WHERE r2.id = recommendations.id);
    CREATE INDEX IF NOT EXISTS recommendations_latest ON recommendations (created_ms DESC, id) WHERE latest = 1;
    CREATE INDEX IF NOT EXISTS recommendations_latest_by_service ON recommendations (service, created_ms DESC, id) WHERE latest = 1;
    DROP INDEX IF EXISTS changes_by_rec;
    CREATE INDEX changes_by_rec ON changes (recommendation_id, revision, created_ms);
    CREATE INDEX IF NOT EXISTS changes_in_state ON changes (state, created_ms DESC, id);
    "#,
    // 8: the policy activation that succeeded last, in a row of its own, instead of found by
    // scanning every succeeded change.
    r#"
    CREATE TABLE IF NOT EXISTS active_policy (
        slot        INTEGER PRIMARY KEY CHECK (slot = 1),
        change_id   TEXT NOT NULL
    );
    INSERT OR IGNORE INTO active_policy (slot, change_id)
        SELECT 1, c.id FROM changes c
        JOIN recommendations r ON r.id = c.recommendation_id AND r.revision = c.revision
        WHERE r.action = 'policy_activation' AND c.state = 'succeeded'
        ORDER BY json_extract(c.body, '$.updated_ms') DESC, c.id DESC LIMIT 1;
    "#,
    // 9: every write of an incident takes the next change cursor, so `WatchIncidents` follows
    // incidents from a cursor, by index, instead of by time (which clocks and event time can
    // reorder). Existing incidents are numbered in the order they were last changed.
    r#"
    ALTER TABLE incidents ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
    UPDATE incidents SET change_seq = (
        SELECT COUNT(*) FROM incidents i2
         WHERE i2.updated_ms < incidents.updated_ms OR (i2.updated_ms = incidents.updated_ms AND i2.id <= incidents.id));
    CREATE INDEX IF NOT EXISTS incidents_by_change ON incidents (change_seq);
    "#,
    // 10: an incident's members (with their entities) and its grouping reasons are rows of their
    // own, and the incident's row keeps a digest of each, so that a write of a growing incident
    // writes the rows that are new or changed, not the whole incident again (`write_incident`).
    // Existing incidents are split up; their digests are unknown, so their next write writes
    // every row once.
    r#"
    CREATE TABLE incident_members (
        incident_id   TEXT NOT NULL,
        pos           INTEGER NOT NULL,
        body          TEXT NOT NULL,
        entity        TEXT,
        PRIMARY KEY (incident_id, pos)
    ) WITHOUT ROWID;
    CREATE TABLE incident_reasons (
        incident_id   TEXT NOT NULL,
        pos           INTEGER NOT NULL,
        body          TEXT NOT NULL,
        PRIMARY KEY (incident_id, pos)
    ) WITHOUT ROWID;
    ALTER TABLE incidents ADD COLUMN member_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE incidents ADD COLUMN member_digests BLOB;
    ALTER TABLE incidents ADD COLUMN reason_digests BLOB;
    INSERT INTO incident_members (incident_id, pos, body, entity)
        SELECT i.id, CAST(m.key AS INTEGER), m.value, json_extract(i.body, '$.member_entities[' || m.key || ']')
          FROM incidents i, json_each(i.body, '$.members') m;
    INSERT INTO incident_reasons (incident_id, pos, body)
        SELECT i.id, CAST(r.key AS INTEGER), r.value FROM incidents i, json_each(i.body, '$.grouping_reasons') r;
    UPDATE incidents SET member_count = json_array_length(body, '$.members'),
                         body = json_set(body, '$.members', json('[]'), '$.member_entities', json('[]'),
                                         '$.grouping_reasons', json('[]'));
    "#,
    // 11: a journal row holds every alert of one acknowledged request (a JSON array, and how many
    // it holds), not one alert: written, read back and deleted once per webhook instead of once
    // per alert. Rows from before hold one alert each.
    r#"
    ALTER TABLE alert_intake ADD COLUMN alerts INTEGER NOT NULL DEFAULT 1;
    UPDATE alert_intake SET body = '[' || body || ']';
    "#,
    // 12: the journal moves to a database of its own (`intake.rs`); here stays the place of the
    // last journal row analysed, written by the pass that analysed it. Rows left in
    // `alert_intake` are moved to the journal when the store opens.
    r#"
    CREATE TABLE intake_done (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        through_seq  INTEGER NOT NULL
    );
    INSERT INTO intake_done (id, through_seq) VALUES (1, 0);
    "#,
];

/// Read connections kept beside the writer of a file store. Each holds its own page cache (SQLite's
/// default, about 2 MiB at most), so this bounds what readers add to memory.
const READERS: usize = 4;

/// The writer's page cache, in KiB (SQLite's default is 2 MiB). An analysis pass touches a page
/// of the alerts' fingerprint index per alert (fingerprints are random); with the default, a
/// pass of thousands of alerts spilled pages to the WAL before its commit and wrote them again at
/// it. Measured under alert-load (three alternated 8 s runs): 2 MiB → 16 MiB took the CPU per
/// analysed alert from about 37.7 to 35.8 µs. A bound on memory: the cache holds at most this.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// SQLite's errors reach callers as text: no backend type appears in [`StoreError`].
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Database(e.to_string())
    }
}

/// SQLite-backed [`Store`](crate::Store).
#[derive(Debug)]
pub struct SqliteStore {
    /// The one connection that writes (and, for an in-memory store, also reads), and the write
    /// pass open on it, if any ([`crate::SignalStore::write_pass`]).
    writer: Mutex<Writer>,
    /// Wakes writers waiting for a pass to give them a turn, and a pass waiting for them to take it.
    turn: Condvar,
    /// The thread number ([`thread_no`]) of the thread whose write pass is open, 0 when none: read
    /// without the lock, so that the pass's own reads go to the writer (and see its writes).
    pass_thread: AtomicU64,
    /// Read-only connections to the same file; empty for an in-memory store.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    /// Who claims executor work through this store, and for how long ([`crate::LeaseStore`]).
    lease: Mutex<crate::LeaseTerms>,
    /// Told the audit head after every committed write that appended to the log.
    audit_hook: HookSlot,
    /// The intake journal ([`intake`]); none for a store opened read-only.
    journal: Option<intake::Journal>,
    /// Checkpoints the WAL of a file store off the writers' threads.
    checkpointer: Option<Checkpointer>,
}

/// Copies the WAL back into the database file from a thread of its own, every
/// [`CHECKPOINT_EVERY`], so that no writer pays for it inside its commit (SQLite's automatic
/// checkpoint runs in the commit that crosses 1,000 pages: 6 % of the analysis worker's time under
/// alert-load). Passive: it never waits for or blocks a writer or a reader. Stopped and joined when
/// the store is dropped.
#[derive(Debug)]
struct Checkpointer {
    stop: std::sync::Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the WAL is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        let stop = std::sync::Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-checkpoint".into())
            .spawn(move || {
                let (lock, wake) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    stopped = wake.wait_timeout(stopped, CHECKPOINT_EVERY).unwrap_or_else(|p| p.into_inner()).0;
                    // A failed checkpoint leaves the WAL to the next one; nothing is lost.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start the WAL checkpointer: {e}")))?;
        Ok(Checkpointer { stop, thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer connection and the write pass open on it.
#[derive(Debug)]
struct Writer {
    conn: Connection,
    /// The transaction a write pass has open on `conn`: its thread's number and when it began.
    /// Between two calls of the pass's thread every write of the pass is whole (a released
    /// savepoint), so whoever holds the lock may commit it.
    pass: Option<(u64, Instant)>,
    /// The audit head the pass's uncommitted writes appended, for the hook once committed.
    pass_appended: Option<u64>,
    /// Callers waiting for the pass's transaction to be committed.
    waiting: u64,
    /// Why a commit of the pass's transaction failed: every later write of the pass fails too
    /// (what it wrote before is gone, so nothing after may pretend otherwise), and so does its end.
    broken: Option<String>,
}

/// How long the transaction of a write pass may keep other writers (a person's approval, the
/// executor's claims) waiting: past it, the first writer to come (or the pass itself) commits
/// what the pass wrote and writes. Long enough that a busy pass commits tens of times per second
/// rather than once per write; short enough that a person waits milliseconds, not a whole pass.
/// Acknowledgements do not wait at all: the intake journal is a log of its own.
const PASS_TURN_AFTER: Duration = Duration::from_millis(10);

/// A number for the calling thread, unique in the process and never 0.
fn thread_no() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static NO: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NO.with(|n| *n)
}

/// The audit hook's place (a closure has no `Debug`).
#[derive(Default)]
struct HookSlot(std::sync::RwLock<Option<crate::AuditHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().map(|h| h.is_some()).unwrap_or(false);
        f.debug_tuple("HookSlot").field(&if set { "set" } else { "unset" }).finish()
    }
}

/// Writes an incident: its row (everything but its members, their entities and its grouping
/// reasons; a digest of each of those; the next change cursor) and the member and reason rows that
/// are new or changed since the last write; rows past the new end are deleted. Which rows changed
/// the stored digests tell, without encoding the others. With `changes` from the correlator,
/// relative to the version this store holds, only the rows it names are digested (and written
/// when their digest moved): a write then costs what changed, not the size of the incident.
/// Otherwise every row is digested and compared.
fn write_incident(tx: &Connection, incident: &Incident, changes: Option<&IncidentChanges>) -> Result<()> {
    let id = &incident.id.0;
    let (version, stored_members, stored_reasons) = tx
        .prepare_cached("SELECT version, member_digests, reason_digests FROM incidents WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, Option<Vec<u8>>>(1)?, r.get::<_, Option<Vec<u8>>>(2)?)))
        .optional()?
        .unwrap_or_default();
    let (old_members, old_reasons) = (digests_of(stored_members.as_deref()), digests_of(stored_reasons.as_deref()));
    // The hint holds only against the version it was taken after, and only where digests are kept.
    let hint = changes.filter(|c| c.since_version == version && stored_members.is_some() && stored_reasons.is_some());
    let entity = |pos: usize| incident.member_entities.get(pos).map(String::as_str);
    // The stored digests become the new ones in place: those not looked at are kept as stored.
    let (len, kept) = (incident.members.len(), old_members.len().min(incident.members.len()));
    let mut members = old_members;
    members.resize(len, 0);
    let looked_at: Box<dyn Iterator<Item = usize>> = match hint {
        Some(c) => Box::new(c.members.iter().copied().filter(|&p| p < kept).chain(kept..len)),
        None => Box::new(0..len),
    };
    let mut put = tx.prepare_cached("INSERT OR REPLACE INTO incident_members (incident_id, pos, body, entity) VALUES (?1, ?2, ?3, ?4)")?;
    for pos in looked_at {
        let digest = member_digest(&incident.members[pos], entity(pos));
        if pos >= kept || members[pos] != digest {
            put.execute(params![id, pos as i64, to_json(&incident.members[pos])?, entity(pos)])?;
            members[pos] = digest;
        }
    }
    let kept_reasons = old_reasons.len().min(incident.grouping_reasons.len());
    let reasons_from = hint.map_or(0, |c| c.reasons_from).min(kept_reasons);
    let mut reasons = old_reasons;
    reasons.resize(incident.grouping_reasons.len(), 0);
    let mut put = tx.prepare_cached("INSERT OR REPLACE INTO incident_reasons (incident_id, pos, body) VALUES (?1, ?2, ?3)")?;
    for (pos, reason) in incident.grouping_reasons.iter().enumerate().skip(reasons_from) {
        let digest = text_digest(reason);
        if pos >= kept_reasons || reasons[pos] != digest {
            put.execute(params![id, pos as i64, reason])?;
            reasons[pos] = digest;
        }
    }
    tx.prepare_cached("DELETE FROM incident_members WHERE incident_id = ?1 AND pos >= ?2")?.execute(params![id, members.len() as i64])?;
    tx.prepare_cached("DELETE FROM incident_reasons WHERE incident_id = ?1 AND pos >= ?2")?.execute(params![id, reasons.len() as i64])?;
    let blob = |d: &[u64]| -> Vec<u8> { d.iter().flat_map(|x| x.to_le_bytes()).collect() };
    tx.prepare_cached(
        "INSERT INTO incidents (id, version, updated_ms, body, change_seq, member_count, member_digests, reason_digests)
         VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(change_seq), 0) + 1 FROM incidents), ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, updated_ms = excluded.updated_ms,
             body = excluded.body, change_seq = excluded.change_seq, member_count = excluded.member_count,
             member_digests = excluded.member_digests, reason_digests = excluded.reason_digests",
    )?
    .execute(params![
        id,
        incident.version,
        incident.updated_ms,
        to_json(&IncidentHeader::of(incident))?,
        incident.members.len() as i64,
        blob(&members),
        blob(&reasons)
    ])?;
    Ok(())
}

/// The place of the last journal row analysed (migration 12).
fn analysed_through(c: &Connection) -> Result<i64> {
    Ok(c.prepare_cached("SELECT through_seq FROM intake_done WHERE id = 1")?.query_row([], |r| r.get(0))?)
}

/// The digests a row keeps (a blob of little-endian `u64`s; none when unknown).
fn digests_of(stored: Option<&[u8]>) -> Vec<u64> {
    stored.unwrap_or_default().chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect()
}

/// An incident as its row stores it: every field, with the members, their entities and the
/// grouping reasons (rows of their own) empty.
#[derive(Serialize)]
struct IncidentHeader<'a> {
    id: &'a IncidentId,
    opened_ms: i64,
    updated_ms: i64,
    members: [(); 0],
    affected_services: &'a [String],
    common_labels: &'a cairn_types::Labels,
    grouping_reasons: [(); 0],
    probable_causes: &'a [cairn_types::ProbableCause],
    severity: cairn_types::Severity,
    version: u32,
    member_entities: [(); 0],
}

impl<'a> IncidentHeader<'a> {
    /// Every field is named, so one added to an incident cannot be left out of its row.
    fn of(incident: &'a Incident) -> IncidentHeader<'a> {
        let Incident {
            id,
            opened_ms,
            updated_ms,
            members: _,
            affected_services,
            common_labels,
            grouping_reasons: _,
            probable_causes,
            severity,
            version,
            member_entities: _,
        } = incident;
        IncidentHeader {
            id,
            opened_ms: *opened_ms,
            updated_ms: *updated_ms,
            members: [],
            affected_services,
            common_labels,
            grouping_reasons: [],
            probable_causes,
            severity: *severity,
            version: *version,
            member_entities: [],
        }
    }
}

/// A digest of everything a member holds, to tell whether its stored row is current. Every field
/// is named, so a field added to a member cannot be left out of it. A collision (about one in 2^64
/// per change) would leave one member's stored row a version behind. The hash is foldhash with a
/// fixed seed: fast, and the same in every process; a release that changes it only makes the next
/// write of each incident write all its members once.
fn member_digest(m: &cairn_types::IncidentMember, entity: Option<&str>) -> u64 {
    use cairn_types::IncidentMember;
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0).build_hasher();
    entity.hash(&mut h);
    match m {
        IncidentMember::Alert { fingerprint, alertname, status, labels, annotations, severity, starts_at_ms, summary } => {
            0u8.hash(&mut h);
            (fingerprint, alertname, status.as_str(), labels, annotations, severity, starts_at_ms, summary).hash(&mut h);
        }
        IncidentMember::Anomaly(Anomaly {
            series,
            labels,
            timestamp_ms,
            observed,
            expected,
            score,
            severity,
            confidence,
            anomaly_kind,
            detector,
            model_version,
        }) => {
            1u8.hash(&mut h);
            (series.0, labels, timestamp_ms, severity, anomaly_kind, detector, model_version).hash(&mut h);
            for x in [observed, expected, score, confidence] {
                x.to_bits().hash(&mut h);
            }
        }
    }
    h.finish()
}

/// A digest of a text row (a grouping reason), as [`member_digest`] is of a member.
fn text_digest(text: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one(text)
}

/// Reads an incident from its row's body and its member and reason rows.
fn read_incident(c: &Connection, id: &str, body: &str) -> Result<Incident> {
    let mut incident: Incident = from_json("incident", body)?;
    let mut st = c.prepare_cached("SELECT body, entity FROM incident_members WHERE incident_id = ?1 ORDER BY pos")?;
    let rows: Vec<(String, Option<String>)> = st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    // Incidents stored before entities have none: the list stays empty rather than blank.
    let with_entities = rows.iter().any(|(_, e)| e.is_some());
    incident.member_entities = if with_entities { rows.iter().map(|(_, e)| e.clone().unwrap_or_default()).collect() } else { Vec::new() };
    incident.members = rows.iter().map(|(b, _)| from_json("incident member", b)).collect::<Result<_>>()?;
    let mut st = c.prepare_cached("SELECT body FROM incident_reasons WHERE incident_id = ?1 ORDER BY pos")?;
    incident.grouping_reasons = st.query_map([id], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(incident)
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("stored {what} does not decode: {e}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The checkpointer's thread copies the WAL back, not the commit that crosses 1,000 pages.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        // Each write of a pass is a savepoint, whose sub-journal keeps the first image of every
        // page it changes; by default one past 64 KiB spills to a temporary file, two `pwrite`s a
        // page. In memory it is bounded by the pages one write changes, freed at its release.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let mut store = Self::init(conn, intake::Journal::open(path)?)?;
        store.checkpointer = Some(Checkpointer::start(path)?);
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            reader.busy_timeout(std::time::Duration::from_secs(5))?;
            reader.pragma_update(None, "query_only", true)?;
            reader.set_prepared_statement_cache_capacity(64);
            store.readers.push(Mutex::new(reader));
        }
        Ok(store)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory()?, intake::Journal::open_in_memory())
    }

    fn init(mut conn: Connection, journal: intake::Journal) -> Result<SqliteStore> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The analysis path runs a few dozen distinct statements per routed recommendation; keep
        // them all prepared instead of re-parsing each (the default cache holds 16).
        conn.set_prepared_statement_cache_capacity(64);
        let known = MIGRATIONS.len() as i64;
        let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        audit::catch_up_tree(&tx)?;
        tx.commit()?;
        journal.adopt(&conn, analysed_through(&conn)?)?;
        let mut store = SqliteStore::over(conn);
        store.journal = Some(journal);
        Ok(store)
    }

    /// Opens an existing database read-only, without migrating it: for verifying a stopped
    /// server's data directory, or a copy of it, without changing a byte.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore> {
        use rusqlite::OpenFlags;
        if !path.exists() {
            return Err(StoreError::NotFound(format!("database {}", path.display())));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let known = MIGRATIONS.len() as i64;
        let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        if current < known {
            return Err(StoreError::Corrupt(format!(
                "the database schema is version {current}, older than this build ({known}); verify a copy after opening it once with `cairn serve`"
            )));
        }
        Ok(SqliteStore::over(conn))
    }

    /// The alerts journaled and not yet analysed in the file store at `path`, oldest first, read
    /// without changing a byte: for looking into a data directory, also while its server runs (a
    /// journal record being written as it is read ends the reading).
    pub fn read_pending_intake(path: &Path) -> Result<Vec<crate::JournaledAlert>> {
        let through = Self::open_read_only(path)?.with_conn(analysed_through)?;
        let old = intake::old_file_beside(path);
        if old.exists() {
            return Err(StoreError::Corrupt(format!(
                "{} is the journal of an earlier build, not read here; open the store once with `cairn serve`, which moves its rows into the log",
                old.display()
            )));
        }
        let mut out = Vec::new();
        intake::read_beside(path, through, |seq, received_ms, body| {
            let alerts: Vec<AlertEvent> = from_json("alert intake", body)?;
            out.extend(alerts.into_iter().map(|alert| crate::JournaledAlert { seq, received_ms, alert }));
            Ok(())
        })?;
        Ok(out)
    }

    fn over(conn: Connection) -> SqliteStore {
        SqliteStore {
            writer: Mutex::new(Writer { conn, pass: None, pass_appended: None, waiting: 0, broken: None }),
            turn: Condvar::new(),
            pass_thread: AtomicU64::new(0),
            readers: Vec::new(),
            next_reader: Default::default(),
            lease: Mutex::default(),
            audit_hook: Default::default(),
            journal: None,
            checkpointer: None,
        }
    }

    /// The intake journal, which a store opened read-only has not.
    fn journal(&self) -> Result<&intake::Journal> {
        self.journal.as_ref().ok_or_else(|| StoreError::Database("the store is open read-only: it has no intake journal".into()))
    }

    /// Whether the calling thread has a write pass open on this store.
    fn in_my_pass(&self) -> bool {
        self.pass_thread.load(Ordering::Acquire) == thread_no()
    }

    /// The writer, once no other thread's pass has a transaction open on it: one open for
    /// [`PASS_TURN_AFTER`] is committed here, a younger one is waited for (its thread commits it
    /// when it is due and someone waits).
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        let me = thread_no();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let Some((owner, began)) = w.pass else { return w };
            if owner == me {
                return w;
            }
            let open_for = began.elapsed();
            if open_for >= PASS_TURN_AFTER {
                let head = Self::commit_pass_tx(&mut w);
                self.after_pass_commit(head);
                continue;
            }
            w.waiting += 1;
            w = self.turn.wait_timeout(w, PASS_TURN_AFTER - open_for).unwrap_or_else(|p| p.into_inner()).0;
            w.waiting -= 1;
        }
    }

    /// Commits the pass's open transaction; a failure rolls it back and breaks the pass. Returns
    /// the audit head to tell the hook, if the commit grew the log.
    fn commit_pass_tx(w: &mut Writer) -> Option<u64> {
        w.pass = None;
        let appended = w.pass_appended.take();
        match w.conn.execute_batch("COMMIT") {
            Ok(()) => appended,
            Err(e) => {
                let _ = w.conn.execute_batch("ROLLBACK");
                w.broken = Some(e.to_string());
                None
            }
        }
    }

    /// Wakes those waiting for a pass's commit and tells the audit hook (`head`, if the log grew).
    /// Call it holding the writer: the hook only reads.
    fn after_pass_commit(&self, head: Option<u64>) {
        self.turn.notify_all();
        if let Some(head) = head
            && let Some(hook) = self.audit_hook.0.read().unwrap_or_else(|p| p.into_inner()).as_ref()
        {
            hook(head);
        }
    }

    /// Calls the audit hook with the head a committed write appended, if it appended.
    fn tell_audit_hook(&self) {
        if let Some(head) = audit::take_appended()
            && let Some(hook) = self.audit_hook.0.read().unwrap_or_else(|p| p.into_inner()).as_ref()
        {
            hook(head);
        }
    }

    /// Runs `f` in a transaction of its own, or, inside the calling thread's write pass, in a
    /// savepoint of the pass's transaction: all or nothing either way.
    fn with_tx<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let mut w = self.lock_writer();
        if self.in_my_pass() {
            return self.in_pass(w, f);
        }
        let out = (|| {
            let tx = w.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Whatever an earlier, rolled-back transaction on this thread appended is not ours.
            audit::take_appended();
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        drop(w);
        if out.is_ok() {
            self.tell_audit_hook();
        }
        out
    }

    /// One write of a pass: a savepoint in the pass's transaction (begun if none is open), which
    /// is committed at once when it has kept someone waiting for [`PASS_TURN_AFTER`].
    fn in_pass<T>(&self, mut w: MutexGuard<'_, Writer>, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if let Some(why) = &w.broken {
            return Err(StoreError::Database(format!("an earlier commit of this write pass failed, so it writes nothing more: {why}")));
        }
        if w.pass.is_none() {
            // Writers the last transaction kept waiting go first. Begun again at once, the pass
            // would take the lock back before they wake (it is busy, they are asleep) and keep
            // them waiting a whole turn each time: a webhook answered in 11 ms instead of 0.5.
            let since = Instant::now();
            while w.waiting > 0 && since.elapsed() < PASS_TURN_AFTER {
                w = self.turn.wait_timeout(w, Duration::from_millis(1)).unwrap_or_else(|p| p.into_inner()).0;
            }
            w.conn.execute_batch("BEGIN IMMEDIATE")?;
            w.pass = Some((thread_no(), Instant::now()));
        }
        audit::take_appended();
        let out = {
            let sp = w.conn.savepoint()?;
            // Dropped on an error, the savepoint is rolled back, and what it appended with it.
            f(&sp).and_then(|v| sp.commit().map(|()| v).map_err(StoreError::from))
        };
        match audit::take_appended() {
            Some(head) if out.is_ok() => w.pass_appended = Some(head),
            _ => {}
        }
        if w.waiting > 0 && w.pass.is_some_and(|(_, began)| began.elapsed() >= PASS_TURN_AFTER) {
            let head = Self::commit_pass_tx(&mut w);
            self.after_pass_commit(head);
            if let Some(why) = &w.broken {
                return Err(StoreError::Database(format!("a commit of this write pass failed: {why}")));
            }
        }
        out
    }

    /// Opens a write pass for the calling thread (see [`crate::SignalStore::write_pass`]); a
    /// thread that has one open gets an empty pass (the outer one commits). One thread at a time
    /// has a pass: another waits for it to end.
    fn open_pass(&self) -> Result<SqlitePass<'_>> {
        let me = thread_no();
        if self.in_my_pass() {
            return Ok(SqlitePass { store: self, outer: false });
        }
        let mut w = self.lock_writer();
        while self.pass_thread.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire).is_err() {
            w = self.turn.wait(w).unwrap_or_else(|p| p.into_inner());
        }
        w.broken = None;
        Ok(SqlitePass { store: self, outer: true })
    }

    /// Ends the calling thread's pass: commits (or rolls back) its open transaction, if one is
    /// open, and lets the waiting writers in.
    fn close_pass(&self, commit: bool) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let ended = if let Some(why) = w.broken.take() {
            Err(StoreError::Database(format!("a commit of this write pass failed: {why}")))
        } else if w.pass.is_none() {
            Ok(None)
        } else if commit {
            let head = Self::commit_pass_tx(&mut w);
            match w.broken.take() {
                Some(why) => Err(StoreError::Database(format!("the write pass did not commit: {why}"))),
                None => Ok(head),
            }
        } else {
            w.pass = None;
            w.pass_appended = None;
            w.conn.execute_batch("ROLLBACK").map(|()| None).map_err(StoreError::from)
        };
        w.pass = None;
        w.pass_appended = None;
        self.pass_thread.store(0, Ordering::Release);
        // Whatever the outcome, the pass is over: whoever waits for it (another pass, a writer)
        // is woken, also when it ends in an error.
        let head = ended.inspect_err(|_| self.turn.notify_all())?;
        self.after_pass_commit(head);
        drop(w);
        Ok(())
    }

    /// Runs `f` on a read connection, inside one read transaction so that every statement of `f`
    /// sees the same committed state: a free reader if there is one, else the next in turn. An
    /// in-memory store reads on its writer, and so does a write pass (it sees its own writes).
    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.readers.is_empty() || self.in_my_pass() {
            return f(&self.lock_writer().conn);
        }
        let mut reader = match self.readers.iter().find_map(|r| r.try_lock().ok()) {
            Some(free) => free,
            None => {
                let turn = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.readers.len();
                self.readers[turn].lock().unwrap_or_else(|p| p.into_inner())
            }
        };
        let tx = reader.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` on the writer connection outside a transaction: for tests that change the schema.
    #[cfg(test)]
    fn with_writer<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        f(&self.lock_writer().conn)
    }
}

/// A write pass on a [`SqliteStore`]: rolled back if dropped without [`crate::WritePass::commit`].
#[derive(Debug)]
struct SqlitePass<'s> {
    store: &'s SqliteStore,
    /// Whether this pass opened the transaction (a pass opened inside another is empty).
    outer: bool,
}

impl crate::WritePass for SqlitePass<'_> {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let outer = std::mem::take(&mut self.outer);
        if outer { self.store.close_pass(true) } else { Ok(()) }
    }
}

impl Drop for SqlitePass<'_> {
    fn drop(&mut self) {
        if self.outer {
            let _ = self.store.close_pass(false);
        }
    }
}

/// The sequence number of the newest audit entry (0 for an empty log).
fn audit_head_of(c: &Connection) -> Result<u64> {
    Ok(c.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM audit_log")?.query_row([], |r| r.get::<_, i64>(0))? as u64)
}

/// Seals and appends drafts inside the caller's transaction.
fn append_audit(tx: &Connection, drafts: &[AuditDraft], now_ms: i64) -> Result<()> {
    audit::append(tx, drafts, now_ms)
}

fn read_change(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Option<ChangeRequest>> {
    let body: Option<String> = conn.prepare_cached(sql)?.query_row(p, |r| r.get(0)).optional()?;
    body.map(|b| from_json("change", &b)).transpose()
}

fn write_change(tx: &Connection, change: &ChangeRequest, expected_version: u64) -> Result<()> {
    let found: Option<(i64, String)> = tx
        .prepare_cached("SELECT version, state FROM changes WHERE id = ?1")?
        .query_row([&change.id.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((found, state)) = found else {
        return Err(StoreError::NotFound(format!("change {}", change.id)));
    };
    if found as u64 != expected_version || change.version != expected_version + 1 {
        return Err(StoreError::Conflict {
            what: format!("change {}", change.id),
            expected: expected_version,
            found: found as u64,
        });
    }
    let from = ChangeState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("change {} has unknown state {state:?}", change.id)))?;
    if !from.may_become(change.state) {
        return Err(StoreError::IllegalTransition { change: change.id.0.clone(), from, to: change.state });
    }
    tx.prepare_cached("UPDATE changes SET state = ?2, version = ?3, expires_ms = ?4, body = ?5 WHERE id = ?1")?
        .execute(params![change.id.0, change.state.as_str(), change.version as i64, change.expires_ms, to_json(change)?])?;
    lease::end_unless_executing(tx, change)
}

fn record_for(conn: &Connection, id: &str, revision: u32) -> Result<Option<RecommendationRecord>> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT r.body, d.body FROM recommendations r
             LEFT JOIN decisions d ON d.recommendation_id = r.id AND d.revision = r.revision
             WHERE r.id = ?1 AND r.revision = ?2",
        )?
        .query_row(params![id, revision], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((rec, dec)) = row else { return Ok(None) };
    let dec = dec.ok_or_else(|| StoreError::Corrupt(format!("recommendation {id} revision {revision} has no decision")))?;
    let change = read_change(
        conn,
        "SELECT body FROM changes WHERE recommendation_id = ?1 AND revision = ?2 ORDER BY created_ms DESC, rowid DESC LIMIT 1",
        params![id, revision],
    )?
    .ok_or_else(|| StoreError::Corrupt(format!("recommendation {id} revision {revision} has no change request")))?;
    Ok(Some(RecommendationRecord {
        recommendation: from_json("recommendation", &rec)?,
        decision: from_json("decision", &dec)?,
        change,
    }))
}

/// The one query that lists latest revisions, newest first, with their decision and newest change
/// (see [`record_for`]): only the given filters appear in it, so that each shape is planned on its
/// own index and stops at the limit — by change state when one is asked for (newest change first:
/// a change is opened when its revision is made), else the latest-revision index, by service when
/// one is given.
fn latest_revisions_sql(filter: &RecommendationFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    const NEWEST_CHANGE: &str = "SELECT n.rowid FROM changes n WHERE n.recommendation_id = r.id AND n.revision = r.revision
                                 ORDER BY n.created_ms DESC, n.rowid DESC LIMIT 1";
    let mut args = Vec::new();
    let mut sql = match filter.state {
        Some(state) => {
            args.push(Value::Text(state.as_str().into()));
            format!(
                "SELECT r.body, d.body, c.body FROM changes c
                 JOIN recommendations r ON r.id = c.recommendation_id AND r.revision = c.revision AND r.latest = 1
                 JOIN decisions d ON d.recommendation_id = r.id AND d.revision = r.revision
                 WHERE c.state = ? AND c.rowid = ({NEWEST_CHANGE})"
            )
        }
        None => format!(
            "SELECT r.body, d.body, (SELECT c.body FROM changes c WHERE c.rowid = ({NEWEST_CHANGE})) FROM recommendations r
             JOIN decisions d ON d.recommendation_id = r.id AND d.revision = r.revision
             WHERE r.latest = 1"
        ),
    };
    if let Some(outcome) = filter.outcome {
        sql.push_str(" AND d.outcome = ?");
        args.push(Value::Text(outcome.as_str().into()));
    }
    if let Some(service) = &filter.service {
        sql.push_str(" AND r.service = ?");
        args.push(Value::Text(service.clone()));
    }
    sql.push_str(if filter.state.is_some() { " ORDER BY c.created_ms DESC, c.id LIMIT ?" } else { " ORDER BY r.created_ms DESC, r.id LIMIT ?" });
    args.push(Value::Integer(if filter.limit == 0 { -1 } else { filter.limit as i64 }));
    (sql, args)
}

/// Invariant 2 and rollback-first: when `newest` is the latest revision of a recommendation, every
/// earlier revision's change that has not started running is superseded, and its approvals with
/// it; one whose stages ran in part (waiting for a stage approval, or approved for the next stage
/// and not yet claimed) is stopped and its executed stages are rolled back. A change the executor
/// has claimed (`executing`) is left alone: the claim is exclusive, and the result it records is
/// checked again by [`stop_if_superseded`].
fn supersede_earlier(tx: &Connection, rec_id: &str, newest: u32, now_ms: i64) -> Result<()> {
    supersede_below(tx, rec_id, newest, &|old: &ChangeRequest| format!("revision {newest} replaces revision {}", old.revision), now_ms)
}

/// Supersedes (or stops and rolls back, when half run) every change of `rec_id` below revision
/// `newest` that has not started running, saying `reason`: the rule is
/// [`ChangeRequest::superseded`]; this only selects, checks versions and writes.
fn supersede_below(tx: &Connection, rec_id: &str, newest: u32, reason: &dyn Fn(&ChangeRequest) -> String, now_ms: i64) -> Result<()> {
    apply_plans(tx, &supersedable_below_sql(), params![rec_id, newest], |old| old.superseded(reason(old), now_ms), now_ms)?;
    Ok(())
}

/// The changes of a recommendation's earlier revisions that a new one supersedes (`+?1`: see
/// [`recent_on_target`]).
fn supersedable_below_sql() -> String {
    format!(
        "SELECT body FROM changes WHERE recommendation_id = +?1 AND revision < ?2 AND state IN ({}) ORDER BY created_ms, id",
        states_sql(&SUPERSEDABLE_STATES)
    )
}

/// `'a', 'b'` for an SQL `IN` list of states.
fn states_sql(states: &[ChangeState]) -> String {
    states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ")
}

/// Writes, for every change selected by `sql`, the next state and audit draft `plan` gives (none
/// when it gives none). Returns the changes written.
fn apply_plans(
    tx: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    plan: impl Fn(&ChangeRequest) -> Option<(ChangeRequest, AuditDraft)>,
    now_ms: i64,
) -> Result<Vec<ChangeRequest>> {
    let bodies: Vec<String> = {
        let mut stmt = tx.prepare_cached(sql)?;
        stmt.query_map(p, |r| r.get(0))?.collect::<std::result::Result<_, _>>()?
    };
    let mut out = Vec::new();
    for b in bodies {
        let old: ChangeRequest = from_json("change", &b)?;
        let Some((next, draft)) = plan(&old) else { continue };
        write_change(tx, &next, old.version)?;
        append_audit(tx, &[draft], now_ms)?;
        out.push(next);
    }
    Ok(out)
}

/// After an execution is recorded: a staged change that paused (or was approved for its next
/// stage) while a newer revision of its recommendation arrived is stopped and rolled back now.
fn stop_if_superseded(tx: &Connection, change: &ChangeRequest, now_ms: i64) -> Result<()> {
    if !change.is_half_done_rollout() {
        return Ok(());
    }
    let newest: Option<u32> = tx.query_row(
        "SELECT MAX(revision) FROM recommendations WHERE id = ?1",
        [&change.recommendation_id.0],
        |r| r.get(0),
    )?;
    match newest {
        Some(newest) if newest > change.revision => supersede_earlier(tx, &change.recommendation_id.0, newest, now_ms),
        _ => Ok(()),
    }
}

/// Moves every change selected by `sql` to `state`, with one generated audit event each.
fn transition_where(
    tx: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    state: ChangeState,
    kind: &str,
    reason: impl Fn(&ChangeRequest) -> String,
    now_ms: i64,
) -> Result<Vec<ChangeRequest>> {
    let bodies: Vec<String> = {
        let mut stmt = tx.prepare(sql)?;
        stmt.query_map(p, |r| r.get(0))?.collect::<std::result::Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(bodies.len());
    for b in bodies {
        let old: ChangeRequest = from_json("change", &b)?;
        let mut next = old.clone();
        next.advance(state, now_ms);
        write_change(tx, &next, old.version)?;
        append_audit(tx, &[next.system_draft(kind, reason(&old))], now_ms)?;
        out.push(next);
    }
    Ok(out)
}

impl crate::SignalStore for SqliteStore {
    fn record_alerts(&self, alerts: &[AlertEvent], now_ms: i64) -> Result<usize> {
        self.with_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO alerts (fingerprint, status, service, last_seen_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (fingerprint) DO UPDATE SET status = excluded.status, service = excluded.service,
                     last_seen_ms = excluded.last_seen_ms, body = excluded.body",
            )?;
            let mut n = 0;
            for a in alerts {
                n += stmt.execute(params![a.fingerprint, a.status.as_str(), a.labels.get("service"), now_ms, to_json(a)?])?;
            }
            Ok(n)
        })
    }

    fn journal_alerts(&self, alerts: Vec<AlertEvent>, now_ms: i64) -> Result<()> {
        // Nothing to keep: no row (an empty one would wait in the journal for no alert).
        if alerts.is_empty() {
            return Ok(());
        }
        // Encoded by each caller, in parallel, before it queues.
        let body = to_json(&alerts)?;
        self.journal()?.append(now_ms, alerts, body)
    }

    fn pending_intake(&self, limit: usize) -> Result<Vec<crate::JournaledAlert>> {
        let through = self.with_conn(analysed_through)?;
        self.journal()?.pending(through, limit)
    }

    fn finish_intake(&self, through_seq: i64) -> Result<()> {
        self.with_tx(|tx| {
            tx.prepare_cached("UPDATE intake_done SET through_seq = MAX(through_seq, ?1) WHERE id = 1")?.execute([through_seq])?;
            Ok(())
        })
    }

    fn pending_intake_len(&self) -> Result<u64> {
        let through = self.with_conn(analysed_through)?;
        self.journal()?.pending_len(through)
    }

    fn write_pass(&self) -> Result<Box<dyn crate::WritePass + '_>> {
        Ok(Box::new(self.open_pass()?))
    }

    fn record_anomalies(&self, anomalies: &[Anomaly]) -> Result<()> {
        self.with_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO anomalies (series, timestamp_ms, score, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for a in anomalies {
                stmt.execute(params![a.series.to_string(), a.timestamp_ms, a.score, to_json(a)?])?;
            }
            Ok(())
        })
    }

    fn list_alerts(&self, limit: usize) -> Result<Vec<AlertEvent>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare("SELECT body FROM alerts ORDER BY last_seen_ms DESC, fingerprint LIMIT ?1")?;
            let bodies: Vec<String> =
                stmt.query_map([limit as i64], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
            bodies.iter().map(|b| from_json("alert", b)).collect()
        })
    }

    fn firing_alerts_on_service(&self, service: &str, limit: usize) -> Result<Vec<AlertEvent>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT body FROM alerts WHERE service = ?1 AND status = 'firing' ORDER BY last_seen_ms DESC, fingerprint LIMIT ?2",
            )?;
            let bodies: Vec<String> =
                stmt.query_map(params![service, limit as i64], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
            bodies.iter().map(|b| from_json("alert", b)).collect()
        })
    }

    fn upsert_incident(&self, incident: &Incident) -> Result<()> {
        self.with_tx(|tx| write_incident(tx, incident, None))
    }

    fn upsert_incident_changes(&self, incident: &Incident, changes: &IncidentChanges) -> Result<()> {
        self.with_tx(|tx| write_incident(tx, incident, Some(changes)))
    }

    fn regroup_incidents(&self, incidents: &[Incident], audit: &[AuditDraft], now_ms: i64) -> Result<()> {
        self.with_tx(|tx| {
            for incident in incidents {
                write_incident(tx, incident, None)?;
            }
            append_audit(tx, audit, now_ms)
        })
    }

    fn get_incident(&self, id: &IncidentId) -> Result<Option<Incident>> {
        self.with_conn(|c| {
            let b: Option<String> =
                c.query_row("SELECT body FROM incidents WHERE id = ?1", [&id.0], |r| r.get(0)).optional()?;
            b.map(|b| read_incident(c, &id.0, &b)).transpose()
        })
    }

    fn list_incidents(&self, updated_since_ms: i64, min_members: usize, limit: usize) -> Result<Vec<Incident>> {
        self.with_conn(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, body FROM incidents WHERE updated_ms >= ?1 AND member_count >= MAX(?2, 1)
                 ORDER BY updated_ms DESC, id LIMIT ?3",
            )?;
            let rows = st.query_map(params![updated_since_ms, min_members as i64, limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let rows: Vec<(String, String)> = rows.collect::<rusqlite::Result<_>>()?;
            rows.iter().map(|(id, body)| read_incident(c, id, body)).collect()
        })
    }

    fn incidents_changed_after(&self, after: u64, min_members: usize, limit: usize) -> Result<Vec<(u64, Incident)>> {
        self.with_conn(|c| {
            let mut st = c.prepare_cached(
                "SELECT change_seq, id, body FROM incidents WHERE change_seq > ?1
                   AND (member_count >= ?2 OR member_count = 0)
                 ORDER BY change_seq LIMIT ?3",
            )?;
            let rows = st.query_map(params![after as i64, min_members as i64, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            let rows: Vec<(i64, String, String)> = rows.collect::<rusqlite::Result<_>>()?;
            rows.iter().map(|(seq, id, body)| Ok((*seq as u64, read_incident(c, id, body)?))).collect()
        })
    }
}

/// Why some parameters are written `+?N`: SQLite re-plans a statement whose plan may depend on a
/// parameter's value whenever that value changes (found here: a column compared `= ?N` or `<> ?N`
/// in a query with an ORDER BY, and `LIMIT ?N`), and rusqlite's statement cache clears the
/// bindings between uses, so such a cached statement was prepared again at every run (about a
/// tenth of alert-load's samples with 2,000 services, on the routing path). `+?N` is the same
/// value as an expression, which SQLite does not re-plan for; the indexes are used as before
/// (`hot_statements_are_prepared_once_and_keep_their_indexes`).
///
/// The query behind [`crate::ChangeStore::recent_changes_on_target`] and
/// [`crate::ChangeStore::recent_runs_on_target`], selecting `$columns` of `recommendations r`: one
/// filter and order for both.
macro_rules! recent_on_target {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM recommendations r
             WHERE r.service = +?1 AND r.environment = +?2 AND r.resource = +?3 AND r.created_ms >= ?4
               AND NOT EXISTS (SELECT 1 FROM changes c
                               WHERE c.recommendation_id = r.id AND c.revision = r.revision AND c.state = 'superseded')
             ORDER BY r.created_ms DESC, r.id, r.revision DESC LIMIT 200"
        )
    };
}

/// The decided changes on a service, newest first ([`crate::ChangeStore::decided_changes_on_service`];
/// `+?N`: see [`recent_on_target`]).
const DECIDED_ON_SERVICE: &str = "SELECT r.id, r.revision FROM recommendations r
     JOIN changes c ON c.recommendation_id = r.id AND c.revision = r.revision
     WHERE r.service = +?1 AND r.environment = +?2 AND r.id <> +?3
       AND c.state IN ('rejected', 'succeeded', 'failed', 'rolled_back', 'rollback_failed')
     ORDER BY r.created_ms DESC, r.id, r.revision DESC LIMIT +?4";

impl crate::ChangeStore for SqliteStore {
    fn propose(
        &self,
        rec: &Recommendation,
        decision: &Decision,
        change: &ChangeRequest,
        audit: &[AuditDraft],
        now_ms: i64,
    ) -> Result<()> {
        self.with_tx(|tx| {
            let exists: Option<i64> = tx
                .prepare_cached("SELECT 1 FROM recommendations WHERE id = ?1 AND revision = ?2")?
                .query_row(params![rec.id.0, rec.revision], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return Err(StoreError::Conflict {
                    what: format!("recommendation {} revision {}", rec.id, rec.revision),
                    expected: 0,
                    found: u64::from(rec.revision),
                });
            }
            supersede_earlier(tx, &rec.id.0, rec.revision, now_ms)?;
            tx.prepare_cached("UPDATE recommendations SET latest = 0 WHERE id = ?1 AND latest = 1 AND revision < ?2")?
                .execute(params![rec.id.0, rec.revision])?;
            tx.prepare_cached(
                "INSERT INTO recommendations (id, revision, incident_id, service, environment, resource, action, created_ms, body, latest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                         NOT EXISTS (SELECT 1 FROM recommendations WHERE id = ?1 AND revision > ?2))",
            )?
            .execute(params![
                rec.id.0,
                rec.revision,
                rec.incident_id.0,
                rec.target.service,
                rec.target.environment,
                rec.target.resource,
                rec.action.as_str(),
                rec.created_ms,
                to_json(rec)?
            ])?;
            tx.prepare_cached("INSERT INTO decisions (recommendation_id, revision, outcome, body) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![decision.recommendation_id.0, decision.revision, decision.outcome.as_str(), to_json(decision)?])?;
            tx.prepare_cached(
                "INSERT INTO changes (id, recommendation_id, revision, state, version, expires_ms, created_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                change.id.0,
                change.recommendation_id.0,
                change.revision,
                change.state.as_str(),
                change.version as i64,
                change.expires_ms,
                change.created_ms,
                to_json(change)?
            ])?;
            append_audit(tx, audit, now_ms)
        })
    }

    fn get_recommendation(&self, id: &RecommendationId, revision: Option<u32>) -> Result<Option<RecommendationRecord>> {
        self.with_conn(|c| {
            let rev = match revision {
                Some(r) => Some(r),
                None => c
                    .query_row("SELECT MAX(revision) FROM recommendations WHERE id = ?1", [&id.0], |r| {
                        r.get::<_, Option<u32>>(0)
                    })?,
            };
            match rev {
                Some(r) => record_for(c, &id.0, r),
                None => Ok(None),
            }
        })
    }

    fn list_recommendations(&self, filter: &RecommendationFilter) -> Result<Vec<RecommendationRecord>> {
        self.with_conn(|c| {
            let (sql, args) = latest_revisions_sql(filter);
            let rows: Vec<(String, String, Option<String>)> = c
                .prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<std::result::Result<_, _>>()?;
            rows.into_iter()
                .map(|(rec, dec, change)| {
                    let recommendation: Recommendation = from_json("recommendation", &rec)?;
                    let change = change.ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "recommendation {} revision {} has no change request",
                            recommendation.id, recommendation.revision
                        ))
                    })?;
                    Ok(RecommendationRecord { recommendation, decision: from_json("decision", &dec)?, change: from_json("change", &change)? })
                })
                .collect()
        })
    }

    fn get_change(&self, id: &ChangeId) -> Result<Option<ChangeRequest>> {
        self.with_conn(|c| read_change(c, "SELECT body FROM changes WHERE id = ?1", [&id.0]))
    }

    fn update_change(&self, change: &ChangeRequest, expected_version: u64, audit: &[AuditDraft], now_ms: i64) -> Result<()> {
        self.with_tx(|tx| {
            write_change(tx, change, expected_version)?;
            append_audit(tx, audit, now_ms)
        })
    }

    fn claim_approved(&self, limit: usize, now_ms: i64) -> Result<Vec<ChangeRequest>> {
        let terms = self.lease_terms();
        self.with_tx(|tx| {
            let claimed = transition_where(
                tx,
                "SELECT body FROM changes WHERE state = 'approved' ORDER BY created_ms, id LIMIT ?1",
                [limit as i64],
                ChangeState::Executing,
                "change.executing",
                |_| format!("claimed by the executor {}", terms.holder),
                now_ms,
            )?;
            lease::grant(tx, &claimed, &terms, now_ms)?;
            Ok(claimed)
        })
    }

    fn claim_approved_except(&self, limit: usize, now_ms: i64, except: &[ChangeId]) -> Result<Vec<ChangeRequest>> {
        if except.is_empty() {
            return self.claim_approved(limit, now_ms);
        }
        let terms = self.lease_terms();
        self.with_tx(|tx| {
            let ids: Vec<String> = {
                let mut stmt = tx.prepare("SELECT id FROM changes WHERE state = 'approved' ORDER BY created_ms, id")?;
                stmt.query_map([], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?
            };
            let mut out = Vec::new();
            for id in ids.into_iter().filter(|id| !except.iter().any(|e| &e.0 == id)).take(limit) {
                out.extend(transition_where(
                    tx,
                    "SELECT body FROM changes WHERE id = ?1 AND state = 'approved'",
                    [id],
                    ChangeState::Executing,
                    "change.executing",
                    |_| format!("claimed by the executor {}", terms.holder),
                    now_ms,
                )?);
            }
            lease::grant(tx, &out, &terms, now_ms)?;
            Ok(out)
        })
    }

    fn approved_changes_after(&self, after: Option<(i64, &ChangeId)>, limit: usize) -> Result<Vec<ChangeRequest>> {
        let (after_ms, after_id) = after.map(|(ms, id)| (ms, id.0.as_str())).unwrap_or((i64::MIN, ""));
        self.with_conn(|c| {
            let mut stmt = c.prepare(
                "SELECT body FROM changes WHERE state = 'approved' AND (created_ms, id) > (?1, ?2)
                 ORDER BY created_ms, id LIMIT ?3",
            )?;
            let bodies: Vec<String> = stmt
                .query_map(params![after_ms, after_id, limit as i64], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            bodies.iter().map(|b| from_json("change", b)).collect()
        })
    }

    fn record_execution(
        &self,
        execution: &Execution,
        change: &ChangeRequest,
        expected_version: u64,
        audit: &[AuditDraft],
        now_ms: i64,
    ) -> Result<()> {
        self.with_tx(|tx| {
            write_change(tx, change, expected_version)?;
            tx.execute(
                "INSERT INTO executions (change_id, started_ms, body) VALUES (?1, ?2, ?3)",
                params![execution.change_id.0, execution.started_ms, to_json(execution)?],
            )?;
            append_audit(tx, audit, now_ms)?;
            if change.state == ChangeState::Succeeded {
                // A policy activation that succeeded is the one to route with after a restart.
                tx.prepare_cached(
                    "INSERT INTO active_policy (slot, change_id)
                     SELECT 1, ?1 FROM recommendations WHERE id = ?2 AND revision = ?3 AND action = 'policy_activation'
                     ON CONFLICT (slot) DO UPDATE SET change_id = excluded.change_id",
                )?
                .execute(params![change.id.0, change.recommendation_id.0, change.revision])?;
            }
            stop_if_superseded(tx, change, now_ms)
        })
    }

    fn active_policy(&self) -> Result<Option<RecommendationRecord>> {
        self.with_conn(|c| {
            let key: Option<(String, u32)> = c
                .prepare_cached(
                    "SELECT c.recommendation_id, c.revision FROM active_policy a JOIN changes c ON c.id = a.change_id WHERE a.slot = 1",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match key {
                Some((id, revision)) => record_for(c, &id, revision),
                None => Ok(None),
            }
        })
    }

    fn executions_for(&self, change: &ChangeId) -> Result<Vec<Execution>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare("SELECT body FROM executions WHERE change_id = ?1 ORDER BY id")?;
            let bodies: Vec<String> = stmt.query_map([&change.0], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
            bodies.iter().map(|b| from_json("execution", b)).collect()
        })
    }

    fn withdraw_recommendation(&self, id: &RecommendationId, reason: &str, now_ms: i64) -> Result<()> {
        self.with_tx(|tx| supersede_below(tx, &id.0, u32::MAX, &|_| reason.to_string(), now_ms))
    }

    fn expire_pending(&self, now_ms: i64) -> Result<Vec<ChangeId>> {
        let sql = format!(
            "SELECT body FROM changes WHERE state IN ({}) AND expires_ms <= ?1 ORDER BY expires_ms, id",
            states_sql(&EXPIRING_STATES)
        );
        self.with_tx(|tx| Ok(apply_plans(tx, &sql, [now_ms], |old| old.expired(now_ms), now_ms)?.into_iter().map(|c| c.id).collect()))
    }

    fn claim_rollbacks(&self, limit: usize, now_ms: i64) -> Result<Vec<ChangeRequest>> {
        let terms = self.lease_terms();
        self.with_tx(|tx| {
            let claimed = transition_where(
                tx,
                "SELECT body FROM changes WHERE state = 'rollback_pending' ORDER BY created_ms, id LIMIT ?1",
                [limit as i64],
                ChangeState::Executing,
                "change.executing",
                |_| format!("claimed by the executor {} to roll back a stopped rollout", terms.holder),
                now_ms,
            )?;
            lease::grant(tx, &claimed, &terms, now_ms)?;
            Ok(claimed)
        })
    }

    fn decided_changes_on_service(
        &self,
        service: &str,
        environment: &str,
        except: &RecommendationId,
        limit: usize,
    ) -> Result<Vec<RecommendationRecord>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(DECIDED_ON_SERVICE)?;
            let keys: Vec<(String, u32)> = stmt
                .query_map(params![service, environment, except.0, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?;
            let mut out = Vec::with_capacity(keys.len());
            for (id, rev) in keys {
                if let Some(r) = record_for(c, &id, rev)? {
                    out.push(r);
                }
            }
            Ok(out)
        })
    }

    fn recent_changes_on_target(&self, target: &Target, since_ms: i64) -> Result<Vec<RecommendationRecord>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(recent_on_target!("r.id, r.revision"))?;
            let keys: Vec<(String, u32)> = stmt
                .query_map(params![target.service, target.environment, target.resource, since_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<std::result::Result<_, _>>()?;
            let mut out = Vec::new();
            for (id, rev) in keys {
                if let Some(r) = record_for(c, &id, rev)? {
                    out.push(r);
                }
            }
            Ok(out)
        })
    }

    fn recent_runs_on_target(&self, target: &Target, since_ms: i64) -> Result<Vec<(cairn_types::ActionClass, ChangeState)>> {
        self.with_conn(|c| {
            // The state of the newest change of each revision, as `record_for` reads it.
            let mut stmt = c.prepare_cached(recent_on_target!(
                "r.action, (SELECT c.state FROM changes c WHERE c.recommendation_id = r.id AND c.revision = r.revision
                            ORDER BY c.created_ms DESC, c.rowid DESC LIMIT 1)"
            ))?;
            let rows = stmt.query_map(params![target.service, target.environment, target.resource, since_ms], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (action, state) = row?;
                let action = cairn_types::ActionClass::parse(&action)
                    .ok_or_else(|| StoreError::Corrupt(format!("a recommendation on {target} has unknown action {action:?}")))?;
                let state = state.as_deref().and_then(ChangeState::parse).ok_or_else(|| {
                    StoreError::Corrupt(format!("a recommendation on {target} has no change request, or one in an unknown state: {state:?}"))
                })?;
                out.push((action, state));
            }
            Ok(out)
        })
    }
}

impl crate::AuditLog for SqliteStore {
    fn record_audit(&self, audit: &[AuditDraft], now_ms: i64) -> Result<()> {
        self.with_tx(|tx| append_audit(tx, audit, now_ms))
    }

    fn audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        self.with_conn(|c| audit::query(c, q))
    }

    fn audit_head(&self) -> Result<u64> {
        self.with_conn(audit_head_of)
    }

    fn on_audit_commit(&self, hook: crate::AuditHook) {
        *self.audit_hook.0.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    fn read_log(&self, read: &mut dyn FnMut(&dyn crate::AuditSnapshot) -> Result<()>) -> Result<()> {
        self.with_conn(|c| read(&audit::SqlNodes(c)))
    }
}

#[cfg(test)]
mod tests;
