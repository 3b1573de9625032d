//! Certificates made by the test: a CA, and leaf certificates it signs for the server (localhost,
//! 127.0.0.1) and for clients (a common name), written as PEM files where Cairn, Prometheus and
//! Alertmanager read them.

use std::path::{Path, PathBuf};

/// A certificate authority the test controls.
pub struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        Ca { issuer: rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap() }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.pem()).unwrap();
        path.to_owned()
    }

    fn leaf(&self, cn: &str, sans: &[&str], usage: rcgen::ExtendedKeyUsagePurpose, dir: &Path, stem: &str) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf { cert: dir.join(format!("{stem}.crt")), key: dir.join(format!("{stem}.key")) };
        // Written through a temporary name and renamed, as cert-manager and most rotation tools
        // do, so a reader never sees half a file.
        for (path, text) in [(&leaf.key, key.serialize_pem()), (&leaf.cert, cert.pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        leaf
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self, dir: &Path, stem: &str) -> Leaf {
        self.leaf("cairn", &["localhost", "127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth, dir, stem)
    }

    /// A client certificate whose subject common name is `cn`.
    pub fn client(&self, cn: &str, dir: &Path) -> Leaf {
        self.leaf(cn, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth, dir, cn)
    }
}

/// Sends `request` (a whole HTTP/1.1 request, which should say `Connection: close`) over TLS to
/// `addr`, trusting only `ca_pem` and presenting `client` if given, and returns what came back.
/// A refused handshake is an error (or, under TLS 1.3, an empty answer: the client learns of the
/// refusal only when it reads).
pub async fn https(addr: std::net::SocketAddr, ca_pem: &str, client: Option<&Leaf>, request: &[u8]) -> std::io::Result<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some(l) => {
            let certs = CertificateDer::pem_file_iter(&l.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(&l.key).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    tls.write_all(request).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A gRPC channel to `https://127.0.0.1:<port>` trusting only `ca_pem`, with `client`'s certificate.
pub async fn grpc_channel(grpc: std::net::SocketAddr, ca_pem: &str, client: Option<&Leaf>) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(l) = client {
        tls = tls.identity(tonic::transport::Identity::from_pem(std::fs::read(&l.cert).unwrap(), std::fs::read(&l.key).unwrap()));
    }
    tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
}
