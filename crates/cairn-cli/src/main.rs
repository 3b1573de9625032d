//! The `cairn` binary: the daemon (`serve`), a self-contained run on bundled data (`demo`), and the
//! operator's client commands (`review`, `watch`, `audit`, `token`) over Cairn's gRPC API.
//!
//! This crate parses arguments, prints results and adds context to errors. It holds no pipeline
//! logic: the daemon is `cairn-server`, and the client commands only call the public API.

#![forbid(unsafe_code)]

mod audit;
#[cfg(feature = "offline")]
mod audit_report;
mod breakglass;
mod client;
mod demo;
#[cfg(feature = "offline")]
mod eval_multivariate;
#[cfg(feature = "offline")]
mod eval_nab;
#[cfg(feature = "offline")]
mod eval_triage;
mod freeze;
mod login;
mod output;
mod policy;
mod stages;
#[cfg(feature = "offline")]
mod train;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// jemalloc, not glibc's malloc: alerts are decoded on the ingest threads and freed on the
/// analysis worker, and glibc made the worker wait on the ingest threads' arena locks for it (the
/// worker's most frequent sleep under alert-load). Analysed alerts/s about +20 %, resident memory
/// per active series about +5 % (benches/README.md, stop 28).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "cairn", version, about = "AIOps triage and recommendations with humans in the lead")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: HTTP (remote_write, Alertmanager webhook, /metrics) and gRPC.
    Serve(ServeArgs),
    /// Start a temporary server, replay the bundled scenario through the real endpoints, approve,
    /// execute (dry run) and verify the audit chain.
    Demo(DemoArgs),
    /// List, inspect, approve and reject recommendations.
    #[command(subcommand)]
    Review(ReviewCmd),
    /// List and inspect incidents: members, ranked causes with their factors, grouping reasons.
    #[command(subcommand)]
    Incidents(IncidentsCmd),
    /// Follow recommendation state changes live.
    Watch(WatchArgs),
    /// Query, verify, prove and export the audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Sign in at your OpenID Provider (authorization code + PKCE) and cache the token for a
    /// server; client commands without --token use it.
    Login(login::LoginArgs),
    /// Create bearer tokens for the server's configuration.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Test, shadow and propose policy bundles.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Time-bound exceptions to policy: open, list, revoke.
    #[command(subcommand)]
    Breakglass(breakglass::BreakGlassCmd),
    /// The global freeze switch: while on, nothing runs by itself.
    #[command(subcommand)]
    Freeze(freeze::FreezeCmd),
    /// Guardrail status; re-enable an automation the loop guard disabled.
    #[command(subcommand)]
    Guard(freeze::GuardCmd),
    /// Train a multivariate model from a data file into the model registry (`models/`).
    #[cfg(feature = "offline")]
    Train(train::TrainArgs),
    /// Evaluate detectors on labelled data sets.
    #[cfg(feature = "offline")]
    #[command(subcommand)]
    Eval(EvalCmd),
}

