//! `cairn login`: signs a person in at their OpenID Provider (authorization code with PKCE, the
//! browser sent back to a one-shot listener on loopback) and caches the tokens for one server,
//! in a file only its owner can read. Client commands without `--token` use the cached ID token
//! and refresh it when it is about to expire.
//!
//! A refresh keeps the sign-in's `auth_time`: calls that want a recent sign-in (tier-3 approvals,
//! break-glass, policy proposals) need `cairn login` again, not a refresh.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use cairn_server::oidc::{Fetcher, unverified_claims};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A cached ID token counts as expired this many seconds early (clock skew, a slow call).
const EXPIRY_MARGIN_S: i64 = 30;
/// Largest request the loopback listener reads (the provider's redirect is well under 4 KiB).
const MAX_CALLBACK_BYTES: usize = 16 * 1024;

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// gRPC address of the server the sign-in is for (the cache is per server).
    #[arg(long, env = "CAIRN_SERVER", default_value = "http://127.0.0.1:9465")]
    pub server: String,
    /// The OpenID Provider's issuer URL, as in the server's `[[auth.oidc]] issuer`.
    #[arg(long, env = "CAIRN_OIDC_ISSUER")]
    pub issuer: String,
    /// The public client registered for the CLI (`[[auth.oidc]] client_id`).
    #[arg(long, env = "CAIRN_OIDC_CLIENT_ID", default_value = "cairn-cli")]
    pub client_id: String,
    /// Scopes to ask for; `offline_access` gets a refresh token.
    #[arg(long, default_value = "openid profile groups offline_access")]
    pub scope: String,
    /// CA certificate (PEM) for the provider's HTTPS, instead of the system's.
    #[arg(long, env = "CAIRN_OIDC_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the address to open instead of starting a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the browser to come back.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// What is cached for one server.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    server: String,
    issuer: String,
    client_id: String,
    token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    id_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Where the tokens for `server` are cached: `$CAIRN_TOKEN_CACHE`, else
/// `$XDG_CONFIG_HOME/cairn/tokens`, else `~/.config/cairn/tokens`; one file per server.
pub fn cache_path(server: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("CAIRN_TOKEN_CACHE") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_CONFIG_HOME") {
            Some(c) => PathBuf::from(c).join("cairn/tokens"),
            None => PathBuf::from(std::env::var_os("HOME").context("no HOME: set CAIRN_TOKEN_CACHE")?).join(".config/cairn/tokens"),
        },
    };
    let name = hex::encode(&sha2::Sha256::digest(server.trim_end_matches('/').as_bytes())[..12]);
    Ok(dir.join(format!("{name}.json")))
}

