//! The intake journal: alerts acknowledged to their sender and not yet analysed, in a log of its
//! own beside the store's database ([`log`]; `<store>-intake.d/` for a file store). Webhooks append
//! to it while an analysis pass holds the store's writer, so an acknowledgement never waits for a
//! pass and a pass is not cut into a commit per acknowledgement. Concurrent webhooks share a write
//! (group commit).
//!
//! The rows also stay decoded in memory, in order, for the analysis worker to take without reading
//! and decoding them again (the journal's reads were a tenth of the worker): [`Cached`]. The log
//! is what counts; the memory is used only while it holds exactly the rows the log holds next.
//!
//! Analysed is decided in the store's database, not here: a pass records the last journal row it
//! analysed (`intake_done`) in its own transaction. Rows through that mark are never handed out
//! again and are forgotten when the journal is next read (their segment deleted once it is closed
//! or full). A crash between the two leaves rows that are skipped, never replayed or lost. This
//! module owns the journal's files and its rows; it never decides what is analysed.
//!
//! Earlier builds kept the journal in SQLite: a table in the store's database, then a database of
//! its own (`<store>-intake`). Their rows are moved into the log when the store opens.

pub(super) mod log;

use super::from_json;
use crate::{JournaledAlert, Result, StoreError};
use cairn_types::AlertEvent;
use rusqlite::{Connection, OptionalExtension};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// Where a file store keeps its journal: a directory of segment files.
pub(super) fn dir_beside(store: &Path) -> PathBuf {
    beside(store, "-intake.d")
}

/// Where a file store kept its journal when it was a SQLite database of its own.
pub(super) fn old_file_beside(store: &Path) -> PathBuf {
    beside(store, "-intake")
}

