//! Webhook ingest: the checks every delivery passes (rate limit 429, auth
//! 401, content type 415, size 413, payload 400), then events to jobs under
//! the rules (`jobs::plan`), stored before the `202`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, MAX_WEBHOOK_BYTES, authorized, error, why_refused};
use crate::event::{self, EventKind, Format, Parsed};

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

/// The refusal for a client over `server.webhook_rate_limit` (a `429`
/// with `Retry-After`), if it is.
fn over_rate(app: &AppState, parts: &axum::http::request::Parts) -> Option<Response> {
    let limiter = app.limiter.as_ref()?;
    let axum::extract::ConnectInfo(peer) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?;
    let prefix = app.live.get().config.server.ipv6_client_prefix;
    let client = super::client_key(peer.ip(), prefix);
    let not_until = limiter.check_key(&client).err()?;
    let wait = not_until
        .wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ))
        .as_secs()
        .max(1);
    tracing::warn!(%client, "webhook refused: over server.webhook_rate_limit");
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "more than server.webhook_rate_limit webhooks per second from {client}; retry in {wait}s"
        ),
    );
    if let Ok(v) = header::HeaderValue::from_str(&wait.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Some(resp)
}

/// The refusal for a request without `server.webhook_auth` (a `401`
/// saying what was wrong, counted in `auth_failures`), if it lacks it.
fn unauthorized(app: &AppState, parts: &axum::http::request::Parts) -> Option<Response> {
    let live = app.live.get();
    let secret = live.webhook_auth()?;
    if authorized(secret, &parts.headers) {
        return None;
    }
    app.metrics
        .auth_failures
        .with_label_values(&["webhook"])
        .inc();
    let why = why_refused(secret, &parts.headers);
    let client = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    // The caller is told only that it is not authorized: what was wrong
    // (a missing prefix, another case) says how the secret is shaped, so
    // it goes to the admin's log alone.
    tracing::warn!(%client, reason = why, "webhook refused: wrong Authorization header (Harbor's webhook Auth Header must equal server.webhook_auth)");
    Some(error(
        StatusCode::UNAUTHORIZED,
        "unauthorized: this webhook's Authorization header is not the one the relay expects (the relay's log says why)",
    ))
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
    let count = |outcome: &str| counted(app, label, outcome);
    // Authentication first: only an authenticated webhook is charged to
    // its client's rate budget (a flood of unauthenticated requests from
    // Harbor's address must not use up Harbor's), and its connection is
    // never closed to make room for another.
    if let Some(refused) = unauthorized(app, &parts).or_else(|| over_rate(app, &parts)) {
        count(if refused.status() == StatusCode::TOO_MANY_REQUESTS {
            "rate_limited"
        } else {
            "unauthorized"
        });
        return Err(refused);
    }
    if let Some(mark) = parts.extensions.get::<super::ConnMark>() {
        mark.authenticated();
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

pub(super) async fn harbor_webhook(State(app): State<Arc<AppState>>, req: Request) -> Response {
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
    let count = |outcome: &str| counted(&app, format.as_str(), outcome);
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
pub(super) async fn distribution_webhook(
    State(app): State<Arc<AppState>>,
    req: Request,
) -> Response {
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
    let count = |outcome: &str| counted(app, format.as_str(), outcome);
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
    let released = release(app, rules, &events).await;
    if specs.is_empty() && events.iter().all(|ev| ev.kind == EventKind::Scan) {
        count(if released > 0 { "released" } else { "ignored" });
        let repos: Vec<&str> = events.iter().map(|ev| ev.repository.as_str()).collect();
        return ignored(json!({
            "status": if released > 0 { "released" } else { "ignored" },
            "released": released,
            "reason": format!(
                "a scan copies nothing; it makes the held jobs of {} look at their gates again ({released} held)",
                repos.join(", ")
            ),
        }));
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
    store_jobs(app, format, specs, skipped, events.len()).await
}

/// An event of a repository a rule is about (a push: a signature, a
/// referrer; a settled scan) releases that repository's held jobs, which
/// look at their gates again: events are hints, never let through. Store
/// errors are logged, not answered: `gate_recheck` looks again anyway.
async fn release(app: &AppState, rules: &crate::rules::RuleSet, events: &[event::Event]) -> usize {
    let mut released = 0;
    let mut seen = std::collections::HashSet::new();
    for ev in events {
        if ev.kind == EventKind::Delete
            || !rules.covers(&ev.project, &ev.repository)
            || !seen.insert(ev.repository.as_str())
        {
            continue;
        }
        match app.store.release(&ev.repository).await {
            Ok(n) => released += n,
            Err(e) => {
                tracing::warn!(error = %e, repository = %ev.repository, "cannot release held jobs; gate_recheck will look again")
            }
        }
    }
    if released > 0 {
        tracing::info!(
            released,
            "held jobs released by an event of their repository"
        );
    }
    released
}

/// Stores the jobs a webhook asked for: `202` with their ids once they are
/// on disk; `503` with `Retry-After` when the queue is full; nothing stored
/// otherwise.
async fn store_jobs(
    app: &AppState,
    format: Format,
    specs: Vec<crate::jobs::JobSpec>,
    skipped: Vec<String>,
    events: usize,
) -> Response {
    let count = |outcome: &str| counted(app, format.as_str(), outcome);
    let described: Vec<(String, String)> =
        specs.iter().map(|s| (s.rule.clone(), s.target())).collect();
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
            tracing::info!(events, jobs = jobs.len(), "webhook accepted");
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

/// Counts a webhook in `harbor_relay_webhooks_received_total`.
fn counted(app: &AppState, format: &str, outcome: &str) {
    app.metrics
        .webhooks
        .with_label_values(&[format, outcome])
        .inc();
}
