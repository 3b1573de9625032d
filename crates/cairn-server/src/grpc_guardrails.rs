//! The gRPC `GuardrailService`: break-glass open/list/revoke, the freeze switch, and re-enabling
//! automations the loop guard disabled. Thin: each call converts, calls the engine on the blocking
//! pool, converts back.

use cairn_service::Engine;
use crate::error::ApiError;
use crate::grpc::{blocking, principal};
use cairn_proto::v1 as pb;
use cairn_types::{ActionClass, BreakGlass, BreakGlassScope, DisabledAutomation, FreezeState, Target};
use cairn_workflow::BreakGlassRequest;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct GuardrailSvc {
    pub engine: Arc<Engine>,
}

fn target_from(t: Option<pb::Target>) -> Target {
    let t = t.unwrap_or_default();
    Target { service: t.service, environment: t.environment, resource: t.resource }
}

fn target_to(t: &Target) -> pb::Target {
    pb::Target { service: t.service.clone(), environment: t.environment.clone(), resource: t.resource.clone() }
}

fn action_from(s: &str) -> Result<ActionClass, ApiError> {
    ActionClass::parse(s).ok_or_else(|| {
        let known: Vec<&str> = ActionClass::ALL.iter().map(|a| a.as_str()).collect();
        ApiError::InvalidArgument(format!("unknown action class {s:?}; expected one of {}", known.join(", ")))
    })
}

fn breakglass_to(bg: &BreakGlass) -> pb::BreakGlass {
    pb::BreakGlass {
        id: bg.id.clone(),
        owner: bg.owner.clone(),
        purpose: bg.purpose.clone(),
        link: bg.link.clone(),
        scope: Some(pb::BreakGlassScope {
            actions: bg.scope.actions.iter().map(|a| a.as_str().to_string()).collect(),
            targets: bg.scope.targets.iter().map(target_to).collect(),
        }),
        opened_ms: bg.opened_ms,
        expires_ms: bg.expires_ms,
        max_uses: bg.max_uses.unwrap_or(0),
        uses: bg.uses,
        state: bg.state.as_str().to_string(),
        closed_ms: bg.closed_ms.unwrap_or(0),
        closed_by: bg.closed_by.clone().unwrap_or_default(),
        close_reason: bg.close_reason.clone().unwrap_or_default(),
    }
}

fn status_to(freeze: Option<FreezeState>, disabled: Vec<DisabledAutomation>) -> pb::GuardrailStatus {
    let f = freeze.unwrap_or_default();
    pb::GuardrailStatus {
        frozen: f.frozen,
        freeze_reason: f.reason,
        freeze_by: f.by,
        freeze_at_ms: f.at_ms,
        disabled: disabled
            .iter()
            .map(|d| pb::DisabledAutomation {
                action: d.action.as_str().to_string(),
                target: Some(target_to(&d.target)),
                disabled_ms: d.disabled_ms,
                runs: d.runs,
                reason: d.reason.clone(),
            })
            .collect(),
    }
}

fn status_of(engine: &Engine) -> Result<pb::GuardrailStatus, ApiError> {
    let (f, d) = engine.desk().guardrail_status()?;
    Ok(status_to(f, d))
}

#[tonic::async_trait]
impl pb::guardrail_service_server::GuardrailService for GuardrailSvc {
    async fn open_break_glass(&self, request: Request<pb::OpenBreakGlassRequest>) -> Result<Response<pb::BreakGlass>, Status> {
        let id = crate::grpc::caller(&request)?;
        self.engine.desk().check_step_up("opening a break-glass", &id).map_err(|e| Status::from(ApiError::from(e)))?;
        let who = id.principal;
        let r = request.into_inner();
        let scope = r.scope.unwrap_or_default();
        let actions = scope.actions.iter().map(|a| action_from(a)).collect::<Result<Vec<_>, _>>().map_err(Status::from)?;
        let req = BreakGlassRequest {
            purpose: r.purpose,
            link: r.link,
            scope: BreakGlassScope { actions, targets: scope.targets.into_iter().map(|t| target_from(Some(t))).collect() },
            duration_ms: i64::from(r.duration_secs) * 1000,
            max_uses: (r.max_uses > 0).then_some(r.max_uses),
        };
        let engine = self.engine.clone();
        let bg = blocking(move || Ok(engine.desk().open_breakglass(&who, req)?)).await?;
        Ok(Response::new(breakglass_to(&bg)))
    }

    async fn list_break_glass(&self, request: Request<pb::ListBreakGlassRequest>) -> Result<Response<pb::ListBreakGlassResponse>, Status> {
        principal(&request)?;
        let active_only = request.into_inner().active_only;
        let engine = self.engine.clone();
        let items = blocking(move || Ok(engine.desk().list_breakglass(active_only)?)).await?;
        Ok(Response::new(pb::ListBreakGlassResponse { items: items.iter().map(breakglass_to).collect() }))
    }

    async fn revoke_break_glass(&self, request: Request<pb::RevokeBreakGlassRequest>) -> Result<Response<pb::BreakGlass>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let engine = self.engine.clone();
        let bg = blocking(move || Ok(engine.desk().revoke_breakglass(&who, &r.id, &r.reason)?)).await?;
        Ok(Response::new(breakglass_to(&bg)))
    }

    async fn set_freeze(&self, request: Request<pb::SetFreezeRequest>) -> Result<Response<pb::GuardrailStatus>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let engine = self.engine.clone();
        let status = blocking(move || {
            engine.desk().set_freeze(&who, r.frozen, &r.reason)?;
            status_of(&engine)
        })
        .await?;
        Ok(Response::new(status))
    }

    async fn get_guardrail_status(&self, request: Request<pb::GetGuardrailStatusRequest>) -> Result<Response<pb::GuardrailStatus>, Status> {
        principal(&request)?;
        let engine = self.engine.clone();
        Ok(Response::new(blocking(move || status_of(&engine)).await?))
    }

    async fn enable_automation(&self, request: Request<pb::EnableAutomationRequest>) -> Result<Response<pb::GuardrailStatus>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let action = action_from(&r.action).map_err(Status::from)?;
        let target = target_from(r.target);
        let engine = self.engine.clone();
        let status = blocking(move || {
            if !engine.desk().enable_automation(&who, action, &target, &r.reason)? {
                return Err(ApiError::NotFound(format!("{action} on {target} is not disabled")));
            }
            status_of(&engine)
        })
        .await?;
        Ok(Response::new(status))
    }
}
