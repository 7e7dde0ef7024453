//! Sending requests to one registry: TLS, auth, pacing, retries, errors.
//!
//! Every request to the host waits while a `Retry-After` from any earlier
//! answer still applies, so one `429` slows all work on that registry, not
//! only the request that got it. Replayable requests are retried on
//! connection errors and on 408, 429, 500, 502, 503 and 504, with
//! exponential backoff and jitter, or after the `Retry-After` the
//! registry asked for, up to `max_retry_after`.
//!
//! This is also the trust boundary towards the registry (design invariant
//! 9): a `401` challenge is learned only from an answer of the registry's
//! own scheme, host and port; a token realm must be on that host (or one
//! the config lists in `token_realm_hosts`) and never plain HTTP for an
//! HTTPS registry; once tokens are in use, a `Basic` challenge (Harbor's
//! answer to a token it does not accept) never downgrades to sending the
//! password on every request; and `Location`/`Link` are followed only on
//! the registry's own origin.

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
    /// The configured URL: its origin is the only one credentials go to.
    base_url: url::Url,
    /// Other hosts allowed to serve the token realm.
    realm_hosts: Vec<String>,
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

/// What a `401` taught us.
enum Learned {
    /// Send the request again (new challenge, renewed token).
    Retry,
    /// Send it again with a token for more actions (a `DELETE` needs
    /// `delete`, which Harbor's `v2auth` asks of every `DELETE`).
    Widen(Vec<String>),
    /// Nothing to learn: the `401` stands.
    Stop,
}

/// The scopes with `delete` added where a `DELETE` needs it, or `None` if
/// they already have it.
fn widen(scopes: &[String], method: &reqwest::Method) -> Option<Vec<String>> {
    if method != reqwest::Method::DELETE {
        return None;
    }
    let mut changed = false;
    let wider = scopes
        .iter()
        .map(|s| match s.rsplit_once(':') {
            Some((head, actions)) if !actions.split(',').any(|a| a == "delete" || a == "*") => {
                changed = true;
                format!("{head}:{actions},delete")
            }
            _ => s.clone(),
        })
        .collect();
    changed.then_some(wider)
}

/// True if `url` has the same scheme, host and port as `base`.
pub(super) fn same_origin(url: &url::Url, base: &url::Url) -> bool {
    url.origin() == base.origin()
}

/// `host[:port]` of a URL, for messages.
pub(super) fn host_of(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => url.as_str().chars().take(80).collect(),
    }
}

/// Whether a token realm may receive the credentials of the registry at
/// `base`: HTTPS (or plain HTTP only for a plain-HTTP registry), on the
/// registry's own host and port or on one of `allowed` (`host` for any
/// port, `host:port` for one). The error says why not.
pub(super) fn check_realm(realm: &str, base: &url::Url, allowed: &[String]) -> Result<(), String> {
    let u = url::Url::parse(realm)
        .map_err(|_| format!("its token realm `{}` is not a URL", cut(realm)))?;
    let host = u.host_str().unwrap_or_default();
    match u.scheme() {
        "https" => {}
        "http" if base.scheme() == "http" => {}
        "http" => {
            return Err(format!(
                "its token realm http://{} is plain HTTP while the registry is HTTPS; the password would cross the network in clear text, so it is not sent",
                host_of(&u)
            ));
        }
        other => return Err(format!("its token realm has scheme `{}`", cut(other))),
    }
    let same = u.host_str() == base.host_str()
        && u.port_or_known_default() == base.port_or_known_default();
    let listed = allowed.iter().any(|a| {
        let (h, p) = match a.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
            _ => (a.as_str(), None),
        };
        h.eq_ignore_ascii_case(host) && p.is_none_or(|p| Some(p) == u.port_or_known_default())
    });
    if same || listed {
        Ok(())
    } else {
        Err(format!(
            "its token realm is on another host ({}), which is not in token_realm_hosts; if that host really issues this registry's tokens, add token_realm_hosts = [\"{}\"] to the registry",
            host_of(&u),
            host_of(&u)
        ))
    }
}

