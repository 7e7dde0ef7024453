//! The HTTP surface: Harbor's webhook, the jobs API, health and metrics.
//!
//! A webhook is answered `202` only after its jobs are flushed to disk;
//! everything refused gets a status and a JSON body saying why, and nothing
//! is stored for it. Order of checks: auth (401), content type (415), size
//! (413), then the payload (400).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::event::{self, EventKind, Format, Parsed};
use crate::jobs::workers::Readiness;
use crate::jobs::{Job, JobState, RetryError, Store};
use crate::live::Shared;
use crate::metrics::Metrics;

mod listener;
pub use listener::{
    ConnLimits, HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, REQUEST_TIMEOUT, TlsSlot, serve,
};

/// A rate limiter keyed by client address.
pub type WebhookLimiter = Arc<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>;

/// The limiter for `per_second` webhooks per client (bursts of twice
/// that), or none for 0.
pub fn webhook_limiter(per_second: u32) -> Option<WebhookLimiter> {
    let rate = std::num::NonZeroU32::new(per_second)?;
    let burst = rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
    Some(Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_second(rate).allow_burst(burst),
    )))
}

/// Largest webhook body accepted; Harbor's are about 1 KiB.
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

/// What request handlers share.
pub struct AppState {
    /// The job store.
    pub store: Arc<Store>,
    /// Rules and the webhook secret in force (reloadable).
    pub live: Arc<Shared>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Whether workers are running; `/readyz` answers from it.
    pub readiness: Arc<Readiness>,
    /// Webhooks per client address (`server.webhook_rate_limit`).
    pub limiter: Option<WebhookLimiter>,
}

/// Builds the main router: webhooks, the jobs API (behind [`api_guard`]),
/// health, readiness and, unless `server.metrics_listen` moves them,
/// metrics.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/retry", post(retry_job))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api_guard,
        ));
    let mut r = Router::new()
        .route("/webhooks/harbor", post(harbor_webhook))
        .route("/webhooks/distribution", post(distribution_webhook))
        .merge(api)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if state.live.get().config.server.metrics_listen.is_none() {
        r = r.route("/metrics", get(metrics));
    }
    r.fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// The router of `server.metrics_listen`: metrics, health and readiness,
/// nothing that takes input.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// `shutdown` is cancelled, then lets open requests finish. Connection
/// limits come from the config in force at start; idle entries of the
/// webhook rate limiter are pruned every minute, so it does not keep every
/// address it has ever seen.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<TlsSlot>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = ConnLimits::from_config(&state.live.get().config.server);
    if let Some(limiter) = state.limiter.clone() {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(LIMITER_PRUNE_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    serve(listener, router(state), tls, limits, shutdown).await
}

/// How often the webhook rate limiter forgets addresses that are idle.
const LIMITER_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Guards `/api/v1/*`: with `server.api_token` set, every request needs
/// `Authorization: Bearer <token>` (compared in constant time; a failure
/// is counted and logged without what was presented); without it the API
/// is read-only.
async fn api_guard(
    State(app): State<Arc<AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let live = app.live.get();
    match &live.config.server.api_token {
        Some(token) => {
            let expected = Secret::new(format!("Bearer {}", token.expose()));
            if !authorized(&expected, req.headers()) {
                app.metrics.auth_failures.with_label_values(&["api"]).inc();
                tracing::warn!(
                    method = %req.method(),
                    path = %req.uri().path(),
                    "API request refused: missing or wrong bearer token"
                );
                let mut resp = error(
                    StatusCode::UNAUTHORIZED,
                    "this API needs Authorization: Bearer <server.api_token>",
                );
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"harbor-relay\""),
                );
                return resp;
            }
        }
        None if req.method() != axum::http::Method::GET => {
            return error(
                StatusCode::FORBIDDEN,
                "the API is read-only: set [server] api_token (or api_token_file) to allow changes",
            );
        }
        None => {}
    }
    drop(live);
    next.run(req).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({ "error": message.into(), "status": status.as_u16() })),
    )
        .into_response()
}

/// Compares the presented `Authorization` header with the configured one
/// in time that does not depend on where they differ.
fn authorized(expected: &Secret, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    bool::from(presented.ct_eq(expected.expose().as_bytes()))
}

