//! The intake journal: alerts acknowledged to their sender and not yet analysed, in a database of
//! its own beside the store's (`<store>-intake` for a file store). Webhooks append to it while an
//! analysis pass holds the store's writer, so an acknowledgement never waits for a pass and a pass
//! is not cut into a commit per acknowledgement. Sharing the store's file, a busy pass was
//! committed every 10 ms to let the journal writers in, and each of those small commits wrote out
//! again the index pages its alerts had touched (fingerprints are random: about a 4 KiB page per
//! alert); writing to the WAL was a fifth of the process's time under alert-load.
//!
//! The rows also stay decoded in memory, in order, for the analysis worker to take without reading
//! and decoding them again (the journal's reads were a tenth of the worker): [`Cached`]. The file
//! is what counts; the memory is used only while it holds exactly the rows the file holds next.
//!
//! Analysed is decided in the store's database, not here: a pass records the last journal row it
//! analysed (`intake_done`) in its own transaction. Rows through that mark are never handed out
//! again and are deleted from this file when the journal is next read. A crash between the two
//! leaves rows that are skipped, never replayed or lost. This module owns the journal's file and
//! its rows; it never decides what is analysed.

use super::{Checkpointer, from_json};
use crate::{JournaledAlert, Result, StoreError};
use cairn_types::AlertEvent;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// The journal file's schema; its `user_version` is 1. `AUTOINCREMENT`: a row's place is never
/// reused, also after every row was deleted, so the mark in the store's database stays below
/// every row journaled after it.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS alert_intake (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        received_ms  INTEGER NOT NULL,
        alerts       INTEGER NOT NULL,
        body         TEXT NOT NULL
    );";
const VERSION: i64 = 1;

/// Where a file store keeps its journal.
pub(super) fn path_beside(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push("-intake");
    PathBuf::from(p)
}

/// The journal rows held decoded in memory, at most this many bytes of them (as journaled JSON;
/// decoded, an alert takes a few times its JSON): the default backlog of 20,000 alerts
/// (`ingest.max_pending_alerts`) of alert-load's size is about 6 MiB of it. Past it the worker
/// reads the file, as it would without this.
const MAX_CACHED_BYTES: usize = 16 << 20;

/// The journal's connection, its group commit, its rows held in memory and (for a file) its
/// checkpointer.
#[derive(Debug)]
pub(super) struct Journal {
    conn: Mutex<Connection>,
    group: GroupCommit,
    cached: Mutex<Cached>,
    /// Dropped with the journal, which stops its thread.
    _checkpointer: Option<Checkpointer>,
}

