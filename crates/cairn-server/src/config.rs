//! The server's configuration: one TOML file, every key optional, every default safe.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything `cairn serve` can be told. Unknown keys are refused so that a typo is an error at
/// start-up, not a silently ignored setting.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where Prometheus, Alertmanager and scrapers reach Cairn's HTTP endpoints.
    pub http_addr: SocketAddr,
    /// Where the gRPC services listen.
    pub grpc_addr: SocketAddr,
    /// Holds the SQLite store (`cairn.db`).
    pub data_dir: PathBuf,
    pub ingest: IngestConfig,
    pub auth: AuthConfig,
    pub detect: cairn_detect::DetectorConfig,
    pub correlate: cairn_correlate::CorrelatorConfig,
    /// `[[topology]]`: the services and whom each calls, as an operator knows them. The
    /// correlator adds what the metrics show (the service graph, pods and nodes).
    pub topology: Vec<cairn_correlate::ServiceDef>,
    pub policy: PolicyConfig,
    /// A playbook catalogue (TOML) to use instead of the embedded default.
    pub playbooks: Option<PathBuf>,
    pub workflow: cairn_workflow::WorkflowConfig,
    pub executor: ExecutorConfig,
    pub verification: VerificationConfig,
    /// `[[maintenance_windows]]`: when tier-3 changes may run (see `cairn_workflow::MaintenanceWindow`).
    pub maintenance_windows: Vec<cairn_workflow::MaintenanceWindow>,
    pub audit: crate::checkpoint::AuditConfig,
    /// Where escalations go (Alertmanager's v2 API).
    pub alerting: crate::alerting::AlertingConfig,
    /// Freeze, loop guard, rate limits.
    pub guardrails: cairn_workflow::GuardrailsConfig,
    /// Multivariate models scored on groups of series (`[models]`).
    pub models: crate::models::ModelsConfig,
    /// Connection bounds of both listeners (`[listen]`).
    pub listen: crate::listen::ListenConfig,
    /// TLS on both listeners, with optional client certificates (`[tls]`).
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9465)),
            data_dir: PathBuf::from("cairn-data"),
            ingest: IngestConfig::default(),
            auth: AuthConfig::default(),
            detect: Default::default(),
            correlate: Default::default(),
            topology: Vec::new(),
            policy: PolicyConfig::default(),
            playbooks: None,
            workflow: Default::default(),
            executor: ExecutorConfig::default(),
            verification: VerificationConfig::default(),
            maintenance_windows: Vec::new(),
            audit: Default::default(),
            alerting: Default::default(),
            guardrails: Default::default(),
            models: Default::default(),
            listen: Default::default(),
            tls: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Size, count and length limits applied to every request.
    pub limits: cairn_ingest::IngestLimits,
    /// Batches waiting for analysis. When full, remote_write answers 503 with Retry-After so
    /// Prometheus backs off and resends; nothing is dropped.
    pub queue_capacity: usize,
    /// Seconds Prometheus is asked to wait before retrying when the queue is full.
    #[serde(deserialize_with = "cairn_types::duration_setting::secs")]
    pub retry_after_secs: u64,
    /// Require a bearer token (any configured principal) on the ingest endpoints too. Off by default
    /// because the default listen address is loopback.
    pub require_token: bool,
    /// How long a delivered alert is remembered for de-duplication across clustered Alertmanagers.
    #[serde(deserialize_with = "cairn_types::duration_setting::secs")]
    pub dedup_ttl_secs: u64,
    /// How many distinct alert deliveries are remembered.
    pub dedup_capacity: usize,
    /// Alert names whose `cairn_playbook` / `cairn_confidence` annotations are honoured from any
    /// sender. Otherwise only a sender authenticated with scope `ingest:annotate` may steer.
    pub trusted_annotation_rules: Vec<String>,
    /// Lets ingest listen beyond loopback without `require_token`. Off: such a configuration
    /// refuses to start, since anyone who reaches the port could then feed the triage.
    pub allow_unauthenticated: bool,
    /// How long one gRPC `Push` stream may stay open; past it the stream ends DEADLINE_EXCEEDED.
    #[serde(deserialize_with = "cairn_types::duration_setting::secs")]
    pub push_max_stream_secs: u64,
    /// Alerts stored but not yet analysed that may wait; past it alert senders get 503 +
    /// Retry-After (a backlog is bounded on disk and in time to recommendation).
    pub max_pending_alerts: u64,
    /// remote_write bodies decompressed and decoded at once; the memory of decoding is at most
    /// this many times one maximal request (`limits.max_decompressed_bytes` plus its decoded
    /// series). Default: 2.
    pub max_concurrent_decodes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            limits: Default::default(),
            queue_capacity: 256,
            retry_after_secs: 1,
            require_token: false,
            dedup_ttl_secs: 600,
            dedup_capacity: 100_000,
            trusted_annotation_rules: Vec::new(),
            allow_unauthenticated: false,
            push_max_stream_secs: 600,
            max_pending_alerts: 20_000,
            max_concurrent_decodes: 2,
        }
    }
}

