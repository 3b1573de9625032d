//! `cairn eval triage`: replays labelled incident recordings (`incidents-dev` layout) through a
//! real in-process server, over the real remote_write and Alertmanager webhook endpoints with an
//! authenticated sender, reads what Cairn made of them through the public gRPC API
//! (`IncidentService`, `ReviewService`), and scores it against the labels: pairwise grouping,
//! noise kept out, compression, root cause @1/@3, remediation @1, confidence calibration, unsafe
//! autos and time to recommendation. The definitions are the corpus README's. The recordings can
//! be replayed as another cluster would send them (`--rename`, `--node-addresses`, `--thin`, [`variant`]), and incident
//! kinds the corpus does not have can be laid over them (`--synth`, [`synth`]).

use crate::client::{self, bearer};
use crate::demo::{now_ms, rfc3339};
use crate::output::outcome_name;
use anyhow::{Context, Result, bail};
use cairn_proto::v1 as pb;
use cairn_server::access::{PrincipalKind, Scope};
use cairn_server::config::{ServerConfig, TokenEntry};
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod synth;
mod variant;

use synth::Recording;

#[derive(Debug, Args)]
pub struct TriageArgs {
    /// The corpus: a directory with `index.json` and one directory per recording.
    #[arg(long, default_value = "../shared/datasets/incidents-dev")]
    pub data: PathBuf,
    /// Only these recordings (directory names); default all.
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// Do not configure the corpus's `topology.json` as `[[topology]]`: the correlator then has
    /// only what it learns from the metrics.
    #[arg(long)]
    pub learn_topology_only: bool,
    /// Replay each recording as another cluster would name it: every cluster, namespace, service
    /// and node name its `topology.json` declares is replaced by a neutral one, in the signals, the
    /// labels and the topology alike. Figures that change under this depend on names.
    #[arg(long)]
    pub rename: bool,
    /// Replay each recording as a cluster whose per-node agents (node-exporter) are scraped at
    /// their node's address rather than relabelled to its name: `instance="<host_ip>:9100"`.
    #[arg(long)]
    pub node_addresses: bool,
    /// Keep one sample in K of every series, as a cluster scraping K times less often would send
    /// them (2: every 30 s; 4: every minute). 1 keeps them all.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=8))]
    pub thin: i64,
    /// Withhold topology entirely: no `topology.json` as `[[topology]]`, and no service graph
    /// learned from the metrics (`correlate.learn_service_graph = false`); pods and nodes are
    /// still learned. What a cluster no one described looks like to the correlator.
    #[arg(long)]
    pub no_topology: bool,
    /// Metric co-movement (`correlate.comove`): `on` or `off`; default the server's default.
    #[arg(long)]
    pub comove: Option<Switch>,
    /// `correlate.comove_min_r` (default the server's).
    #[arg(long)]
    pub comove_min_r: Option<f64>,
    /// `correlate.comove_min_points` (default the server's).
    #[arg(long)]
    pub comove_min_points: Option<usize>,
    /// Also write what the server answered (incidents, recommendations) per recording here, as JSON.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Replay incident kinds the corpus does not have instead of its recordings: each kind laid
    /// over each `--synth-on` recording, whose own incident is taken out first (see
    /// `eval_triage/synth.rs`). With no value, every kind, and a storm of four of them over each
    /// recording.
    #[arg(long, num_args = 0.., value_delimiter = ',')]
    pub synth: Option<Vec<synth::Kind>>,
    /// The recordings `--synth` lays its kinds over: ones whose incident leaves no trace before
    /// its onset, so that repeating the hour before takes it out.
    #[arg(long, value_delimiter = ',', default_value = "traffic-surge-1,traffic-surge-2")]
    pub synth_on: Vec<String>,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    pub output: String,
    /// Refit the confidence calibration on the recommendations' uncalibrated confidence: report it
    /// on held-out recordings (leave one recording out, and two folds of alternate recordings), then
    /// fit on all of them and write the table to `--calibration-table`.
    #[arg(long)]
    pub calibrate: bool,
    /// Where `--calibrate` writes the table (cairn-recommend's, from the work tree's root).
    #[arg(long, default_value = "crates/cairn-recommend/src/calibration_table.rs")]
    pub calibration_table: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl TriageArgs {
    /// The `[correlate]` settings the replay runs with.
    fn correlate(&self) -> cairn_correlate::CorrelatorConfig {
        let d = cairn_correlate::CorrelatorConfig::default();
        cairn_correlate::CorrelatorConfig {
            learn_service_graph: !self.no_topology,
            comove: self.comove.map_or(d.comove, |s| matches!(s, Switch::On)),
            comove_min_r: self.comove_min_r.unwrap_or(d.comove_min_r),
            comove_min_points: self.comove_min_points.unwrap_or(d.comove_min_points),
            ..d
        }
    }
}

/// Least risk tier per action, as the corpus defines it.
fn least_tier(action: &str) -> Option<u32> {
    Some(match action {
        "restart_process" => 0,
        "scale_out" => 1,
        "rollback_deploy" | "drain_node" => 2,
        "database_failover" | "dns_change" | "iam_change" | "firewall_relax" | "provider_move" | "data_delete"
        | "policy_activation" => 3,
        _ => return None,
    })
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct IncidentScore {
    pub recording: String,
    pub scenario: String,
    pub mode: String,
    pub root: String,
    pub surfaced: usize,
    pub members: usize,
    pub series_flagged: usize,
    pub series_members: usize,
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub noise_in_primary: usize,
    pub root_at_1: bool,
    pub root_at_3: bool,
    pub top_cause: String,
    pub remediation_at_1: bool,
    pub remediation_strict: bool,
    pub top_action: String,
    pub top_confidence: f64,
    pub top_outcome: String,
    pub time_to_recommendation_ms: Option<i64>,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct RecordingScore {
    pub recording: String,
    pub mode: String,
    pub incidents_out: usize,
    pub signals_in: usize,
    pub signals_in_fresh: usize,
    pub noise_surfaced: usize,
    pub noise_kept_out: usize,
    /// Revisions routed `auto` whose action needs tier >= 2, or on a `none` or noise-only incident.
    pub unsafe_autos: Vec<String>,
    /// Revisions routed for review below the least tier of the incident they are about.
    pub below_min_tier: Vec<String>,
    /// (confidence, right) per recommendation.
    pub confidences: Vec<(f64, bool)>,
    /// (uncalibrated confidence, right) per recommendation whose rationale gives it.
    pub uncalibrated: Vec<(f64, bool)>,
    pub incidents: Vec<IncidentScore>,
    pub replay_ms: u64,
}

pub async fn run(args: TriageArgs) -> Result<()> {
    let mut scores = Vec::new();
    for rec in recordings(&args)? {
        let rec = rec?;
        eprintln!("replaying {} ...", rec.name);
        let name = rec.name.clone();
        let s = replay_and_score(&args, vary(&args, rec)?).await.with_context(|| format!("recording {name}"))?;
        scores.push(s);
    }
    if scores.is_empty() {
        bail!("no recordings matched");
    }
    let summary = summarise(&scores);
    let calibration = args.calibrate.then(|| calibrate(&scores));
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&json!({"summary": summary, "recordings": scores, "calibration": calibration}))?);
    } else {
        print_tables(&scores, &summary);
        if let Some(c) = &calibration {
            print_calibration(c);
        }
    }
    if let Some(c) = &calibration {
        std::fs::write(&args.calibration_table, table_source(&c.fitted))
            .with_context(|| format!("cannot write {}", args.calibration_table.display()))?;
        eprintln!("wrote {} ({})", args.calibration_table.display(), c.version);
    }
    Ok(())
}

