//! A real OpenID Provider for the tests: panva's certified `oidc-provider` on the machine's
//! Node.js (`crates/cairn-testkit/oidc`, installed by `.ci/run` with `npm ci`), started on loopback and killed
//! when the test ends, and just enough of a browser to sign a person in at it.

use crate::now_ms;
use crate::programs::{Proc, wait_ready};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const CLIENT_ID: &str = "cairn-cli";

/// The provider's people: alice and dave lead SREs, eve signs in fine but is in no mapped group.
pub const ACCOUNTS: &str = r#"{"alice":{"groups":["sre-leads"]},"dave":{"groups":["sre-leads"]},"eve":{"groups":["marketing"]}}"#;

fn op_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// Whether node and the provider's packages are here; a SKIPPED notice otherwise, a failure in CI.
pub fn provider_present(test: &str) -> bool {
    let node = Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    let modules = op_dir().join("node_modules/oidc-provider").is_dir();
    if node && modules {
        return true;
    }
    let msg = "the OpenID Provider needs node and its packages: apt-get install nodejs npm; (cd crates/cairn-testkit/oidc && npm ci)";
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("SKIPPED {test}: {msg}");
    false
}

pub struct Provider {
    _proc: Proc,
    pub port: u16,
    pub issuer: String,
}

impl Provider {
    /// The provider on a loopback port the kernel chooses, signing with a fresh RS256 key named
    /// `kid`.
    pub async fn start(kid: &str, dir: &Path) -> Provider {
        Self::launch(0, kid, dir, 600).await
    }

    /// [`Provider::start`] with ID tokens that live `id_ttl_s` seconds.
    pub async fn start_with_ttl(kid: &str, dir: &Path, id_ttl_s: u64) -> Provider {
        Self::launch(0, kid, dir, id_ttl_s).await
    }

    /// The provider again at an issuer it had (`port`, freed by dropping the earlier one), with a
    /// new key: a key rotation as relying parties see it.
    pub async fn restart_on(port: u16, kid: &str, dir: &Path) -> Provider {
        Self::launch(port, kid, dir, 600).await
    }