impl Journal {
    /// Opens (creating if needed) the journal file at `path`.
    pub(super) fn open(path: &Path) -> Result<Journal> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // As durable as the store's own commits.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut journal = Self::init(conn)?;
        journal._checkpointer = Some(Checkpointer::start(path)?);
        Ok(journal)
    }

    /// A private in-memory journal, for an in-memory store.
    pub(super) fn open_in_memory() -> Result<Journal> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Journal> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > VERSION {
            return Err(StoreError::SchemaTooNew { found, known: VERSION });
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", VERSION)?;
        Ok(Journal { conn: Mutex::new(conn), group: GroupCommit::default(), cached: Mutex::default(), _checkpointer: None })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in the rows a store from before the journal had its own file kept in its own
    /// `alert_intake` table (`store`, the store's writer), with their places, then deletes them
    /// there. Run again after a crash in between, it copies nothing twice (same places). Then
    /// makes sure every row journaled from now on is placed above `analysed_through`, also when
    /// this file is new beside a store that has analysed rows before (restored from a backup
    /// without it).
    pub(super) fn adopt(&self, store: &Connection, analysed_through: i64) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut old = store.prepare("SELECT seq, received_ms, alerts, body FROM alert_intake ORDER BY seq")?;
            let mut put = tx.prepare("INSERT OR IGNORE INTO alert_intake (seq, received_ms, alerts, body) VALUES (?1, ?2, ?3, ?4)")?;
            let mut rows = old.query([])?;
            while let Some(r) = rows.next()? {
                put.execute(params![r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?])?;
            }
        }
        let highest: i64 =
            tx.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'alert_intake'", [], |r| r.get(0)).optional()?.unwrap_or(0);
        if highest < analysed_through {
            // AUTOINCREMENT remembers the highest place ever used: use this one once.
            tx.execute("INSERT INTO alert_intake (seq, received_ms, alerts, body) VALUES (?1, 0, 0, '[]')", [analysed_through])?;
            tx.execute("DELETE FROM alert_intake WHERE seq = ?1", [analysed_through])?;
        }
        tx.commit()?;
        store.execute("DELETE FROM alert_intake", [])?;
        Ok(())
    }

    /// Appends `alerts` as one row, committed with whatever other callers queued meanwhile (group
    /// commit); returns once that commit is done, with its error if it failed (and then none of
    /// this call's alerts is stored). `body` is the alerts as one JSON array.
    pub(super) fn append(&self, received_ms: i64, alerts: Vec<AlertEvent>, body: String) -> Result<()> {
        let group = &self.group;
        let mut st = group.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queued.push(Queued { ticket, received_ms, alerts, body });
        loop {
            if let Some(outcome) = st.outcomes.remove(&ticket) {
                return outcome.map_err(StoreError::Database);
            }
            if st.leading {
                st = group.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead: write every queued caller's row (this one's among them) in one commit.
            st.leading = true;
            let rows = std::mem::take(&mut st.queued);
            drop(st);
            let mut leading = Leading { group, tickets: rows.iter().map(|r| r.ticket).collect(), outcome: None };
            let written = (|| -> Result<Vec<i64>> {
                let mut conn = self.lock();
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut seqs = Vec::with_capacity(rows.len());
                {
                    let mut stmt = tx.prepare_cached("INSERT INTO alert_intake (received_ms, alerts, body) VALUES (?1, ?2, ?3)")?;
                    for r in &rows {
                        stmt.execute(params![r.received_ms, r.alerts.len() as i64, r.body])?;
                        seqs.push(tx.last_insert_rowid());
                    }
                }
                tx.commit()?;
                Ok(seqs)
            })();
            leading.outcome = Some(match written {
                Ok(seqs) => {
                    // Held in memory in the order committed: one leader at a time, and this one
                    // before it hands over.
                    let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
                    for (r, seq) in rows.into_iter().zip(seqs) {
                        cached.push(seq, r.received_ms, r.alerts, r.body.len());
                    }
                    Ok(())
                }
                Err(StoreError::Database(m)) => Err(m),
                Err(other) => Err(other.to_string()),
            });
            drop(leading);
            st = group.state.lock().unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Rows placed after `analysed_through`, oldest first, whole, until at least `limit` alerts
    /// are read: taken from memory when it holds the next row of the file, else read from the
    /// file. Rows through `analysed_through` are deleted first; that is tidying, and a failure of
    /// it is left to the next read (they are skipped either way).
    pub(super) fn pending(&self, analysed_through: i64, limit: usize) -> Result<Vec<JournaledAlert>> {
        let conn = self.lock();
        let _ = conn.prepare_cached("DELETE FROM alert_intake WHERE seq <= ?1").and_then(|mut s| s.execute([analysed_through]));
        let next: Option<i64> =
            conn.prepare_cached("SELECT MIN(seq) FROM alert_intake WHERE seq > ?1")?.query_row([analysed_through], |r| r.get(0))?;
        {
            let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            cached.forget_through(analysed_through);
            if next.is_some() && cached.next_seq() == next {
                return Ok(cached.take(limit));
            }
        }
        let mut stmt = conn.prepare_cached("SELECT seq, received_ms, body FROM alert_intake WHERE seq > ?1 ORDER BY seq")?;
        let mut rows = stmt.query([analysed_through])?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next()? else { break };
            let (seq, received_ms): (i64, i64) = (row.get(0)?, row.get(1)?);
            let body: String = row.get(2)?;
            let alerts: Vec<AlertEvent> = from_json("alert intake", &body)?;
            out.extend(alerts.into_iter().map(|alert| JournaledAlert { seq, received_ms, alert }));
        }
        Ok(out)
    }

    /// How many alerts wait after `analysed_through`.
    pub(super) fn pending_len(&self, analysed_through: i64) -> Result<u64> {
        let conn = self.lock();
        let n: i64 = conn.query_row("SELECT COALESCE(SUM(alerts), 0) FROM alert_intake WHERE seq > ?1", [analysed_through], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Runs `f` on the journal's connection: for tests that look at or change its rows.
    #[cfg(test)]
    pub(super) fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        f(&self.lock())
    }
}

/// Journal rows held decoded in memory: a run of consecutive rows of the file, in its order,
/// ending with the last one committed, at most `cap` bytes of them ([`MAX_CACHED_BYTES`]). Used only when its
/// first row is the file's next row to analyse, so a row taken from it and not marked analysed
/// (a failed pass) is read from the file again, as is everything journaled before the process
/// started. A row that does not fit empties it: a run with a row missing would skip that row.
#[derive(Debug)]
pub(super) struct Cached {
    rows: VecDeque<CachedRow>,
    bytes: usize,
    cap: usize,
}

impl Default for Cached {
    fn default() -> Cached {
        Cached::with_cap(MAX_CACHED_BYTES)
    }
}

#[derive(Debug)]
struct CachedRow {
    seq: i64,
    received_ms: i64,
    alerts: Vec<AlertEvent>,
    bytes: usize,
}

impl Cached {
    pub(super) fn with_cap(cap: usize) -> Cached {
        Cached { rows: VecDeque::new(), bytes: 0, cap }
    }

    pub(super) fn push(&mut self, seq: i64, received_ms: i64, alerts: Vec<AlertEvent>, bytes: usize) {
        if self.bytes + bytes > self.cap {
            self.rows.clear();
            self.bytes = 0;
            if bytes > self.cap {
                return;
            }
        }
        self.bytes += bytes;
        self.rows.push_back(CachedRow { seq, received_ms, alerts, bytes });
    }

    pub(super) fn next_seq(&self) -> Option<i64> {
        self.rows.front().map(|r| r.seq)
    }

    pub(super) fn forget_through(&mut self, seq: i64) {
        while self.rows.front().is_some_and(|r| r.seq <= seq) {
            self.pop();
        }
    }

    /// The first rows, whole, until at least `limit` alerts are taken.
    pub(super) fn take(&mut self, limit: usize) -> Vec<JournaledAlert> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = self.pop() else { break };
            out.extend(row.alerts.into_iter().map(|alert| JournaledAlert { seq: row.seq, received_ms: row.received_ms, alert }));
        }
        out
    }

    fn pop(&mut self) -> Option<CachedRow> {
        let row = self.rows.pop_front()?;
        self.bytes -= row.bytes;
        Some(row)
    }
}

