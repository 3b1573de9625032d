//! The listeners: what a client that reaches a port can hold. Every accepted socket gets
//! `TCP_NODELAY` (so a gRPC answer's trailers do not wait for the client's delayed ACK), counts
//! against a per-listener connection cap (over it the socket is closed at once and counted), and is
//! closed when it sends nothing for `listen.idle_timeout_ms` — which also ends a half-open gRPC
//! handshake, since HTTP/2 keep-alive pings make every live gRPC client send something. HTTP/1
//! requests must deliver their headers within `listen.header_read_timeout_ms`, however slowly the
//! bytes trickle. At start-up the descriptor soft limit is raised to the hard limit.
//!
//! With `[tls]` each accepted socket is handed to its own task for the TLS handshake (bounded by
//! `listen.tls_handshake_timeout_ms`, and holding its place under the cap), so a slow or hostile
//! client never holds up the accept loop. A connection carries [`PeerInfo`]: its addresses and
//! the names of a verified client certificate.
//!
//! This module bounds connections; it never looks inside a request.

use crate::metrics::Metrics;
use crate::tls::{Alpn, PeerCert, Tls};
use serde::{Deserialize, Serialize};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// `[listen]`: connection bounds, the same for both listeners (each has its own cap).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Connections open at once per listener; one more is closed on accept.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (idle keep-alive, a TCP connect
    /// that never starts its handshake, a dead peer).
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub idle_timeout_ms: u64,
    /// An HTTP/1 request's headers must arrive within this long.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub header_read_timeout_ms: u64,
    /// gRPC: how often the server pings an HTTP/2 connection, and how long it waits for the answer.
    pub http2_keepalive_interval_ms: u64,
    pub http2_keepalive_timeout_ms: u64,
    /// A TLS handshake must complete within this long.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub tls_handshake_timeout_ms: u64,
    /// Lets the listeners speak plaintext on an address other than loopback. Off: without
    /// `[tls]`, such a configuration refuses to start, since tokens would cross the network in
    /// clear.
    pub allow_plaintext: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            max_connections: 1024,
            idle_timeout_ms: 120_000,
            header_read_timeout_ms: 10_000,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 10_000,
            tls_handshake_timeout_ms: 10_000,
            allow_plaintext: false,
        }
    }
}

impl ListenConfig {
    /// What makes no sense: a zero cap or timeout, or keep-alive pings no more often than the idle
    /// timeout (live gRPC streams would then be cut).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.max_connections == 0 {
            return Some(("listen.max_connections", "must be at least 1".into()));
        }
        if self.idle_timeout_ms == 0
            || self.header_read_timeout_ms == 0
            || self.http2_keepalive_timeout_ms == 0
            || self.tls_handshake_timeout_ms == 0
        {
            return Some(("listen", "timeouts must be at least 1 ms".into()));
        }
        if self.http2_keepalive_interval_ms == 0 || self.http2_keepalive_interval_ms >= self.idle_timeout_ms {
            return Some((
                "listen.http2_keepalive_interval_ms",
                format!("must be above 0 and below listen.idle_timeout_ms ({})", self.idle_timeout_ms),
            ));
        }
        None
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// Raises the open-descriptor soft limit to the hard limit, so connection caps, not the process
/// limit, decide who is refused. Logs what was obtained.
pub fn raise_descriptor_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(limit = n, "open-descriptor soft limit raised to the hard limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-descriptor limit; the process limit may refuse connections first"),
    }
}

/// An accepted connection: the socket, its place under the cap, and its idle deadline.
#[derive(Debug)]
pub struct Guarded {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _open: OpenGauge,
}

/// Counts the connection in `cairn_connections_open` while it lives.
#[derive(Debug)]
struct OpenGauge(prometheus::IntGauge);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle past listen.idle_timeout_ms"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Guarded {
    /// Whether `TCP_NODELAY` is set on the socket (tests check it on the server's side).
    pub fn nodelay(&self) -> bool {
        self.inner.nodelay().unwrap_or(false)
    }
}

/// Who is at the other end of a connection: its addresses and, over TLS with a client
/// certificate that verified, the certificate's names. Put into every request's extensions (by
/// tonic for gRPC, by [`serve_http`] for HTTP).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub tcp: tonic::transport::server::TcpConnectInfo,
    pub cert: Option<Arc<PeerCert>>,
}

/// An accepted connection, in plaintext or after its TLS handshake.
#[derive(Debug)]
pub enum Conn {
    Plain(Guarded),
    Tls { stream: Box<tokio_rustls::server::TlsStream<Guarded>>, cert: Option<Arc<PeerCert>> },
}