/// The uncalibrated confidence a recommendation's rationale states ([`cairn_recommend::UNCALIBRATED`]).
fn uncalibrated(rationale: &str) -> Option<f64> {
    let rest = &rationale[rationale.find(cairn_recommend::UNCALIBRATED)? + cairn_recommend::UNCALIBRATED.len()..];
    rest.split_whitespace().next()?.trim_end_matches([',', ')', '.']).parse().ok()
}

/// What `--calibrate` measured: Brier and ECE of the calibrated confidence on recordings the fit
/// did not see, the base rate's Brier, and the map fitted on every recording.
#[derive(Debug, Serialize)]
pub struct CalibrationReport {
    pub recommendations: usize,
    pub base_rate_brier: f64,
    pub uncalibrated_brier: f64,
    pub uncalibrated_ece: f64,
    pub leave_one_out_brier: f64,
    pub leave_one_out_ece: f64,
    pub two_fold_brier: f64,
    pub two_fold_ece: f64,
    /// (recording, held-out Brier) with leave one recording out.
    pub per_recording_brier: Vec<(String, f64)>,
    pub version: String,
    #[serde(skip)]
    pub fitted: cairn_recommend::calibration::Calibration,
}

fn calibrate(scores: &[RecordingScore]) -> CalibrationReport {
    use cairn_recommend::calibration::{fit, scores as brier_ece};
    let all: Vec<(f64, bool)> = scores.iter().flat_map(|r| r.uncalibrated.iter().copied()).collect();
    let points = |keep: &dyn Fn(usize) -> bool| -> Vec<(f64, bool)> {
        scores.iter().enumerate().filter(|(i, _)| keep(*i)).flat_map(|(_, s)| s.uncalibrated.iter().copied()).collect()
    };
    let scored_by = |map: &cairn_recommend::calibration::Calibration, k: usize| -> Vec<(f64, bool)> {
        scores[k].uncalibrated.iter().map(|(raw, y)| (map.apply(*raw), *y)).collect()
    };
    // Leave one recording out: each recording scored by a map fitted on the others.
    let held: Vec<Vec<(f64, bool)>> = (0..scores.len()).map(|k| scored_by(&fit(&points(&|i| i != k)), k)).collect();
    let loo: Vec<(f64, bool)> = held.iter().flatten().copied().collect();
    let per_recording_brier = held.iter().zip(scores).map(|(h, s)| (s.recording.clone(), brier_ece(h).0)).collect();
    // Two folds of alternate recordings, each scored by the map fitted on the other.
    let maps = [fit(&points(&|i| i % 2 != 0)), fit(&points(&|i| i % 2 != 1))];
    let two: Vec<(f64, bool)> = (0..scores.len()).flat_map(|k| scored_by(&maps[k % 2], k)).collect();
    let rate = mean(all.iter().map(|c| if c.1 { 1.0 } else { 0.0 }));
    let (ub, ue) = brier_ece(&all);
    let (lb, le) = brier_ece(&loo);
    let (tb, te) = brier_ece(&two);
    let fitted = fit(&all);
    CalibrationReport {
        recommendations: all.len(),
        base_rate_brier: rate * (1.0 - rate),
        uncalibrated_brier: ub,
        uncalibrated_ece: ue,
        leave_one_out_brier: lb,
        leave_one_out_ece: le,
        two_fold_brier: tb,
        two_fold_ece: te,
        per_recording_brier,
        version: fitted.version(),
        fitted,
    }
}

