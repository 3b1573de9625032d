//! SQLite table and queries for [`LeaseStore`]: one row per executing change, written by the claim
//! in the claim's transaction and deleted by whichever write moves the change out of `executing`.

use super::{SqliteStore, append_audit, from_json, write_change};
use crate::{Lease, LeaseStore, LeaseTerms, Result};
use cairn_types::{AuditDraft, ChangeId, ChangeRequest, ChangeState};
use rusqlite::{Connection, OptionalExtension, params};

/// The migration that adds leases. Changes already `executing` when it runs were claimed by a
/// build that recorded no lease: they get an expired lease of an unknown holder whose adapter call
/// may have begun, so recovery treats their outcome as unknown.
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE change_leases (
        change_id        TEXT PRIMARY KEY,
        holder           TEXT NOT NULL,
        claimed_ms       INTEGER NOT NULL,
        expires_ms       INTEGER NOT NULL,
        adapter_call     TEXT,
        adapter_call_ms  INTEGER,
        -- Stages that had run and verified in the claim when the adapter call began.
        stages_done_at_call INTEGER
    );
    CREATE INDEX change_leases_by_expiry ON change_leases (expires_ms);
    INSERT INTO change_leases (change_id, holder, claimed_ms, expires_ms, adapter_call, adapter_call_ms)
        SELECT id, 'unknown (claimed before leases were recorded)',
               COALESCE(json_extract(body, '$.updated_ms'), 0), COALESCE(json_extract(body, '$.updated_ms'), 0),
               'unknown', COALESCE(json_extract(body, '$.updated_ms'), 0)
        FROM changes WHERE state = 'executing';
"#;

const COLUMNS: &str = "change_id, holder, claimed_ms, expires_ms, adapter_call, adapter_call_ms, stages_done_at_call";

fn row_to_lease(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        change_id: ChangeId(r.get(0)?),
        holder: r.get(1)?,
        claimed_ms: r.get(2)?,
        expires_ms: r.get(3)?,
        adapter_call: r.get(4)?,
        adapter_call_ms: r.get(5)?,
        stages_done_at_call: r.get(6)?,
    })
}

fn read(conn: &Connection, change: &str) -> Result<Option<Lease>> {
    Ok(conn
        .query_row(&format!("SELECT {COLUMNS} FROM change_leases WHERE change_id = ?1"), [change], row_to_lease)
        .optional()?)
}

/// Records `terms.holder`'s lease on each change just claimed, in the claim's transaction.
pub(super) fn grant(tx: &Connection, claimed: &[ChangeRequest], terms: &LeaseTerms, now_ms: i64) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO change_leases (change_id, holder, claimed_ms, expires_ms, adapter_call, adapter_call_ms)
         VALUES (?1, ?2, ?3, ?4, NULL, NULL)",
    )?;
    for c in claimed {
        stmt.execute(params![c.id.0, terms.holder, now_ms, now_ms.saturating_add(terms.ttl_ms)])?;
    }
    Ok(())
}

/// Ends the lease of a change that leaves `executing`; called by every change write.
pub(super) fn end_unless_executing(tx: &Connection, change: &ChangeRequest) -> Result<()> {
    if change.state != ChangeState::Executing {
        tx.prepare_cached("DELETE FROM change_leases WHERE change_id = ?1")?.execute([&change.id.0])?;
    }
    Ok(())
}

impl SqliteStore {
    /// Extends `holder`'s lease and, when `call` is given, records the adapter call beginning.
    fn extend(&self, change: &ChangeId, holder: &str, call: Option<(&str, u32)>, now_ms: i64) -> Result<Option<Lease>> {
        let until = now_ms.saturating_add(self.lease_terms().ttl_ms);
        self.with_tx(|tx| {
            let n = match call {
                Some((call, stages_done)) => tx.execute(
                    "UPDATE change_leases SET expires_ms = ?3, adapter_call = ?4, adapter_call_ms = ?5, stages_done_at_call = ?6
                     WHERE change_id = ?1 AND holder = ?2",
                    params![change.0, holder, until, call, now_ms, stages_done],
                )?,
                None => tx.execute(
                    "UPDATE change_leases SET expires_ms = ?3 WHERE change_id = ?1 AND holder = ?2",
                    params![change.0, holder, until],
                )?,
            };
            if n == 0 {
                return Ok(None);
            }
            read(tx, &change.0)
        })
    }
}

impl LeaseStore for SqliteStore {
    fn set_lease_terms(&self, terms: LeaseTerms) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = terms;
    }

    fn lease_terms(&self) -> LeaseTerms {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lease(&self, change: &ChangeId) -> Result<Option<Lease>> {
        self.with_conn(|c| read(c, &change.0))
    }

    fn renew_lease(&self, change: &ChangeId, holder: &str, now_ms: i64) -> Result<Option<Lease>> {
        self.extend(change, holder, None, now_ms)
    }

    fn mark_adapter_call(&self, change: &ChangeId, holder: &str, call: &str, stages_done: u32, now_ms: i64) -> Result<Option<Lease>> {
        self.extend(change, holder, Some((call, stages_done)), now_ms)
    }

    fn expired_leases(&self, now_ms: i64, limit: usize) -> Result<Vec<(ChangeRequest, Lease)>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare(
                "SELECT l.change_id, l.holder, l.claimed_ms, l.expires_ms, l.adapter_call, l.adapter_call_ms, l.stages_done_at_call, c.body
                 FROM change_leases l JOIN changes c ON c.id = l.change_id
                 WHERE l.expires_ms <= ?1 AND c.state = 'executing'
                 ORDER BY l.expires_ms, l.change_id LIMIT ?2",
            )?;
            let rows: Vec<(Lease, String)> = stmt
                .query_map(params![now_ms, limit as i64], |r| Ok((row_to_lease(r)?, r.get(7)?)))?
                .collect::<std::result::Result<_, _>>()?;
            rows.into_iter().map(|(lease, body)| Ok((from_json("change", &body)?, lease))).collect()
        })
    }

    fn resolve_interrupted(
        &self,
        change: &ChangeRequest,
        expected_version: u64,
        lease: &Lease,
        audit: &[AuditDraft],
        now_ms: i64,
    ) -> Result<bool> {
        self.with_tx(|tx| {
            let current = read(tx, &change.id.0)?;
            let still_abandoned = current.is_some_and(|l| {
                l.holder == lease.holder && l.expires_ms == lease.expires_ms && l.expires_ms <= now_ms
            });
            if !still_abandoned {
                return Ok(false);
            }
            // Recovery always moves the change out of `executing`, so this write also ends the lease.
            write_change(tx, change, expected_version)?;
            append_audit(tx, audit, now_ms)?;
            Ok(true)
        })
    }
}
