//! The command adapter: runs a configured program with an argument vector — never through a shell —
//! so nothing in a recommendation (a resource name, a parameter) can become a second command. Values
//! are substituted inside single arguments; the program gets no stdin, a deadline, and its output is
//! captured up to a bound. Exit status 0 is success.

use crate::{Adapter, AdapterFuture};
use cairn_types::{ChangeRequest, ExecutionOutcome, Recommendation};
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// `[executor.command]`: the argv to run for a change and for its rollback.
///
/// Placeholders, replaced inside an argument (never splitting it): `{action}`, `{service}`,
/// `{environment}`, `{resource}`, `{change_id}`, `{recommendation_id}`, `{revision}`,
/// `{action_digest}`, `{stage}` (the progressive stage being run or undone, empty for a one-step
/// change), and `{param:NAME}` for a recommendation parameter (empty when absent).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandConfig {
    /// Program and arguments that carry a change out, e.g. `["/usr/local/bin/remediate", "{action}", "{resource}"]`.
    pub execute: Vec<String>,
    /// Program and arguments that undo it (the declared rollback).
    pub rollback: Vec<String>,
    /// Deadline for one run; past it the process is killed and the run failed.
    pub timeout_ms: u64,
    /// Bytes of stdout and of stderr kept, each.
    pub max_output_bytes: usize,
}

impl CommandConfig {
    /// What is wrong with this configuration, naming the key.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.execute.first().is_none_or(|p| p.trim().is_empty()) {
            return Some(("executor.command.execute", "needs at least the program to run"));
        }
        if self.rollback.first().is_none_or(|p| p.trim().is_empty()) {
            return Some(("executor.command.rollback", "needs at least the program to run: every change carries its way back"));
        }
        if self.timeout_ms == 0 {
            return Some(("executor.command.timeout_ms", "must be at least 1"));
        }
        None
    }
}

/// Runs [`CommandConfig::execute`] for a change and [`CommandConfig::rollback`] to undo it.
#[derive(Debug)]
pub struct CommandAdapter {
    cfg: CommandConfig,
}

impl CommandAdapter {
    pub fn new(mut cfg: CommandConfig) -> CommandAdapter {
        if cfg.max_output_bytes == 0 {
            cfg.max_output_bytes = 16 * 1024;
        }
        CommandAdapter { cfg }
    }

    /// The argv for one phase, with every placeholder replaced inside its own argument.
    pub fn argv(template: &[String], rec: &Recommendation, change: &ChangeRequest) -> Vec<String> {
        template.iter().map(|arg| substitute(arg, rec, change)).collect()
    }

    async fn run(&self, phase: &str, template: &[String], rec: &Recommendation, change: &ChangeRequest) -> (ExecutionOutcome, String) {
        let argv = Self::argv(template, rec, change);
        let Some((program, args)) = argv.split_first() else {
            return (ExecutionOutcome::Failed { error: format!("no {phase} command configured") }, String::new());
        };
        let spawned = tokio::process::Command::new(program)
            .args(args)
            .env("CAIRN_PHASE", phase)
            .env("CAIRN_CHANGE_ID", &change.id.0)
            .env("CAIRN_ACTION_DIGEST", &change.action_digest)
            .env("CAIRN_STAGE", change.stage.as_deref().unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => return (ExecutionOutcome::Failed { error: format!("cannot start {program}: {e}") }, String::new()),
        };
        let max = self.cfg.max_output_bytes;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let finished = tokio::time::timeout(Duration::from_millis(self.cfg.timeout_ms), async {
            let (out, err, status) = tokio::join!(read_bounded(stdout, max), read_bounded(stderr, max), child.wait());
            (out, err, status)
        })
        .await;
        let Ok((out, err, status)) = finished else {
            // The child is killed here (kill_on_drop) and reaped by tokio.
            let _ = child.start_kill();
            return (
                ExecutionOutcome::Failed { error: format!("{program} did not finish within {} ms and was killed", self.cfg.timeout_ms) },
                String::new(),
            );
        };
        let mut output = out;
        if !err.is_empty() {
            output.push_str("--- stderr ---\n");
            output.push_str(&err);
        }
        match status {
            Ok(s) if s.success() => (ExecutionOutcome::Succeeded, output),
            Ok(s) => (ExecutionOutcome::Failed { error: format!("{program} exited with {s}") }, output),
            Err(e) => (ExecutionOutcome::Failed { error: format!("cannot wait for {program}: {e}") }, output),
        }
    }
}

fn substitute(arg: &str, rec: &Recommendation, change: &ChangeRequest) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        let value = match name {
            "action" => Some(rec.action.as_str().to_string()),
            "service" => Some(rec.target.service.clone()),
            "environment" => Some(rec.target.environment.clone()),
            "resource" => Some(rec.target.resource.clone()),
            "change_id" => Some(change.id.0.clone()),
            "recommendation_id" => Some(rec.id.0.clone()),
            "revision" => Some(rec.revision.to_string()),
            "action_digest" => Some(change.action_digest.clone()),
            "stage" => Some(change.stage.clone().unwrap_or_default()),
            _ => name.strip_prefix("param:").map(|p| rec.parameters.get(p).cloned().unwrap_or_default()),
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[open..open + close + 2]),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Reads a pipe to its end, keeping at most `max` bytes (the rest is read and dropped so the child
/// never blocks on a full pipe).
async fn read_bounded(pipe: Option<impl AsyncRead + Unpin>, max: usize) -> String {
    let Some(mut pipe) = pipe else { return String::new() };
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    if total > kept.len() { format!("{text}\n[output truncated at {max} bytes]\n") } else { text }
}

impl Adapter for CommandAdapter {
    fn name(&self) -> &str {
        "command"
    }

    fn execute<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(self.run("execute", &self.cfg.execute, rec, change))
    }

    fn rollback<'a>(&'a self, rec: &'a Recommendation, change: &'a ChangeRequest) -> AdapterFuture<'a> {
        Box::pin(self.run("rollback", &self.cfg.rollback, rec, change))
    }
}
