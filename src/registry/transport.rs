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
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use tokio::time::Instant;

use super::RegistryError;
use super::auth::{Challenge, TokenCache};
use super::classify::error_chain;
use super::limit::{Change, Limiter, Sample};
use super::pacer::Pacer;
use super::trust::{cut, host_of, same_origin};
use crate::config::{RegistryConfig, RegistryLimits, Secret, TlsMode};

/// How long to wait for a TCP + TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// First wait between attempts of a request; it doubles, with jitter.
const BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between attempts (a `Retry-After` is honoured as given).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Transport {
    pub(super) name: String,
    pub(super) base: String,
    /// The configured URL: its origin is the only one credentials go to.
    pub(super) base_url: url::Url,
    /// Other hosts allowed to serve the token realm.
    pub(super) realm_hosts: Vec<String>,
    pub(super) tls: TlsMode,
    pub(super) http: Client,
    pub(super) username: Option<String>,
    pub(super) password: Option<Secret>,
    /// See [`RegistryConfig::password_note`].
    pub(super) password_note: Option<String>,
    pub(super) challenge: Mutex<Option<Challenge>>,
    pub(super) tokens: Mutex<TokenCache>,
    /// This transport, for the tasks it starts (an early token renewal).
    pub(super) me: std::sync::Weak<Transport>,
    not_before: Mutex<Option<Instant>>,
    /// Requests in flight at once: adaptive, capped by
    /// `max_concurrent_requests` (see [`super::limit`]).
    pub(super) limiter: Limiter,
    /// How big blobs are read by ranges (see [`super::ranged`]).
    pub(super) ranges: super::ranged::Ranges,
    pub(super) pacer: Option<std::sync::Arc<Pacer>>,
    pub(super) create_projects: bool,
    pub(super) is_harbor: bool,
    pub(super) limits: RegistryLimits,
    pub(super) stats: std::sync::Arc<Stats>,
    /// Until when to assume the registry has no OCI referrers API.
    no_referrers_api_until: Mutex<Option<Instant>>,
    /// The registry answered a referrers request with a list.
    referrers_api_seen: std::sync::atomic::AtomicBool,
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
    /// Times the adaptive request limit grew.
    pub concurrency_raised: AtomicU64,
    /// Times it was cut (a `429`, a `503`, a queue at the registry).
    pub concurrency_lowered: AtomicU64,
}

/// What to put in `Authorization`.
pub(super) enum AuthHeader {
    None,
    Basic(String, String),
    Bearer(String),
}

/// How a request through [`Transport::exchange`] is authenticated.
#[derive(Clone, Copy)]
pub(super) enum Authn<'a> {
    /// As the registry's challenge asks, for these scopes (registry API).
    Scopes(&'a [String]),
    /// With the account's Basic credentials (Harbor's REST API).
    Basic,
    /// As the request was built (the token service: Basic credentials to
    /// a realm already checked).
    Given,
}

/// What a `401` taught us.
pub(super) enum Learned {
    /// Send the request again (new challenge, renewed token).
    Retry,
    /// Send it again with a token for more actions (a `DELETE` needs
    /// `delete`, which Harbor's `v2auth` asks of every `DELETE`).
    Widen(Vec<String>),
    /// Nothing to learn: the `401` stands.
    Stop,
}

