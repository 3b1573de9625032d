//! Maintenance windows, and the facts the executor re-checks at execution time that are not in the
//! change itself: whether a window is open for the target now, and who is still allowed to approve.
//!
//! A window selects targets by service and environment (`*` matches any) and is open either on a
//! weekly schedule (UTC days, a start time and a duration; it may run past midnight) or between an
//! explicit start and end. Tier-3 changes, and any change whose decision asks for a window, run only
//! while one is open for their target.
//!
//! The [`ExecutionGate`] is built from the configuration the server runs with *now*. An approval
//! given by someone who has since been removed from the configuration, or from every approver group
//! of the change, no longer counts towards its quorum.

use cairn_types::{Principal, Target};
use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc, Weekday};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const MINUTES_PER_WEEK: i64 = 7 * 24 * 60;

/// A window is misconfigured; the message names the window and the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("maintenance window {name:?}: {problem}")]
pub struct WindowError {
    pub name: String,
    pub problem: String,
}

/// Recurs every week, in UTC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklySchedule {
    /// Days the window opens, e.g. `["sat", "sun"]` (three-letter or full English names).
    pub days: Vec<String>,
    /// Opening time, `HH:MM` UTC.
    pub start: String,
    /// How long it stays open, in minutes (at most one week).
    pub duration_minutes: u32,
}

/// One `[[maintenance_windows]]` entry of the server configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub name: String,
    /// Service the window applies to; `*` (the default) for every service.
    #[serde(default = "any")]
    pub service: String,
    /// Environment the window applies to; `*` (the default) for every environment.
    #[serde(default = "any")]
    pub environment: String,
    /// A recurring window. Give either this or `start` and `end`.
    #[serde(default)]
    pub weekly: Option<WeeklySchedule>,
    /// A one-off window: open from `start` (inclusive) to `end` (exclusive), RFC 3339.
    #[serde(default)]
    pub start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub end: Option<DateTime<Utc>>,
}

fn any() -> String {
    "*".into()
}

