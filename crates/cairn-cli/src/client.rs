//! Client commands: thin calls to the gRPC API with the caller's bearer token.

use crate::output;
use crate::{ClientArgs, OutputFormat};
use anyhow::{Context, Result, bail};
use cairn_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Review = pb::review_service_client::ReviewServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;
pub type Incidents = pb::incident_service_client::IncidentServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;
pub type Audit = pb::audit_service_client::AuditServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, Bearer>,
>;

/// How to reach a server that serves TLS (`https://` in `--server`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) the server's certificate is checked against; absent, the system's.
    #[arg(long, env = "CAIRN_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a server that asks for one (`tls.client_ca_file`).
    #[arg(long, env = "CAIRN_TLS_CERT_FILE", global = true, requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "CAIRN_TLS_KEY_FILE", global = true, requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry, when it differs from `--server`'s host.
    #[arg(long, env = "CAIRN_TLS_SERVER_NAME", global = true)]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let mut cfg = ClientTlsConfig::new();
        cfg = match &self.tls_ca_file {
            Some(ca) => cfg.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => cfg.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.tls_server_name {
            cfg = cfg.domain_name(name.clone());
        }
        Ok(cfg)
    }
}

/// A channel to a server on plaintext (`http://`).
pub async fn channel(server: &str) -> Result<Channel> {
    connect(server, &TlsArgs::default()).await
}

/// A channel to `server`: over TLS for `https://`, with `tls`'s CA and client certificate.
pub async fn connect(server: &str, tls: &TlsArgs) -> Result<Channel> {
    let mut endpoint = Endpoint::from_shared(server.to_string())
        .with_context(|| format!("invalid server address {server:?} (expected e.g. http://127.0.0.1:9465)"))?;
    if server.starts_with("https://") {
        endpoint = endpoint.tls_config(tls.client_config()?).context("cannot set up TLS")?;
    } else if tls.tls_ca_file.is_some() || tls.tls_cert_file.is_some() {
        bail!("--tls-* options are given but --server {server:?} is not https://");
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to cairn at {server}; is `cairn serve` running (and is https:// right)?"))
}

pub fn bearer(token: Option<&str>) -> Result<Bearer> {
    match token {
        None => Ok(Bearer(None)),
        Some(t) => Ok(Bearer(Some(
            format!("Bearer {t}").parse().context("the token contains characters not allowed in a header")?,
        ))),
    }
}

/// The caller's token: `--token` / `CAIRN_TOKEN`, else the sign-in `cairn login` cached for the
/// server (refreshed when about to expire), else none.
pub async fn token(args: &ClientArgs) -> Result<Option<String>> {
    match &args.token {
        Some(t) => Ok(Some(t.clone())),
        None => crate::login::cached_token(&args.server).await,
    }
}

pub async fn review_client(args: &ClientArgs) -> Result<Review> {
    Ok(pb::review_service_client::ReviewServiceClient::with_interceptor(
        connect(&args.server, &args.tls).await?,
        bearer(token(args).await?.as_deref())?,
    ))
}

pub async fn audit_client(args: &ClientArgs) -> Result<Audit> {
    Ok(pb::audit_service_client::AuditServiceClient::with_interceptor(
        connect(&args.server, &args.tls).await?,
        bearer(token(args).await?.as_deref())?,
    ))
}

pub async fn incident_client(args: &ClientArgs) -> Result<Incidents> {
    Ok(pb::incident_service_client::IncidentServiceClient::with_interceptor(
        connect(&args.server, &args.tls).await?,
        bearer(token(args).await?.as_deref())?,
    ))
}

/// `cairn incidents list`: the most recently changed incidents, with or without a recommendation.
pub async fn incidents_list(args: &ClientArgs, limit: u32, min_members: u32) -> Result<()> {
    let mut c = incident_client(args).await?;
    let resp = c
        .list_incidents(pb::ListIncidentsRequest { limit, min_members, ..Default::default() })
        .await
        .map_err(status_error)?
        .into_inner();
    match args.output {
        OutputFormat::Json => output::print_json(&serde_json::Value::Array(resp.incidents.iter().map(output::incident_json).collect())),
        OutputFormat::Table => print!("{}", output::incidents_table(&resp.incidents)),
    }
    Ok(())
}

/// `cairn incidents show ID`: members, ranked causes with their factors, and grouping reasons.
pub async fn incidents_show(args: &ClientArgs, id: &str) -> Result<()> {
    let mut c = incident_client(args).await?;
    let i = c.get_incident(pb::GetIncidentRequest { id: id.to_string() }).await.map_err(status_error)?.into_inner();
    match args.output {
        OutputFormat::Json => output::print_json(&output::incident_json(&i)),
        OutputFormat::Table => print!("{}", output::incident_text(&i)),
    }
    Ok(())
}

/// `cairn incidents merge INTO FROM --reason …`.
pub async fn incidents_merge(args: &ClientArgs, into_id: String, from_id: String, reason: String) -> Result<()> {
    let mut c = incident_client(args).await?;
    let r = c.merge(pb::MergeIncidentsRequest { into_id, from_id, reason }).await.map_err(status_error)?.into_inner();
    print_regrouped(args, &r.incidents);
    Ok(())
}

/// `cairn incidents split ID --member … --reason …`.
pub async fn incidents_split(args: &ClientArgs, id: String, member_ids: Vec<String>, reason: String) -> Result<()> {
    let mut c = incident_client(args).await?;
    let r = c.split(pb::SplitIncidentRequest { id, member_ids, reason }).await.map_err(status_error)?.into_inner();
    print_regrouped(args, &r.incidents);
    Ok(())
}

fn print_regrouped(args: &ClientArgs, incidents: &[pb::Incident]) {
    match args.output {
        OutputFormat::Json => output::print_json(&serde_json::Value::Array(incidents.iter().map(output::incident_json).collect())),
        OutputFormat::Table => print!("{}", output::incidents_table(incidents)),
    }
}

/// `cairn incidents watch`: every incident written after `after`, then each write as it is stored,
/// a line (or a JSON object) each, until the server ends the stream.
pub async fn incidents_watch(args: &ClientArgs, after: u64, min_members: u32) -> Result<()> {
    let mut c = incident_client(args).await?;
    let request = pb::WatchIncidentsRequest { after_cursor: after, min_members };
    let mut stream = c.watch_incidents(request).await.map_err(status_error)?.into_inner();
    let mut last = after;
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(status_error)?;
        last = ev.cursor;
        match args.output {
            OutputFormat::Json => println!("{}", output::incident_event_json(&ev)),
            OutputFormat::Table => println!("{}", output::incident_event_line(&ev)),
        }
    }
    eprintln!("the server closed the stream (shutting down?); resume with: cairn incidents watch --after {last}");
    Ok(())
}

/// gRPC statuses as errors a person can act on.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let hint = match s.code() {
        tonic::Code::Unauthenticated => " (run `cairn login`, or pass --token / set CAIRN_TOKEN)",
        tonic::Code::Unavailable => " (is the server running, and is --server right?)",
        _ => "",
    };
    anyhow::anyhow!("{:?}: {}{hint}", s.code(), s.message())
}

