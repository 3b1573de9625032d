//! Summaries of the audit trail for people (`cairn audit report`): per UTC day and per ISO week,
//! how policy routed proposals (outcome × tier), how long people took to approve (p50/p90/p99 per
//! tier), what happened to changes (approved, rejected, expired, executed, rolled back, rollback
//! failed, held by a guardrail), break-glass exceptions (opened, used, expired, revoked), and who
//! overrode policy most (the actors who opened break-glass exceptions).
//!
//! The events go into one polars frame, one row per event; every figure is a filter, group-by,
//! join or quantile over it. The caller reads the events (store or server); this module only
//! computes and renders.
//!
//! Approval latency runs from `decision.made` (written in the same transaction as the proposal) to
//! `change.approved` of the same change, attributed to the period in which the approval happened.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cairn_types::AuditEvent;
use chrono::{DateTime, Datelike, Utc};
use polars::prelude::*;

/// How many overriding actors each period lists.
pub const TOP_ACTORS: usize = 5;

/// Quantiles of approval latency, in the order they are reported.
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("audit report: {0}")]
    Polars(#[from] PolarsError),
}

/// Day or ISO week.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
}

impl Period {
    fn column(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
        }
    }
}

/// The whole report: the window, then one summary per day and per week that has events.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditReport {
    pub since_ms: i64,
    pub events: usize,
    pub daily: Vec<PeriodSummary>,
    pub weekly: Vec<PeriodSummary>,
}

/// The figures of one day (`2026-11-20`) or week (`2026-W47`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeriodSummary {
    pub period: String,
    /// `decision.made` events by (outcome, tier); tier `-` when the outcome has none.
    pub decisions: BTreeMap<(String, String), u64>,
    /// Approval latency by tier.
    pub latency: BTreeMap<String, Latency>,
    /// Change and break-glass events by kind (e.g. `change.rolled_back`, `breakglass.opened`).
    pub kinds: BTreeMap<String, u64>,
    /// Actors who opened break-glass exceptions, most first (ties by name), at most [`TOP_ACTORS`].
    pub top_overriders: Vec<(String, u64)>,
}

impl PeriodSummary {
    /// Events of one kind in this period (0 when none).
    pub fn count(&self, kind: &str) -> u64 {
        self.kinds.get(kind).copied().unwrap_or(0)
    }
}

/// Approval latency of one tier in one period, in seconds (linear interpolation between ranks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub approvals: u64,
    pub p50_s: f64,
    pub p90_s: f64,
    pub p99_s: f64,
}

/// The kinds counted in [`PeriodSummary::kinds`], in the order the tables show them.
pub const COUNTED_KINDS: [&str; 11] = [
    "change.approved",
    "change.rejected",
    "change.expired",
    "change.executed",
    "change.rolled_back",
    "change.rollback_failed",
    "change.held_by_guardrail",
    "breakglass.opened",
    "breakglass.used",
    "breakglass.expired",
    "breakglass.revoked",
];

fn day_and_week(at_ms: i64) -> (String, String) {
    let t = DateTime::<Utc>::from_timestamp_millis(at_ms).unwrap_or_default();
    let w = t.iso_week();
    (t.format("%Y-%m-%d").to_string(), format!("{}-W{:02}", w.year(), w.week()))
}