fn format_of(headers: &HeaderMap) -> Option<Format> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = ct.split(';').next()?.trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(Format::Default),
        "application/cloudevents+json" => Some(Format::CloudEvents),
        "application/vnd.docker.distribution.events.v1+json" => Some(Format::Distribution),
        _ => None,
    }
}

fn ignored(body: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The checks every webhook passes, in order: auth (401), content type
/// (415, with the formats this endpoint takes), size (413). Nothing is
/// stored for a refused request.
async fn receive(
    app: &AppState,
    req: Request,
    takes: &[Format],
    expected: &str,
) -> Result<(Format, bytes::Bytes), Response> {
    let (parts, body) = req.into_parts();
    let format = format_of(&parts.headers).filter(|f| takes.contains(f));
    let label = format.map_or("unknown", Format::as_str);
    let count = |outcome: &str| {
        app.metrics
            .webhooks
            .with_label_values(&[label, outcome])
            .inc()
    };
    if let (Some(limiter), Some(axum::extract::ConnectInfo(peer))) = (
        &app.limiter,
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>(),
    ) && let Err(not_until) = limiter.check_key(&peer.ip())
    {
        count("rate_limited");
        let wait = not_until
            .wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
            .as_secs()
            .max(1);
        tracing::warn!(client = %peer.ip(), "webhook refused: over server.webhook_rate_limit");
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "more than server.webhook_rate_limit webhooks per second from {}; retry in {wait}s",
                peer.ip()
            ),
        );
        if let Ok(v) = header::HeaderValue::from_str(&wait.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(resp);
    }
    if let Some(secret) = app.live.get().webhook_auth()
        && !authorized(secret, &parts.headers)
    {
        count("unauthorized");
        app.metrics
            .auth_failures
            .with_label_values(&["webhook"])
            .inc();
        tracing::warn!("webhook refused: missing or wrong Authorization header");
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong Authorization header: it must equal the webhook's auth header configured in Harbor",
        ));
    }
    let Some(format) = format else {
        count("unsupported_media_type");
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {expected}"),
        ));
    };
    match read_limited(Body::new(body)).await {
        Ok(b) => Ok((format, b)),
        Err(BodyError::TooLarge) => {
            count("too_large");
            let mut r = error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {MAX_WEBHOOK_BYTES} bytes"),
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Err(r)
        }
        Err(BodyError::Broken(e)) => {
            count("bad_request");
            Err(error(
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
            ))
        }
    }
}