/// Bearer tokens and the principals they stand for. Only SHA-256 hashes of tokens are stored;
/// `cairn token new` prints a token and the entry to paste here.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub tokens: Vec<TokenEntry>,
    /// `[[auth.certificates]]`: client certificates (verified against `tls.client_ca_file`) that
    /// stand for services.
    pub certificates: Vec<CertificateEntry>,
    /// `[[auth.oidc]]`: OpenID Providers whose signed-in people may call (bearer JWTs).
    pub oidc: Vec<crate::oidc::OidcConfig>,
    /// `[auth.step_up]`: how fresh a sign-in must be for tier-3 approvals, break-glass and policy.
    pub step_up: crate::access::StepUp,
}

/// A service that proves who it is with a client certificate. Every selector given
/// (`common_name`, `dns_name`, `uri`) must match the certificate; at least one is required. A
/// certificate always stands for a service: it can never approve or steer governance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    /// Stable identity, e.g. `service:prometheus`.
    pub subject: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The certificate's subject common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// One of its DNS subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// One of its URI subject alternative names (e.g. a SPIFFE ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// What the certificate allows (`ingest`, `ingest:annotate`, `read`).
    #[serde(default)]
    pub scopes: Vec<crate::access::Scope>,
}

impl CertificateEntry {
    /// Whether `cert` is the one this entry names.
    pub fn matches(&self, cert: &crate::tls::PeerCert) -> bool {
        let selectors = [self.common_name.is_some(), self.dns_name.is_some(), self.uri.is_some()];
        selectors.iter().any(|s| *s)
            && self.common_name.as_ref().is_none_or(|cn| cert.common_name.as_ref() == Some(cn))
            && self.dns_name.as_ref().is_none_or(|d| cert.dns_names.iter().any(|n| n.eq_ignore_ascii_case(d)))
            && self.uri.as_ref().is_none_or(|u| cert.uris.iter().any(|n| n == u))
    }

    pub fn identity(&self) -> crate::access::Identity {
        let display_name = if self.display_name.is_empty() { self.subject.clone() } else { self.display_name.clone() };
        let principal = cairn_types::Principal { subject: self.subject.clone(), display_name, groups: self.groups.clone() };
        crate::access::Identity::without_sign_in(principal, crate::access::PrincipalKind::Service, self.scopes.iter().copied())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Stable identity, e.g. `user:alice`. Approvals bind to this.
    pub subject: String,
    #[serde(default)]
    pub display_name: String,
    /// Groups used by policy approver lists, e.g. `sre`, `sre-leads`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// `person` or `service`. Absent (entries written before kinds existed): a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::access::PrincipalKind>,
    /// What the token allows (`ingest`, `ingest:annotate`, `read`, `review`, `breakglass`, `freeze`,
    /// `policy`, `admin`). Absent: a person gets every scope except the two ingest ones (so an
    /// upgrade never widens access); a service gets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<crate::access::Scope>>,
}

impl TokenEntry {
    /// The identity this entry stands for, with its defaults applied.
    pub fn identity(&self) -> crate::access::Identity {
        use crate::access::{PrincipalKind, Scope};
        let kind = self.kind.unwrap_or(PrincipalKind::Person);
        let scopes = match (&self.scopes, kind) {
            (Some(s), _) => s.iter().copied().collect(),
            (None, PrincipalKind::Person) => Scope::legacy_person(),
            (None, PrincipalKind::Service) => Default::default(),
        };
        let display_name = if self.display_name.is_empty() { self.subject.clone() } else { self.display_name.clone() };
        let principal = cairn_types::Principal { subject: self.subject.clone(), display_name, groups: self.groups.clone() };
        crate::access::Identity::without_sign_in(principal, kind, scopes)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// A bundle directory (`*.rego` + `data.json`) to use instead of the embedded default.
    pub bundle: Option<PathBuf>,
    /// Evaluation deadline; past it the decision fails closed (review, tier 3).
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub timeout_ms: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { bundle: None, timeout_ms: 250 }
    }
}

/// What carries out an approved change: `executor.adapter`. An unknown name is a configuration
/// error, never a silent dry run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// Describes the change, touches nothing.
    #[default]
    DryRun,
    /// POSTs the change request to `executor.webhook_url`.
    Webhook,
    /// Runs `executor.command`'s argv.
    Command,
}