#[cfg(feature = "offline")]
#[derive(Debug, Subcommand)]
enum EvalCmd {
    /// The univariate detector on a corpus in NAB's layout, scored with NAB's method.
    Nab(eval_nab::NabArgs),
    /// Fit on every `*_train` file, score its `*_test` file: AUC-PR and point-wise F1 per machine.
    Multivariate(eval_multivariate::MultivariateArgs),
    /// Replay labelled incident recordings through a real in-process server and score the
    /// triage: grouping, root cause, remediation, calibration, unsafe autos.
    Triage(eval_triage::TriageArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file (TOML). Flags below override its addresses and data directory.
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:9464].
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// gRPC listen address [default: 127.0.0.1:9465].
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Where the store lives [default: ./cairn-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where signed audit checkpoints go; put it on another volume [default: <data-dir>/checkpoints].
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// The audit signing key [default: generated at <data-dir>.audit-key].
    #[arg(long)]
    signing_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Keep the server running after the demo (until Ctrl-C) so you can try the CLI against it.
    #[arg(long)]
    keep_running: bool,
}

/// Where the server is and who you are. Shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// gRPC address of the server.
    #[arg(long, env = "CAIRN_SERVER", default_value = "http://127.0.0.1:9465", global = true)]
    pub server: String,
    /// Bearer token (see `cairn token new`). Absent: the sign-in `cairn login` cached for --server.
    #[arg(long, env = "CAIRN_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: client::TlsArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum IncidentsCmd {
    /// The most recently changed incidents, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// At most this many (max 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only incidents with at least this many members.
        #[arg(long, default_value_t = 0)]
        min_members: u32,
    },
    /// One incident in full.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Follow incidents as they are written: every one changed after the cursor, then each change
    /// live, a line each. Resume with the last cursor printed to miss nothing.
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        /// Resume after this cursor (0: every stored incident first).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only incidents with at least this many members (and any merged away).
        #[arg(long, default_value_t = 0)]
        min_members: u32,
    },
    /// Merge FROM into INTO: one incident, recommended for again; audited with your name and reason.
    Merge {
        #[command(flatten)]
        client: ClientArgs,
        into: String,
        from: String,
        /// Why (required): the audit entry and the incident's grouping reasons carry it.
        #[arg(long)]
        reason: String,
    },
    /// Move members out of an incident into a new one; the rules then keep their entities apart.
    Split {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// A member to move, as `incidents show` names it (`alert:<fingerprint>`); repeat for more.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum ReviewCmd {
    /// The latest revision of each recommendation, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// auto, review, advisory or blocked.
        #[arg(long)]
        outcome: Option<String>,
        /// Change state, e.g. pending_approval.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The decision card of one recommendation.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// A specific revision (default: latest).
        #[arg(long)]
        revision: Option<u32>,
    },
    /// Approve one exact revision.
    Approve {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// The revision you reviewed; required so you never approve something you have not seen.
        #[arg(long)]
        revision: u32,
        #[arg(long)]
        reason: String,
    },
    /// Reject one exact revision (vetoes the change). On a staged change paused between stages it
    /// stops the rollout: every executed stage is rolled back, newest first. The requester may stop
    /// their own rollout.
    Reject {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long)]
        revision: u32,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
struct WatchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Resume after this cursor (printed with every event).
    #[arg(long, default_value_t = 0)]
    after: u64,
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Print a new random token and the `[[auth.tokens]]` entry (with only its hash) to paste into
    /// the server's configuration.
    New {
        /// Stable identity, e.g. user:alice.
        #[arg(long)]
        subject: String,
        #[arg(long, default_value = "")]
        display_name: String,
        /// Repeat for several groups.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// `person` (someone who reviews) or `service` (Prometheus, Alertmanager, a dashboard, CI).
        #[arg(long, value_parser = parse_kind)]
        kind: cairn_server::access::PrincipalKind,
        /// Comma-separated: ingest, ingest:annotate, read, review, breakglass, freeze, policy, admin.
        /// A service may hold only ingest, ingest:annotate and read.
        #[arg(long, value_delimiter = ',', value_parser = parse_scope, required = true)]
        scopes: Vec<cairn_server::access::Scope>,
    },
}

fn parse_kind(s: &str) -> Result<cairn_server::access::PrincipalKind, String> {
    match s {
        "person" => Ok(cairn_server::access::PrincipalKind::Person),
        "service" => Ok(cairn_server::access::PrincipalKind::Service),
        other => Err(format!("unknown kind {other:?}: expected person or service")),
    }
}

fn parse_scope(s: &str) -> Result<cairn_server::access::Scope, String> {
    cairn_server::access::Scope::parse(s).ok_or_else(|| {
        let all: Vec<&str> = cairn_server::access::Scope::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown scope {s:?}: expected one of {}", all.join(", "))
    })
}