async fn harbor_webhook(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let (format, bytes) = match receive(
        &app,
        req,
        &[Format::Default, Format::CloudEvents],
        "application/json (Harbor's Default payload) or application/cloudevents+json (CloudEvents)",
    )
    .await
    {
        Ok(r) => r,
        Err(response) => return response,
    };
    let count = |outcome: &str| {
        app.metrics
            .webhooks
            .with_label_values(&[format.as_str(), outcome])
            .inc()
    };
    match event::parse(format, &bytes) {
        Err(e) => {
            count("bad_request");
            tracing::info!(error = %e, "webhook refused");
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(Parsed::Ignored { event_type, reason }) => {
            count("ignored");
            ignored(json!({ "status": "ignored", "event_type": event_type, "reason": reason }))
        }
        Ok(Parsed::Artifact(ev)) => accept(&app, format, vec![ev], Unmatched::Refuse).await,
    }
}

/// CNCF distribution's notifications: a plain registry can drive the relay.
async fn distribution_webhook(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let (format, bytes) = match receive(
        &app,
        req,
        &[Format::Distribution, Format::Default],
        "application/vnd.docker.distribution.events.v1+json",
    )
    .await
    {
        Ok(r) => r,
        Err(response) => return response,
    };
    let format = if format == Format::Default {
        Format::Distribution
    } else {
        format
    };
    match event::parse_distribution(&bytes) {
        Err(e) => {
            app.metrics
                .webhooks
                .with_label_values(&[format.as_str(), "bad_request"])
                .inc();
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(events) if events.is_empty() => {
            app.metrics
                .webhooks
                .with_label_values(&[format.as_str(), "ignored"])
                .inc();
            ignored(json!({
                "status": "ignored",
                "reason": "only manifest pushes are acted on (blob pushes, pulls and deletes are not)",
            }))
        }
        Ok(events) => accept(&app, format, events, Unmatched::Ignore).await,
    }
}

/// What to answer for events about repositories no rule is about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unmatched {
    /// `422` with the reason: Harbor shows a failed delivery in the
    /// project's webhook log, which is where an admin looks when a push did
    /// not arrive (and it retries only twice).
    Refuse,
    /// `200 ignored`: CNCF distribution's notification queue retries a
    /// failed delivery until it succeeds, holding back every later event,
    /// and its envelopes mix repositories.
    Ignore,
}

/// Turns events into jobs under the rules and stores them; `202` once they
/// are on disk. Events about repositories no rule is about are answered as
/// `unmatched` says; events a rule is about but does not take (a filtered
/// tag, a deletion not replicated) get `200 ignored`, with the reason.
async fn accept(
    app: &AppState,
    format: Format,
    events: Vec<event::Event>,
    unmatched: Unmatched,
) -> Response {
    let count = |outcome: &str| {
        app.metrics
            .webhooks
            .with_label_values(&[format.as_str(), outcome])
            .inc()
    };
    let mut specs = Vec::new();
    let mut skipped = Vec::new();
    let mut deleting = false;
    let rules = &app.live.get().rules;
    for ev in &events {
        deleting |= ev.kind == EventKind::Delete;
        specs.extend(crate::jobs::plan::for_event(rules, ev, &mut skipped));
    }
    if specs.is_empty()
        && unmatched == Unmatched::Refuse
        && events
            .iter()
            .all(|ev| !rules.covers(&ev.project, &ev.repository))
    {
        let outside: Vec<&str> = events.iter().map(|ev| ev.repository.as_str()).collect();
        count("no_rule");
        tracing::info!(repository = %outside.join(", "), "webhook refused: no rule is about this repository");
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "no rule replicates repository '{}': add it to a rule's `projects`/`repositories` in the relay's config, or stop sending its events",
                outside.join("', '")
            ),
        );
    }
    if specs.is_empty() {
        count("ignored");
        return ignored(json!({
            "status": "ignored",
            "event_type": if deleting { "DELETE_ARTIFACT" } else { "PUSH_ARTIFACT" },
            "reason": if deleting { "no rule replicates this deletion" } else { "no rule matches" },
            "details": skipped,
        }));
    }
    let described: Vec<(String, String)> = specs
        .iter()
        .map(|s| {
            (
                s.rule.clone(),
                format!("{}/{}{}", s.to, s.target_repository, s.reference),
            )
        })
        .collect();
    match app.store.enqueue(specs).await {
        Ok(done) => {
            count("accepted");
            app.metrics.queue_depth.set(app.store.queued() as i64);
            let jobs: Vec<_> = done
                .iter()
                .zip(described.iter())
                .map(|(e, (rule, target))| {
                    json!({ "id": e.id, "rule": rule, "target": target, "coalesced": e.coalesced })
                })
                .collect();
            tracing::info!(events = events.len(), jobs = jobs.len(), "webhook accepted");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "status": "accepted", "jobs": jobs, "skipped": skipped })),
            )
                .into_response()
        }
        Err(e @ crate::jobs::StoreError::Full { .. }) => {
            count("queue_full");
            tracing::warn!(error = %e, "webhook refused: the job queue is full");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("nothing was accepted: {e}"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
            r
        }
        Err(e @ crate::jobs::StoreError::Invalid(_)) => {
            count("invalid");
            error(
                StatusCode::BAD_REQUEST,
                format!("nothing was accepted: {e}"),
            )
        }
        Err(e) => {
            count("error");
            tracing::error!(error = %e, "cannot store webhook jobs");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot store the job, nothing was accepted: {e}"),
            )
        }
    }
}

enum BodyError {
    TooLarge,
    Broken(axum::Error),
}