impl AdapterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::DryRun => "dry_run",
            AdapterKind::Webhook => "webhook",
            AdapterKind::Command => "command",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// `dry_run` (default: describes the change, touches nothing), `webhook` or `command`.
    pub adapter: AdapterKind,
    /// For `webhook`: where change requests are POSTed.
    pub webhook_url: Option<String>,
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub webhook_timeout_ms: u64,
    /// For `webhook`: a file holding the HMAC-SHA256 key; every body is then signed in
    /// `X-Cairn-Signature: sha256=<hex>`. Surrounding whitespace in the file is ignored.
    pub webhook_hmac_key_file: Option<PathBuf>,
    /// For `command`: the argv to run and to roll back, a deadline and an output bound.
    pub command: cairn_workflow::CommandConfig,
    /// How often the executor looks for approved changes.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub poll_interval_ms: u64,
    /// How long a claim on a change lasts without renewal. The executor renews it every third of
    /// this while it works; past it, the change is taken as abandoned and recovered.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub lease_ms: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            adapter: AdapterKind::DryRun,
            webhook_url: None,
            webhook_timeout_ms: 10_000,
            webhook_hmac_key_file: None,
            command: cairn_workflow::CommandConfig { timeout_ms: 60_000, max_output_bytes: 16 * 1024, ..Default::default() },
            poll_interval_ms: 500,
            lease_ms: cairn_store::DEFAULT_LEASE_MS as u64,
        }
    }
}

/// Where verification checks run after a change executes. Without `prometheus_url`, checks are
/// recorded as skipped (and a dry run is never verified: it changed nothing).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerificationConfig {
    /// Base URL of the Prometheus whose `/api/v1/query` answers the checks' PromQL.
    pub prometheus_url: Option<String>,
    /// Per-request timeout.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub timeout_ms: u64,
    /// Pause between attempts while a check has not passed.
    #[serde(deserialize_with = "cairn_types::duration_setting::ms")]
    pub interval_ms: u64,
    /// Upper bound on a check's wait, whatever its `within_secs`.
    #[serde(deserialize_with = "cairn_types::duration_setting::secs")]
    pub max_wait_secs: u64,
}