pub async fn review_list(
    args: &ClientArgs,
    outcome: Option<String>,
    state: Option<String>,
    service: Option<String>,
    limit: u32,
) -> Result<()> {
    let outcome = match outcome.as_deref() {
        None => pb::Outcome::Unspecified,
        Some("auto") => pb::Outcome::Auto,
        Some("review") => pb::Outcome::Review,
        Some("advisory") => pb::Outcome::Advisory,
        Some("blocked") => pb::Outcome::Blocked,
        Some(o) => bail!("unknown outcome {o:?}; expected auto, review, advisory or blocked"),
    };
    let mut c = review_client(args).await?;
    let resp = c
        .list_recommendations(pb::ListRecommendationsRequest {
            outcome: outcome as i32,
            state: state.unwrap_or_default(),
            service: service.unwrap_or_default(),
            limit,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    match args.output {
        OutputFormat::Json => output::print_json(&output::views_json(&resp.recommendations)),
        OutputFormat::Table => print!("{}", output::views_table(&resp.recommendations)),
    }
    Ok(())
}

pub async fn review_show(args: &ClientArgs, id: &str, revision: u32) -> Result<()> {
    let mut c = review_client(args).await?;
    let card = c
        .get_decision_card(pb::GetDecisionCardRequest { recommendation_id: id.into(), revision })
        .await
        .map_err(status_error)?
        .into_inner();
    match args.output {
        OutputFormat::Json => output::print_json(&output::card_json(&card)),
        OutputFormat::Table => print!("{}", output::card_text(&card)),
    }
    Ok(())
}

pub async fn review_decide(args: &ClientArgs, id: &str, revision: u32, reason: &str, approve: bool) -> Result<()> {
    let mut c = review_client(args).await?;
    let resp = if approve {
        c.approve(pb::ApproveRequest { recommendation_id: id.into(), revision, reason: reason.into() }).await
    } else {
        c.reject(pb::RejectRequest { recommendation_id: id.into(), revision, reason: reason.into() }).await
    }
    .map_err(status_error)?
    .into_inner();
    match args.output {
        OutputFormat::Json => output::print_json(&serde_json::json!({
            "message": resp.message,
            "change": resp.change.as_ref().map(output::change_json),
        })),
        OutputFormat::Table => println!("{}", resp.message),
    }
    Ok(())
}

pub async fn watch(args: &ClientArgs, after: u64) -> Result<()> {
    let mut c = review_client(args).await?;
    let mut stream = c
        .watch_recommendations(pb::WatchRequest { after_cursor: after })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last = after;
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(status_error)?;
        last = ev.cursor;
        match args.output {
            OutputFormat::Json => println!("{}", output::watch_json(&ev)),
            OutputFormat::Table => println!("{}", output::watch_line(&ev)),
        }
    }
    eprintln!("the server closed the stream (shutting down?); resume with: cairn watch --after {last}");
    Ok(())
}