/// How much of an oversized body is read and thrown away before answering
/// 413, so that a client still sending gets to read the answer.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Reads a body of at most [`MAX_WEBHOOK_BYTES`]. An oversized body is
/// drained (up to [`DRAIN_LIMIT`]) rather than cut off mid-send.
async fn read_limited(body: Body) -> Result<bytes::Bytes, BodyError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Broken)?;
        seen += chunk.len();
        if seen > MAX_WEBHOOK_BYTES {
            if seen > DRAIN_LIMIT {
                return Err(BodyError::TooLarge);
            }
            buf.clear();
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if seen > MAX_WEBHOOK_BYTES {
        return Err(BodyError::TooLarge);
    }
    Ok(buf.freeze())
}

fn rfc3339(ms: Option<u64>) -> Option<String> {
    ms.map(|ms| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    })
}

/// A job as the API shows it.
pub fn job_json(j: &Job) -> serde_json::Value {
    let s = &j.spec;
    json!({
        "id": j.id,
        "state": j.state.as_str(),
        "action": s.action.as_str(),
        "rule": s.rule,
        "source": format!("{}/{}{}", s.from, s.source_repository, s.reference),
        "target": format!("{}/{}{}", s.to, s.target_repository, s.reference),
        "source_registry": s.from,
        "source_repository": s.source_repository,
        "target_registry": s.to,
        "target_repository": s.target_repository,
        "reference": s.reference.as_str(),
        "event_digest": s.digest,
        "attempts": j.attempts,
        "coalesced": j.coalesced,
        "created_at": rfc3339(Some(j.created_ms)),
        "started_at": rfc3339(j.started_ms),
        "finished_at": rfc3339(j.finished_ms),
        "next_attempt_at": rfc3339(j.next_attempt_ms),
        "duration_seconds": match (j.started_ms, j.finished_ms) {
            (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1000.0),
            _ => None,
        },
        "digest": j.summary.as_ref().map(|x| x.digest.clone()),
        "bytes_copied": j.summary.as_ref().map_or(0, |x| x.bytes_copied),
        "blobs_copied": j.summary.as_ref().map_or(0, |x| x.blobs_copied),
        "blobs_skipped": j.summary.as_ref().map_or(0, |x| x.blobs_skipped),
        "blobs_mounted": j.summary.as_ref().map_or(0, |x| x.blobs_mounted),
        "blobs_resumed": j.summary.as_ref().map_or(0, |x| x.blobs_resumed),
        "manifests_copied": j.summary.as_ref().map_or(0, |x| x.manifests_copied),
        "referrers_copied": j.summary.as_ref().map_or(0, |x| x.referrers_copied),
        "deleted": j.summary.as_ref().is_some_and(|x| x.deleted),
        "skipped": j.summary.as_ref().and_then(|x| x.skipped.clone()),
        "note": j.summary.as_ref().and_then(|x| x.note.clone()),
        "last_error": j.last_error,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(State(app): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => match JobState::parse(s) {
            Some(s) => Some(s),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "state must be one of queued, running, retrying, succeeded, failed",
                );
            }
        },
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match app.store.list(state, limit) {
        Ok(jobs) => axum::Json(json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() }))
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn get_job(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "job id must be a number");
    };
    match app.store.get(id) {
        Ok(Some(j)) => axum::Json(job_json(&j)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn retry_job(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "job id must be a number");
    };
    match app.store.retry(id).await {
        Ok(j) => {
            tracing::info!(id, "failed job queued again by API request");
            app.metrics.queue_depth.set(app.store.queued() as i64);
            (StatusCode::ACCEPTED, axum::Json(job_json(&j))).into_response()
        }
        Err(e @ RetryError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ (RetryError::NotFailed { .. } | RetryError::Duplicate { .. })) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(RetryError::Store(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Ready to take webhooks and run jobs: the store is open (it is, for as
/// long as the server runs) and every worker is running. `503` with the
/// reason otherwise, e.g. while stopping.
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    match app.readiness.problem() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    app.metrics.queue_depth.set(app.store.queued() as i64);
    app.metrics.jobs_running.set(app.store.running() as i64);
    app.metrics.jobs_retrying.set(app.store.retrying() as i64);
    app.metrics.store_size.set(app.store.size_on_disk() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&app.live.get().registries),
    )
        .into_response()
}
