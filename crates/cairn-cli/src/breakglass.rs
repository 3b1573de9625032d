//! `cairn breakglass open|list|revoke`: time-bound exceptions to policy, over `GuardrailService`.

use crate::client::{bearer, status_error};
use crate::output::print_json;
use crate::{ClientArgs, OutputFormat};
use anyhow::{Context, Result, bail};
use cairn_proto::v1 as pb;
use clap::Subcommand;
use serde_json::json;

pub type Guardrails = pb::guardrail_service_client::GuardrailServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, crate::client::Bearer>,
>;

pub async fn guardrail_client(args: &ClientArgs) -> Result<Guardrails> {
    Ok(pb::guardrail_service_client::GuardrailServiceClient::with_interceptor(
        crate::client::connect(&args.server, &args.tls).await?,
        bearer(crate::client::token(args).await?.as_deref())?,
    ))
}

#[derive(Debug, Subcommand)]
pub enum BreakGlassCmd {
    /// Open a break-glass (you are its owner). While active, a blocked recommendation in scope is
    /// opened for review by two people; nothing runs by itself because of it. Alerted and audited.
    Open {
        #[command(flatten)]
        client: ClientArgs,
        /// Why policy must be bypassed.
        #[arg(long)]
        purpose: String,
        /// The incident or change id it is for.
        #[arg(long)]
        link: String,
        /// Action class in scope, e.g. firewall_relax (repeatable).
        #[arg(long = "action", required = true)]
        actions: Vec<String>,
        /// Target in scope as environment/service/resource; `*` matches any value (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// How long it stays open: e.g. 30m, 2h (at most 4h).
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Close it after this many uses.
        #[arg(long)]
        max_uses: Option<u32>,
    },
    /// Break-glass exceptions, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only those still active.
        #[arg(long)]
        active: bool,
    },
    /// Close one early.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long)]
        reason: String,
    },
}

/// `90s`, `30m`, `2h` → seconds (the server bounds a break-glass to four hours).
fn duration_secs(s: &str) -> Result<u32> {
    let ms = cairn_types::parse_duration_ms(s).map_err(anyhow::Error::msg)?;
    u32::try_from(ms / 1000).context("duration too long")
}

fn target(s: &str) -> Result<pb::Target> {
    let parts: Vec<&str> = s.split('/').collect();
    let [environment, service, resource] = parts[..] else {
        bail!("target {s:?}: expected environment/service/resource (use * for any)");
    };
    Ok(pb::Target { environment: environment.into(), service: service.into(), resource: resource.into() })
}

fn breakglass_json(b: &pb::BreakGlass) -> serde_json::Value {
    let scope = b.scope.clone().unwrap_or_default();
    json!({
        "id": b.id, "owner": b.owner, "purpose": b.purpose, "link": b.link, "state": b.state,
        "actions": scope.actions,
        "targets": scope.targets.iter().map(|t| format!("{}/{}/{}", t.environment, t.service, t.resource)).collect::<Vec<_>>(),
        "opened_ms": b.opened_ms, "expires_ms": b.expires_ms, "uses": b.uses,
        "max_uses": (b.max_uses > 0).then_some(b.max_uses),
        "closed_by": b.closed_by, "close_reason": b.close_reason,
    })
}

fn print(items: &[pb::BreakGlass], format: OutputFormat) {
    match format {
        OutputFormat::Json => print_json(&json!(items.iter().map(breakglass_json).collect::<Vec<_>>())),
        OutputFormat::Table => {
            println!("{:<16} {:<10} {:<14} {:<6} {:<14} purpose", "ID", "STATE", "OWNER", "USES", "EXPIRES_MS");
            for b in items {
                let uses = if b.max_uses > 0 { format!("{}/{}", b.uses, b.max_uses) } else { b.uses.to_string() };
                println!("{:<16} {:<10} {:<14} {:<6} {:<14} {}", b.id, b.state, b.owner, uses, b.expires_ms, b.purpose);
            }
        }
    }
}

pub async fn run(cmd: BreakGlassCmd) -> Result<()> {
    match cmd {
        BreakGlassCmd::Open { client, purpose, link, actions, targets, duration, max_uses } => {
            let req = pb::OpenBreakGlassRequest {
                purpose,
                link,
                scope: Some(pb::BreakGlassScope { actions, targets: targets.iter().map(|t| target(t)).collect::<Result<_>>()? }),
                duration_secs: duration_secs(&duration)?,
                max_uses: max_uses.unwrap_or(0),
            };
            let bg = guardrail_client(&client).await?.open_break_glass(req).await.map_err(status_error)?.into_inner();
            print(std::slice::from_ref(&bg), client.output);
        }
        BreakGlassCmd::List { client, active } => {
            let r = guardrail_client(&client)
                .await?
                .list_break_glass(pb::ListBreakGlassRequest { active_only: active })
                .await
                .map_err(status_error)?
                .into_inner();
            print(&r.items, client.output);
        }
        BreakGlassCmd::Revoke { client, id, reason } => {
            let bg = guardrail_client(&client)
                .await?
                .revoke_break_glass(pb::RevokeBreakGlassRequest { id, reason })
                .await
                .map_err(status_error)?
                .into_inner();
            print(std::slice::from_ref(&bg), client.output);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_targets_parse_or_say_why() {
        assert_eq!(duration_secs("2h").unwrap(), 7200);
        assert_eq!(duration_secs("30m").unwrap(), 1800);
        assert!(duration_secs("45").is_err(), "a bare number is ambiguous");
        let t = target("production/payments/*").unwrap();
        assert_eq!((t.environment.as_str(), t.service.as_str(), t.resource.as_str()), ("production", "payments", "*"));
        assert!(target("payments").is_err());
    }
}