/// One row per event at or after `since_ms`.
fn frame(events: &[AuditEvent], since_ms: i64) -> Result<DataFrame, ReportError> {
    let events: Vec<&AuditEvent> = events.iter().filter(|e| e.at_ms >= since_ms).collect();
    let (days, weeks): (Vec<String>, Vec<String>) = events.iter().map(|e| day_and_week(e.at_ms)).unzip();
    let str_of = |e: &AuditEvent, key: &str| e.payload.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let tier = |e: &AuditEvent| e.payload.get("tier").and_then(|v| v.as_u64()).map_or_else(|| "-".to_string(), |t| t.to_string());
    let df = DataFrame::new_infer_height(vec![
        Column::new("at_ms".into(), events.iter().map(|e| e.at_ms).collect::<Vec<i64>>()),
        Column::new("day".into(), days),
        Column::new("week".into(), weeks),
        Column::new("kind".into(), events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>()),
        Column::new("actor".into(), events.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>()),
        Column::new("change_id".into(), events.iter().map(|e| e.change_id.clone()).collect::<Vec<_>>()),
        Column::new("outcome".into(), events.iter().map(|e| str_of(e, "outcome")).collect::<Vec<_>>()),
        Column::new("tier".into(), events.iter().map(|e| tier(e)).collect::<Vec<_>>()),
    ])?;
    Ok(df)
}

fn of_kind(df: &DataFrame, kind: &str) -> Result<DataFrame, ReportError> {
    let mask = df.column("kind")?.str()?.equal(kind);
    Ok(df.filter(&mask)?)
}

fn strings(df: &DataFrame, name: &str) -> Result<Vec<String>, ReportError> {
    Ok(df.column(name)?.str()?.iter().map(|s| s.unwrap_or("-").to_string()).collect())
}

fn counts(df: &DataFrame) -> Result<Vec<u64>, ReportError> {
    let c = df.column("at_ms_count")?.cast(&DataType::UInt64)?;
    Ok(c.u64()?.iter().map(|n| n.unwrap_or(0)).collect())
}

/// Summarises the events at or after `since_ms`.
pub fn summarize(events: &[AuditEvent], since_ms: i64) -> Result<AuditReport, ReportError> {
    let df = frame(events, since_ms)?;
    Ok(AuditReport {
        since_ms,
        events: df.height(),
        daily: by_period(&df, Period::Day)?,
        weekly: by_period(&df, Period::Week)?,
    })
}

fn by_period(df: &DataFrame, period: Period) -> Result<Vec<PeriodSummary>, ReportError> {
    let p = period.column();
    let mut out: BTreeMap<String, PeriodSummary> = BTreeMap::new();
    for name in strings(df, p)? {
        out.entry(name.clone()).or_insert_with(|| PeriodSummary { period: name, ..Default::default() });
    }

    // Outcome × tier of routing decisions.
    let decided = of_kind(df, "decision.made")?;
    let g = decided.group_by([p, "outcome", "tier"])?.select(["at_ms"]).count()?;
    for (((name, outcome), tier), n) in strings(&g, p)?.into_iter().zip(strings(&g, "outcome")?).zip(strings(&g, "tier")?).zip(counts(&g)?) {
        if let Some(s) = out.get_mut(&name) {
            s.decisions.insert((outcome, tier), n);
        }
    }

    // Change and break-glass events by kind.
    let g = df.group_by([p, "kind"])?.select(["at_ms"]).count()?;
    for ((name, kind), n) in strings(&g, p)?.into_iter().zip(strings(&g, "kind")?).zip(counts(&g)?) {
        if let Some(s) = out.get_mut(&name).filter(|_| COUNTED_KINDS.contains(&kind.as_str())) {
            s.kinds.insert(kind, n);
        }
    }

    // Approval latency: decision → approval of the same change, in the approval's period.
    let mut decided_at = decided.select(["change_id", "at_ms", "tier"])?;
    decided_at.rename("at_ms", "decided_ms".into())?;
    let approved = of_kind(df, "change.approved")?.select(["change_id", "at_ms", p])?;
    let joined = approved.inner_join(&decided_at, ["change_id"], ["change_id"])?;
    let waited = (joined.column("at_ms")?.as_materialized_series() - joined.column("decided_ms")?.as_materialized_series())?;
    let waited = waited.i64()?.clone();
    let names = strings(&joined, p)?;
    let tiers = strings(&joined, "tier")?;
    let mut seen: Vec<(String, String)> = names.iter().cloned().zip(tiers.iter().cloned()).collect();
    seen.sort();
    seen.dedup();
    for (name, tier) in seen {
        let mask: BooleanChunked = names.iter().zip(&tiers).map(|(n, t)| *n == name && *t == tier).collect();
        let sample = waited.filter(&mask)?;
        let q = sample.quantiles(&QUANTILES, QuantileMethod::Linear)?;
        let secs = |i: usize| q[i].unwrap_or(f64::NAN) / 1000.0;
        let lat = Latency { approvals: sample.len() as u64, p50_s: secs(0), p90_s: secs(1), p99_s: secs(2) };
        if let Some(s) = out.get_mut(&name) {
            s.latency.insert(tier, lat);
        }
    }

    // Who opened break-glass exceptions, most first.
    let opened = of_kind(df, "breakglass.opened")?;
    let g = opened.group_by([p, "actor"])?.select(["at_ms"]).count()?;
    for ((name, actor), n) in strings(&g, p)?.into_iter().zip(strings(&g, "actor")?).zip(counts(&g)?) {
        if let Some(s) = out.get_mut(&name) {
            s.top_overriders.push((actor, n));
        }
    }
    for s in out.values_mut() {
        s.top_overriders.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        s.top_overriders.truncate(TOP_ACTORS);
    }
    Ok(out.into_values().collect())
}

