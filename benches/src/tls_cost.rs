//! What TLS costs on the remote_write path: two in-process Cairn servers side by side, one in
//! plaintext (the sender holds a bearer token) and one with mutual TLS (the sender holds a client
//! certificate mapped to a service, made by the test PKI in `cairn-testkit`), sent the same snappy bodies in
//! alternating rounds so that the shared machine's noise falls on both.
//!
//! Prints, per transport: a new connection's handshake plus first request (p50, p99), and
//! requests/s over kept-alive connections; then the ratios TLS / plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;

use anyhow::{Result, bail};
use cairn_testkit::pki::Ca;
use cairn_ingest::prompb::{Label, Sample, TimeSeries, WriteRequest};
use clap::Parser;
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(about = "remote_write over mutual TLS against plaintext, side by side")]
struct Args {
    /// New connections per round (each: connect, handshake, one request).
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// Requests per kept-alive connection per round.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Kept-alive connections sending at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Series per body (one sample each).
    #[arg(long, default_value_t = 50)]
    series: usize,
    /// Rounds, alternating plaintext and TLS.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

struct Target {
    addr: SocketAddr,
    /// `None`: plaintext with a bearer token.
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Target {
    async fn connect(&self) -> Result<Box<dyn Io>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some(c) => Box::new(c.connect(ServerName::try_from("localhost")?, tcp).await?),
        })
    }

    fn request(&self, body: &[u8]) -> Vec<u8> {
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let mut r = format!(
            "POST /api/v1/write HTTP/1.1\r\nHost: localhost\r\nContent-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n{auth}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }
}

/// Sends one request on `io` and reads its answer's status (bodies are read by Content-Length).
async fn exchange(io: &mut Box<dyn Io>, request: &[u8], buf: &mut Vec<u8>) -> Result<u16> {
    io.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = io.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0));
        }
    }
}

fn body(series: usize, round: i64) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let timeseries = (0..series)
        .map(|i| TimeSeries {
            labels: vec![
                Label { name: "__name__".into(), value: "tls_cost_probe".into() },
                Label { name: "instance".into(), value: format!("host-{i}:9100") },
                Label { name: "job".into(), value: "node".into() },
            ],
            samples: vec![Sample { value: (i % 7) as f64, timestamp: now + round }],
            ..Default::default()
        })
        .collect();
    snap::raw::Encoder::new().compress_vec(&WriteRequest { timeseries, ..Default::default() }.encode_to_vec()).unwrap()
}

async fn start(dir: &std::path::Path, pki: Option<(&Ca, &Ca)>) -> Result<(cairn_server::RunningServer, Target)> {
    let token = "bench-sender-token".to_string();
    let mut cfg = cairn_server::config::ServerConfig {
        http_addr: ([127, 0, 0, 1], 0).into(),
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.join("data"),
        ..Default::default()
    };
    cfg.ingest.require_token = true;
    cfg.ingest.queue_capacity = 4096;
    cfg.auth.tokens.push(cairn_server::config::TokenEntry {
        subject: "service:prometheus".into(),
        display_name: String::new(),
        groups: vec![],
        token_sha256: cairn_server::auth::hash_token(&token),
        kind: Some(cairn_server::access::PrincipalKind::Service),
        scopes: Some(vec![cairn_server::access::Scope::Ingest]),
    });
    let mut connector = None;
    if let Some((ca, clients)) = pki {
        std::fs::create_dir_all(dir)?;
        let server = ca.server(dir, "server");
        cfg.tls = Some(cairn_server::tls::TlsConfig {
            cert_file: server.cert,
            key_file: server.key,
            client_ca_file: Some(clients.write(&dir.join("clients.crt"))),
            client_auth: cairn_server::tls::ClientAuth::Required,
            reload_interval_ms: 10_000,
        });
        cfg.auth.certificates.push(cairn_server::config::CertificateEntry {
            subject: "service:prometheus-cert".into(),
            display_name: String::new(),
            groups: vec![],
            common_name: Some("prometheus".into()),
            dns_name: None,
            uri: None,
            scopes: vec![cairn_server::access::Scope::Ingest],
        });
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
            roots.add(c?)?;
        }
        let leaf = clients.client("prometheus", dir);
        let client_certs = CertificateDer::pem_file_iter(&leaf.cert)?.collect::<Result<Vec<_>, _>>()?;
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(client_certs, PrivateKeyDer::from_pem_file(&leaf.key)?)?;
        connector = Some(tokio_rustls::TlsConnector::from(Arc::new(client)));
    }
    let server = cairn_server::start(cfg, Arc::new(cairn_server::engine::SystemClock)).await?;
    let target = Target { addr: server.http_addr, tls: connector.clone(), token: if connector.is_some() { None } else { Some(token) } };
    Ok((server, target))
}