impl Default for VerificationConfig {
    fn default() -> Self {
        VerificationConfig { prometheus_url: None, timeout_ms: 5_000, interval_ms: 5_000, max_wait_secs: 900 }
    }
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ServerConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let cfg: ServerConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(message) = self.models.problem() {
            return Err(ConfigError::Invalid { key: "models", message });
        }
        if let Some((key, message)) = self.listen.problem() {
            return Err(ConfigError::Invalid { key, message });
        }
        if self.ingest.max_concurrent_decodes == 0 {
            return Err(ConfigError::Invalid { key: "ingest.max_concurrent_decodes", message: "must be at least 1".into() });
        }
        if self.ingest.queue_capacity == 0 {
            return Err(ConfigError::Invalid {
                key: "ingest.queue_capacity",
                message: "must be at least 1".into(),
            });
        }
        match self.executor.adapter {
            AdapterKind::DryRun => {}
            AdapterKind::Webhook if self.executor.webhook_url.is_some() => {}
            AdapterKind::Webhook => {
                return Err(ConfigError::Invalid {
                    key: "executor.webhook_url",
                    message: "required when executor.adapter = \"webhook\"".into(),
                });
            }
            AdapterKind::Command => {
                if let Some((key, message)) = self.executor.command.problem() {
                    return Err(ConfigError::Invalid { key, message: message.into() });
                }
            }
        }
        if self.audit.origin.is_empty() || self.audit.origin.chars().any(|c| c.is_whitespace() || c == '+') {
            return Err(ConfigError::Invalid {
                key: "audit.origin",
                message: "must be non-empty, without spaces or '+' (it names the signing key)".into(),
            });
        }
        if let Err(message) = self.guardrails.parsed_rate_limits() {
            return Err(ConfigError::Invalid { key: "guardrails.rate_limits", message });
        }
        if !(100..=86_400_000).contains(&self.executor.lease_ms) {
            return Err(ConfigError::Invalid { key: "executor.lease_ms", message: "must be between 100 ms and one day".into() });
        }
        if self.workflow.stage_approval_ttl_ms <= 0 {
            return Err(ConfigError::Invalid { key: "workflow.stage_approval_ttl_ms", message: "must be at least 1".into() });
        }
        if self.guardrails.loop_guard_max_runs == 0 {
            return Err(ConfigError::Invalid { key: "guardrails.loop_guard_max_runs", message: "must be at least 1".into() });
        }
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.token_sha256.len() != 64 || hex::decode(&t.token_sha256).is_err() {
                return Err(ConfigError::Invalid {
                    key: "auth.tokens.token_sha256",
                    message: format!("entry {i} ({}): expected 64 hex characters", t.subject),
                });
            }
            if t.subject.trim().is_empty() || t.subject == cairn_types::CAIRN_SERVICE_SUBJECT {
                return Err(ConfigError::Invalid {
                    key: "auth.tokens.subject",
                    message: format!("entry {i}: subject {:?} is empty or reserved", t.subject),
                });
            }
            let id = t.identity();
            if id.kind == crate::access::PrincipalKind::Service
                && let Some(s) = id.scopes.iter().find(|s| s.governs())
            {
                return Err(ConfigError::Invalid {
                    key: "auth.tokens.scopes",
                    message: format!(
                        "entry {i} ({}): a service cannot hold `{}`; only people approve, open exceptions, switch the freeze, enable automations or propose policy",
                        t.subject,
                        s.as_str()
                    ),
                });
            }
        }
        for (i, c) in self.auth.certificates.iter().enumerate() {
            if c.subject.trim().is_empty() || c.subject == cairn_types::CAIRN_SERVICE_SUBJECT {
                return Err(ConfigError::Invalid {
                    key: "auth.certificates.subject",
                    message: format!("entry {i}: subject {:?} is empty or reserved", c.subject),
                });
            }
            if c.common_name.is_none() && c.dns_name.is_none() && c.uri.is_none() {
                return Err(ConfigError::Invalid {
                    key: "auth.certificates",
                    message: format!("entry {i} ({}): give common_name, dns_name or uri, or it would match every certificate", c.subject),
                });
            }
            if let Some(s) = c.scopes.iter().find(|s| s.governs()) {
                return Err(ConfigError::Invalid {
                    key: "auth.certificates.scopes",
                    message: format!(
                        "entry {i} ({}): a certificate stands for a service, which cannot hold `{}`; only people approve, open exceptions, switch the freeze, enable automations or propose policy",
                        c.subject,
                        s.as_str()
                    ),
                });
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for o in &self.auth.oidc {
            if let Some((key, message)) = o.problems().into_iter().next() {
                return Err(ConfigError::Invalid { key, message });
            }
            if !names.insert(o.name.as_str()) {
                return Err(ConfigError::Invalid { key: "auth.oidc.name", message: format!("{:?} is used twice", o.name) });
            }
            let prefix = o.subject_prefix();
            let static_subjects = self.auth.tokens.iter().map(|t| &t.subject).chain(self.auth.certificates.iter().map(|c| &c.subject));
            if let Some(s) = static_subjects.into_iter().find(|s| s.starts_with(&prefix)) {
                return Err(ConfigError::Invalid {
                    key: "auth.oidc.name",
                    message: format!("subject {s:?} of a token or certificate starts with {prefix:?}, which names people from issuer {}: rename one", o.issuer),
                });
            }
        }
        if self.auth.step_up.max_age_s < 0 {
            return Err(ConfigError::Invalid { key: "auth.step_up.max_age_s", message: "must not be negative".into() });
        }
        if !self.auth.certificates.is_empty() && self.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
            return Err(ConfigError::Invalid {
                key: "auth.certificates",
                message: "client certificates are mapped but never asked for: set tls.client_ca_file".into(),
            });
        }
        let loopback = self.http_addr.ip().is_loopback() && self.grpc_addr.ip().is_loopback();
        if !loopback && self.tls.is_none() && !self.listen.allow_plaintext {
            return Err(ConfigError::Invalid {
                key: "tls",
                message: format!(
                    "the listeners are beyond loopback ({} / {}) without TLS, so tokens would cross the network in clear: \
                     configure [tls] cert_file and key_file, or set listen.allow_plaintext = true (e.g. behind a TLS-terminating proxy)",
                    self.http_addr, self.grpc_addr
                ),
            });
        }
        if !loopback && !self.ingest.require_token && !self.ingest.allow_unauthenticated {
            return Err(ConfigError::Invalid {
                key: "ingest.require_token",
                message: format!(
                    "ingest listens beyond loopback ({} / {}) without a token requirement: set ingest.require_token = true \
                     and give Prometheus and Alertmanager service tokens with scope `ingest`, or set \
                     ingest.allow_unauthenticated = true to accept unauthenticated signals on purpose",
                    self.http_addr, self.grpc_addr
                ),
            });
        }
        for w in &self.maintenance_windows {
            w.validate().map_err(|e| ConfigError::Invalid { key: "maintenance_windows", message: e.to_string() })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's code block that starts with the comment line `marker`, up to its fence.
    fn readme_block(marker: &str) -> String {
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
        let start = readme.find(marker).unwrap_or_else(|| panic!("the README has no block starting {marker:?}"));
        readme[start..start + readme[start..].find("```").unwrap()].to_string()
    }

    #[test]
    fn the_readme_topology_snippet_parses_and_reaches_the_correlator() {
        let block = readme_block("# cairn.toml: the services and whom each calls");
        let cfg: ServerConfig = toml::from_str(&block).unwrap();
        assert_eq!(cfg.topology.len(), 1);
        assert_eq!(cfg.topology[0].depends_on, ["payments", "orders-pg"]);
        let c = cairn_correlate::Correlator::with_topology(cfg.correlate.clone(), &cfg.topology);
        assert!(c.topology().calls("service:checkout", "service:orders-pg"));
    }

    #[test]
    fn the_readme_tls_snippet_parses_and_validates() {
        let block = readme_block("# cairn.toml: TLS on both listeners");
        let mut cfg: ServerConfig = toml::from_str(&block).unwrap();
        cfg.http_addr = "0.0.0.0:9464".parse().unwrap();
        cfg.ingest.require_token = true;
        cfg.validate().expect("TLS makes a non-loopback address acceptable");
        let tls = cfg.tls.as_ref().unwrap();
        assert_eq!(tls.client_auth, crate::tls::ClientAuth::Required);
        assert_eq!(cfg.auth.certificates.len(), 2);
        assert!(cfg.auth.certificates[1].uri.as_deref().is_some_and(|u| u.starts_with("spiffe://")));
    }

    #[test]
    fn the_readme_oidc_snippet_parses_and_validates() {
        let block = readme_block("# cairn.toml: people from the company's identity provider");
        let cfg: ServerConfig = toml::from_str(&block).unwrap();
        cfg.validate().expect("valid");
        let o = &cfg.auth.oidc[0];
        assert_eq!((o.subject_prefix().as_str(), o.groups.len()), ("corp:", 2));
        assert!(o.grants_review());
        assert_eq!(cfg.auth.step_up.max_age_s, 900);
        let mut clash = cfg.clone();
        clash.auth.tokens.push(TokenEntry {
            subject: "corp:alice".into(),
            display_name: String::new(),
            groups: vec![],
            token_sha256: "0".repeat(64),
            kind: None,
            scopes: None,
        });
        let err = clash.validate().unwrap_err().to_string();
        assert!(err.contains("auth.oidc.name") && err.contains("corp:alice"), "a static subject cannot pose as a signed-in person: {err}");
        let mut symmetric = cfg;
        symmetric.auth.oidc[0].algorithms = vec!["HS256".into()];
        assert!(symmetric.validate().unwrap_err().to_string().contains("HS256"));
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cairn.toml");
        let cfg = ServerConfig::load(&path).expect("examples/cairn.toml is valid");
        assert_eq!(cfg.auth.tokens.len(), 1);
        assert_eq!(cfg.auth.tokens[0].subject, "user:alice");
        assert_eq!(cfg.ingest.queue_capacity, 256);
        assert_eq!(cfg.maintenance_windows.len(), 1);
        assert_eq!(cfg.audit.checkpoint_every_entries, 1000);
        assert_eq!(cfg.audit.origin, crate::checkpoint::DEFAULT_ORIGIN);
        assert_eq!(cfg.executor.lease_ms, 60_000);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = toml::from_str::<ServerConfig>("http_adr = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("http_adr"), "{err}");
    }

    #[test]
    fn lease_length_is_read_and_a_useless_one_is_refused_by_name() {
        let cfg: ServerConfig = toml::from_str("[executor]\nlease_ms = 1500").unwrap();
        assert_eq!(cfg.executor.lease_ms, 1500);
        assert_eq!(ServerConfig::default().executor.lease_ms, 60_000);
        let mut cfg = ServerConfig::default();
        cfg.executor.lease_ms = 10;
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("executor.lease_ms"), "{err}");
    }

    #[test]
    fn duration_keys_take_their_unit_or_a_duration_as_people_write_it() {
        let cfg: ServerConfig = toml::from_str(
            "[correlate]\nwindow_ms = \"15m\"\npersist_ms = 3600000\n\
             [ingest]\nretry_after_secs = \"2m\"\n\
             [executor]\nlease_ms = \"1m 30s\"\n\
             [workflow]\npending_ttl_ms = \"4h\"\n",
        )
        .unwrap();
        assert_eq!((cfg.correlate.window_ms, cfg.correlate.persist_ms), (900_000, 3_600_000));
        assert_eq!((cfg.ingest.retry_after_secs, cfg.executor.lease_ms), (120, 90_000));
        assert_eq!(cfg.workflow.pending_ttl_ms, 4 * 3_600_000);
        // Refused by name: no unit, a unit the key cannot hold, and a negative number.
        for (bad, why) in [
            ("[executor]\nlease_ms = \"90\"", "e.g. 90s"),
            ("[ingest]\nretry_after_secs = \"1500ms\"", "whole number"),
            ("[executor]\nlease_ms = -5", "cannot be negative"),
        ] {
            let err = toml::from_str::<ServerConfig>(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            let key = bad.split('\n').nth(1).unwrap().split(' ').next().unwrap();
            assert!(err.contains(key), "{bad}: the error names the key: {err}");
        }
    }

    #[test]
    fn webhook_adapter_without_url_is_refused() {
        let mut cfg = ServerConfig::default();
        cfg.executor.adapter = AdapterKind::Webhook;
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("executor.webhook_url"), "{err}");
        // A misspelt adapter is an error at load, not a silent dry run.
        let err = toml::from_str::<ServerConfig>("[executor]\nadapter = \"web_hook\"\n").unwrap_err().to_string();
        assert!(err.contains("web_hook") && err.contains("dry_run") && err.contains("command"), "{err}");
    }

    #[test]
    fn reserved_service_subject_cannot_have_a_token() {
        let mut cfg = ServerConfig::default();
        cfg.auth.tokens.push(TokenEntry {
            subject: cairn_types::CAIRN_SERVICE_SUBJECT.into(),
            display_name: String::new(),
            groups: vec![],
            token_sha256: "0".repeat(64),
            kind: None,
            scopes: None,
        });
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn a_legacy_token_entry_reads_as_a_person_without_ingest() {
        let cfg: ServerConfig = toml::from_str(&format!(
            "[[auth.tokens]]\nsubject = \"user:alice\"\ngroups = [\"sre\"]\ntoken_sha256 = \"{}\"\n",
            "0".repeat(64)
        ))
        .unwrap();
        cfg.validate().unwrap();
        let id = cfg.auth.tokens[0].identity();
        assert_eq!(id.kind, crate::access::PrincipalKind::Person);
        assert!(id.has(crate::access::Scope::Review));
        assert!(!id.has(crate::access::Scope::Ingest) && !id.has(crate::access::Scope::IngestAnnotate));
    }

    #[test]
    fn a_service_token_with_a_governing_scope_is_refused() {
        let cfg: ServerConfig = toml::from_str(&format!(
            "[[auth.tokens]]\nsubject = \"service:ci\"\nkind = \"service\"\nscopes = [\"ingest\", \"review\"]\ntoken_sha256 = \"{}\"\n",
            "0".repeat(64)
        ))
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("auth.tokens.scopes") && err.contains("`review`"), "{err}");
    }

    #[test]
    fn ingest_beyond_loopback_without_a_token_requirement_refuses_to_start() {
        let mut cfg = ServerConfig {
            http_addr: "0.0.0.0:9464".parse().unwrap(),
            listen: crate::listen::ListenConfig { allow_plaintext: true, ..Default::default() },
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("ingest.require_token"), "{err}");
        cfg.ingest.allow_unauthenticated = true;
        cfg.validate().unwrap();
        cfg.ingest.allow_unauthenticated = false;
        cfg.ingest.require_token = true;
        cfg.validate().unwrap();
    }

    #[test]
    fn plaintext_beyond_loopback_must_be_asked_for() {
        let mut cfg = ServerConfig::default();
        cfg.ingest.require_token = true;
        cfg.validate().unwrap();
        cfg.grpc_addr = "0.0.0.0:9465".parse().unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("tls") && err.contains("listen.allow_plaintext"), "{err}");
        cfg.tls = Some(toml::from_str("cert_file = \"c.pem\"\nkey_file = \"k.pem\"").unwrap());
        cfg.validate().unwrap();
        cfg.tls = None;
        cfg.listen.allow_plaintext = true;
        cfg.validate().unwrap();
    }

    #[test]
    fn certificate_entries_need_a_selector_a_client_ca_and_no_governing_scope() {
        let with = |entry: &str, tls: &str| -> Result<ServerConfig, String> {
            let cfg: ServerConfig = toml::from_str(&format!("{tls}\n[[auth.certificates]]\n{entry}")).map_err(|e| e.to_string())?;
            cfg.validate().map_err(|e| e.to_string())?;
            Ok(cfg)
        };
        let tls = "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"";
        let cfg = with("subject = \"service:prometheus\"\ncommon_name = \"prometheus\"\nscopes = [\"ingest\"]", tls).unwrap();
        assert_eq!(cfg.tls.as_ref().map(|t| t.client_auth), Some(crate::tls::ClientAuth::Required), "required by default");
        let id = cfg.auth.certificates[0].identity();
        assert_eq!(id.kind, crate::access::PrincipalKind::Service);
        assert!(id.has(crate::access::Scope::Ingest) && !id.has(crate::access::Scope::Review));
        let err = with("subject = \"service:prometheus\"\nscopes = [\"ingest\"]", tls).unwrap_err();
        assert!(err.contains("common_name, dns_name or uri"), "{err}");
        let err = with("subject = \"service:prometheus\"\nuri = \"spiffe://x\"\nscopes = [\"review\"]", tls).unwrap_err();
        assert!(err.contains("auth.certificates.scopes"), "{err}");
        let err = with("subject = \"service:prometheus\"\ncommon_name = \"p\"", "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"").unwrap_err();
        assert!(err.contains("tls.client_ca_file"), "{err}");
    }

    #[test]
    fn a_certificate_entry_matches_only_when_every_selector_does() {
        let cert = crate::tls::PeerCert {
            common_name: Some("prometheus".into()),
            dns_names: vec!["Prometheus.Monitoring.svc".into()],
            uris: vec!["spiffe://cluster.local/sa/prometheus".into()],
            sha256: String::new(),
        };
        let entry = |cn: Option<&str>, dns: Option<&str>, uri: Option<&str>| CertificateEntry {
            subject: "service:prometheus".into(),
            display_name: String::new(),
            groups: vec![],
            common_name: cn.map(Into::into),
            dns_name: dns.map(Into::into),
            uri: uri.map(Into::into),
            scopes: vec![],
        };
        assert!(entry(Some("prometheus"), None, None).matches(&cert));
        assert!(entry(None, Some("prometheus.monitoring.svc"), None).matches(&cert), "DNS names compare without case");
        assert!(entry(Some("prometheus"), None, Some("spiffe://cluster.local/sa/prometheus")).matches(&cert));
        assert!(!entry(Some("prometheus"), None, Some("spiffe://cluster.local/sa/other")).matches(&cert));
        assert!(!entry(Some("Prometheus"), None, None).matches(&cert), "the common name is exact");
        assert!(!entry(None, None, None).matches(&cert), "an entry without selectors matches nothing");
    }
}
