//! `cairn audit report`: daily and weekly summaries of the audit trail for people, read from a data
//! directory (`--data-dir`) or from a running server (`AuditService.Query`), computed by
//! `cairn_offline::report`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cairn_offline::report::{self, Format};
use cairn_proto::v1 as pb;
use cairn_store::{AuditLog, AuditQuery};
use cairn_types::AuditEvent;
use clap::{Args, ValueEnum};

use crate::client::{audit_client, status_error};
use crate::ClientArgs;

/// Events fetched per request or query.
const PAGE: u32 = 5_000;

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Read the audit log from this data directory (the server's `data_dir`) instead of asking
    /// the server.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How far back the report reaches: a number and a unit, `m`, `h`, `d` or `w` (e.g. `24h`, `7d`).
    #[arg(long, default_value = "7d", value_parser = parse_window)]
    pub since: i64,
    /// `table` for a terminal, `markdown` for a page or a ticket.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// The report's "now" in Unix milliseconds (for reproducible reports); defaults to the clock.
    #[arg(long, hide = true)]
    pub now_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Markdown,
}

/// `7d` → milliseconds.
fn parse_window(s: &str) -> Result<i64, String> {
    cairn_types::parse_duration_ms(s)
}

pub async fn run(args: ReportArgs) -> Result<()> {
    let now_ms = args.now_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let since_ms = now_ms.saturating_sub(args.since);
    let events = match &args.data_dir {
        Some(dir) => from_data_dir(dir, since_ms)?,
        None => from_server(&args.client, since_ms).await?,
    };
    let r = report::summarize(&events, since_ms)?;
    let format = match args.format {
        ReportFormat::Table => Format::Table,
        ReportFormat::Markdown => Format::Markdown,
    };
    print!("{}", report::render(&r, format));
    Ok(())
}

fn from_data_dir(dir: &std::path::Path, since_ms: i64) -> Result<Vec<AuditEvent>> {
    let db = dir.join("cairn.db");
    if !db.is_file() {
        bail!("{}: no Cairn database here (expected the server's data_dir)", db.display());
    }
    let store = cairn_store::SqliteStore::open_read_only(&db).with_context(|| format!("cannot open {}", db.display()))?;
    let mut out: Vec<AuditEvent> = Vec::new();
    loop {
        let q = AuditQuery {
            since_ms: Some(since_ms),
            after_seq: out.last().map(|e| e.seq),
            limit: PAGE as usize,
            ..Default::default()
        };
        let page = store.audit_events(&q).context("cannot read the audit log")?;
        let done = page.len() < PAGE as usize;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

async fn from_server(args: &ClientArgs, since_ms: i64) -> Result<Vec<AuditEvent>> {
    let mut c = audit_client(args).await?;
    let mut out: Vec<AuditEvent> = Vec::new();
    loop {
        let r = c
            .query(pb::AuditQueryRequest {
                since_ms,
                after_seq: out.last().map_or(0, |e| e.seq),
                limit: PAGE,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let done = r.events.len() < PAGE as usize;
        for e in r.events {
            out.push(event(e)?);
        }
        if done {
            return Ok(out);
        }
    }
}

fn event(e: pb::AuditEvent) -> Result<AuditEvent> {
    cairn_server::convert::audit_from_pb(&e).with_context(|| format!("audit event {}: payload is not JSON", e.seq))
}

#[cfg(test)]
mod tests {
    use super::parse_window;

    #[test]
    fn windows_parse_with_their_units_and_reject_the_rest() {
        assert_eq!(parse_window("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_window("24h"), Ok(86_400_000));
        assert_eq!(parse_window("90m"), Ok(5_400_000));
        assert_eq!(parse_window("2w"), Ok(14 * 86_400_000));
        assert!(parse_window("7").is_err());
        assert!(parse_window("d").is_err());
        assert!(parse_window("7 fortnights").is_err());
    }
}
