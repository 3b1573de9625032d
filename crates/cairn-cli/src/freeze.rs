//! `cairn freeze on|off|status` and `cairn guard status|enable`: the global freeze switch and the
//! automations the loop guard disabled, over `GuardrailService`. Audited and alerted server-side.

use crate::ClientArgs;
use crate::OutputFormat;
use crate::breakglass::guardrail_client;
use crate::client::status_error;
use crate::output::print_json;
use anyhow::Result;
use cairn_proto::v1 as pb;
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum FreezeCmd {
    /// Freeze: nothing runs by itself until someone turns it off.
    On {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        reason: String,
    },
    /// Lift the freeze.
    Off {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        reason: String,
    },
    /// Show the freeze switch and disabled automations.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum GuardCmd {
    /// Show the freeze switch and the automations the loop guard disabled.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-enable an automation the loop guard disabled (only a person can).
    Enable {
        #[command(flatten)]
        client: ClientArgs,
        /// Action class, e.g. restart_process.
        #[arg(long)]
        action: String,
        /// environment/service/resource.
        #[arg(long)]
        target: String,
        #[arg(long)]
        reason: String,
    },
}

fn print(s: &pb::GuardrailStatus, format: OutputFormat) {
    let disabled: Vec<serde_json::Value> = s
        .disabled
        .iter()
        .map(|d| {
            json!({
                "action": d.action,
                "target": crate::output::target_string(d.target.as_ref()),
                "disabled_ms": d.disabled_ms,
                "runs": d.runs,
                "reason": d.reason,
            })
        })
        .collect();
    match format {
        OutputFormat::Json => print_json(&json!({
            "frozen": s.frozen, "freeze_reason": s.freeze_reason, "freeze_by": s.freeze_by, "freeze_at_ms": s.freeze_at_ms,
            "disabled": disabled,
        })),
        OutputFormat::Table => {
            if s.frozen {
                println!("FROZEN by {} at {} ms: {}", s.freeze_by, s.freeze_at_ms, s.freeze_reason);
            } else {
                println!("not frozen");
            }
            for d in &s.disabled {
                println!("disabled: {} on {} ({} runs) — {}", d.action, crate::output::target_string(d.target.as_ref()), d.runs, d.reason);
            }
        }
    }
}

async fn status(client: &ClientArgs) -> Result<()> {
    let s = guardrail_client(client).await?.get_guardrail_status(pb::GetGuardrailStatusRequest {}).await.map_err(status_error)?.into_inner();
    print(&s, client.output);
    Ok(())
}

pub async fn run_freeze(cmd: FreezeCmd) -> Result<()> {
    let (client, frozen, reason) = match cmd {
        FreezeCmd::Status { client } => return status(&client).await,
        FreezeCmd::On { client, reason } => (client, true, reason),
        FreezeCmd::Off { client, reason } => (client, false, reason),
    };
    let s = guardrail_client(&client).await?.set_freeze(pb::SetFreezeRequest { frozen, reason }).await.map_err(status_error)?.into_inner();
    print(&s, client.output);
    Ok(())
}

pub async fn run_guard(cmd: GuardCmd) -> Result<()> {
    match cmd {
        GuardCmd::Status { client } => status(&client).await,
        GuardCmd::Enable { client, action, target, reason } => {
            let parts: Vec<&str> = target.split('/').collect();
            let [environment, service, resource] = parts[..] else {
                anyhow::bail!("target {target:?}: expected environment/service/resource");
            };
            let req = pb::EnableAutomationRequest {
                action,
                target: Some(pb::Target { environment: environment.into(), service: service.into(), resource: resource.into() }),
                reason,
            };
            let s = guardrail_client(&client).await?.enable_automation(req).await.map_err(status_error)?.into_inner();
            print(&s, client.output);
            Ok(())
        }
    }
}