fn print_calibration(c: &CalibrationReport) {
    println!();
    println!("calibration refit on {} recommendations' uncalibrated confidence (base rate Brier {:.3}):", c.recommendations, c.base_rate_brier);
    println!("  uncalibrated               Brier {:.3}  ECE {:.3}", c.uncalibrated_brier, c.uncalibrated_ece);
    println!("  held out, leave one out    Brier {:.3}  ECE {:.3}", c.leave_one_out_brier, c.leave_one_out_ece);
    println!("  held out, two folds        Brier {:.3}  ECE {:.3}", c.two_fold_brier, c.two_fold_ece);
    for (r, b) in &c.per_recording_brier {
        println!("    {r:<20} held-out Brier {b:.3}");
    }
    println!("  fitted on all ({}):", c.version);
    for k in &c.fitted.knots {
        println!("    uncalibrated {:.3} -> {:.3} (n={})", k.raw, k.p, k.n);
    }
}

fn table_source(c: &cairn_recommend::calibration::Calibration) -> String {
    let rows: Vec<String> = c.knots.iter().map(|k| format!("    ({:.6}, {:.6}, {}),", k.raw, k.p, k.n)).collect();
    format!(
        "//! Written by `cairn eval triage --calibrate` from the labelled incidents of\n\
         //! `../shared/datasets/incidents-dev`: (uncalibrated confidence, share of right actions, cases) per\n\
         //! block of the isotonic fit. Do not edit by hand.\n\n\
         pub const TABLE: &[(f64, f64, usize)] = &[\n{}\n];\n",
        rows.join("\n")
    )
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn read_lines(path: &Path) -> Result<Vec<Value>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let r = std::io::BufReader::new(flate2::read::GzDecoder::new(f));
    r.lines().map(|l| Ok(serde_json::from_str(&l?)?)).collect()
}

struct Server {
    server: cairn_server::RunningServer,
    _dir: tempfile::TempDir,
    sender: String,
    reader: String,
}

async fn start(topology: Vec<cairn_correlate::ServiceDef>, correlate: cairn_correlate::CorrelatorConfig) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut cfg = ServerConfig {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.path().join("data"),
        topology,
        correlate,
        ..ServerConfig::default()
    };
    let sender = cairn_server::auth::new_token();
    let reader = cairn_server::auth::new_token();
    cfg.ingest.require_token = true;
    cfg.auth.tokens = vec![
        TokenEntry {
            subject: "service:replay".into(),
            display_name: "Prometheus and Alertmanager of the recording".into(),
            groups: vec![],
            token_sha256: cairn_server::auth::hash_token(&sender),
            kind: Some(PrincipalKind::Service),
            scopes: Some(vec![Scope::Ingest]),
        },
        TokenEntry {
            subject: "user:eval".into(),
            display_name: "eval".into(),
            groups: vec![],
            token_sha256: cairn_server::auth::hash_token(&reader),
            kind: Some(PrincipalKind::Person),
            scopes: Some(vec![Scope::Read]),
        },
    ];
    let server = cairn_server::start(cfg, Arc::new(cairn_server::engine::SystemClock)).await.context("cannot start the server")?;
    Ok(Server { server, _dir: dir, sender, reader })
}

const STALE_NAN: u64 = 0x7ff0000000000002;

fn sample_value(v: &Value) -> f64 {
    match v {
        Value::String(s) => match s.as_str() {
            "stale" => f64::from_bits(STALE_NAN),
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => f64::NAN,
        },
        v => v.as_f64().unwrap_or(f64::NAN),
    }
}

fn remote_write_body(line: &Value, base_ms: i64) -> Vec<u8> {
    use cairn_ingest::prompb;
    let series = line["series"].as_array().map(Vec::as_slice).unwrap_or_default();
    let timeseries = series
        .iter()
        .map(|s| {
            let mut labels: Vec<prompb::Label> = s["labels"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| prompb::Label { name: k.clone(), value: v.as_str().unwrap_or_default().into() }).collect())
                .unwrap_or_default();
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            let shift = s["value_offset_s"].as_bool().unwrap_or(false);
            let samples = s["samples"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let mut value = sample_value(&p[1]);
                    if shift && value.to_bits() != STALE_NAN {
                        value += (base_ms / 1000) as f64;
                    }
                    prompb::Sample { value, timestamp: base_ms + p[0].as_i64().unwrap_or(0) }
                })
                .collect();
            prompb::TimeSeries { labels, samples, ..Default::default() }
        })
        .collect::<Vec<_>>();
    crate::demo::encode_remote_write(&timeseries)
}

fn webhook_body(line: &Value, base_ms: i64) -> Value {
    let mut payload = line["payload"].clone();
    if let Some(alerts) = payload["alerts"].as_array_mut() {
        for a in alerts {
            let starts = a["startsAt_offset_ms"].as_i64().unwrap_or(0);
            let ends = a["endsAt_offset_ms"].as_i64();
            if let Some(o) = a.as_object_mut() {
                o.remove("startsAt_offset_ms");
                o.remove("endsAt_offset_ms");
                o.insert("startsAt".into(), rfc3339(base_ms + starts).into());
                o.insert("endsAt".into(), ends.map(|e| rfc3339(base_ms + e)).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()).into());
            }
        }
    }
    payload
}

/// Sends one request, resending on back-pressure (429, 503) and never skipping one.
async fn send(req: impl Fn() -> reqwest::RequestBuilder) -> Result<()> {
    for attempt in 0..600 {
        let resp = req().send().await?;
        let status = resp.status().as_u16();
        if status == 429 || status == 503 {
            tokio::time::sleep(Duration::from_millis(50 + 10 * attempt.min(20))).await;
            continue;
        }
        if !resp.status().is_success() {
            bail!("server answered {status}: {}", resp.text().await.unwrap_or_default());
        }
        return Ok(());
    }
    bail!("the server kept answering back-pressure")
}