/// How [`render`] lays out the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned plain-text columns for a terminal.
    Table,
    /// GitHub-flavoured Markdown tables.
    Markdown,
}

/// One table: a title, a header and rows of cells.
struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn fmt_secs(s: f64) -> String {
    format!("{s:.1}")
}

fn tables(summaries: &[PeriodSummary], label: &str) -> Vec<Table> {
    let mut out = Vec::new();
    let mut combos: Vec<&(String, String)> = summaries.iter().flat_map(|s| s.decisions.keys()).collect();
    combos.sort();
    combos.dedup();
    let mut header = vec![label.to_string()];
    header.extend(combos.iter().map(|(o, t)| if t == "-" { o.clone() } else { format!("{o} t{t}") }));
    out.push(Table {
        title: format!("{label}: decisions by outcome and tier"),
        header,
        rows: summaries
            .iter()
            .map(|s| {
                let mut r = vec![s.period.clone()];
                r.extend(combos.iter().map(|k| s.decisions.get(k).copied().unwrap_or(0).to_string()));
                r
            })
            .collect(),
    });
    out.push(Table {
        title: format!("{label}: approval latency (seconds, decision to approval)"),
        header: ["period", "tier", "approvals", "p50", "p90", "p99"].map(String::from).to_vec(),
        rows: summaries
            .iter()
            .flat_map(|s| {
                s.latency.iter().map(|(t, l)| {
                    vec![s.period.clone(), t.clone(), l.approvals.to_string(), fmt_secs(l.p50_s), fmt_secs(l.p90_s), fmt_secs(l.p99_s)]
                })
            })
            .collect(),
    });
    let mut header = vec![label.to_string()];
    header.extend(COUNTED_KINDS.iter().map(|k| k.to_string()));
    out.push(Table {
        title: format!("{label}: changes, rollbacks, guardrail holds and break-glass exceptions"),
        header,
        rows: summaries
            .iter()
            .map(|s| {
                let mut r = vec![s.period.clone()];
                r.extend(COUNTED_KINDS.iter().map(|k| s.count(k).to_string()));
                r
            })
            .collect(),
    });
    out.push(Table {
        title: format!("{label}: top overriding actors (break-glass opened)"),
        header: ["period", "actor", "opened"].map(String::from).to_vec(),
        rows: summaries
            .iter()
            .flat_map(|s| s.top_overriders.iter().map(|(a, n)| vec![s.period.clone(), a.clone(), n.to_string()]))
            .collect(),
    });
    out
}

