//! The HTTP surface: Harbor's webhook, the jobs API, health and metrics.
//!
//! A webhook is answered `202` only after its jobs are flushed to disk;
//! everything refused gets a status and a JSON body saying why, and nothing
//! is stored for it. Order of checks: auth (401), content type (415), size
//! (413), then the payload (400).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::jobs::Store;
use crate::jobs::workers::Readiness;
use crate::live::Shared;
use crate::metrics::Metrics;

mod admission;
mod jobs_api;
mod listener;
mod page;
mod webhook;
pub use admission::{ConnMark, client_key};
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
    /// When the daemon started, for the status page's uptime.
    pub started: std::time::Instant,
    /// Bytes moved so far by each running job, for the status page.
    pub board: Arc<crate::jobs::workers::Board>,
    /// The registries known to be down, for the status page.
    pub outages: Arc<crate::jobs::outage::Outages>,
}

/// Builds the main router: webhooks, the jobs API (behind `api_guard`),
/// health, readiness and, unless `server.metrics_listen` moves them,
/// metrics.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/v1/jobs", get(jobs_api::list_jobs))
        .route("/api/v1/jobs/{id}", get(jobs_api::get_job))
        .route("/api/v1/jobs/{id}/retry", post(jobs_api::retry_job))
        .route("/api/v1/jobs/{id}/cancel", post(jobs_api::cancel_job))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api_guard,
        ));
    let mut r = Router::new()
        .route(
            "/webhooks/harbor",
            post(webhook::harbor_webhook).fallback(only_post),
        )
        .route(
            "/webhooks/distribution",
            post(webhook::distribution_webhook).fallback(only_post),
        )
        .merge(api)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(page::front))
        .route("/jobs/{id}", get(page::job));
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

/// Any method but `POST` on a webhook endpoint (someone trying the URL in
/// a browser or with curl): `405` with `Allow: POST` and what to do.
async fn only_post() -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "this is a webhook endpoint: Harbor POSTs its events here (set it up in a project's Webhooks tab, or with `harbor-relay harbor register-webhook`); to look at the relay, GET /healthz or /api/v1/jobs",
    );
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    r
}

/// Compares the presented `Authorization` header with the configured one
/// in time that does not depend on where they differ.
/// Why a presented `Authorization` header was refused, without echoing it
/// or what was expected: missing, the `Bearer ` prefix missing or in another
/// case, or simply not matching. Called only after [`authorized`] said no;
/// the secret part is compared in constant time here too.
fn why_refused(expected: &Secret, headers: &HeaderMap) -> &'static str {
    let Some(presented) = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) else {
        return "no Authorization header was sent";
    };
    let expected = expected.expose().as_bytes();
    let split = |b: &'static [u8], v: &[u8]| -> Option<usize> {
        (v.len() >= b.len() && v[..b.len()].eq_ignore_ascii_case(b)).then_some(b.len())
    };
    let prefix = b"Bearer ";
    match (split(prefix, expected), split(prefix, presented)) {
        (Some(n), None) if bool::from(presented.ct_eq(&expected[n..])) => {
            "the header lacks the 'Bearer ' prefix that server.webhook_auth has"
        }
        (Some(n), Some(m))
            if presented[..m] != expected[..n]
                && bool::from(presented[m..].ct_eq(&expected[n..])) =>
        {
            "the header's 'Bearer' prefix is written in another case"
        }
        _ => "the header does not match server.webhook_auth",
    }
}

fn authorized(expected: &Secret, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    bool::from(presented.ct_eq(expected.expose().as_bytes()))
}

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
            if let Some(mark) = req.extensions().get::<ConnMark>() {
                mark.authenticated();
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

/// Ready to take webhooks and run jobs: the store is open (it is, for as
/// long as the server runs) and every worker is running. `503` with the
/// reason otherwise, e.g. while stopping.
async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let problem = app.readiness.problem().or_else(|| {
        app.store
            .problem()
            .map(|why| format!("the job store: {why}"))
    });
    match problem {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => error(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    app.metrics.queue_depth.set(app.store.queued() as i64);
    app.metrics.jobs_running.set(app.store.running() as i64);
    app.metrics.jobs_retrying.set(app.store.retrying() as i64);
    app.metrics.store_size.set(app.store.size_on_disk() as i64);
    if let Some(pg) = app.store.postgres() {
        app.metrics.leases_held.set(pg.leases_held() as i64);
        let seen = app.metrics.lease_takeovers.get();
        app.metrics
            .lease_takeovers
            .inc_by(pg.takeovers().saturating_sub(seen));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&app.live.get().registries),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = v {
            h.insert(header::AUTHORIZATION, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn a_refused_webhook_header_is_explained_without_echoing_it() {
        let s = Secret::new("Bearer s3cret");
        assert_eq!(
            why_refused(&s, &with(None)),
            "no Authorization header was sent"
        );
        assert!(why_refused(&s, &with(Some("s3cret"))).contains("lacks the 'Bearer ' prefix"));
        assert!(why_refused(&s, &with(Some("bearer s3cret"))).contains("another case"));
        for wrong in ["Bearer nope", "bearer nope", "nope"] {
            let why = why_refused(&s, &with(Some(wrong)));
            assert_eq!(
                why, "the header does not match server.webhook_auth",
                "{wrong}"
            );
        }
        assert!(authorized(&s, &with(Some("Bearer s3cret"))));
    }
}
