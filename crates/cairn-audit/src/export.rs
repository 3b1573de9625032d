//! The export schema: one JSON object per audit entry, for SIEMs and archives
//! (`cairn audit export --format jsonl`). Stable: fields are only ever added.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | string | always `cairn.audit.event.v1` |
//! | `seq` | integer | gapless sequence number from 1; resume an export with `--after-seq` |
//! | `at_ms` | integer | Unix time in milliseconds when the entry was written |
//! | `actor` | string | the principal's subject, or `system:cairn` |
//! | `kind` | string | e.g. `decision.made`, `change.approved`, `change.executed` |
//! | `incident_id`, `recommendation_id`, `change_id`, `signal_id` | string or null | the subjects |
//! | `revision` | integer or null | the recommendation revision |
//! | `policy_version`, `model_version` | string or null | what decided / what scored |
//! | `reason` | string | human-readable reason |
//! | `reason_codes`, `affected_resources` | array of strings | machine-readable reasons; touched resources |
//! | `diff_summary` | string or null | what changed, in one line |
//! | `payload` | object | the canonical payload the hash covers |
//! | `prev_hash`, `hash` | hex string | the hash chain; `hash` is also the Merkle leaf data |

use cairn_types::AuditEvent;
use serde_json::{Value, json};

pub const EXPORT_SCHEMA: &str = "cairn.audit.event.v1";

/// One export line's object.
pub fn export_value(e: &AuditEvent) -> Value {
    json!({
        "schema": EXPORT_SCHEMA,
        "seq": e.seq,
        "at_ms": e.at_ms,
        "actor": e.actor,
        "kind": e.kind,
        "incident_id": e.incident_id,
        "recommendation_id": e.recommendation_id,
        "revision": e.revision,
        "change_id": e.change_id,
        "signal_id": e.signal_id,
        "policy_version": e.policy_version,
        "model_version": e.model_version,
        "reason": e.reason,
        "reason_codes": e.reason_codes,
        "diff_summary": e.diff_summary,
        "affected_resources": e.affected_resources,
        "payload": e.payload,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

/// Reads an exported line back into the entry it came from (so an export can be re-verified).
pub fn import_value(v: Value) -> Result<AuditEvent, String> {
    if v.get("schema").and_then(Value::as_str) != Some(EXPORT_SCHEMA) {
        return Err(format!("not a {EXPORT_SCHEMA} line"));
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exported_line_reads_back_to_the_same_entry_and_still_verifies() {
        let mut log = crate::tests::chain(3);
        log[1].reason_codes = vec!["tier_2".into()];
        log[1].hash = crate::entry_hash(&log[1]);
        log[2].prev_hash = log[1].hash.clone();
        log[2].hash = crate::entry_hash(&log[2]);
        let lines: Vec<String> = log.iter().map(|e| export_value(e).to_string()).collect();
        assert!(lines.iter().all(|l| !l.contains('\n')), "one line per event");
        let back: Vec<AuditEvent> = lines
            .iter()
            .map(|l| import_value(serde_json::from_str(l).expect("json")).expect("entry"))
            .collect();
        assert_eq!(back, log);
        assert_eq!(crate::verify_chain(back).expect("verifies").entries, 3);
        let v: Value = serde_json::from_str(&lines[0]).expect("json");
        for key in ["schema", "seq", "at_ms", "actor", "kind", "recommendation_id", "payload", "hash", "prev_hash", "reason_codes"] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
    }
}