fn beside(store: &Path, suffix: &str) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The journal rows held decoded in memory, at most this many bytes of them (as journaled JSON;
/// decoded, an alert takes a few times its JSON): the default backlog of 20,000 alerts
/// (`ingest.max_pending_alerts`) of alert-load's size is about 6 MiB of it. Past it the worker
/// reads the log, as it would without this.
const MAX_CACHED_BYTES: usize = 16 << 20;

/// The journal's log, its group commit and its rows held in memory.
#[derive(Debug)]
pub(super) struct Journal {
    log: Mutex<log::Log>,
    group: GroupCommit,
    cached: Mutex<Cached>,
    /// A SQLite journal file of an earlier build, to move into the log (see [`Journal::adopt`]).
    old_file: Option<PathBuf>,
}

impl Journal {
    /// Opens (creating if needed) the journal of the store at `store`.
    pub(super) fn open(store: &Path) -> Result<Journal> {
        let mut journal = Self::over(log::Log::open(&dir_beside(store))?);
        journal.old_file = Some(old_file_beside(store));
        Ok(journal)
    }

    /// A private in-memory journal, for an in-memory store.
    pub(super) fn open_in_memory() -> Journal {
        Self::over(log::Log::in_memory())
    }

    fn over(log: log::Log) -> Journal {
        Journal { log: Mutex::new(log), group: GroupCommit::default(), cached: Mutex::default(), old_file: None }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, log::Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in the rows an earlier build journaled in SQLite, with their places: those in the
    /// store's own `alert_intake` table (`store`, the store's writer), then those in a journal
    /// database of its own beside the store; each source is deleted once its rows are in the log.
    /// Run again after a crash in between, it copies nothing twice (same places, and a place the
    /// log already has is behind it). Then makes sure every row journaled from now on is placed
    /// above `analysed_through`, also when the log is new beside a store that has analysed rows
    /// before (restored from a backup without it).
    pub(super) fn adopt(&self, store: &Connection, analysed_through: i64) -> Result<()> {
        let mut log = self.log();
        log.place_after(analysed_through);
        copy_rows(store, &mut log, analysed_through)?;
        store.execute("DELETE FROM alert_intake", [])?;
        if let Some(old) = self.old_file.as_deref().filter(|p| p.exists()) {
            {
                let conn = Connection::open(old)?;
                let has_table: Option<i64> =
                    conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alert_intake'", [], |r| r.get(0)).optional()?;
                if has_table.is_some() {
                    copy_rows(&conn, &mut log, analysed_through)?;
                }
            }
            for suffix in ["", "-wal", "-shm"] {
                let path = beside(old, suffix);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::Database(format!("cannot delete the old intake journal {}: {e}", path.display()))),
                }
            }
        }
        Ok(())
    }

    /// Appends `alerts` as one row, written with whatever other callers queued meanwhile (group
    /// commit); returns once that write is done, with its error if it failed (and then none of
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
            // Lead: write every queued caller's row (this one's among them) in one write.
            st.leading = true;
            let rows = std::mem::take(&mut st.queued);
            drop(st);
            let mut leading = Leading { group, tickets: rows.iter().map(|r| r.ticket).collect(), outcome: None };
            let mut log = self.log();
            let written = log.append(rows.iter().map(|r| (r.received_ms, r.alerts.len() as u32, r.body.as_str())));
            leading.outcome = Some(match written {
                Ok(seqs) => {
                    // Held in memory in the order written: one leader at a time, and this one
                    // holds the log until its rows are held.
                    let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
                    for (r, seq) in rows.into_iter().zip(seqs) {
                        cached.push(seq, r.received_ms, r.alerts, r.body.len());
                    }
                    Ok(())
                }
                Err(StoreError::Database(m)) => Err(m),
                Err(other) => Err(other.to_string()),
            });
            drop(log);
            drop(leading);
            st = group.state.lock().unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Rows placed after `analysed_through`, oldest first, whole, until at least `limit` alerts
    /// are read: taken from memory when it holds the log's next row, else read from the log.
    /// Rows through `analysed_through` are forgotten first.
    pub(super) fn pending(&self, analysed_through: i64, limit: usize) -> Result<Vec<JournaledAlert>> {
        let mut log = self.log();
        log.forget_through(analysed_through);
        let next = log.first_after(analysed_through);
        {
            let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            cached.forget_through(analysed_through);
            if next.is_some() && cached.next_seq() == next {
                return Ok(cached.take(limit));
            }
        }
        let mut out = Vec::new();
        log.read_after(analysed_through, limit, |r| {
            let alerts: Vec<AlertEvent> = from_json("alert intake", r.body)?;
            out.extend(alerts.into_iter().map(|alert| JournaledAlert { seq: r.seq, received_ms: r.received_ms, alert }));
            Ok(())
        })?;
        Ok(out)
    }

    /// How many alerts wait after `analysed_through`.
    pub(super) fn pending_len(&self, analysed_through: i64) -> Result<u64> {
        Ok(self.log().alerts_after(analysed_through))
    }

    /// Runs `f` on the journal's log: for tests that look at or change its records.
    #[cfg(test)]
    pub(super) fn with_log<T>(&self, f: impl FnOnce(&mut log::Log) -> T) -> T {
        f(&mut self.log())
    }
}

/// Copies the rows of a SQLite `alert_intake` table (`conn`) placed after `analysed_through` and
/// after the log's last place into the log, with their places, oldest first.
fn copy_rows(conn: &Connection, log: &mut log::Log, analysed_through: i64) -> Result<()> {
    let after = analysed_through.max(log.next_seq() - 1);
    let mut stmt = conn.prepare("SELECT seq, received_ms, alerts, body FROM alert_intake WHERE seq > ?1 ORDER BY seq")?;
    let mut rows = stmt.query([after])?;
    while let Some(r) = rows.next()? {
        let (seq, received_ms, alerts, body): (i64, i64, i64, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        log.place_after(seq - 1);
        log.append(std::iter::once((received_ms, alerts as u32, body.as_str())))?;
    }
    Ok(())
}

/// Reads the journal beside the store at `store` without changing a byte, handing `each` the rows
/// placed after `analysed_through` with their alerts' count and JSON body.
pub(super) fn read_beside(store: &Path, analysed_through: i64, mut each: impl FnMut(i64, i64, &str) -> Result<()>) -> Result<()> {
    log::read_dir_after(&dir_beside(store), analysed_through, |r| each(r.seq, r.received_ms, r.body))
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