/// At most 120 characters of a value a registry sent, for messages (an
/// answer must not be able to blow up an error message, a log line or the
/// job store).
pub fn cut(s: &str) -> String {
    if s.chars().count() <= 120 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(120).collect::<String>())
    }
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

/// `Retry-After` as a wait (seconds, or an HTTP date), at most `max`.
pub(super) fn retry_after(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let asked = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(asked.min(max))
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
            .referer(false)
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
            base_url: cfg.url.clone(),
            realm_hosts: cfg.token_realm_hosts.clone(),
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
        let mut scopes: std::borrow::Cow<'_, [String]> = scopes.into();
        loop {
            attempt += 1;
            let auth = self.auth_header(&scopes, what).await?;
            self.wait_pacing().await;
            let permit = match &self.permits {
                Some(s) => s.acquire().await.ok(),
                None => None,
            };
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let request = apply(make(&self.http), &auth).build();
            let method = request
                .as_ref()
                .map(|r| r.method().clone())
                .unwrap_or_default();
            let sent = match request {
                Ok(r) => self.http.execute(r).await,
                Err(e) => Err(e),
            };
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
                match self.learn(resp.url(), resp.headers(), &scopes, &auth, &method)? {
                    Learned::Retry => {
                        attempt -= 1;
                        continue;
                    }
                    Learned::Widen(wider) => {
                        scopes = wider.into();
                        attempt -= 1;
                        continue;
                    }
                    Learned::Stop => {}
                }
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            }
            if is_retryable(status) {
                let asked = retry_after(resp.headers(), self.limits.max_retry_after);
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

    /// Every request to this host waits until `now + wait` (`wait` is
    /// already capped; an overflow waits the cap).
    fn pace(&self, wait: Duration) {
        let now = Instant::now();
        let until = now
            .checked_add(wait)
            .or_else(|| now.checked_add(self.limits.max_retry_after))
            .unwrap_or(now);
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

    /// Learns from a `401` to a request sent with `sent`: whether to send
    /// it again (the challenge is new, a token was refused and is renewed,
    /// or the request went out without credentials while another learned
    /// the challenge). A challenge from another origin (a blob store a
    /// redirect led to) teaches nothing; a token realm the registry may not
    /// use is an error; and once tokens are in use a `Basic` challenge to a
    /// request that carried one (Harbor's `v2auth` answers a token it does
    /// not accept so) renews the token, wider if the method needs it, and
    /// never switches to Basic.
    fn learn(
        &self,
        from: &url::Url,
        headers: &HeaderMap,
        scopes: &[String],
        sent: &AuthHeader,
        method: &reqwest::Method,
    ) -> Result<Learned, RegistryError> {
        if !same_origin(from, &self.base_url) {
            tracing::debug!(registry = %self.name, from = %host_of(from), "ignoring a 401 challenge from another host");
            return Ok(Learned::Stop);
        }
        let parsed = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(auth::parse_challenge)
            .next();
        let Some(challenge) = parsed else {
            return Ok(Learned::Stop);
        };
        if let Challenge::Bearer { realm, .. } = &challenge {
            check_realm(realm, &self.base_url, &self.realm_hosts).map_err(|detail| {
                RegistryError::Untrusted {
                    registry: self.name.clone(),
                    detail,
                }
            })?;
        }
        let key = scopes.join(" ");
        lock(&self.tokens).forget(&key);
        let mut current = lock(&self.challenge);
        let sent_token = matches!(sent, AuthHeader::Bearer(_));
        if sent_token && matches!(*current, Some(Challenge::Bearer { .. })) {
            // Keep the Bearer challenge (a Basic one here is Harbor's way
            // of refusing the token); renew the token, wider if need be.
            if let Challenge::Bearer { .. } = &challenge {
                *current = Some(challenge);
            }
            return Ok(match widen(scopes, method) {
                Some(wider) => Learned::Widen(wider),
                None => Learned::Retry,
            });
        }
        let changed = current.as_ref() != Some(&challenge);
        *current = Some(challenge);
        let anonymous = matches!(sent, AuthHeader::None);
        Ok(if changed || sent_token || anonymous {
            Learned::Retry
        } else {
            Learned::Stop
        })
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
                detail: format!(
                    "the token service's answer is not JSON: {}",
                    cut(&e.to_string())
                ),
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
                    let wait = retry_after(r.headers(), self.limits.max_retry_after)
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
        let url = resp.url().join(loc).map_err(|e| RegistryError::Other {
            registry: self.name.clone(),
            what: what.to_string(),
            detail: format!("bad Location '{}': {e}", cut(loc)),
        })?;
        self.own(url, "Location", what)
    }

    /// `url` if it is on the registry's own scheme, host and port (where
    /// its credentials may go); an error naming both hosts if not.
    pub(super) fn own(
        &self,
        url: url::Url,
        header: &str,
        what: &str,
    ) -> Result<url::Url, RegistryError> {
        if same_origin(&url, &self.base_url) {
            return Ok(url);
        }
        let downgrade = url.scheme() == "http" && self.base_url.scheme() == "https";
        Err(RegistryError::Untrusted {
            registry: self.name.clone(),
            detail: format!(
                "{what}: its {header} points to {}://{}, not to the registry's own {}://{}{}; it is not followed, so the registry's credentials do not leave for another host",
                url.scheme(),
                host_of(&url),
                self.base_url.scheme(),
                host_of(&self.base_url),
                if downgrade {
                    " (and would downgrade HTTPS to plain HTTP)"
                } else {
                    ""
                }
            ),
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
            return Some(parts.join("; ").chars().take(300).collect());
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
        let max = Duration::from_secs(600);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h, max), Some(Duration::from_secs(2)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(retry_after(&h, max), Some(max));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).expect("header"),
        );
        let d = retry_after(&h, max).expect("date form");
        assert!(
            d > Duration::from_secs(115) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, max), None);
    }

    #[test]
    fn a_token_realm_must_be_on_the_registry_or_listed_and_never_downgrade() {
        let https: url::Url = "https://harbor.example".parse().expect("url");
        let http: url::Url = "http://10.0.0.5:5000".parse().expect("url");
        let none: Vec<String> = vec![];
        assert!(check_realm("https://harbor.example/service/token", &https, &none).is_ok());
        assert!(check_realm("https://harbor.example:443/service/token", &https, &none).is_ok());
        let e = check_realm("http://harbor.example/service/token", &https, &none)
            .expect_err("downgrade");
        assert!(e.contains("plain HTTP"), "{e}");
        let e = check_realm("https://other-host/steal", &https, &none).expect_err("other host");
        assert!(
            e.contains("other-host") && e.contains("token_realm_hosts"),
            "{e}"
        );
        let e = check_realm("https://harbor.example:8443/t", &https, &none).expect_err("port");
        assert!(e.contains("harbor.example:8443"), "{e}");
        let allowed = vec!["auth.docker.io".to_string(), "127.0.0.1:9000".into()];
        assert!(check_realm("https://auth.docker.io/token", &https, &allowed).is_ok());
        assert!(check_realm("https://127.0.0.1:9000/token", &https, &allowed).is_ok());
        assert!(check_realm("https://127.0.0.1:9001/token", &https, &allowed).is_err());
        // Listing a host never allows plain HTTP for an HTTPS registry.
        assert!(check_realm("http://auth.docker.io/token", &https, &allowed).is_err());
        // A plain-HTTP registry may use a plain-HTTP realm on its own host.
        assert!(check_realm("http://10.0.0.5:5000/token", &http, &none).is_ok());
        assert!(check_realm("not a url", &https, &none).is_err());
    }

    #[test]
    fn a_delete_widens_its_token_to_the_delete_action() {
        let scopes = vec!["repository:p/r:pull,push".to_string()];
        assert_eq!(
            widen(&scopes, &reqwest::Method::DELETE),
            Some(vec!["repository:p/r:pull,push,delete".to_string()])
        );
        assert_eq!(widen(&scopes, &reqwest::Method::GET), None);
        let has = vec!["repository:p/r:delete".to_string()];
        assert_eq!(widen(&has, &reqwest::Method::DELETE), None);
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