impl Conn {
    pub fn peer_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(g) => PeerInfo { tcp: tonic::transport::server::Connected::connect_info(&g.inner), cert: None },
            Conn::Tls { stream, cert } => PeerInfo { tcp: tonic::transport::server::Connected::connect_info(&stream.get_ref().0.inner), cert: cert.clone() },
        }
    }

    /// Whether `TCP_NODELAY` is set on the socket (tests check it on the server's side).
    pub fn nodelay(&self) -> bool {
        match self {
            Conn::Plain(g) => g.nodelay(),
            Conn::Tls { stream, .. } => stream.get_ref().0.nodelay(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tls { stream, .. } => {
                let $s = Pin::new(stream.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(g) => g.is_write_vectored(),
            Conn::Tls { stream, .. } => stream.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer_info()
    }
}

/// A listener's TLS: the shared, reloadable state and the protocol it offers in ALPN.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    pub tls: Arc<Tls>,
    pub alpn: Alpn,
}

/// Accepts on `listener` until `cancel`, handing each connection that fits under the cap, with
/// `TCP_NODELAY` set (and, with `tls`, once its handshake has completed), to the returned channel.
pub fn accept(
    listener: TcpListener,
    name: &'static str,
    cfg: &ListenConfig,
    tls: Option<ListenerTls>,
    metrics: Metrics,
    cancel: CancellationToken,
) -> mpsc::Receiver<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let cap = Arc::new(Semaphore::new(cfg.max_connections));
    let idle = cfg.idle_timeout();
    let handshake_timeout = Duration::from_millis(cfg.tls_handshake_timeout_ms);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                r = listener.accept() => r,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, usually: back off instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = cap.clone().try_acquire_owned() else {
                metrics.connections_refused.with_label_values(&[name]).inc();
                drop(stream);
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                warn!(listener = name, error = %e, "cannot set TCP_NODELAY");
            }
            let gauge = metrics.connections_open.with_label_values(&[name]);
            gauge.inc();
            let g = Guarded {
                inner: stream,
                _permit: permit,
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
                _open: OpenGauge(gauge),
            };
            let Some(t) = &tls else {
                if tx.send(Ok(Conn::Plain(g))).await.is_err() {
                    break;
                }
                continue;
            };
            let (acceptor, tx, metrics) = (t.tls.acceptor(t.alpn), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(g)).await;
                let stream = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let reason = crate::tls::handshake_failure_reason(&e);
                        metrics.tls_handshake_failures.with_label_values(&[name, reason]).inc();
                        tracing::debug!(listener = name, reason, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.tls_handshake_failures.with_label_values(&[name, "timeout"]).inc();
                        return;
                    }
                };
                let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|der| PeerCert::from_der(der)).map(Arc::new);
                let _ = tx.send(Ok(Conn::Tls { stream: Box::new(stream), cert })).await;
            });
        }
    });
    rx
}

/// Serves `app` over HTTP/1 on the accepted connections, each with the header-read timeout, until
/// `cancel`; then lets in-flight requests finish (at most 10 s).
pub async fn serve_http(mut incoming: mpsc::Receiver<io::Result<Conn>>, app: axum::Router, cfg: ListenConfig, cancel: CancellationToken) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let header_timeout = Duration::from_millis(cfg.header_read_timeout_ms);
    loop {
        let conn = tokio::select! {
            () = cancel.cancelled() => break,
            c = incoming.recv() => match c {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let peer = conn.peer_info();
        let with_peer = tower::ServiceBuilder::new()
            .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                req
            })
            .service(app.clone());
        let svc = hyper_util::service::TowerToHyperService::new(with_peer);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
        let served = graceful.watch(builder.serve_connection(TokioIo::new(conn), svc));
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => warn!("http connections still open after 10 s of shutdown; closing them"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_count_under_the_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cfg = ListenConfig { max_connections: 1, ..ListenConfig::default() };
        let metrics = Metrics::new();
        let cancel = CancellationToken::new();
        let mut incoming = accept(listener, "test", &cfg, None, metrics.clone(), cancel.clone());
        let _first = TcpStream::connect(addr).await.expect("connect");
        let conn = incoming.recv().await.expect("accepted").expect("ok");
        assert!(conn.nodelay(), "TCP_NODELAY is set on every accepted socket");
        assert_eq!(metrics.connections_open.with_label_values(&["test"]).get(), 1);
        // Over the cap: closed on accept, counted, and never handed on.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut second, &mut buf))
            .await
            .expect("closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(metrics.connections_refused.with_label_values(&["test"]).get(), 1);
        drop(conn);
        assert_eq!(metrics.connections_open.with_label_values(&["test"]).get(), 0);
        cancel.cancel();
    }

    #[test]
    fn keepalive_pings_must_come_more_often_than_the_idle_timeout() {
        let cfg = ListenConfig { http2_keepalive_interval_ms: 120_000, ..ListenConfig::default() };
        assert_eq!(cfg.problem().map(|p| p.0), Some("listen.http2_keepalive_interval_ms"));
        assert!(ListenConfig::default().problem().is_none());
    }
}