pub(super) fn apply(rb: RequestBuilder, auth: &AuthHeader) -> RequestBuilder {
    match auth {
        AuthHeader::None => rb,
        AuthHeader::Basic(u, p) => rb.basic_auth(u, Some(p)),
        AuthHeader::Bearer(t) => rb.bearer_auth(t),
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

/// The redirects a registry's answers may lead to ([`trust::check_redirect`]),
/// at most five in a row.
fn redirects(base: url::Url) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error(format!(
                "more than 5 redirects from {}",
                base.origin().ascii_serialization()
            ));
        }
        match super::trust::check_redirect(attempt.url(), &base) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(why),
        }
    })
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
            .redirect(redirects(cfg.url.clone()))
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
            password_note: cfg.password_note.clone(),
            challenge: Mutex::new(None),
            tokens: Mutex::new(TokenCache::default()),
            me: std::sync::Weak::new(),
            not_before: Mutex::new(None),
            limiter: Limiter::new(
                limits
                    .max_concurrent_requests
                    .unwrap_or(super::limit::AUTO_MAX),
            ),
            ranges: super::ranged::Ranges::new(limits.range_threshold, limits.source_streams),
            create_projects: cfg.create_projects,
            is_harbor: cfg.is_harbor,
            pacer: limits
                .max_bytes_per_second
                .map(|r| std::sync::Arc::new(Pacer::new(r))),
            limits,
            stats: Default::default(),
            no_referrers_api_until: Mutex::new(None),
            referrers_api_seen: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends a request built by `make`, authenticated for `scopes` as the
    /// registry's challenge asks. A replayable request is retried on
    /// transient failures and once after a `401` that teaches us (or
    /// renews) the auth; one that is not (a streamed upload) is sent
    /// exactly once.
    pub(super) async fn send(
        &self,
        what: &str,
        scopes: &[String],
        replayable: bool,
        make: &(dyn Fn(&Client) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        self.exchange(what, Authn::Scopes(scopes), replayable, make)
            .await
    }

    /// The one loop that sends a request to this registry (registry API,
    /// token service, REST API alike): pacing, the concurrency limit,
    /// `Stats`, retries of a replayable request on transport errors and
    /// retryable statuses with backoff or the capped `Retry-After` (which
    /// then paces every request to the host), and, for registry requests,
    /// what a `401` teaches.
    pub(super) async fn exchange(
        &self,
        what: &str,
        authn: Authn<'_>,
        replayable: bool,
        make: &(dyn Fn(&Client) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        let mut attempt: u32 = 0;
        let mut reauthed = false;
        let mut backoff = backoff();
        let mut scopes: std::borrow::Cow<'_, [String]> = match authn {
            Authn::Scopes(s) => s.into(),
            _ => (&[][..]).into(),
        };
        loop {
            attempt += 1;
            let auth = match authn {
                Authn::Scopes(_) => self.auth_header(&scopes, what).await?,
                Authn::Basic => self.basic(),
                Authn::Given => AuthHeader::None,
            };
            let (method, sent) = self.send_once(what, &auth, make).await;
            let may_retry = replayable && attempt < self.limits.request_attempts;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let err = self.transport_error(&e, what);
                    let transient = !matches!(
                        err,
                        RegistryError::Tls { .. } | RegistryError::Untrusted { .. }
                    );
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
            let learns = matches!(authn, Authn::Scopes(_));
            if status == StatusCode::UNAUTHORIZED && replayable && learns && !reauthed {
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
            let mut resp = resp;
            super::grant::keep(&mut resp, &auth, &scopes, method);
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

    /// One attempt: waits for the host's pacing and a concurrency permit,
    /// counts it, sends it with `auth`. Returns the method (a `401` may
    /// widen a `DELETE`'s token) and what came back.
    async fn send_once(
        &self,
        what: &str,
        auth: &AuthHeader,
        make: &(dyn Fn(&Client) -> RequestBuilder + Sync),
    ) -> (reqwest::Method, Result<Response, reqwest::Error>) {
        self.wait_pacing().await;
        let _permit = self.limiter.acquire().await;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let request = apply(make(&self.http), auth).build();
        let method = request
            .as_ref()
            .map(|r| r.method().clone())
            .unwrap_or_default();
        let sent = match request {
            Ok(r) => self.http.execute(r).await,
            Err(e) => Err(e),
        };
        tracing::trace!(registry = %self.name, %what, status = ?sent.as_ref().map(|r| r.status().as_u16()).ok(), ms = started.elapsed().as_secs_f64() * 1000.0, "request");
        if let Ok(r) = &sent {
            self.sampled(&method, r.status(), started.elapsed());
        }
        (method, sent)
    }

    /// Tells the adaptive limit what one answer says about the load.
    fn sampled(&self, method: &reqwest::Method, status: StatusCode, took: Duration) {
        let sample = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Sample::Overloaded,
            _ => Sample::Answered {
                // A body sent is part of an upload's time: only bodiless
                // requests compare.
                latency: (method == reqwest::Method::GET || method == reqwest::Method::HEAD)
                    .then_some(took),
                in_flight: self.limiter.in_flight(),
            },
        };
        let change = self.limiter.record(sample);
        let counter = match change {
            Change::Raised => &self.stats.concurrency_raised,
            Change::Lowered => &self.stats.concurrency_lowered,
            Change::Same => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if change == Change::Lowered {
            tracing::debug!(registry = %self.name, limit = self.limiter.limit(), ?status, "the registry pushes back: fewer requests at once");
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

    /// True while the registry is known to lack the referrers API.
    pub(super) fn lacks_referrers_api(&self) -> bool {
        lock(&self.no_referrers_api_until).is_some_and(|t| Instant::now() < t)
    }

    /// The registry answered that it has no referrers API.
    pub(super) fn note_no_referrers_api(&self) {
        self.referrers_api_seen.store(false, Ordering::Relaxed);
        *lock(&self.no_referrers_api_until) = Some(Instant::now() + NO_REFERRERS_API_FOR);
    }

    /// The registry answered a referrers request with a list.
    pub(super) fn note_referrers_api(&self) {
        self.referrers_api_seen.store(true, Ordering::Relaxed);
    }

    /// What is known of the registry's referrers API: `Some(true)` it
    /// answered with a list, `Some(false)` it said it has none (lately),
    /// `None` not asked yet.
    pub(super) fn referrers_api(&self) -> Option<bool> {
        if self.lacks_referrers_api() {
            return Some(false);
        }
        self.referrers_api_seen
            .load(Ordering::Relaxed)
            .then_some(true)
    }

    /// A request to the registry's own REST API (Harbor's `/api/v2.0`),
    /// with Basic credentials, pacing and transient-error retries.
    pub(super) async fn send_api(
        &self,
        what: &str,
        make: &(dyn Fn(&Client) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        self.exchange(what, Authn::Basic, true, make).await
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
}
