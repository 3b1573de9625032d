//! The audit log in SQLite: sealing drafts into `audit_log`, keeping the Merkle tree's perfect
//! subtree nodes in `audit_tree` as entries are appended (so roots and proofs never re-read the
//! log), reading entries back, and streaming the log through the verifiers.

use super::from_json;
use crate::{AuditQuery, Result, StoreError};
use cairn_audit::merkle::{Hash, NodeSource, nodes_completed_by};
use cairn_types::{AuditDraft, AuditEvent};
use rusqlite::{Connection, OptionalExtension, params};

/// The columns `audit_row` reads, in its order.
pub(super) const AUDIT_COLUMNS: &str = "seq, at_ms, actor, kind, incident_id, recommendation_id, revision, change_id, policy_version, reason, payload, prev_hash, hash, signal_id, model_version, reason_codes, diff_summary, affected_resources";

/// The log and its tree nodes as the store holds them. Reads see the caller's open transaction.
pub(super) struct SqlNodes<'c>(pub &'c Connection);

impl cairn_audit::stored::StoredLog for SqlNodes<'_> {
    fn scan(&self, push: &mut dyn FnMut(&AuditEvent) -> std::result::Result<(), cairn_audit::ChainBreak>) -> Result<()> {
        scan(self.0, push)
    }
    fn tree_size(&self) -> Result<u64> {
        tree_size(self.0)
    }
}

impl crate::AuditSnapshot for SqlNodes<'_> {
    fn query(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        query(self.0, q)
    }
}

impl NodeSource for SqlNodes<'_> {
    type Error = StoreError;
    fn node(&self, level: u32, index: u64) -> Result<Hash> {
        let h: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT hash FROM audit_tree WHERE level = ?1 AND idx = ?2")?
            .query_row(params![level, index as i64], |r| r.get(0))
            .optional()?;
        h.and_then(|h| h.try_into().ok()).ok_or_else(|| {
            StoreError::Corrupt(format!("audit tree node (level {level}, index {index}) is missing or malformed"))
        })
    }
}

/// How many leaves the stored tree has (leaves are appended in index order, so the last index
/// + 1; answered from the primary key without a scan).
pub(super) fn tree_size(conn: &Connection) -> Result<u64> {
    let last: Option<i64> =
        conn.query_row("SELECT MAX(idx) FROM audit_tree WHERE level = 0", [], |r| r.get(0))?;
    Ok(last.map_or(0, |i| i as u64 + 1))
}

/// Adds entry `seq`'s leaf to the tree (the tree must hold exactly `seq - 1` leaves).
fn add_leaf(conn: &Connection, seq: u64, entry_hash_hex: &str) -> Result<()> {
    let raw = hex::decode(entry_hash_hex)
        .map_err(|_| StoreError::Corrupt(format!("audit entry {seq} has a hash that is not hex")))?;
    let leaf = cairn_audit::merkle::leaf_hash(&raw);
    let nodes = nodes_completed_by(&SqlNodes(conn), seq - 1, leaf)?;
    let mut stmt = conn.prepare_cached("INSERT INTO audit_tree (level, idx, hash) VALUES (?1, ?2, ?3)")?;
    for (level, idx, hash) in nodes {
        stmt.execute(params![level, idx as i64, &hash[..]])?;
    }
    Ok(())
}

