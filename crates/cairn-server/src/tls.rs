//! TLS for both listeners: a PEM certificate chain and key, optional verification of client
//! certificates against a CA bundle, and a reload without a restart when any of the files change
//! (certificate rotation). New connections get the new certificate; open ones keep the session
//! they negotiated and drain on their own. A file that cannot be read or parsed during a reload
//! leaves the previous certificate in use, says why in the log and counts in
//! `cairn_tls_reloads_total{result="error"}`.
//!
//! From a verified client certificate it reads the names (subject common name, DNS and URI
//! subject alternative names) that [`crate::auth`] maps to a service principal.
//!
//! This module terminates TLS and reads certificates; it never decides what a caller may do.

use crate::metrics::Metrics;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// `[tls]`: serve both listeners over TLS. Absent, they speak plaintext, which is allowed on
/// loopback only unless `listen.allow_plaintext` says otherwise.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates are verified against. Absent: clients are
    /// not asked for a certificate.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (the default) refuses a client without a valid
    /// certificate at the handshake; `optional` also lets in clients without one (people with
    /// bearer tokens), while a certificate that is presented must still verify.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How often the files are checked for a change.
    #[serde(default = "default_reload_interval_ms")]
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_interval_ms() -> u64 {
    10_000
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// Why the TLS files cannot be used. Each names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read tls.{key} {}: {source}", path.display())]
    Read { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("tls.{key} {}: {message}", path.display())]
    Invalid { key: &'static str, path: PathBuf, message: String },
}

/// The protocol a listener speaks, offered in ALPN: gRPC clients (grpc-go among them) require
/// `h2` to be negotiated; the HTTP listener speaks HTTP/1.1 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

/// The names a verified client certificate carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCert {
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    /// Hex SHA-256 of the DER certificate, for logs.
    pub sha256: String,
}

impl PeerCert {
    /// Reads the leaf certificate a handshake verified. `None` if it does not parse as X.509
    /// (rustls verified it, so that does not happen in practice).
    pub fn from_der(der: &[u8]) -> Option<PeerCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
        let (mut dns_names, mut uris) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    x509_parser::extensions::GeneralName::URI(u) => uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        Some(PeerCert { common_name, dns_names, uris, sha256: hex::encode(Sha256::digest(der)) })
    }
}

/// What one reading of the files built.
#[derive(Debug)]
struct Loaded {
    digest: [u8; 32],
    http: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
    not_after_secs: i64,
}

/// The listeners' TLS state: the configuration as last loaded, swapped whole on a reload.
#[derive(Debug)]
pub struct Tls {
    cfg: TlsConfig,
    current: RwLock<Arc<Loaded>>,
}

