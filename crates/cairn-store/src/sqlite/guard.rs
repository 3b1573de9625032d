//! SQLite tables and queries for [`GuardStore`].

use super::{SqliteStore, append_audit, from_json, to_json, write_change};
use crate::{GuardStore, Result, StoreError};
use cairn_types::{ActionClass, AuditDraft, BreakGlass, ChangeId, ChangeRequest, DisabledAutomation, FreezeState, Target};
use rusqlite::{Connection, OptionalExtension, params};

/// The migration that adds guardrail and break-glass state.
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE breakglass (
        id          TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        opened_ms   INTEGER NOT NULL,
        expires_ms  INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX breakglass_by_state ON breakglass (state, expires_ms);
    CREATE TABLE breakglass_uses (
        change_id     TEXT PRIMARY KEY,
        breakglass_id TEXT NOT NULL REFERENCES breakglass (id),
        at_ms         INTEGER NOT NULL
    );
    CREATE TABLE guard_freeze (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        body  TEXT NOT NULL
    );
    CREATE TABLE disabled_automations (
        action       TEXT NOT NULL,
        service      TEXT NOT NULL,
        environment  TEXT NOT NULL,
        resource     TEXT NOT NULL,
        disabled_ms  INTEGER NOT NULL,
        body         TEXT NOT NULL,
        PRIMARY KEY (action, service, environment, resource)
    );
    -- Rate limits count recent runs of one action class before every auto execution.
    CREATE INDEX recommendations_action ON recommendations (action, created_ms);
"#;

fn write_breakglass(tx: &Connection, bg: &BreakGlass) -> Result<()> {
    let found: Option<i64> = tx.query_row("SELECT version FROM breakglass WHERE id = ?1", [&bg.id], |r| r.get(0)).optional()?;
    match found {
        None if bg.version == 1 => {
            tx.execute(
                "INSERT INTO breakglass (id, state, opened_ms, expires_ms, version, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![bg.id, bg.state.as_str(), bg.opened_ms, bg.expires_ms, bg.version as i64, to_json(bg)?],
            )?;
        }
        None => return Err(StoreError::NotFound(format!("break-glass {}", bg.id))),
        Some(found) if found as u64 + 1 == bg.version => {
            tx.execute(
                "UPDATE breakglass SET state = ?2, expires_ms = ?3, version = ?4, body = ?5 WHERE id = ?1",
                params![bg.id, bg.state.as_str(), bg.expires_ms, bg.version as i64, to_json(bg)?],
            )?;
        }
        Some(found) => {
            return Err(StoreError::Conflict {
                what: format!("break-glass {}", bg.id),
                expected: bg.version.saturating_sub(1),
                found: found as u64,
            });
        }
    }
    Ok(())
}

impl GuardStore for SqliteStore {
    fn save_breakglass(&self, bg: &BreakGlass, audit: &[AuditDraft], now_ms: i64) -> Result<()> {
        self.with_tx(|tx| {
            write_breakglass(tx, bg)?;
            append_audit(tx, audit, now_ms)
        })
    }

    fn use_breakglass(&self, bg: &BreakGlass, change: &ChangeId, audit: &[AuditDraft], now_ms: i64) -> Result<()> {
        self.with_tx(|tx| {
            write_breakglass(tx, bg)?;
            tx.execute(
                "INSERT INTO breakglass_uses (change_id, breakglass_id, at_ms) VALUES (?1, ?2, ?3)",
                params![change.0, bg.id, now_ms],
            )?;
            append_audit(tx, audit, now_ms)
        })
    }

    fn get_breakglass(&self, id: &str) -> Result<Option<BreakGlass>> {
        self.with_conn(|c| {
            let body: Option<String> = c.query_row("SELECT body FROM breakglass WHERE id = ?1", [id], |r| r.get(0)).optional()?;
            body.map(|b| from_json("break-glass", &b)).transpose()
        })
    }

    fn list_breakglass(&self, active_only: bool) -> Result<Vec<BreakGlass>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT body FROM breakglass WHERE (?1 = 0 OR state = 'active') ORDER BY opened_ms DESC, id LIMIT 1000",
            )?;
            let bodies: Vec<String> = stmt.query_map([active_only as i64], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
            bodies.iter().map(|b| from_json("break-glass", b)).collect()
        })
    }

    fn breakglass_for_change(&self, change: &ChangeId) -> Result<Option<BreakGlass>> {
        self.with_conn(|c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT b.body FROM breakglass_uses u JOIN breakglass b ON b.id = u.breakglass_id WHERE u.change_id = ?1",
                    [&change.0],
                    |r| r.get(0),
                )
                .optional()?;
            body.map(|b| from_json("break-glass", &b)).transpose()
        })
    }

    fn freeze_state(&self) -> Result<Option<FreezeState>> {
        self.with_conn(|c| {
            let body: Option<String> = c.prepare_cached("SELECT body FROM guard_freeze WHERE id = 1")?.query_row([], |r| r.get(0)).optional()?;
            body.map(|b| from_json("freeze state", &b)).transpose()
        })
    }

    fn set_freeze(&self, state: &FreezeState, audit: &[AuditDraft], now_ms: i64) -> Result<()> {
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO guard_freeze (id, body) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                [to_json(state)?],
            )?;
            append_audit(tx, audit, now_ms)
        })
    }

    fn disabled_automation(&self, action: ActionClass, target: &Target) -> Result<Option<DisabledAutomation>> {
        self.with_conn(|c| {
            let body: Option<String> = c
                .prepare_cached(
                    "SELECT body FROM disabled_automations WHERE action = ?1 AND service = ?2 AND environment = ?3 AND resource = ?4",
                )?
                .query_row(
                    params![action.as_str(), target.service, target.environment, target.resource],
                    |r| r.get(0),
                )
                .optional()?;
            body.map(|b| from_json("disabled automation", &b)).transpose()
        })
    }

    fn list_disabled_automations(&self) -> Result<Vec<DisabledAutomation>> {
        self.with_conn(|c| {
            let mut stmt = c.prepare("SELECT body FROM disabled_automations ORDER BY disabled_ms DESC LIMIT 1000")?;
            let bodies: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<std::result::Result<_, _>>()?;
            bodies.iter().map(|b| from_json("disabled automation", b)).collect()
        })
    }

    fn hold_change(
        &self,
        change: &ChangeRequest,
        expected_version: u64,
        disabled: Option<&DisabledAutomation>,
        audit: &[AuditDraft],
        now_ms: i64,
    ) -> Result<()> {
        self.with_tx(|tx| {
            write_change(tx, change, expected_version)?;
            if let Some(d) = disabled {
                tx.execute(
                    "INSERT INTO disabled_automations (action, service, environment, resource, disabled_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (action, service, environment, resource) DO UPDATE SET disabled_ms = excluded.disabled_ms, body = excluded.body",
                    params![d.action.as_str(), d.target.service, d.target.environment, d.target.resource, d.disabled_ms, to_json(d)?],
                )?;
            }
            append_audit(tx, audit, now_ms)
        })
    }

    fn enable_automation(&self, action: ActionClass, target: &Target, audit: &[AuditDraft], now_ms: i64) -> Result<bool> {
        self.with_tx(|tx| {
            let n = tx.execute(
                "DELETE FROM disabled_automations WHERE action = ?1 AND service = ?2 AND environment = ?3 AND resource = ?4",
                params![action.as_str(), target.service, target.environment, target.resource],
            )?;
            if n > 0 {
                append_audit(tx, audit, now_ms)?;
            }
            Ok(n > 0)
        })
    }

    fn count_runs_on_target(&self, action: ActionClass, target: &Target, since_ms: i64, excluding: &ChangeId) -> Result<u32> {
        self.with_conn(|c| {
            let n: i64 = c.prepare_cached(
                "SELECT COUNT(*) FROM recommendations r
                 JOIN changes c ON c.recommendation_id = r.id AND c.revision = r.revision
                 WHERE r.service = ?1 AND r.environment = ?2 AND r.resource = ?3 AND r.created_ms >= ?4
                   AND r.action = ?5 AND c.id != ?6
                   AND c.state IN ('executing', 'succeeded', 'failed', 'rolled_back', 'rollback_failed')")?.query_row(
                params![target.service, target.environment, target.resource, since_ms, action.as_str(), excluding.0],
                |r| r.get(0),
            )?;
            Ok(n as u32)
        })
    }

    fn count_auto_runs(&self, action: ActionClass, since_ms: i64) -> Result<u32> {
        self.with_conn(|c| {
            let n: i64 = c.prepare_cached(
                "SELECT COUNT(*) FROM recommendations r
                 JOIN decisions d ON d.recommendation_id = r.id AND d.revision = r.revision
                 JOIN changes c ON c.recommendation_id = r.id AND c.revision = r.revision
                 WHERE r.action = ?1 AND r.created_ms >= ?2 AND d.outcome = 'auto'
                   AND c.state IN ('executing', 'succeeded', 'failed', 'rolled_back', 'rollback_failed')")?.query_row(
                params![action.as_str(), since_ms],
                |r| r.get(0),
            )?;
            Ok(n as u32)
        })
    }
}

#[cfg(test)]
mod tests;