fn main() -> std::process::ExitCode {
    // jemalloc returns an arena's freed pages only when that arena allocates again, so the buffers
    // of a burst stayed resident on a server that went quiet after it; its background threads
    // return them on their decay timer instead (benches/README.md, "Series memory").
    let background = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files got the escape codes as text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr on a full disk) is lost, not reported on
        // stderr again: that report panics, and took the webhook that logged it down with a 500.
        .log_internal_errors(false)
        .init();
    if let Err(e) = background {
        tracing::warn!(error = %e, "the allocator's background threads could not be started: freed memory is returned only as it is reused");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match command {
        Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Login(args) => login::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Demo(args) => demo::run(args.keep_running).await.map(|()| ExitCode::SUCCESS),
        Command::Review(cmd) => match cmd {
            ReviewCmd::List { client, outcome, state, service, limit } => {
                client::review_list(&client, outcome, state, service, limit).await?;
                Ok(ExitCode::SUCCESS)
            }
            ReviewCmd::Show { client, id, revision } => {
                client::review_show(&client, &id, revision.unwrap_or(0)).await?;
                Ok(ExitCode::SUCCESS)
            }
            ReviewCmd::Approve { client, id, revision, reason } => {
                client::review_decide(&client, &id, revision, &reason, true).await?;
                Ok(ExitCode::SUCCESS)
            }
            ReviewCmd::Reject { client, id, revision, reason } => {
                client::review_decide(&client, &id, revision, &reason, false).await?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Policy(cmd) => policy::run(cmd).await,
        Command::Breakglass(cmd) => breakglass::run(cmd).await.map(|()| ExitCode::SUCCESS),
        Command::Freeze(cmd) => freeze::run_freeze(cmd).await.map(|()| ExitCode::SUCCESS),
        Command::Guard(cmd) => freeze::run_guard(cmd).await.map(|()| ExitCode::SUCCESS),
        Command::Incidents(IncidentsCmd::List { client, limit, min_members }) => {
            client::incidents_list(&client, limit, min_members).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Incidents(IncidentsCmd::Show { client, id }) => client::incidents_show(&client, &id).await.map(|()| ExitCode::SUCCESS),
        Command::Incidents(IncidentsCmd::Merge { client, into, from, reason }) => {
            client::incidents_merge(&client, into, from, reason).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Incidents(IncidentsCmd::Split { client, id, members, reason }) => {
            client::incidents_split(&client, id, members, reason).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Incidents(IncidentsCmd::Watch { client, after, min_members }) => {
            client::incidents_watch(&client, after, min_members).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Watch(args) => client::watch(&args.client, args.after).await.map(|()| ExitCode::SUCCESS),
        Command::Audit(cmd) => audit::run(cmd).await,
        #[cfg(feature = "offline")]
        Command::Eval(EvalCmd::Nab(args)) => eval_nab::run(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "offline")]
        Command::Eval(EvalCmd::Triage(args)) => eval_triage::run(args).await.map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "offline")]
        Command::Train(args) => train::run(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "offline")]
        Command::Eval(EvalCmd::Multivariate(args)) => eval_multivariate::run(args).map(|()| ExitCode::SUCCESS),
        Command::Token(TokenCmd::New { subject, display_name, groups, kind, scopes }) => {
            if kind == cairn_server::access::PrincipalKind::Service
                && let Some(s) = scopes.iter().find(|s| s.governs())
            {
                anyhow::bail!("a service cannot hold scope `{}`: only people govern", s.as_str());
            }
            let token = cairn_server::auth::new_token();
            let entry = cairn_server::config::TokenEntry {
                subject,
                display_name,
                groups,
                token_sha256: cairn_server::auth::hash_token(&token),
                kind: Some(kind),
                scopes: Some(scopes),
            };
            #[derive(serde::Serialize)]
            struct Snippet {
                auth: Auth,
            }
            #[derive(serde::Serialize)]
            struct Auth {
                tokens: Vec<cairn_server::config::TokenEntry>,
            }
            let toml = toml::to_string(&Snippet { auth: Auth { tokens: vec![entry] } })
                .context("cannot render the configuration entry")?;
            println!("token (give it to its owner; it is not stored anywhere):\n  {token}\n");
            println!("configuration entry (append to the server's config file):\n{toml}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(path) => cairn_server::config::ServerConfig::load(path)?,
        None => cairn_server::config::ServerConfig::default(),
    };
    if let Some(a) = args.http_addr {
        cfg.http_addr = a;
    }
    if let Some(a) = args.grpc_addr {
        cfg.grpc_addr = a;
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(d) = args.checkpoint_dir {
        cfg.audit.checkpoint_dir = Some(d);
    }
    if let Some(k) = args.signing_key {
        cfg.audit.signing_key = Some(k);
    }
    let server = cairn_server::start(cfg, std::sync::Arc::new(cairn_server::engine::SystemClock))
        .await
        .context("cannot start cairn serve")?;
    eprintln!(
        "cairn serving: http://{} (remote_write: /api/v1/write, alertmanager: /api/v1/alerts/alertmanager, /metrics), grpc {}",
        server.http_addr, server.grpc_addr
    );
    shutdown_signal().await;
    eprintln!("shutting down: finishing in-flight requests and draining the analysis queue");
    server.shutdown().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