/// New connections, one request each: the handshake's cost.
async fn fresh(target: &Target, request: &[u8], n: usize) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    let mut buf = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut io = target.connect().await?;
        let status = exchange(&mut io, request, &mut buf).await?;
        lat.push(t.elapsed());
        if status != 204 {
            bail!("answer {status}");
        }
    }
    lat.sort();
    Ok(lat)
}

/// Kept-alive connections: requests/s once the handshake is paid.
async fn steady(target: Arc<Target>, request: Arc<Vec<u8>>, concurrency: usize, per: usize) -> Result<f64> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (target, request) = (target.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut io = target.connect().await?;
            let mut buf = Vec::new();
            for _ in 0..per {
                let status = exchange(&mut io, &request, &mut buf).await?;
                if status != 204 {
                    bail!("answer {status}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((concurrency * per) as f64 / t.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dir = tempfile::tempdir()?;
    let (ca, clients) = (Ca::new("bench-ca"), Ca::new("bench-clients"));
    let (plain_server, plain) = start(&dir.path().join("plain"), None).await?;
    let (tls_server, tls) = start(&dir.path().join("tls"), Some((&ca, &clients))).await?;
    let (plain, tls) = (Arc::new(plain), Arc::new(tls));
    let body = body(args.series, 0);
    println!(
        "machine: {cores} cores; body {} bytes ({} series); {} new connections and {} × {} kept-alive requests per round, {} rounds; TLS 1.3, ECDSA P-256, ring, client certificate verified",
        body.len(),
        args.series,
        args.connections,
        args.concurrency,
        args.requests,
        args.rounds
    );
    let (mut fresh_p, mut fresh_t, mut rate_p, mut rate_t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        for (target, fresh_out, rate_out) in [(&plain, &mut fresh_p, &mut rate_p), (&tls, &mut fresh_t, &mut rate_t)] {
            let request = Arc::new(target.request(&body));
            fresh_out.extend(fresh(target, &request, args.connections).await?);
            rate_out.push(steady(target.clone(), request, args.concurrency, args.requests).await?);
        }
    }
    fresh_p.sort();
    fresh_t.sort();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (rp, rt_) = (median(&mut rate_p), median(&mut rate_t));
    for (name, f, r) in [("plaintext + token", &fresh_p, rp), ("mutual TLS", &fresh_t, rt_)] {
        println!(
            "{name:>18}: new connection + first request p50 {:.2} ms, p99 {:.2} ms; kept-alive {:.0} requests/s ({:.0} samples/s)",
            load::percentile(f, 0.5).as_secs_f64() * 1e3,
            load::percentile(f, 0.99).as_secs_f64() * 1e3,
            r,
            r * args.series as f64
        );
    }
    println!(
        "ratios TLS / plaintext: new connection p50 {:.2}×, kept-alive throughput {:.2}×",
        load::percentile(&fresh_t, 0.5).as_secs_f64() / load::percentile(&fresh_p, 0.5).as_secs_f64(),
        rt_ / rp
    );
    plain_server.shutdown().await;
    tls_server.shutdown().await;
    Ok(())
}