/// A caller's row waiting for a leader.
#[derive(Debug)]
struct Queued {
    ticket: u64,
    received_ms: i64,
    alerts: Vec<AlertEvent>,
    /// The alerts as one JSON array.
    body: String,
}

/// Group commit: concurrent callers queue their rows; one of them (the leader) writes every queued
/// row in one transaction and hands each caller the outcome of that commit, so each is answered
/// after its rows are committed (or with the commit's error, and then none of its rows is stored).
/// While a commit runs, the next callers queue for the next one.
#[derive(Debug, Default)]
struct GroupCommit {
    state: Mutex<GroupState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    next_ticket: u64,
    /// Rows waiting for a leader, one per caller.
    queued: Vec<Queued>,
    /// Whether a caller is writing a group now.
    leading: bool,
    /// The outcome of each written ticket, until its caller takes it (an error as text: every
    /// caller of a failed group gets it).
    outcomes: std::collections::HashMap<u64, std::result::Result<(), String>>,
}

/// Ends a leader's turn even if its write panicked: its callers are told, and the next can lead.
struct Leading<'g> {
    group: &'g GroupCommit,
    tickets: Vec<u64>,
    outcome: Option<std::result::Result<(), String>>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| Err("the journal write panicked".into()));
        let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
        for t in self.tickets.drain(..) {
            st.outcomes.insert(t, outcome.clone());
        }
        st.leading = false;
        drop(st);
        self.group.done.notify_all();
    }
}
