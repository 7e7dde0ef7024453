//! Sending requests to one registry: TLS, auth, pacing, retries, errors.
//!
//! Every request to the host waits while a `Retry-After` from any earlier
//! answer still applies, so one `429` slows all work on that registry, not
//! only the request that got it. Replayable requests are retried on
//! connection errors and on 408, 429, 500, 502, 503 and 504, with
//! exponential backoff and jitter, or after exactly the `Retry-After` the
//! registry asked for (never clamped).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use backon::BackoffBuilder;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::RegistryError;
use super::auth::{self, Challenge, TokenCache};
use crate::config::{RegistryConfig, RegistryLimits, Secret, TlsMode};

/// How long to wait for a TCP + TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// First wait between attempts of a request; it doubles, with jitter.
const BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between attempts (a `Retry-After` is honoured as given).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Spreads blob bytes over time so they do not exceed a rate: each chunk
/// reserves its slot after the previous one and waits for it.
pub(super) struct Pacer {
    bytes_per_second: u64,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(bytes_per_second: u64) -> Pacer {
        Pacer {
            bytes_per_second: bytes_per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `n` more bytes may pass.
    pub(super) async fn take(&self, n: usize) {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
        let start = {
            let mut next = lock(&self.next);
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + cost;
            start
        };
        if start > Instant::now() {
            tokio::time::sleep_until(start).await;
        }
    }
}

pub(super) struct Transport {
    pub(super) name: String,
    pub(super) base: String,
    tls: TlsMode,
    http: Client,
    username: Option<String>,
    password: Option<Secret>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<TokenCache>,
    not_before: Mutex<Option<Instant>>,
    permits: Option<Semaphore>,
    pub(super) pacer: Option<std::sync::Arc<Pacer>>,
    pub(super) create_projects: bool,
    pub(super) is_harbor: bool,
    pub(super) limits: RegistryLimits,
    pub(super) stats: std::sync::Arc<Stats>,
    /// Until when to assume the registry has no OCI referrers API.
    no_referrers_api_until: Mutex<Option<Instant>>,
}

/// How long a registry without the referrers API is not asked again.
const NO_REFERRERS_API_FOR: Duration = Duration::from_secs(600);

/// Running totals for one registry, exported as metrics by registry name.
#[derive(Debug, Default)]
pub struct Stats {
    /// HTTP requests sent (each attempt counts).
    pub requests: AtomicU64,
    /// Attempts repeated after a transport error or a retryable status.
    pub retries: AtomicU64,
    /// `429 Too Many Requests` answers.
    pub throttled: AtomicU64,
    /// Requests that failed for good on the way: no connection, TLS
    /// refused, timed out, or a 5xx after the last attempt.
    pub errors: AtomicU64,
    /// Blob bytes read from this registry.
    pub bytes_read: std::sync::Arc<AtomicU64>,
    /// Blob bytes written to this registry.
    pub bytes_written: std::sync::Arc<AtomicU64>,
}

/// What to put in `Authorization`.
enum AuthHeader {
    None,
    Basic(String, String),
    Bearer(String),
}

fn apply(rb: RequestBuilder, auth: &AuthHeader) -> RequestBuilder {
    match auth {
        AuthHeader::None => rb,
        AuthHeader::Basic(u, p) => rb.basic_auth(u, Some(p)),
        AuthHeader::Bearer(t) => rb.bearer_auth(t),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Retry-After` as a wait: seconds, or an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Waits between attempts of one request: doubling, with jitter.
fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

impl Transport {
    pub(super) fn new(cfg: &RegistryConfig) -> Result<Transport, RegistryError> {
        let limits = cfg.limits.clone();
        let mut b = Client::builder()
            .user_agent(super::USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(limits.stall_timeout)
            .http1_only();
        match &cfg.tls {
            TlsMode::System => {}
            TlsMode::Pinned { pem, file } => {
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                    RegistryError::Other {
                        registry: cfg.name.clone(),
                        what: format!("reading tls.ca_file {}", file.display()),
                        detail: e.to_string(),
                    }
                })?;
                b = b.tls_certs_only(certs);
            }
            TlsMode::InsecureSkipVerify => b = b.tls_danger_accept_invalid_certs(true),
        }
        let http = b.build().map_err(|e| RegistryError::Other {
            registry: cfg.name.clone(),
            what: "building the HTTP client".into(),
            detail: error_chain(&e),
        })?;
        Ok(Transport {
            name: cfg.name.clone(),
            base: cfg.url.as_str().trim_end_matches('/').to_string(),
            tls: cfg.tls.clone(),
            http,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            challenge: Mutex::new(None),
            tokens: Mutex::new(TokenCache::default()),
            not_before: Mutex::new(None),
            permits: limits.max_concurrent_requests.map(Semaphore::new),
            create_projects: cfg.create_projects,
            is_harbor: cfg.is_harbor,
            pacer: limits
                .max_bytes_per_second
                .map(|r| std::sync::Arc::new(Pacer::new(r))),
            limits,
            stats: Default::default(),
            no_referrers_api_until: Mutex::new(None),
        })
    }

    /// Sends a request built by `make`, authenticated for `scopes`.
    /// A replayable request is retried on transient failures and once after
    /// a `401` that teaches us (or renews) the auth; one that is not (a
    /// streamed upload) is sent exactly once.
    pub(super) async fn send(
        &self,
        what: &str,
        scopes: &[String],
        replayable: bool,
        make: &(dyn Fn(&Client) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        let mut attempt: u32 = 0;
        let mut reauthed = false;
        let mut backoff = backoff();
        loop {
            attempt += 1;
            let auth = self.auth_header(scopes, what).await?;
            self.wait_pacing().await;
            let permit = match &self.permits {
                Some(s) => s.acquire().await.ok(),
                None => None,
            };
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let sent = apply(make(&self.http), &auth).send().await;
            tracing::trace!(registry = %self.name, %what, status = ?sent.as_ref().map(|r| r.status().as_u16()).ok(), ms = started.elapsed().as_secs_f64() * 1000.0, "request");
            drop(permit);
            let may_retry = replayable && attempt < self.limits.request_attempts;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let err = self.transport_error(&e, what);
                    let transient = !matches!(err, RegistryError::Tls { .. });
                    if may_retry && transient {
                        let wait = backoff.next().unwrap_or(MAX_BACKOFF);
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(registry = %self.name, %what, error = %err, attempt, ?wait, "retrying after a transport error");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(err);
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && replayable && !reauthed {
                reauthed = true;
                let anonymous = matches!(auth, AuthHeader::None);
                if self.learn(resp.headers(), scopes, anonymous) {
                    attempt -= 1;
                    continue;
                }
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            }
            if is_retryable(status) {
                let asked = retry_after(resp.headers());
                if let Some(wait) = asked {
                    self.pace(wait);
                }
                if may_retry {
                    let wait = asked.unwrap_or_else(|| backoff.next().unwrap_or(MAX_BACKOFF));
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(registry = %self.name, %what, status = status.as_u16(), attempt, ?wait, "registry asked to back off; retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if status.is_server_error() {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Ok(resp);
        }
    }

    /// Every request to this host waits until `now + wait`.
    fn pace(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut nb = lock(&self.not_before);
        if nb.is_none_or(|t| t < until) {
            *nb = Some(until);
        }
    }

    async fn wait_pacing(&self) {
        loop {
            let until = *lock(&self.not_before);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// Learns from a `401`: returns true if another try may succeed.
    /// Whether to send the request again: the challenge is new, a token
    /// was refused (renew it), or the request went out without credentials
    /// (another request may have learned the challenge meanwhile).
    fn learn(&self, headers: &HeaderMap, scopes: &[String], sent_anonymous: bool) -> bool {
        let parsed = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(auth::parse_challenge)
            .next();
        let Some(challenge) = parsed else {
            return false;
        };
        let mut current = lock(&self.challenge);
        let changed = current.as_ref() != Some(&challenge);
        let had_token = matches!(challenge, Challenge::Bearer { .. })
            && lock(&self.tokens).get(&scopes.join(" ")).is_some();
        lock(&self.tokens).forget(&scopes.join(" "));
        *current = Some(challenge);
        changed || had_token || sent_anonymous
    }

    /// Our credentials as Basic auth (none if there is no username).
    fn basic(&self) -> AuthHeader {
        match (&self.username, &self.password) {
            (Some(u), p) => AuthHeader::Basic(
                u.clone(),
                p.as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            ),
            _ => AuthHeader::None,
        }
    }

    /// True while the registry is known to lack the referrers API.
    pub(super) fn lacks_referrers_api(&self) -> bool {
        lock(&self.no_referrers_api_until).is_some_and(|t| Instant::now() < t)
    }

    /// The registry answered that it has no referrers API.
    pub(super) fn note_no_referrers_api(&self) {
        *lock(&self.no_referrers_api_until) = Some(Instant::now() + NO_REFERRERS_API_FOR);
    }

    /// How requests are authenticated, as learned from the registry.
    pub(super) fn auth_kind(&self) -> &'static str {
        match &*lock(&self.challenge) {
            None => "anonymous",
            Some(Challenge::Basic) => "basic",
            Some(Challenge::Bearer { .. }) => "token",
        }
    }

    async fn auth_header(
        &self,
        scopes: &[String],
        what: &str,
    ) -> Result<AuthHeader, RegistryError> {
        let challenge = lock(&self.challenge).clone();
        match challenge {
            None => Ok(AuthHeader::None),
            Some(Challenge::Basic) => Ok(self.basic()),
            Some(Challenge::Bearer { realm, service }) => {
                let key = scopes.join(" ");
                if let Some(t) = lock(&self.tokens).get(&key) {
                    return Ok(AuthHeader::Bearer(t));
                }
                let token = self
                    .fetch_token(&realm, service.as_deref(), scopes, what)
                    .await?;
                Ok(AuthHeader::Bearer(token))
            }
        }
    }

    /// The Docker token flow: `GET <realm>?service=…&scope=…`, with Basic
    /// credentials when we have them.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        what: &str,
    ) -> Result<String, RegistryError> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let creds = self.basic();
        let token_what = format!("token for {what}");
        let resp = self
            .send_plain(&token_what, &|c| apply(c.get(realm).query(&query), &creds))
            .await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Unauthorized {
                    registry: self.name.clone(),
                    what: what.to_string(),
                    detail: format!("the token service answered {}", resp.status()),
                });
            }
            _ => return Err(self.status_error(resp, &token_what).await),
        }
        let body = self.read_limited(resp, 1 << 20, &token_what).await?;
        let parsed: auth::TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Other {
                registry: self.name.clone(),
                what: token_what.clone(),
                detail: format!("the token service's answer is not JSON: {e}"),
            })?;
        let (token, life) = parsed.into_token().ok_or_else(|| RegistryError::Other {
            registry: self.name.clone(),
            what: token_what,
            detail: "the token service's answer holds no token".into(),
        })?;
        lock(&self.tokens).put(&scopes.join(" "), token.clone(), life);
        Ok(token)
    }

    /// A request without registry auth (the token service), with the same
    /// pacing and transient-error retries.
    async fn send_plain(
        &self,
        what: &str,
        make: &(dyn Fn(&Client) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        let mut backoff = backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_pacing().await;
            match make(&self.http).send().await {
                Ok(r) if is_retryable(r.status()) && attempt < self.limits.request_attempts => {
                    let wait = retry_after(r.headers())
                        .unwrap_or_else(|| backoff.next().unwrap_or(MAX_BACKOFF));
                    tokio::time::sleep(wait).await;
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    let err = self.transport_error(&e, what);
                    if attempt >= self.limits.request_attempts
                        || matches!(err, RegistryError::Tls { .. })
                    {
                        return Err(err);
                    }
                    tokio::time::sleep(backoff.next().unwrap_or(MAX_BACKOFF)).await;
                }
            }
        }
    }

    /// A request to the registry's own REST API (Harbor's `/api/v2.0`),
    /// with Basic credentials, pacing and transient-error retries.
    pub(super) async fn send_api(
        &self,
        what: &str,
        make: &(dyn Fn(&Client) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        let creds = self.basic();
        self.send_plain(what, &|c| apply(make(c), &creds)).await
    }

    /// The absolute URL in a `Location` header.
    pub(super) fn location(&self, resp: &Response, what: &str) -> Result<url::Url, RegistryError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Other {
                registry: self.name.clone(),
                what: what.to_string(),
                detail: format!("{} without a Location header", resp.status()),
            })?;
        resp.url().join(loc).map_err(|e| RegistryError::Other {
            registry: self.name.clone(),
            what: what.to_string(),
            detail: format!("bad Location '{loc}': {e}"),
        })
    }

    /// Reads a body of at most `limit` bytes.
    pub(super) async fn read_limited(
        &self,
        resp: Response,
        limit: usize,
        what: &str,
    ) -> Result<Bytes, RegistryError> {
        let too_big = || RegistryError::Other {
            registry: self.name.clone(),
            what: what.to_string(),
            detail: format!("answer larger than {limit} bytes"),
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_big());
        }
        let mut buf = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport_error(&e, what))?;
            if buf.len() + chunk.len() > limit {
                return Err(too_big());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Turns an error status into an error that says what to do.
    pub(super) async fn status_error(&self, resp: Response, what: &str) -> RegistryError {
        let status = resp.status();
        let body = self
            .read_limited(resp, 64 * 1024, what)
            .await
            .unwrap_or_default();
        let registry = self.name.clone();
        let what = what.to_string();
        let detail = registry_message(&body);
        match status.as_u16() {
            401 | 403 => RegistryError::Unauthorized {
                registry,
                what,
                detail: format!(
                    "{status}{}",
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                ),
            },
            404 => RegistryError::NotFound { registry, what },
            400 if detail
                .as_deref()
                .is_some_and(|d| d.contains("DIGEST_INVALID")) =>
            {
                RegistryError::DigestMismatch {
                    registry,
                    what,
                    detail: detail.unwrap_or_default(),
                }
            }
            413 => RegistryError::Status {
                registry,
                what,
                status: 413,
                detail: format!(
                    "answered 413 Request Entity Too Large: a proxy in front of registry '{}' limits request body size; set its chunk_size_threshold and chunk_size below that limit, or raise the limit (nginx: client_max_body_size 0)",
                    self.name
                ),
            },
            _ => RegistryError::Status {
                registry,
                what,
                status: status.as_u16(),
                detail: format!(
                    "answered {status}{}",
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                ),
            },
        }
    }

    /// Classifies a failed exchange: TLS, connection, or other.
    pub(super) fn transport_error(&self, e: &reqwest::Error, what: &str) -> RegistryError {
        let chain = error_chain(e);
        let lower = chain.to_ascii_lowercase();
        let registry = self.name.clone();
        let https = self.base.starts_with("https://");
        let tls_words = [
            "certificate",
            "unknownissuer",
            "handshake",
            "invalidcontenttype",
            "corrupt message",
        ];
        if https && tls_words.iter().any(|w| lower.contains(w)) {
            let hint = if lower.contains("invalidcontenttype") || lower.contains("corrupt message")
            {
                format!(
                    "registry '{}' does not answer with TLS; if it serves plain HTTP, write its url as http://",
                    self.name
                )
            } else {
                match &self.tls {
                    TlsMode::System => format!(
                        "set tls.ca_file for registry '{}' to the CA that signed its certificate (or, at your own risk, tls.insecure_skip_verify = true)",
                        self.name
                    ),
                    TlsMode::Pinned { file, .. } => format!(
                        "registry '{}' presented a certificate not signed by the CA in {} (check tls.ca_file and the certificate's host names)",
                        self.name,
                        file.display()
                    ),
                    TlsMode::InsecureSkipVerify => "TLS handshake failed".to_string(),
                }
            };
            let detail = match lower.find("invalid peer certificate") {
                Some(i) => chain[i..].to_string(),
                None => last_cause(&chain),
            };
            return RegistryError::Tls {
                registry,
                hint,
                detail,
            };
        }
        if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
            let detail = if e.is_timeout() {
                format!(
                    "no data for {:?} (stalled): {}",
                    self.limits.stall_timeout,
                    last_cause(&chain)
                )
            } else {
                last_cause(&chain)
            };
            return RegistryError::Connect {
                registry,
                url: self.base.clone(),
                detail,
            };
        }
        RegistryError::Other {
            registry,
            what: what.to_string(),
            detail: chain,
        }
    }
}

/// The code and message of an OCI error body, if it has one.
fn registry_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
        let parts: Vec<String> = env
            .errors
            .iter()
            .map(|i| {
                format!(
                    "{} {}",
                    i.code.as_deref().unwrap_or(""),
                    i.message.as_deref().unwrap_or("")
                )
                .trim()
                .to_string()
            })
            .collect();
        if !parts.is_empty() {
            return Some(parts.join("; "));
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(300).collect())
}

/// The error and its sources, joined, for matching and for messages.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn last_cause(chain: &str) -> String {
    chain.rsplit(": ").next().unwrap_or(chain).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_in_both_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).expect("header"),
        );
        let d = retry_after(&h).expect("date form");
        assert!(
            d > Duration::from_secs(115) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn registry_error_bodies_are_summarised() {
        let body = br#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#;
        assert_eq!(
            registry_message(body).as_deref(),
            Some("DIGEST_INVALID provided digest did not match uploaded content")
        );
        assert_eq!(registry_message(b"  ").as_deref(), None);
        assert_eq!(
            registry_message(b"upstream down").as_deref(),
            Some("upstream down")
        );
    }
}