fn parse_day(s: &str) -> Option<Weekday> {
    s.trim().parse::<Weekday>().ok()
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl MaintenanceWindow {
    /// Refuses a window that could never be read the way its author meant.
    pub fn validate(&self) -> Result<(), WindowError> {
        let err = |problem: String| WindowError { name: self.name.clone(), problem };
        if self.name.trim().is_empty() {
            return Err(err("`name` is empty".into()));
        }
        match (&self.weekly, self.start, self.end) {
            (Some(w), None, None) => {
                if w.days.is_empty() {
                    return Err(err("`weekly.days` is empty".into()));
                }
                if let Some(bad) = w.days.iter().find(|d| parse_day(d).is_none()) {
                    return Err(err(format!("`weekly.days` has {bad:?}, expected a weekday such as \"sun\"")));
                }
                if parse_hhmm(&w.start).is_none() {
                    return Err(err(format!("`weekly.start` is {:?}, expected HH:MM (UTC)", w.start)));
                }
                if w.duration_minutes == 0 || i64::from(w.duration_minutes) > MINUTES_PER_WEEK {
                    return Err(err("`weekly.duration_minutes` must be between 1 and 10080".into()));
                }
                Ok(())
            }
            (None, Some(s), Some(e)) if s < e => Ok(()),
            (None, Some(_), Some(_)) => Err(err("`start` must be before `end`".into())),
            _ => Err(err("give either `weekly` or both `start` and `end`".into())),
        }
    }

    fn selects(&self, target: &Target) -> bool {
        (self.service == "*" || self.service == target.service)
            && (self.environment == "*" || self.environment == target.environment)
    }

    /// Whether the window is open at `now_ms` (it does not look at the target).
    pub fn is_open_at(&self, now_ms: i64) -> bool {
        let Some(now) = Utc.timestamp_millis_opt(now_ms).single() else { return false };
        if let (Some(s), Some(e)) = (self.start, self.end) {
            return s <= now && now < e;
        }
        let Some(w) = &self.weekly else { return false };
        let Some(start) = parse_hhmm(&w.start) else { return false };
        let minute_of_week = i64::from(now.weekday().num_days_from_monday()) * 1440
            + i64::from(now.hour()) * 60
            + i64::from(now.minute());
        w.days.iter().filter_map(|d| parse_day(d)).any(|day| {
            let opens = i64::from(day.num_days_from_monday()) * 1440 + i64::from(start);
            (minute_of_week - opens).rem_euclid(MINUTES_PER_WEEK) < i64::from(w.duration_minutes)
        })
    }
}

/// Every configured window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaintenanceWindows(Vec<MaintenanceWindow>);

impl MaintenanceWindows {
    pub fn new(windows: Vec<MaintenanceWindow>) -> Result<MaintenanceWindows, WindowError> {
        for w in &windows {
            w.validate()?;
        }
        Ok(MaintenanceWindows(windows))
    }

    /// The first window open now for this target, if any.
    pub fn open_for(&self, target: &Target, now_ms: i64) -> Option<&MaintenanceWindow> {
        self.0.iter().find(|w| w.selects(target) && w.is_open_at(now_ms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The principals configured now, by stable subject, with their current groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    configured: BTreeMap<String, Vec<String>>,
    /// Subject prefixes of people whose groups an OpenID Provider vouched for when they approved
    /// (`corp:`): the server checked their groups then; no directory here can re-check them.
    federated: Vec<String>,
}

impl Roster {
    pub fn new(principals: impl IntoIterator<Item = Principal>) -> Roster {
        Roster { configured: principals.into_iter().map(|p| (p.subject, p.groups)).collect(), federated: Vec::new() }
    }

    /// Also counts approvals by subjects under these prefixes (issuers whose people may review).
    pub fn with_federated(mut self, prefixes: impl IntoIterator<Item = String>) -> Roster {
        self.federated.extend(prefixes.into_iter().filter(|p| !p.is_empty()));
        self
    }

    /// Whether `subject` is still configured as an approver and still in one of `groups`, or comes
    /// from an issuer still trusted to name reviewers. An empty `groups` names nobody.
    pub fn may_approve(&self, subject: &str, groups: &[String]) -> bool {
        if groups.is_empty() {
            return false;
        }
        if self.federated.iter().any(|p| subject.starts_with(p.as_str())) && !self.configured.contains_key(subject) {
            return true;
        }
        self.configured.get(subject).is_some_and(|mine| groups.iter().any(|g| mine.contains(g)))
    }
}

/// What the executor checks at execution time beyond the change: open windows and the current
/// roster of approvers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutionGate {
    pub windows: MaintenanceWindows,
    /// `None` when no identity directory is configured (library use without a server): approvals
    /// are then counted as recorded. The server always sets it from its tokens.
    pub roster: Option<Roster>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn target(service: &str, env: &str) -> Target {
        Target { service: service.into(), environment: env.into(), resource: "r".into() }
    }

    fn weekly(days: &[&str], start: &str, minutes: u32) -> MaintenanceWindow {
        MaintenanceWindow {
            name: "w".into(),
            service: "*".into(),
            environment: "production".into(),
            weekly: Some(WeeklySchedule { days: days.iter().map(|d| d.to_string()).collect(), start: start.into(), duration_minutes: minutes }),
            start: None,
            end: None,
        }
    }

    #[test]
    fn weekly_window_opens_and_closes_on_the_minute() {
        // 2026-11-29 is a Sunday.
        let w = weekly(&["sun"], "02:00", 120);
        assert!(!w.is_open_at(ms("2026-11-29T01:59:59Z")));
        assert!(w.is_open_at(ms("2026-11-29T02:00:00Z")));
        assert!(w.is_open_at(ms("2026-11-29T03:59:59Z")));
        assert!(!w.is_open_at(ms("2026-11-29T04:00:00Z")));
        assert!(!w.is_open_at(ms("2026-11-28T02:30:00Z")), "Saturday is not Sunday");
    }

    #[test]
    fn weekly_window_may_run_past_midnight_and_past_the_week_end() {
        let w = weekly(&["Sunday"], "23:00", 180);
        assert!(w.is_open_at(ms("2026-11-29T23:30:00Z")));
        assert!(w.is_open_at(ms("2026-11-30T01:59:00Z")), "Monday 01:59 is inside Sunday 23:00 + 3h");
        assert!(!w.is_open_at(ms("2026-11-30T02:00:00Z")));
    }

    #[test]
    fn explicit_window_is_half_open() {
        let w = MaintenanceWindow {
            name: "once".into(),
            service: "db".into(),
            environment: "*".into(),
            weekly: None,
            start: Some("2026-12-01T02:00:00Z".parse().unwrap()),
            end: Some("2026-12-01T04:00:00Z".parse().unwrap()),
        };
        let all = MaintenanceWindows::new(vec![w]).unwrap();
        assert!(all.open_for(&target("db", "staging"), ms("2026-12-01T02:00:00Z")).is_some());
        assert!(all.open_for(&target("db", "staging"), ms("2026-12-01T04:00:00Z")).is_none());
        assert!(all.open_for(&target("web", "staging"), ms("2026-12-01T03:00:00Z")).is_none(), "other service");
    }

    #[test]
    fn selectors_match_service_and_environment() {
        let all = MaintenanceWindows::new(vec![weekly(&["sun"], "00:00", 1440)]).unwrap();
        let sunday = ms("2026-11-29T12:00:00Z");
        assert!(all.open_for(&target("any", "production"), sunday).is_some());
        assert!(all.open_for(&target("any", "staging"), sunday).is_none());
    }

    #[test]
    fn misconfigured_windows_are_refused_with_the_key() {
        let mut w = weekly(&["someday"], "02:00", 60);
        assert!(w.validate().unwrap_err().problem.contains("weekly.days"));
        w = weekly(&["sun"], "25:00", 60);
        assert!(w.validate().unwrap_err().problem.contains("weekly.start"));
        w = weekly(&["sun"], "02:00", 0);
        assert!(w.validate().unwrap_err().problem.contains("duration_minutes"));
        w.weekly = None;
        assert!(w.validate().unwrap_err().problem.contains("either"));
        w.start = Some("2026-12-01T04:00:00Z".parse().unwrap());
        w.end = Some("2026-12-01T02:00:00Z".parse().unwrap());
        assert!(w.validate().unwrap_err().problem.contains("before"));
    }

    #[test]
    fn roster_counts_only_current_members_of_the_groups() {
        let roster = Roster::new([Principal { subject: "user:alice".into(), display_name: "A".into(), groups: vec!["sre".into()] }]);
        assert!(roster.may_approve("user:alice", &["sre".into()]));
        assert!(!roster.may_approve("user:alice", &[]), "an empty group list names nobody");
        assert!(!roster.may_approve("user:alice", &["sre-leads".into()]), "moved out of the group");
        assert!(!roster.may_approve("user:bob", &[]), "removed from the configuration");
        let roster = roster.with_federated(["corp:".to_string()]);
        assert!(roster.may_approve("corp:carol", &["sre".into()]), "vouched for by a trusted issuer");
        assert!(!roster.may_approve("corp:carol", &[]), "an empty group list names nobody");
        assert!(!roster.may_approve("other:carol", &["sre".into()]), "an issuer no longer trusted");
    }
}