/// Builds the tree for entries written before the tree existed (a store migrated from schema 1).
pub(super) fn catch_up_tree(conn: &Connection) -> Result<()> {
    let have = tree_size(conn)?;
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT seq, hash FROM audit_log WHERE seq > ?1 ORDER BY seq")?
        .query_map([have as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<std::result::Result<_, _>>()?;
    for (expected, (seq, hash)) in (have + 1..).zip(rows) {
        if seq as u64 != expected {
            return Err(StoreError::Corrupt(format!("audit entry {seq} does not follow the tree's last leaf")));
        }
        add_leaf(conn, seq as u64, &hash)?;
    }
    Ok(())
}

thread_local! {
    /// The head the last [`append`] on this thread wrote, until the writing transaction takes it
    /// (`SqliteStore::with_tx`, which holds the connection for the whole transaction on one
    /// thread): how the store knows a commit grew the log without querying for it on every write.
    static APPENDED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The head the last append on this thread wrote, if any since the last call; clears it.
pub(super) fn take_appended() -> Option<u64> {
    APPENDED.with(|a| a.take())
}

/// Seals and appends drafts inside the caller's transaction, and grows the tree with them.
pub(super) fn append(tx: &Connection, drafts: &[AuditDraft], now_ms: i64) -> Result<()> {
    if drafts.is_empty() {
        return Ok(());
    }
    let head: Option<(i64, String)> = tx
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (mut seq, mut prev) = head.unwrap_or((0, cairn_audit::GENESIS_HASH.to_string()));
    let mut stmt = tx.prepare_cached(&format!(
        "INSERT INTO audit_log ({AUDIT_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
    ))?;
    for d in drafts {
        seq += 1;
        let e = cairn_audit::seal(&prev, seq as u64, now_ms, d);
        stmt.execute(params![
            seq,
            e.at_ms,
            e.actor,
            e.kind,
            e.incident_id,
            e.recommendation_id,
            e.revision,
            e.change_id,
            e.policy_version,
            e.reason,
            e.payload.to_string(),
            e.prev_hash,
            e.hash,
            e.signal_id,
            e.model_version,
            super::to_json(&e.reason_codes)?,
            e.diff_summary,
            super::to_json(&e.affected_resources)?,
        ])?;
        add_leaf(tx, seq as u64, &e.hash)?;
        prev = e.hash;
    }
    APPENDED.with(|a| a.set(Some(seq as u64)));
    Ok(())
}

/// An audit row with its JSON columns still as text.
pub(super) struct AuditRow {
    event: AuditEvent,
    payload: String,
    reason_codes: String,
    affected_resources: String,
}

impl AuditRow {
    pub(super) fn seq(&self) -> u64 {
        self.event.seq
    }
}

pub(super) fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        event: AuditEvent {
            seq: r.get::<_, i64>(0)? as u64,
            at_ms: r.get(1)?,
            actor: r.get(2)?,
            kind: r.get(3)?,
            incident_id: r.get(4)?,
            recommendation_id: r.get(5)?,
            revision: r.get(6)?,
            change_id: r.get(7)?,
            policy_version: r.get(8)?,
            reason: r.get(9)?,
            payload: serde_json::Value::Null,
            prev_hash: r.get(11)?,
            hash: r.get(12)?,
            signal_id: r.get(13)?,
            model_version: r.get(14)?,
            reason_codes: Vec::new(),
            diff_summary: r.get(16)?,
            affected_resources: Vec::new(),
        },
        payload: r.get(10)?,
        reason_codes: r.get(15)?,
        affected_resources: r.get(17)?,
    })
}

pub(super) fn finish_audit_row(row: AuditRow) -> Result<AuditEvent> {
    let mut e = row.event;
    e.payload = from_json("audit payload", &row.payload)?;
    e.reason_codes = from_json("audit reason codes", &row.reason_codes)?;
    e.affected_resources = from_json("audit affected resources", &row.affected_resources)?;
    Ok(e)
}

/// Only the filters given become SQL conditions, so SQLite can use the index of the one that
/// narrows most (`col = ?1 OR ?1 IS NULL` would make it scan the whole log).
pub(super) fn query(c: &Connection, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
    use rusqlite::types::Value;
    let mut conds = vec!["seq > ?".to_string()];
    let mut args: Vec<Value> = vec![Value::Integer(q.after_seq.unwrap_or(0) as i64)];
    for (col, v) in [
        ("recommendation_id", &q.recommendation_id),
        ("incident_id", &q.incident_id),
        ("actor", &q.actor),
        ("kind", &q.kind),
    ] {
        if let Some(v) = v {
            conds.push(format!("{col} = ?"));
            args.push(Value::Text(v.clone()));
        }
    }
    if let Some(t) = q.since_ms {
        conds.push("at_ms >= ?".into());
        args.push(Value::Integer(t));
    }
    if let Some(t) = q.until_ms {
        conds.push("at_ms <= ?".into());
        args.push(Value::Integer(t));
    }
    args.push(Value::Integer(if q.limit == 0 { i64::MAX } else { q.limit as i64 }));
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {} ORDER BY seq LIMIT ?",
        conds.join(" AND ")
    ))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), audit_row)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(finish_audit_row(r?)?);
    }
    Ok(out)
}

/// Feeds every entry, in stored order, to `push`. A row whose JSON columns do not decode was
/// edited by hand: it is reported as a modified entry, at its sequence number.
pub(super) fn scan(
    c: &Connection,
    mut push: impl FnMut(&AuditEvent) -> std::result::Result<(), cairn_audit::ChainBreak>,
) -> Result<()> {
    let mut stmt = c.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq"))?;
    for r in stmt.query_map([], audit_row)? {
        let row = r?;
        let seq = row.seq();
        let event = finish_audit_row(row).map_err(|_| {
            StoreError::AuditBroken(cairn_audit::ChainBreak {
                seq,
                kind: cairn_audit::BreakKind::HashMismatch,
                detail: "a stored field is not valid JSON — the entry was modified".into(),
            })
        })?;
        push(&event).map_err(StoreError::AuditBroken)?;
    }
    Ok(())
}