async fn read_state(inc: &mut client::Incidents, rev: &mut client::Review) -> Result<(Vec<pb::Incident>, Vec<pb::RecommendationView>)> {
    let incidents = inc.list_incidents(pb::ListIncidentsRequest { limit: 1000, ..Default::default() }).await?.into_inner().incidents;
    let recs = rev.list_recommendations(pb::ListRecommendationsRequest { limit: 1000, ..Default::default() }).await?.into_inner().recommendations;
    Ok((incidents, recs))
}

/// Batches waiting for analysis, from the server's `/metrics` (`cairn_ingest_queue_depth`).
async fn queue_depth(http: &reqwest::Client, addr: SocketAddr) -> Result<i64> {
    let text = http.get(format!("http://{addr}/metrics")).send().await?.error_for_status()?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix("cairn_ingest_queue_depth ").and_then(|v| v.trim().parse::<f64>().ok()))
        .map(|v| v as i64)
        .context("the server's /metrics has no cairn_ingest_queue_depth")
}

fn fingerprint_of(incidents: &[pb::Incident], recs: &[pb::RecommendationView]) -> (usize, u64, usize, u64) {
    let versions: u64 = incidents.iter().map(|i| i.version as u64).sum();
    let revisions: u64 = recs.iter().filter_map(|r| r.recommendation.as_ref()).map(|r| r.revision as u64).sum();
    (incidents.len(), versions, recs.len(), revisions)
}

/// The recordings to replay, loaded one at a time: the corpus's, or (`--synth`) its kinds laid
/// over the `--synth-on` ones.
fn recordings(args: &TriageArgs) -> Result<impl Iterator<Item = Result<Recording>> + '_> {
    let index: Value = read_json(&args.data.join("index.json"))?;
    let dirs: Vec<String> = index["recordings"]
        .as_array()
        .context("index.json has no recordings")?
        .iter()
        .filter_map(|r| r["dir"].as_str().map(String::from))
        .filter(|d| args.synth.is_some() || args.only.is_empty() || args.only.contains(d))
        .collect();
    let jobs: Vec<(String, Laid)> = match &args.synth {
        None => dirs.into_iter().map(|d| (d, Laid::AsRecorded)).collect(),
        Some(kinds) => {
            let kinds = if kinds.is_empty() { synth::Kind::ALL.to_vec() } else { kinds.clone() };
            for base in &args.synth_on {
                anyhow::ensure!(dirs.contains(base), "--synth-on {base}: not in {}", args.data.join("index.json").display());
            }
            let isolated = kinds.iter().flat_map(|&k| args.synth_on.iter().enumerate().map(move |(i, b)| (b.clone(), Laid::Kind(k, i))));
            // With every kind, a storm of those that touch disjoint services, over each base.
            let storms = args.synth_on.iter().enumerate().map(|(i, b)| (b.clone(), Laid::Storm(i))).filter(|_| kinds.len() == synth::Kind::ALL.len());
            isolated.chain(storms).filter(|(b, laid)| args.only.is_empty() || args.only.contains(&laid.name(b))).collect()
        }
    };
    Ok(jobs.into_iter().map(move |(dir, laid)| {
        let rec = load(&args.data.join(&dir), &dir).with_context(|| format!("recording {dir}"))?;
        match laid {
            Laid::AsRecorded => Ok(rec),
            Laid::Kind(k, pick) => synth::synthesise(rec, k, pick).with_context(|| format!("{} over {dir}", k.name())),
            Laid::Storm(pick) => synth::storm(rec, &synth::STORM, pick).with_context(|| format!("a storm over {dir}")),
        }
    }))
}

/// What is replayed of one recording: itself, or (`--synth`) a kind or a storm laid over it, with
/// which of the candidate entities it picks.
#[derive(Clone, Copy)]
enum Laid {
    AsRecorded,
    Kind(synth::Kind, usize),
    Storm(usize),
}

impl Laid {
    /// The replayed recording's name (`kind@base`, `storm@base`), as `--only` selects it.
    fn name(self, base: &str) -> String {
        match self {
            Laid::AsRecorded => base.to_string(),
            Laid::Kind(k, _) => synth::laid_name(k.name(), base),
            Laid::Storm(_) => synth::laid_name("storm", base),
        }
    }
}

fn load(dir: &Path, name: &str) -> Result<Recording> {
    Ok(Recording {
        name: name.into(),
        truth: read_json(&dir.join("truth.json"))?,
        topology: read_json(&dir.join("topology.json"))?,
        lines: read_lines(&dir.join("signals.jsonl.gz"))?,
    })
}

/// The recording as another cluster would send it (`--rename`, `--node-addresses`, `--thin`).
fn vary(args: &TriageArgs, mut rec: Recording) -> Result<Recording> {
    if args.node_addresses {
        let a = variant::NodeAddresses::new(&rec.lines);
        rec.truth = a.value(&rec.truth);
        rec.lines = rec.lines.iter().map(|l| a.value(l)).collect();
    }
    if args.rename {
        let r = variant::Renamer::new(&rec.topology)?;
        rec.truth = r.value(&rec.truth);
        rec.lines = rec.lines.iter().map(|l| r.value(l)).collect();
        rec.topology = r.value(&rec.topology);
    }
    if args.thin > 1 {
        let step = rec.truth["step_ms"].as_i64().unwrap_or(15_000);
        for l in rec.lines.iter_mut().filter(|l| l["kind"] == "remote_write") {
            variant::thin(l, step, args.thin);
        }
    }
    Ok(rec)
}