/// The report as text: daily tables, then weekly tables.
pub fn render(report: &AuditReport, format: Format) -> String {
    let since = DateTime::<Utc>::from_timestamp_millis(report.since_ms).unwrap_or_default();
    let mut out = String::new();
    match format {
        Format::Markdown => {
            let _ = writeln!(out, "# Cairn audit report\n\n{} events since {}.\n", report.events, since.to_rfc3339());
        }
        Format::Table => {
            let _ = writeln!(out, "Cairn audit report: {} events since {}\n", report.events, since.to_rfc3339());
        }
    }
    for t in tables(&report.daily, "day").into_iter().chain(tables(&report.weekly, "week")) {
        match format {
            Format::Markdown => markdown(&mut out, &t),
            Format::Table => plain(&mut out, &t),
        }
    }
    out
}

fn markdown(out: &mut String, t: &Table) {
    let _ = writeln!(out, "## {}\n", t.title);
    if t.rows.is_empty() {
        let _ = writeln!(out, "(none)\n");
        return;
    }
    let _ = writeln!(out, "| {} |", t.header.join(" | "));
    let _ = writeln!(out, "|{}", t.header.iter().enumerate().map(|(i, _)| if i == 0 { "---|" } else { "---:|" }).collect::<String>());
    for r in &t.rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn plain(out: &mut String, t: &Table) {
    let _ = writeln!(out, "{}", t.title);
    if t.rows.is_empty() {
        let _ = writeln!(out, "  (none)\n");
        return;
    }
    let widths: Vec<usize> =
        (0..t.header.len()).map(|i| t.rows.iter().map(|r| r[i].len()).chain([t.header[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> =
            cells.iter().zip(&widths).enumerate().map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") }).collect();
        format!("  {}", parts.join("  ").trim_end())
    };
    let _ = writeln!(out, "{}", line(&t.header));
    for r in &t.rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    /// Monday 2026-11-16 00:00 UTC, the start of ISO week 47.
    const MON: i64 = 1_794_787_200_000;

    struct Log(Vec<AuditEvent>);

    impl Log {
        fn push(&mut self, at_ms: i64, kind: &str, actor: &str, change: Option<&str>, payload: serde_json::Value) {
            self.0.push(AuditEvent {
                seq: self.0.len() as u64 + 1,
                at_ms,
                actor: actor.into(),
                kind: kind.into(),
                incident_id: None,
                recommendation_id: None,
                revision: Some(1),
                change_id: change.map(str::to_string),
                policy_version: None,
                reason: String::new(),
                payload,
                signal_id: None,
                model_version: None,
                reason_codes: Vec::new(),
                diff_summary: None,
                affected_resources: Vec::new(),
                prev_hash: String::new(),
                hash: String::new(),
            });
        }
        fn decided(&mut self, at_ms: i64, change: &str, outcome: &str, tier: Option<u8>) {
            self.push(at_ms, "decision.made", "system:cairn", Some(change), json!({ "outcome": outcome, "tier": tier }));
        }
        fn approved(&mut self, at_ms: i64, change: &str, actor: &str) {
            self.push(at_ms, "change.approved", actor, Some(change), json!({ "state": "approved" }));
        }
    }

    /// A known week and a bit: see the assertions for what each part contributes.
    fn log() -> Log {
        let mut l = Log(Vec::new());
        // Before the window: must vanish when `since` is Monday.
        l.push(MON - 7 * DAY, "breakglass.opened", "user:mallory", None, json!({}));
        // Monday: ten tier-2 reviews approved after 1..=10 minutes; two autos; one blocked.
        for i in 1..=10 {
            let c = format!("c{i}");
            l.decided(MON + HOUR, &c, "review", Some(2));
            l.approved(MON + HOUR + i * MIN, &c, "user:alice");
        }
        l.decided(MON + 2 * HOUR, "a1", "auto", Some(0));
        l.decided(MON + 2 * HOUR, "a2", "auto", Some(0));
        l.decided(MON + 3 * HOUR, "b1", "blocked", None);
        // Tuesday: a tier-3 review approved after an hour, rollbacks, a hold, break-glass.
        let tue = MON + DAY;
        l.decided(tue + 8 * HOUR, "t3", "review", Some(3));
        l.approved(tue + 9 * HOUR, "t3", "user:bob");
        l.push(tue + 10 * HOUR, "change.rolled_back", "system:cairn", Some("a1"), json!({}));
        l.push(tue + 10 * HOUR, "change.rolled_back", "system:cairn", Some("a2"), json!({}));
        l.push(tue + 11 * HOUR, "change.rollback_failed", "system:cairn", Some("c1"), json!({}));
        l.push(tue + 11 * HOUR, "change.held_by_guardrail", "system:cairn", Some("c2"), json!({ "guardrail": "loop_guard" }));
        l.push(tue + 12 * HOUR, "breakglass.opened", "user:bob", None, json!({}));
        l.push(tue + 12 * HOUR, "breakglass.opened", "user:alice", None, json!({}));
        l.push(tue + 13 * HOUR, "breakglass.opened", "user:alice", None, json!({}));
        l.push(tue + 13 * HOUR, "breakglass.used", "system:cairn", Some("b1"), json!({}));
        l.push(tue + 20 * HOUR, "breakglass.expired", "system:cairn", None, json!({}));
        // Next Monday (week 48): a tier-2 review approved after a minute, one rejected.
        let next = MON + 7 * DAY;
        l.decided(next, "n1", "review", Some(2));
        l.approved(next + MIN, "n1", "user:carol");
        l.decided(next, "n2", "review", Some(2));
        l.push(next + 5 * MIN, "change.rejected", "user:carol", Some("n2"), json!({ "state": "rejected" }));
        l
    }

    fn key(o: &str, t: &str) -> (String, String) {
        (o.to_string(), t.to_string())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn daily_counts_and_latency_percentiles_are_exact() {
        let r = summarize(&log().0, MON).unwrap();
        assert_eq!(r.events, log().0.len() - 1, "the event before the window is left out");
        let days: Vec<&str> = r.daily.iter().map(|s| s.period.as_str()).collect();
        assert_eq!(days, ["2026-11-16", "2026-11-17", "2026-11-23"]);

        let mon = &r.daily[0];
        assert_eq!(mon.decisions.get(&key("review", "2")), Some(&10));
        assert_eq!(mon.decisions.get(&key("auto", "0")), Some(&2));
        assert_eq!(mon.decisions.get(&key("blocked", "-")), Some(&1));
        assert_eq!(mon.decisions.len(), 3);
        let l = mon.latency["2"];
        assert_eq!(l.approvals, 10);
        // 1..=10 minutes, linear interpolation: 5.5, 9.1 and 9.91 minutes.
        assert!(close(l.p50_s, 330.0) && close(l.p90_s, 546.0) && close(l.p99_s, 594.6), "{l:?}");
        assert_eq!(mon.count("change.approved"), 10);

        let tue = &r.daily[1];
        assert_eq!(tue.latency["3"].approvals, 1);
        assert!(close(tue.latency["3"].p50_s, 3600.0) && close(tue.latency["3"].p99_s, 3600.0));
        assert_eq!(tue.count("change.rolled_back"), 2);
        assert_eq!(tue.count("change.rollback_failed"), 1);
        assert_eq!(tue.count("change.held_by_guardrail"), 1);
        assert_eq!(tue.count("breakglass.opened"), 3);
        assert_eq!(tue.count("breakglass.used"), 1);
        assert_eq!(tue.count("breakglass.expired"), 1);
        assert_eq!(tue.count("breakglass.revoked"), 0);
        assert_eq!(tue.top_overriders, vec![("user:alice".to_string(), 2), ("user:bob".to_string(), 1)]);

        let next = &r.daily[2];
        assert_eq!(next.count("change.rejected"), 1);
        assert!(close(next.latency["2"].p50_s, 60.0));
    }

    #[test]
    fn weekly_rows_pool_the_days_of_each_iso_week() {
        let r = summarize(&log().0, MON).unwrap();
        let weeks: Vec<&str> = r.weekly.iter().map(|s| s.period.as_str()).collect();
        assert_eq!(weeks, ["2026-W47", "2026-W48"]);
        let w47 = &r.weekly[0];
        assert_eq!(w47.decisions.get(&key("review", "2")), Some(&10));
        assert_eq!(w47.decisions.get(&key("review", "3")), Some(&1));
        assert_eq!(w47.latency["2"].approvals, 10);
        assert_eq!(w47.latency["3"].approvals, 1);
        assert_eq!(w47.count("change.approved"), 11);
        assert_eq!(w47.count("change.rolled_back"), 2);
        let w48 = &r.weekly[1];
        assert_eq!(w48.decisions.get(&key("review", "2")), Some(&2));
        assert_eq!(w48.latency["2"].approvals, 1);
        assert_eq!(w48.count("breakglass.opened"), 0);
    }

    #[test]
    fn since_excludes_earlier_events_and_including_them_shows_them() {
        let narrow = summarize(&log().0, MON).unwrap();
        assert!(narrow.daily.iter().all(|s| s.top_overriders.iter().all(|(a, _)| a != "user:mallory")));
        let wide = summarize(&log().0, MON - 8 * DAY).unwrap();
        assert_eq!(wide.weekly[0].period, "2026-W46");
        assert_eq!(wide.weekly[0].top_overriders, vec![("user:mallory".to_string(), 1)]);
        assert_eq!(wide.events, narrow.events + 1);
        // A window after everything is empty, not an error.
        let none = summarize(&log().0, MON + 30 * DAY).unwrap();
        assert_eq!((none.events, none.daily.len(), none.weekly.len()), (0, 0, 0));
        assert!(render(&none, Format::Markdown).contains("(none)"));
    }

    #[test]
    fn markdown_and_table_show_the_same_numbers() {
        let r = summarize(&log().0, MON).unwrap();
        let md = render(&r, Format::Markdown);
        // Decision columns sorted: auto t0, blocked, review t2, review t3.
        assert!(md.contains("| day | auto t0 | blocked | review t2 | review t3 |"), "{md}");
        assert!(md.contains("| 2026-11-16 | 2 | 1 | 10 | 0 |"), "{md}");
        assert!(md.contains("| 2026-11-16 | 2 | 10 | 330.0 | 546.0 | 594.6 |"), "{md}");
        assert!(md.contains("| 2026-W47 | 3 | 1 | 3600.0 | 3600.0 | 3600.0 |"), "{md}");
        assert!(md.contains("| 2026-11-17 | user:alice | 2 |"), "{md}");
        // Approved, rejected, expired, executed, rolled back, rollback failed, held, bg opened/used/expired/revoked.
        assert!(md.contains("| 2026-11-17 | 1 | 0 | 0 | 0 | 2 | 1 | 1 | 3 | 1 | 1 | 0 |"), "{md}");

        let table = render(&r, Format::Table);
        // Every data row (first cell a day or week) carries the same cells in both formats.
        let md_rows: Vec<Vec<&str>> = md
            .lines()
            .filter_map(|l| l.strip_prefix("| 20"))
            .map(|l| l.trim_end_matches(" |").split(" | ").collect())
            .collect();
        let table_rows: Vec<Vec<&str>> =
            table.lines().filter_map(|l| l.strip_prefix("  20")).map(|l| l.split_whitespace().collect()).collect();
        // Daily: decisions 3, latency 3, kinds 3, overriders 2; weekly: 2, 3, 2, 2.
        assert_eq!(md_rows.len(), 3 + 3 + 3 + 2 + 2 + 3 + 2 + 2, "{md}");
        assert_eq!(md_rows, table_rows);
        assert!(table.contains("2026-11-16") && !table.contains('|'));
    }
}
