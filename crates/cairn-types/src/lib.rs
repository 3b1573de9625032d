//! The hand-off types of Cairn's pipeline.
//!
//! Data moves one way: `Signal` → `Anomaly` → `Incident` → `Recommendation` → `Decision` →
//! `ChangeRequest` (with its `Approval`s) → `Execution`, and every state change after `recommend`
//! leaves an `AuditEvent`. Each stage crate takes one of these and gives the next; this crate is where
//! they are defined, once, with the domain vocabulary of the seed text.
//!
//! This crate owns plain data and the few pure functions that belong to the data itself (series
//! identity, action digests, ordering of severities). It must never do I/O, read a clock, or know
//! about a protocol: no gRPC, no HTTP, no SQL.

#![forbid(unsafe_code)]

#[cfg(test)]
mod duration_tests {
    use super::parse_duration_ms;

    #[test]
    fn durations_need_a_unit_and_say_why_not() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_duration_ms("2w"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration_ms("1h 30m"), Ok(5_400_000));
        let e = parse_duration_ms("45").unwrap_err();
        assert!(e.contains("\"45\"") && e.contains("e.g. 90s"), "{e}");
        assert!(parse_duration_ms("2 fortnights").is_err());
    }
}

mod change;
mod detect;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod guard;
mod labels;
mod recommend;
mod route;
mod signal;

pub use change::{
    EXPIRING_STATES, SUPERSEDABLE_STATES, Approval, AuditDraft, AuditEvent, ChangeId, ChangeRequest, ChangeState, Execution, ExecutionOutcome,
    Principal, Rejection, RolloutStop, StageApproval, StopCause,
};
pub use guard::{
    BREAKGLASS_MAX_MS, BreakGlass, BreakGlassScope, BreakGlassState, DisabledAutomation, Escalation, FreezeState,
};
pub use detect::{Anomaly, Incident, IncidentChanges, IncidentId, IncidentMember, ProbableCause, SignalKind, signal_kind};
pub use labels::{Labels, SeriesId, METRIC_NAME_LABEL, series_id_of_sorted};
pub use recommend::{
    ActionClass, BlastRadius, Evidence, Recommendation, RecommendationId, Reversibility,
    RollbackPlan, STAGES_PARAMETER, Target, VerificationCheck,
};
pub use route::{Decision, Outcome};
pub use signal::{AlertEvent, AlertStatus, MetricSample, SampleBatch, SeriesSamples, Severity, Signal};

/// Milliseconds since the Unix epoch, UTC. The one time representation in hand-off types, so that
/// nothing in the pipeline needs a calendar library and tests can drive time with plain integers.
pub type TimestampMs = i64;

/// A duration as people type it, in milliseconds: a number and a unit (`500ms`, `90s`, `30m`,
/// `2h`, `7d`, `2w`, or several, `1h 30m`). The one parser for every flag and setting that takes a
/// duration; a bare number is refused, since it would be ambiguous.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("duration {s:?}: {e} (e.g. 90s, 30m, 2h, 7d)"))?;
    i64::try_from(d.as_millis()).map_err(|_| format!("duration {s:?}: too long"))
}

/// Duration settings in configuration files: a key named for its unit (`window_ms`,
/// `retry_after_secs`) takes a plain number in that unit, as it always has, or a duration as people
/// type it (`"15m"`, `"1h 30m"`, `"250ms"`; see [`parse_duration_ms`]). Use with
/// `#[serde(deserialize_with = "cairn_types::duration_setting::ms")]` (or `::secs`).
pub mod duration_setting {
    use serde::Deserializer;
    use serde::de::{Error, Visitor};
    use std::fmt;

    /// Reads a number (in units of `per_unit_ms`) or a duration string, as a count of those units.
    struct Units(u64);

    impl<'de> Visitor<'de> for Units {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number in the key's unit, or a duration such as \"90s\", \"15m\" or \"1h 30m\"")
        }

        fn visit_u64<E: Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }

        fn visit_i64<E: Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n).map_err(|_| E::custom(format!("a duration cannot be negative ({n})")))
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<u64, E> {
            let ms = super::parse_duration_ms(s).map_err(E::custom)? as u64;
            if !ms.is_multiple_of(self.0) {
                return Err(E::custom(format!("duration {s:?} is not a whole number of the key's unit ({} ms)", self.0)));
            }
            Ok(ms / self.0)
        }
    }

    fn read<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D, per_unit_ms: u64) -> Result<T, D::Error> {
        let n = d.deserialize_any(Units(per_unit_ms))?;
        T::try_from(n).map_err(|_| D::Error::custom(format!("duration {n} is too large")))
    }

    /// A duration setting in milliseconds.
    pub fn ms<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        read(d, 1)
    }

    /// A duration setting in seconds.
    pub fn secs<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        read(d, 1000)
    }
}

/// Confidence below which nothing runs by itself (invariant 6), whatever a policy or a setting
/// says: the router turns such an `auto` into `advisory`, and the executor refuses it again.
pub const MIN_AUTO_CONFIDENCE: f64 = 0.5;

/// The fewest approvals a change under review needs, by risk tier: one, and two distinct people at
/// tier 3. The router raises a bundle's `approvals_required` to it; the executor counts against it.
pub const fn min_approvals(tier: Option<u8>) -> u8 {
    if matches!(tier, Some(3)) { 2 } else { 1 }
}

/// The principal subject Cairn itself acts as when it proposes or runs a change. It can never
/// approve anything (invariant 3).
pub const CAIRN_SERVICE_SUBJECT: &str = "system:cairn";

/// Label or annotation by which an alert names the playbook to use. Honoured only from a sender
/// allowed to steer (scope `ingest:annotate`, or a rule the operator lists).
pub const PLAYBOOK_KEY: &str = "cairn_playbook";
/// Annotation by which an alert pins a recommendation's confidence; honoured as [`PLAYBOOK_KEY`].
pub const CONFIDENCE_ANNOTATION: &str = "cairn_confidence";
/// Annotation Cairn itself sets on an alert whose steering it ignored, saying why; never taken from
/// a sender.
pub const WITHHELD_ANNOTATION: &str = "cairn_withheld";