    /// Starts node on `port` (0: the kernel's choice) and reads the issuer from the
    /// "listening <issuer> kid=<kid>" line it writes once it listens. A start that stalls (seen in
    /// a CI run: node wrote its first warning and then nothing for 60 s, still running) is killed
    /// after 20 s and tried again, twice at most; each failure is printed with what its threads
    /// were doing.
    async fn launch(port: u16, kid: &str, dir: &Path, id_ttl_s: u64) -> Provider {
        let mut failures = Vec::new();
        for attempt in 1..=3 {
            let log = dir.join(format!("op-{kid}-{attempt}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new("node")
                .arg(op_dir().join("op.mjs"))
                .env("OP_PORT", port.to_string())
                .env("OP_KID", kid)
                .env("OP_ACCOUNTS", ACCOUNTS)
                .env("OP_CLIENT_ID", CLIENT_ID)
                .env("OP_ID_TTL", id_ttl_s.to_string())
                .stdout(Stdio::null())
                .stderr(out)
                .spawn()
                .expect("start node");
            let started = Proc { name: "the OpenID Provider", child, log }.line_within("listening http://", Duration::from_secs(20)).await;
            let (mut proc, line) = match started {
                Ok(started) => started,
                Err(why) => {
                    eprintln!("attempt {attempt}: {why}");
                    failures.push(why);
                    continue;
                }
            };
            let issuer = line.split_whitespace().nth(1).expect("an issuer after \"listening\"").to_string();
            let port = issuer.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {line:?}"));
            let ready = format!("{issuer}/.well-known/openid-configuration");
            wait_ready(&reqwest::Client::new(), &ready, "the OpenID Provider", &mut [&mut proc]).await;
            return Provider { _proc: proc, port, issuer };
        }
        panic!("the OpenID Provider did not start in 3 attempts:\n{}", failures.join("\n"));
    }

    /// Signs `account` in as a browser would (authorization code + PKCE, the provider's
    /// cookies carried between steps) and returns the ID token.
    pub async fn sign_in(&self, account: &str) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut browser = Browser::default();
        let verifier = b64.encode(sha2::Sha256::digest(format!("{account}{:?}{}", std::time::Instant::now(), now_ms())));
        let challenge = b64.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let redirect = "http://127.0.0.1:8976/callback";
        let auth = reqwest::Url::parse_with_params(
            &format!("{}/auth", self.issuer),
            &[
                ("client_id", CLIENT_ID),
                ("response_type", "code"),
                ("scope", "openid groups"),
                ("redirect_uri", redirect),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
                ("state", "st"),
                ("nonce", "nn"),
            ],
        )
        .unwrap();
        let back = self.authorize(&mut browser, auth.as_str(), account).await;
        let back = reqwest::Url::parse(&back).unwrap();
        let code =
            back.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).unwrap_or_else(|| panic!("no code in {back}"));
        let resp = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
                ("client_id", CLIENT_ID),
                ("code_verifier", verifier.as_str()),
            ])
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        body["id_token"].as_str().unwrap_or_else(|| panic!("no id_token: {body}")).to_string()
    }

    /// What a person does in the browser at `auth_url`: signs in as `account` (with a password
    /// and a one-time code) and consents. Returns where the provider sends the browser back to
    /// (the client's redirect URI, with the code).
    pub async fn authorize(&self, browser: &mut Browser, auth_url: &str, account: &str) -> String {
        let interaction = browser.get(auth_url).await;
        assert!(interaction.contains("/interaction/"), "{interaction}");
        let resume = browser.post_form(&self.absolute(&format!("{interaction}/login")), &[("login", account), ("amr", "pwd,otp")]).await;
        browser.get(&self.absolute(&resume)).await
    }

    /// A token the provider signs with its current key but would never issue itself.
    pub async fn mint(&self, claims: serde_json::Value) -> String {
        let resp = reqwest::Client::new().post(format!("{}/_test/mint", self.issuer)).json(&claims).send().await.unwrap();
        assert!(resp.status().is_success(), "{resp:?}");
        resp.text().await.unwrap()
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http") { location.to_string() } else { format!("{}{location}", self.issuer) }
    }

    pub fn config(&self) -> cairn_server::oidc::OidcConfig {
        serde_json::from_value(serde_json::json!({
            "name": "corp",
            "issuer": self.issuer,
            "audiences": [CLIENT_ID],
            "client_id": CLIENT_ID,
            // Every unknown key id refetches, so a test sees a rotation at once.
            "jwks_min_refetch_ms": 0,
            "groups": [{"claim": "sre-leads", "groups": ["sre", "sre-leads"], "scopes": ["read", "review", "breakglass"]}],
        }))
        .unwrap()
    }
}

/// Just enough of a browser: cookies by name, redirects returned rather than followed.
#[derive(Default)]
pub struct Browser {
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn client() -> reqwest::Client {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// Keeps the response's cookies and returns its `Location`.
    fn follow(&mut self, resp: reqwest::Response) -> String {
        for c in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies.insert(k.trim().to_string(), v.to_string());
            }
        }
        assert!(resp.status().is_redirection(), "expected a redirect, got {}", resp.status());
        resp.headers()[reqwest::header::LOCATION].to_str().unwrap().to_string()
    }

    pub async fn get(&mut self, url: &str) -> String {
        let resp = Self::client().get(url).header(reqwest::header::COOKIE, self.cookie_header()).send().await.unwrap();
        self.follow(resp)
    }

    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> String {
        let resp = Self::client().post(url).header(reqwest::header::COOKIE, self.cookie_header()).form(form).send().await.unwrap();
        self.follow(resp)
    }
}