pub async fn run(args: LoginArgs) -> Result<()> {
    let http = Fetcher::new(args.ca_file.as_ref(), Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    let issuer = args.issuer.trim_end_matches('/');
    let discovery: Discovery = http
        .get_json(&format!("{issuer}/.well-known/openid-configuration"))
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot read the provider's discovery document")?;
    if discovery.issuer.trim_end_matches('/') != issuer {
        bail!("the provider calls itself {:?}, not {:?}: use its exact issuer URL", discovery.issuer, args.issuer);
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on loopback for the browser's return")?;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
    let verifier = random_hex();
    let state = random_hex();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let auth_url = reqwest::Url::parse_with_params(
        &discovery.authorization_endpoint,
        &[
            ("client_id", args.client_id.as_str()),
            ("response_type", "code"),
            ("scope", args.scope.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", state.as_str()),
            // A sign-in, not a silent reuse of the provider's session: `auth_time` is now.
            ("prompt", "login consent"),
        ],
    )
    .context("the provider's authorization_endpoint is not a URL")?;
    eprintln!("Sign in at your identity provider; open this address if no browser starts:\n\n  {auth_url}\n");
    if !args.no_browser {
        let _ = std::process::Command::new(if cfg!(target_os = "macos") { "open" } else { "xdg-open" })
            .arg(auth_url.as_str())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let code = tokio::time::timeout(Duration::from_secs(args.timeout_secs), callback(&listener, &state))
        .await
        .with_context(|| format!("no sign-in within {} s", args.timeout_secs))??;

    let (status, body) = http
        .post_form(
            &discovery.token_endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect_uri.as_str()),
                ("client_id", args.client_id.as_str()),
                ("code_verifier", verifier.as_str()),
            ],
        )
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot reach the provider's token endpoint")?;
    let tokens = token_response(status, &body)?;
    let id_token = tokens.id_token.context("the provider returned no id_token (is `openid` in --scope?)")?;
    let cached = Cached {
        server: args.server.clone(),
        issuer: discovery.issuer,
        client_id: args.client_id,
        token_endpoint: discovery.token_endpoint,
        ca_file: args.ca_file,
        id_token,
        refresh_token: tokens.refresh_token,
    };
    let path = cache_path(&args.server)?;
    save(&path, &cached)?;
    let claims = unverified_claims(&cached.id_token).map_err(anyhow::Error::msg)?;
    eprintln!(
        "Signed in as {} at {}; the token is cached for {} in {}{}",
        claims["sub"].as_str().unwrap_or("?"),
        cached.issuer,
        cached.server,
        path.display(),
        if cached.refresh_token.is_some() { " (refreshed as needed)" } else { "" },
    );
    Ok(())
}

/// The signed-in token for `server`, refreshed first if it is about to expire; `None` when nobody
/// signed in for it.
pub async fn cached_token(server: &str) -> Result<Option<String>> {
    let path = cache_path(server)?;
    let mut cached: Cached = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{}: not a token cache; delete it and run `cairn login`", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let exp = unverified_claims(&cached.id_token).ok().and_then(|c| c["exp"].as_i64()).unwrap_or(0);
    if exp - EXPIRY_MARGIN_S > chrono::Utc::now().timestamp() {
        return Ok(Some(cached.id_token));
    }
    let Some(refresh) = cached.refresh_token.clone() else {
        bail!("your sign-in for {server} has expired: run `cairn login`");
    };
    let http = Fetcher::new(cached.ca_file.as_ref(), Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    let (status, body) = http
        .post_form(&cached.token_endpoint, &[("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", cached.client_id.as_str())])
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot reach the provider to refresh the sign-in")?;
    let tokens = token_response(status, &body).context("the provider refused to refresh the sign-in: run `cairn login`")?;
    cached.id_token = tokens.id_token.context("the refresh returned no id_token: run `cairn login`")?;
    // Providers may rotate refresh tokens; keep the newest.
    if tokens.refresh_token.is_some() {
        cached.refresh_token = tokens.refresh_token;
    }
    save(&path, &cached)?;
    Ok(Some(cached.id_token))
}

fn token_response(status: http::StatusCode, body: &[u8]) -> Result<TokenResponse> {
    if status.is_success() {
        return serde_json::from_slice(body).context("the token endpoint's answer is not the expected JSON");
    }
    match serde_json::from_slice::<TokenError>(body) {
        Ok(e) => bail!("the provider refused: {}{}", e.error, e.error_description.map(|d| format!(" ({d})")).unwrap_or_default()),
        Err(_) => bail!("the token endpoint answered HTTP {status}"),
    }
}

/// Waits for the browser's return to the redirect URI and answers it; the code, once `state`
/// matches. Requests for other paths (a browser's favicon) are answered 404 and waited past.
async fn callback(listener: &tokio::net::TcpListener, state: &str) -> Result<String> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_CALLBACK_BYTES {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/");
        // Anything but the provider's redirect (a favicon, a stray connection, garbage) is answered
        // and waited past: it cannot end the sign-in.
        let url = match reqwest::Url::parse(&format!("http://127.0.0.1{target}")) {
            Ok(url) if url.path() == "/callback" => url,
            _ => {
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                continue;
            }
        };
        let param = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
        let (page, outcome) = if let Some(error) = param("error") {
            let why = format!("{error}{}", param("error_description").map(|d| format!(": {d}")).unwrap_or_default());
            ("Sign-in failed; see the terminal.", Err(anyhow::anyhow!("the provider refused the sign-in: {why}")))
        } else if param("state").as_deref() != Some(state) {
            ("Sign-in refused: this answer is not for the sign-in this terminal started.", Err(anyhow::anyhow!("the browser came back with another sign-in's state: refused")))
        } else if let Some(code) = param("code") {
            ("Signed in to Cairn. You can close this tab.", Ok(code))
        } else {
            ("Sign-in failed: no code.", Err(anyhow::anyhow!("the provider sent the browser back without a code")))
        };
        let html = format!("<!doctype html><title>cairn login</title><p>{page}</p>");
        let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}", html.len());
        // The browser's page is a courtesy: the outcome stands even if it cannot be shown.
        let _ = conn.write_all(resp.as_bytes()).await;
        return outcome;
    }
}

fn random_hex() -> String {
    // 32 random bytes from the same source as `cairn token new`.
    cairn_server::auth::new_token().trim_start_matches("cairn_").to_string()
}

/// Writes the cache readable by its owner only (0600, in a 0700 directory), atomically.
fn save(path: &Path, cached: &Cached) -> Result<()> {
    let dir = path.parent().context("cache path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    #[cfg(unix)]
    {
        // An existing file keeps its mode on open: make sure it is 0600 whatever it was.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(cached)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