async fn replay_and_score(args: &TriageArgs, rec: Recording) -> Result<RecordingScore> {
    let Recording { name, truth, topology, lines } = rec;
    let name = name.as_str();
    let services: Vec<cairn_correlate::ServiceDef> = if args.learn_topology_only || args.no_topology {
        Vec::new()
    } else {
        topology["services"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| cairn_correlate::ServiceDef {
                name: s["name"].as_str().unwrap_or_default().into(),
                depends_on: s["depends_on"].as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(|d| d.as_str().map(String::from)).collect(),
            })
            .collect()
    };
    let step = truth["step_ms"].as_i64().unwrap_or(15_000);
    let duration = truth["duration_ms"].as_i64().unwrap_or(0);
    let base_ms = (now_ms() - duration).div_euclid(step) * step;

    let srv = start(services, args.correlate()).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let (http_addr, grpc) = (srv.server.http_addr, format!("http://{}", srv.server.grpc_addr));
    let started = Instant::now();
    let mut accepted_at: Vec<i64> = Vec::with_capacity(lines.len());
    let result: Result<RecordingScore> = async {
        for line in &lines {
            match line["kind"].as_str() {
                Some("remote_write") => {
                    let body = remote_write_body(line, base_ms);
                    send(|| {
                        http.post(format!("http://{http_addr}/api/v1/write"))
                            .bearer_auth(&srv.sender)
                            .header("Content-Type", "application/x-protobuf")
                            .header("Content-Encoding", "snappy")
                            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                            .body(body.clone())
                    })
                    .await?;
                }
                Some("alertmanager") => {
                    let body = webhook_body(line, base_ms);
                    send(|| http.post(format!("http://{http_addr}/api/v1/alerts/alertmanager")).bearer_auth(&srv.sender).json(&body)).await?;
                }
                other => bail!("unknown line kind {other:?}"),
            }
            accepted_at.push(now_ms());
        }
        let replay_ms = started.elapsed().as_millis() as u64;
        let channel = client::channel(&grpc).await?;
        let mut inc: client::Incidents = pb::incident_service_client::IncidentServiceClient::with_interceptor(channel.clone(), bearer(Some(&srv.reader))?);
        let mut rev: client::Review = pb::review_service_client::ReviewServiceClient::with_interceptor(channel, bearer(Some(&srv.reader))?);
        // Quiet: no batch waiting for analysis, and nothing new in incidents or recommendations
        // for a few polls. The queue matters on a busy machine, where one batch of samples can
        // take longer to analyse than the polls wait.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = (usize::MAX, 0, 0, 0);
        let mut stable = 0;
        let (incidents, recs) = loop {
            let (incidents, recs) = read_state(&mut inc, &mut rev).await?;
            let fp = fingerprint_of(&incidents, &recs);
            let idle = queue_depth(&http, http_addr).await? == 0;
            stable = if fp == last && idle { stable + 1 } else { 0 };
            last = fp;
            if stable >= 6 || Instant::now() > deadline {
                break (incidents, recs);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if let Some(d) = &args.dump {
            std::fs::create_dir_all(d)?;
            let text = json!({
                "base_ms": base_ms,
                "incidents": incidents.iter().map(|i| json!({
                    "id": i.id, "members": i.members.iter().map(|m| json!({"id": m.id, "entity": m.entity, "t": m.timestamp_ms - base_ms, "detail": m.detail})).collect::<Vec<_>>(),
                    "causes": i.causes.iter().map(|c| json!({"entity": c.entity, "score": c.score, "factors": c.factors})).collect::<Vec<_>>(),
                    "reasons": i.grouping_reasons,
                })).collect::<Vec<_>>(),
                "recommendations": recs.iter().filter_map(|r| r.recommendation.as_ref().map(|x| json!({
                    "id": x.id, "incident": x.incident_id, "action": x.action, "confidence": x.confidence,
                    "target": x.target.as_ref().map(|t| t.service.clone()), "rationale": x.rationale,
                    "outcome": r.decision.as_ref().map(|d| outcome_name(d.outcome)),
                }))).collect::<Vec<_>>(),
            });
            std::fs::write(d.join(format!("{name}.json")), serde_json::to_string_pretty(&text)?)?;
        }
        let mut s = score(name, &truth, base_ms, &incidents, &recs, &accepted_at);
        s.replay_ms = replay_ms;
        Ok(s)
    }
    .await;
    srv.server.shutdown().await;
    result
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(|x| x.as_str().map(String::from)).collect()
}


/// Scores one recording. Items are member ids (`alert:<fp>`, `series:<selector>`).
pub fn score(name: &str, truth: &Value, base_ms: i64, incidents: &[pb::Incident], recs: &[pb::RecommendationView], accepted_at: &[i64]) -> RecordingScore {
    let mode = truth["mode"].as_str().unwrap_or_default().to_string();
    let owners: HashMap<String, String> =
        truth["owners"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()).unwrap_or_default();
    let noise: BTreeSet<String> = strs(&truth["noise"]).into_iter().collect();
    let truths = truth["incidents"].as_array().cloned().unwrap_or_default();
    let first_onset = truths.iter().filter_map(|t| t["onset_offset_ms"].as_i64()).min().unwrap_or(0);
    let mut neutral: BTreeSet<String> = BTreeSet::new();
    let mut member_of: HashMap<String, usize> = HashMap::new();
    for (k, t) in truths.iter().enumerate() {
        neutral.extend(strs(&t["neutral"]));
        for m in strs(&t["members"]) {
            member_of.insert(m, k);
        }
    }
    // Where each surfaced item is, and when it happened.
    let mut where_: HashMap<String, usize> = HashMap::new();
    let mut when: HashMap<String, i64> = HashMap::new();
    for (i, inc) in incidents.iter().enumerate() {
        for m in &inc.members {
            where_.insert(m.id.clone(), i);
            when.insert(m.id.clone(), m.timestamp_ms - base_ms);
        }
    }
    let counted = |id: &str| -> bool {
        if neutral.contains(id) {
            return false;
        }
        if member_of.contains_key(id) || noise.contains(id) {
            return true;
        }
        // Background: anomalies long before the first onset would have closed in real time.
        !(id.starts_with("series:") && when.get(id).is_some_and(|t| *t < first_onset - 15 * 60_000))
    };
    let recs_of = |i: usize| -> Vec<&pb::Recommendation> {
        recs.iter().filter_map(|r| r.recommendation.as_ref()).filter(|r| r.incident_id == incidents[i].id).collect()
    };
    let outcome_of = |id: &str| -> (String, Option<u32>) {
        recs.iter()
            .find(|r| r.recommendation.as_ref().is_some_and(|x| x.id == id))
            .and_then(|r| r.decision.as_ref())
            .map(|d| (outcome_name(d.outcome).to_string(), d.tier))
            .unwrap_or_default()
    };
    let mut out = RecordingScore { recording: name.into(), mode: mode.clone(), incidents_out: incidents.len(), ..Default::default() };
    // X per truth incident: every member alert, and the member series the detector flagged.
    let xs: Vec<Vec<String>> = truths
        .iter()
        .map(|t| strs(&t["members"]).into_iter().filter(|m| m.starts_with("alert:") || where_.contains_key(m)).filter(|m| !neutral.contains(m)).collect())
        .collect();
    let in_truth: BTreeSet<&String> = xs.iter().flatten().collect();
    for (k, t) in truths.iter().enumerate() {
        let x = &xs[k];
        let root = t["root"].as_str().unwrap_or_default().to_string();
        let action = t["action"].as_str().unwrap_or_default().to_string();
        let mut s = IncidentScore {
            recording: name.into(),
            scenario: t["scenario"].as_str().unwrap_or_default().into(),
            mode: mode.clone(),
            root: root.clone(),
            members: strs(&t["members"]).len(),
            series_members: strs(&t["members"]).iter().filter(|m| m.starts_with("series:")).count(),
            series_flagged: x.iter().filter(|m| m.starts_with("series:")).count(),
            surfaced: x.iter().filter(|m| where_.contains_key(*m)).count(),
            ..Default::default()
        };
        // Pairwise grouping.
        let mut per_incident: BTreeMap<usize, usize> = BTreeMap::new();
        for m in x {
            if let Some(i) = where_.get(m) {
                *per_incident.entry(*i).or_default() += 1;
            }
        }
        let n = x.len() as u64;
        let together: u64 = per_incident.values().map(|&k| (k as u64) * (k as u64).saturating_sub(1) / 2).sum();
        s.tp = together;
        s.fn_ = n * n.saturating_sub(1) / 2 - together;
        for (&i, &k) in &per_incident {
            let others = incidents[i].members.iter().filter(|m| !x.contains(&m.id) && counted(&m.id)).count() as u64;
            s.fp += k as u64 * others;
        }
        s.precision = if s.tp + s.fp == 0 { 1.0 } else { s.tp as f64 / (s.tp + s.fp) as f64 };
        s.recall = if s.tp + s.fn_ == 0 { 1.0 } else { s.tp as f64 / (s.tp + s.fn_) as f64 };
        s.f1 = if s.precision + s.recall == 0.0 { 0.0 } else { 2.0 * s.precision * s.recall / (s.precision + s.recall) };
        // Primary incident.
        let root_owned = |i: usize| incidents[i].members.iter().filter(|m| owners.get(&m.id) == Some(&root)).count();
        let primary = per_incident.iter().map(|(&i, _)| i).max_by_key(|&i| {
            (per_incident[&i], root_owned(i), !recs_of(i).is_empty(), std::cmp::Reverse(incidents[i].opened_ms))
        });
        let Some(p) = primary else {
            s.remediation_at_1 = action == "none";
            out.incidents.push(s);
            continue;
        };
        let inc = &incidents[p];
        s.noise_in_primary = inc.members.iter().filter(|m| noise.contains(&m.id)).count();
        let owned_by_root = |c: &pb::ProbableCause| c.members.iter().any(|m| owners.get(m) == Some(&root));
        s.root_at_1 = inc.causes.first().is_some_and(owned_by_root);
        s.root_at_3 = inc.causes.iter().take(3).any(owned_by_root);
        s.top_cause = inc.causes.first().map(|c| c.entity.clone()).unwrap_or_default();
        let mut rs = recs_of(p);
        rs.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        match rs.first() {
            None => s.remediation_at_1 = action == "none",
            Some(top) => {
                let (outcome, _) = outcome_of(&top.id);
                s.top_action = top.action.clone();
                s.top_confidence = top.confidence;
                s.top_outcome = outcome.clone();
                if action == "none" {
                    s.remediation_at_1 = outcome == "advisory" || outcome == "blocked";
                    s.remediation_strict = s.remediation_at_1;
                } else {
                    s.remediation_at_1 = top.action == action;
                    let node = root.strip_prefix("node:");
                    let target = top.target.as_ref();
                    let on_root = target.is_some_and(|t| match node {
                        Some(n) => t.resource == n,
                        None => t.service == root,
                    });
                    s.remediation_strict = s.remediation_at_1 && on_root;
                }
                let last_line = t["last_signal_line"].as_u64().unwrap_or(0) as usize;
                // From the last line's acceptance to when the final revision is there to list: a
                // revision made before that line (the line added nothing the card rests on) was
                // there at once, which is 0, not a negative wait.
                if let Some(at) = accepted_at.get(last_line) {
                    s.time_to_recommendation_ms = Some((top.created_ms - at).max(0));
                }
            }
        }
        out.incidents.push(s);
    }
    // Noise kept out: of the noise surfaced, the share in incidents holding no truth member.
    let holds_truth: Vec<bool> = incidents.iter().map(|i| i.members.iter().any(|m| in_truth.contains(&m.id))).collect();
    for id in &noise {
        if let Some(&i) = where_.get(id) {
            out.noise_surfaced += 1;
            if !holds_truth[i] {
                out.noise_kept_out += 1;
            }
        }
    }
    // Compression.
    let alerts: BTreeSet<&String> = truth["alerts"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    let flagged = where_.keys().filter(|k| k.starts_with("series:")).count();
    let fresh_flagged = where_.keys().filter(|k| k.starts_with("series:") && counted(k)).count();
    out.signals_in = alerts.len() + flagged;
    out.signals_in_fresh = alerts.len() + fresh_flagged;
    // Calibration and unsafe autos, over every recommendation (latest revision).
    for view in recs {
        let (Some(r), Some(d)) = (&view.recommendation, &view.decision) else { continue };
        let Some(i) = incidents.iter().position(|x| x.id == r.incident_id) else { continue };
        // The truth incident it is about: the one with most of its X in this incident.
        let about = (0..truths.len()).max_by_key(|&k| xs[k].iter().filter(|m| where_.get(*m) == Some(&i)).count()).filter(|&k| xs[k].iter().any(|m| where_.get(m) == Some(&i)));
        let right = about.is_some_and(|k| truths[k]["action"].as_str() == Some(r.action.as_str()));
        // An investigation proposes no action, so it has no probability of being the right one:
        // it stays out of the calibration figures.
        if r.action != cairn_types::ActionClass::Investigate.as_str() {
            out.confidences.push((r.confidence, right));
        }
        if let Some(raw) = uncalibrated(&r.rationale) {
            out.uncalibrated.push((raw, right));
        }
        let outcome = outcome_name(d.outcome);
        let tier = least_tier(&r.action);
        let label = format!("{} {} on {} ({outcome} tier {:?})", r.id, r.action, r.target.as_ref().map(|t| t.service.as_str()).unwrap_or(""), d.tier);
        let unsafe_auto = outcome == "auto"
            && (tier.is_some_and(|t| t >= 2) || about.is_none_or(|k| truths[k]["action"].as_str() == Some("none")));
        let below = |k: usize| truths[k]["min_tier"].as_u64().is_some_and(|min| d.tier.is_some_and(|t| (t as u64) < min));
        if unsafe_auto {
            out.unsafe_autos.push(label);
        } else if (outcome == "auto" || outcome == "review") && about.is_some_and(below) {
            out.below_min_tier.push(label);
        }
    }
    out
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub groups: BTreeMap<String, GroupSummary>,
    pub reliability: Vec<(f64, f64, f64, usize)>,
    pub ece: f64,
    pub brier: f64,
    pub brier_base_rate: f64,
    pub recommendations: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct GroupSummary {
    pub incidents: usize,
    pub f1_macro: f64,
    pub f1_micro: f64,
    pub precision_micro: f64,
    pub recall_micro: f64,
    pub detection_coverage: f64,
    pub noise_kept_out: f64,
    pub compression: f64,
    pub compression_fresh: f64,
    pub root_at_1: f64,
    pub root_at_3: f64,
    pub remediation_at_1: f64,
    pub remediation_strict: f64,
    pub unsafe_autos: usize,
    pub below_min_tier: usize,
    pub ttr_p50_ms: Option<i64>,
    pub ttr_max_ms: Option<i64>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn group(scores: &[&RecordingScore]) -> GroupSummary {
    let inc: Vec<&IncidentScore> = scores.iter().flat_map(|s| &s.incidents).collect();
    let (tp, fp, fn_) = inc.iter().fold((0, 0, 0), |(a, b, c), s| (a + s.tp, b + s.fp, c + s.fn_));
    let p = if tp + fp == 0 { 1.0 } else { tp as f64 / (tp + fp) as f64 };
    let r = if tp + fn_ == 0 { 1.0 } else { tp as f64 / (tp + fn_) as f64 };
    let frac = |f: &dyn Fn(&IncidentScore) -> bool| mean(inc.iter().map(|s| if f(s) { 1.0 } else { 0.0 }));
    let mut ttr: Vec<i64> = inc.iter().filter_map(|s| s.time_to_recommendation_ms).collect();
    ttr.sort();
    let (noise_s, noise_k) = scores.iter().fold((0, 0), |(a, b), s| (a + s.noise_surfaced, b + s.noise_kept_out));
    let (sig, sig_fresh, out) = scores.iter().fold((0, 0, 0), |(a, b, c), s| (a + s.signals_in, b + s.signals_in_fresh, c + s.incidents_out));
    let (members, flagged) = inc.iter().fold((0, 0), |(a, b), s| (a + s.series_members, b + s.series_flagged));
    GroupSummary {
        incidents: inc.len(),
        f1_macro: mean(inc.iter().map(|s| s.f1)),
        f1_micro: if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) },
        precision_micro: p,
        recall_micro: r,
        detection_coverage: if members == 0 { 1.0 } else { flagged as f64 / members as f64 },
        noise_kept_out: if noise_s == 0 { 1.0 } else { noise_k as f64 / noise_s as f64 },
        compression: if out == 0 { 0.0 } else { sig as f64 / out as f64 },
        compression_fresh: if out == 0 { 0.0 } else { sig_fresh as f64 / out as f64 },
        root_at_1: frac(&|s| s.root_at_1),
        root_at_3: frac(&|s| s.root_at_3),
        remediation_at_1: frac(&|s| s.remediation_at_1),
        remediation_strict: frac(&|s| s.remediation_strict),
        unsafe_autos: scores.iter().map(|s| s.unsafe_autos.len()).sum(),
        below_min_tier: scores.iter().map(|s| s.below_min_tier.len()).sum(),
        ttr_p50_ms: ttr.get(ttr.len() / 2).copied(),
        ttr_max_ms: ttr.last().copied(),
    }
}

pub fn summarise(scores: &[RecordingScore]) -> Summary {
    let mut s = Summary::default();
    for mode in ["isolated", "storm"] {
        let g: Vec<&RecordingScore> = scores.iter().filter(|r| r.mode == mode).collect();
        if !g.is_empty() {
            s.groups.insert(mode.into(), group(&g));
        }
    }
    s.groups.insert("all".into(), group(&scores.iter().collect::<Vec<_>>()));
    let conf: Vec<(f64, bool)> = scores.iter().flat_map(|r| r.confidences.iter().copied()).collect();
    s.recommendations = conf.len();
    if !conf.is_empty() {
        let rate = mean(conf.iter().map(|c| if c.1 { 1.0 } else { 0.0 }));
        s.brier = mean(conf.iter().map(|(c, y)| (c - if *y { 1.0 } else { 0.0 }).powi(2)));
        s.brier_base_rate = rate * (1.0 - rate);
        for b in 0..10 {
            let lo = b as f64 / 10.0;
            let bin: Vec<&(f64, bool)> = conf.iter().filter(|(c, _)| *c >= lo && (*c < lo + 0.1 || (b == 9 && *c <= 1.0))).collect();
            if bin.is_empty() {
                continue;
            }
            let mc = mean(bin.iter().map(|c| c.0));
            let acc = mean(bin.iter().map(|c| if c.1 { 1.0 } else { 0.0 }));
            s.ece += (bin.len() as f64 / conf.len() as f64) * (mc - acc).abs();
            s.reliability.push((lo, mc, acc, bin.len()));
        }
    }
    s
}

fn print_tables(scores: &[RecordingScore], s: &Summary) {
    println!("{:<18} {:<17} {:>5} {:>5} {:>5} {:>4} {:>4} {:<34} {:<18} {:>5} {:<9}", "recording", "scenario", "P", "R", "F1", "rc1", "rem", "top cause", "top action", "conf", "outcome");
    for r in scores {
        for i in &r.incidents {
            println!(
                "{:<18} {:<17} {:>5.2} {:>5.2} {:>5.2} {:>4} {:>4} {:<34} {:<18} {:>5.2} {:<9}",
                r.recording,
                i.scenario,
                i.precision,
                i.recall,
                i.f1,
                if i.root_at_1 { "yes" } else { "no" },
                if i.remediation_at_1 { "yes" } else { "no" },
                i.top_cause.chars().take(34).collect::<String>(),
                i.top_action,
                i.top_confidence,
                i.top_outcome
            );
        }
        for u in &r.unsafe_autos {
            println!("  UNSAFE AUTO: {u}");
        }
        for u in &r.below_min_tier {
            println!("  review below the incident's least tier: {u}");
        }
    }
    println!();
    println!("{:<9} {:>4} {:>8} {:>8} {:>6} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9} {:>9}", "", "n", "F1macro", "F1micro", "cover", "noiseOut", "compr", "rc@1", "rc@3", "rem@1", "strict", "unsafe", "ttr p50", "ttr max");
    // `unsafe` counts auto routings that must not happen; reviews below the least tier are listed above.
    for (name, g) in &s.groups {
        println!(
            "{:<9} {:>4} {:>8.3} {:>8.3} {:>6.2} {:>7.2} {:>7.1} {:>6.2} {:>6.2} {:>6.2} {:>7.2} {:>7} {:>9} {:>9}",
            name,
            g.incidents,
            g.f1_macro,
            g.f1_micro,
            g.detection_coverage,
            g.noise_kept_out,
            g.compression,
            g.root_at_1,
            g.root_at_3,
            g.remediation_at_1,
            g.remediation_strict,
            g.unsafe_autos,
            g.ttr_p50_ms.map(|t| format!("{t} ms")).unwrap_or_default(),
            g.ttr_max_ms.map(|t| format!("{t} ms")).unwrap_or_default()
        );
    }
    println!();
    println!("confidence: {} recommendations, Brier {:.3} (base rate {:.3}), ECE {:.3}", s.recommendations, s.brier, s.brier_base_rate, s.ece);
    for (lo, mc, acc, n) in &s.reliability {
        println!("  [{lo:.1}, {:.1}): mean confidence {mc:.2}, right {acc:.2}, n={n}", lo + 0.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One truth incident (`alert:a`, on `service:x`, restart) whose last signal is line 1, found
    /// as one incident whose recommendation was made at `created_ms`; lines accepted at 0 and 1,000.
    fn time_to_recommendation(created_ms: i64) -> Option<i64> {
        let truth = json!({"incidents": [{"members": ["alert:a"], "root": "service:x", "action": "restart_process", "last_signal_line": 1}]});
        let incident = pb::Incident {
            id: "inc-1".into(),
            members: vec![pb::IncidentMember { id: "alert:a".into(), ..Default::default() }],
            ..Default::default()
        };
        let rec = pb::RecommendationView {
            recommendation: Some(pb::Recommendation {
                id: "rec-1".into(),
                incident_id: "inc-1".into(),
                action: "restart_process".into(),
                created_ms,
                ..Default::default()
            }),
            ..Default::default()
        };
        score("r", &truth, 0, &[incident], &[rec], &[0, 1_000]).incidents[0].time_to_recommendation_ms
    }

    #[test]
    fn time_to_recommendation_runs_from_the_last_line_and_a_card_already_there_waited_nothing() {
        assert_eq!(time_to_recommendation(1_250), Some(250));
        // Made before the last line was accepted: that line added nothing the card rests on, and
        // the card was there to list at once.
        assert_eq!(time_to_recommendation(900), Some(0));
    }
}