impl Tls {
    /// Reads and checks the files; an error here stops the server from starting.
    pub fn load(cfg: TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let files = Files::read(&cfg)?;
        let loaded = build(&cfg, &files)?;
        Ok(Arc::new(Tls { cfg, current: RwLock::new(Arc::new(loaded)) }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// An acceptor with the configuration as it is now, for one connection.
    pub fn acceptor(&self, alpn: Alpn) -> tokio_rustls::TlsAcceptor {
        let loaded = self.current();
        tokio_rustls::TlsAcceptor::from(match alpn {
            Alpn::Http1 => loaded.http.clone(),
            Alpn::H2 => loaded.grpc.clone(),
        })
    }

    /// When the serving certificate expires, in Unix seconds.
    pub fn not_after_secs(&self) -> i64 {
        self.current().not_after_secs
    }

    /// Re-reads the files; if their contents changed and they are valid, the next connection gets
    /// them. `Ok(true)` when something new was loaded.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = Files::read(&self.cfg)?;
        if files.digest() == self.current().digest {
            return Ok(false);
        }
        let loaded = Arc::new(build(&self.cfg, &files)?);
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
        Ok(true)
    }

    /// Checks the files every `reload_interval_ms` until `cancel`. A failure is logged once per
    /// distinct cause, not on every check.
    pub async fn watch(self: Arc<Self>, metrics: Metrics, cancel: CancellationToken) {
        metrics.tls_certificate_expiry.set(self.not_after_secs());
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.reload_interval_ms.max(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || me.reload()).await;
            match result {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    last_error.clear();
                    metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    metrics.tls_certificate_expiry.set(self.not_after_secs());
                    info!(cert = %self.cfg.cert_file.display(), not_after = self.not_after_secs(), "TLS files changed; new connections use them");
                }
                Ok(Err(e)) => {
                    let text = e.to_string();
                    if text != last_error {
                        metrics.tls_reloads.with_label_values(&["error"]).inc();
                        warn!(error = %text, "TLS files changed but cannot be used; the previous certificate stays in use");
                        last_error = text;
                    }
                }
                Err(e) => warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// The three files' bytes.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(cfg: &TlsConfig) -> Result<Files, TlsError> {
        let read = |key: &'static str, path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.to_owned(), source });
        Ok(Files {
            cert: read("cert_file", &cfg.cert_file)?,
            key: read("key_file", &cfg.key_file)?,
            client_ca: cfg.client_ca_file.as_deref().map(|p| read("client_ca_file", p)).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let bytes = part.map_or(&[][..], |b| b.as_slice());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        h.finalize().into()
    }
}

fn certificates(key: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |message: String| TlsError::Invalid { key, path: path.to_owned(), message };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate list: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn build(cfg: &TlsConfig, files: &Files) -> Result<Loaded, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates("cert_file", &cfg.cert_file, &files.cert)?;
    let invalid = |key: &'static str, path: &Path, message: String| TlsError::Invalid { key, path: path.to_owned(), message };
    let not_after_secs = x509_parser::parse_x509_certificate(&certs[0])
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| invalid("cert_file", &cfg.cert_file, format!("the first certificate is not X.509: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| invalid("key_file", &cfg.key_file, format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("cert_file", &cfg.cert_file, e.to_string()))?;
    let builder = match (&cfg.client_ca_file, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("client_ca_file", path, pem)? {
                roots.add(ca).map_err(|e| invalid("client_ca_file", path, format!("not a usable CA certificate: {e}")))?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if cfg.client_auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build().map_err(|e| invalid("client_ca_file", path, e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let base = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("key_file", &cfg.key_file, format!("cannot be used with tls.cert_file: {e}")))?;
    let mut http = base.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut grpc = base;
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded { digest: files.digest(), http: Arc::new(http), grpc: Arc::new(grpc), not_after_secs })
}

/// Why a handshake failed, as a label: a client without a certificate, one whose certificate
/// does not verify, a protocol mismatch, or too slow.
pub fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
    }

    fn pki(cn: &str, sans: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names.push(rcgen::SanType::URI("spiffe://cluster.local/ns/monitoring/sa/prometheus".try_into().unwrap()));
        let cert = params.signed_by(&key, &ca).unwrap();
        Pki { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    fn write(dir: &Path, p: &Pki) -> TlsConfig {
        std::fs::write(dir.join("ca.pem"), &p.ca_pem).unwrap();
        std::fs::write(dir.join("cert.pem"), &p.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &p.key_pem).unwrap();
        TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            client_ca_file: Some(dir.join("ca.pem")),
            client_auth: ClientAuth::Required,
            reload_interval_ms: 100,
        }
    }

    #[test]
    fn a_certificate_yields_its_common_name_dns_and_uri_names() {
        let p = pki("prometheus", &["prometheus.monitoring.svc"]);
        let der = CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap();
        let names = PeerCert::from_der(&der).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("prometheus"));
        assert_eq!(names.dns_names, ["prometheus.monitoring.svc"]);
        assert_eq!(names.uris, ["spiffe://cluster.local/ns/monitoring/sa/prometheus"]);
        assert_eq!(names.sha256.len(), 64);
    }

    #[test]
    fn a_reload_takes_new_files_and_keeps_the_old_ones_when_the_new_are_broken() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(dir.path(), &pki("cairn", &["localhost"]));
        let tls = Tls::load(cfg.clone()).unwrap();
        assert!(!tls.reload().unwrap(), "unchanged files are not reloaded");
        let before = tls.current().digest;
        write(dir.path(), &pki("cairn", &["localhost"]));
        assert!(tls.reload().unwrap());
        let after = tls.current().digest;
        assert_ne!(before, after);
        // A key that does not match the certificate: refused by name, the previous pair serves on.
        let other = pki("cairn", &["localhost"]);
        std::fs::write(dir.path().join("key.pem"), &other.key_pem).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(err.to_string().contains("tls.key_file"), "{err}");
        assert_eq!(tls.current().digest, after);
        // A missing file, as in the middle of a rotation: the same.
        std::fs::remove_file(dir.path().join("cert.pem")).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Read { key: "cert_file", .. })));
        assert_eq!(tls.current().digest, after);
    }

    #[test]
    fn files_that_are_not_pem_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = write(dir.path(), &pki("cairn", &["localhost"]));
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let err = Tls::load(cfg.clone()).unwrap_err();
        assert!(err.to_string().contains("tls.client_ca_file"), "{err}");
        cfg.client_ca_file = None;
        std::fs::write(dir.path().join("cert.pem"), "").unwrap();
        let err = Tls::load(cfg).unwrap_err();
        assert!(err.to_string().contains("tls.cert_file") && err.to_string().contains("no CERTIFICATE"), "{err}");
    }
}
