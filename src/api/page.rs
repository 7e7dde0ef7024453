//! The status page: `GET /` (what the relay is doing, at a glance) and
//! `GET /jobs/{id}` (one job). Server-rendered HTML (`maud` escapes every
//! value, including names and errors that came from webhooks and
//! registries), no script but a meta refresh, the same data as
//! `/api/v1/*`, and never a secret.
//!
//! With `server.api_token` set the pages ask for it the way a browser can
//! answer: HTTP Basic, any user name, the token as the password (or the
//! API's `Authorization: Bearer`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use maud::{DOCTYPE, Markup, html};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::jobs::{JobState, JobView};

/// Failed jobs shown on the front page.
const FAILURES_SHOWN: usize = 10;

/// Waiting jobs the embedded store looks at for the backlog per site.
const BACKLOG_SCAN: usize = 10_000;

/// True if the request may see the pages: no token configured, or the
/// token as a Bearer token or as the password of Basic auth.
fn allowed(app: &AppState, headers: &HeaderMap) -> bool {
    let live = app.live.get();
    let Some(token) = live.config.server.api_token.as_ref() else {
        return true;
    };
    let expected = token.expose().as_bytes();
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented: Vec<u8> = if let Some(b) = value.strip_prefix("Bearer ") {
        b.as_bytes().to_vec()
    } else if let Some(b) = value.strip_prefix("Basic ") {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
            return false;
        };
        match raw.iter().position(|&c| c == b':') {
            Some(i) => raw[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    bool::from(presented.ct_eq(expected))
}

fn ask_for_token() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"harbor-relay: any user name, the api_token as password\"",
        )],
        "this relay has server.api_token set: give it as the password (any user name)\n",
    )
        .into_response()
}

/// The page's Content-Security-Policy: nothing loads, nothing runs, no
/// form posts, no frame holds it; only its own inline style applies (by
/// hash), so an artifact or error text that got past escaping could still
/// not run anything.
fn content_security_policy() -> &'static str {
    static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use sha2::Digest as _;
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    });
    &CSP
}

/// A page with the headers every page carries (see
/// [`content_security_policy`]; `X-Frame-Options` for browsers that do not
/// read `frame-ancestors`).
fn layout(title: &str, body: Markup) -> Response {
    let headers = [
        (header::CONTENT_SECURITY_POLICY, content_security_policy()),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, Html(document(title, body))).into_response()
}

/// The page's HTML.
fn document(title: &str, body: Markup) -> String {
    html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta http-equiv="refresh" content="10";
                    title { (title) }
                    style { (maud::PreEscaped(STYLE)) }
                }
                body {
                    header { a href="/" { "harbor-relay" } " " span.muted { (env!("CARGO_PKG_VERSION")) } }
                    (body)
                }
            }
        }
        .into_string()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:.25em .8em;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}\
.muted{color:#777}.failed{color:#b00020}.ok{color:#1b5e20}code{background:#f4f4f4;padding:.1em .3em}h2{margin-top:1.2em}";

/// `GET /`: jobs by state, running jobs, the last failures, rules, registries.
pub(super) async fn front(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !allowed(&app, &headers) {
        return ask_for_token();
    }
    let live = app.live.get();
    let running = app
        .store
        .list(Some(JobState::Running), 50)
        .await
        .unwrap_or_default();
    let failed = app
        .store
        .list(Some(JobState::Failed), FAILURES_SHOWN)
        .await
        .unwrap_or_default();
    let held = app
        .store
        .list(Some(JobState::Held), FAILURES_SHOWN)
        .await
        .unwrap_or_default();
    let refused = app
        .store
        .list(Some(JobState::Refused), FAILURES_SHOWN)
        .await
        .unwrap_or_default();
    let waiting = app
        .store
        .waiting_by_target(BACKLOG_SCAN)
        .await
        .unwrap_or_default();
    let finished = |rule: &str, outcome: &str| app.metrics.jobs_finished_of(rule, outcome);
    let rules: Vec<&crate::config::RuleConfig> = live.config.rules.iter().collect();
    let total = |outcome: &str| -> u64 { rules.iter().map(|r| finished(&r.name, outcome)).sum() };
    let when = |secs: f64| {
        if secs <= 0.0 {
            "never".to_string()
        } else {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs),
            )
            .to_string()
        }
    };
    let uptime = humantime::format_duration(std::time::Duration::from_secs(
        app.started.elapsed().as_secs(),
    ));
    let body = html! {
        p.muted { "up " (uptime) " · refreshes every 10 s · " a href="/api/v1/jobs" { "JSON" } }
        h2 { "Jobs" }
        table {
            tr { th { "queued" } th { "running" } th { "retrying" } th { "held" } th { "successes since start" } th { "failures since start" } th { "refused since start" } }
            tr {
                td { (app.store.queued()) } td { (app.store.running()) } td { (app.store.retrying()) } td { (app.store.held()) }
                td.ok { (total("succeeded")) } td.failed { (total("failed")) } td.failed { (total("refused")) }
            }
        }
        p.muted { "queued, running, retrying, held (at a gate: waiting for a signature or a scan): jobs now; successes and failures: jobs finished since the relay started (a job retried and failing again counts each time; the failed jobs themselves are listed below). Job ids are unique and increasing, not consecutive: the embedded store's jump by about 2,000,000 at each start." }
        h2 { "Running" }
        (running_table(&running, &app.board))
        @if !held.is_empty() || !refused.is_empty() || rules.iter().any(|r| r.gates.is_some()) {
            h2 { "Held at a gate" }
            (gated_table(&held, "nothing is held"))
            h2 { "Refused at a gate" }
            (gated_table(&refused, "none"))
        }
        h2 { "Last failures" }
        (failures_table(&failed, &crate::advice::Advice::for_config(&live.config.file)))
        h2 { "Rules" }
        table {
            tr { th { "rule" } th { "from → to" } th { "succeeded" } th { "failed" } th { "last success" } th { "last reconcile" } }
            @for r in &rules {
                tr {
                    td { (r.name) }
                    td { (r.from) " → " (r.to.join(", ")) }
                    td { (finished(&r.name, "succeeded")) }
                    td { (finished(&r.name, "failed")) }
                    td { (when(app.metrics.last_success.with_label_values(&[r.name.as_str()]).get())) }
                    td { @if r.reconcile_interval.is_some() {
                        (when(app.metrics.reconcile.last_pass.with_label_values(&[r.name.as_str()]).get()))
                    } @else { span.muted { "off" } } }
                }
            }
        }
        (sites_table(&rules, &waiting, &running, &app.metrics))
        (registries_table(&live, &app.outages))
    };
    layout("harbor-relay", body).into_response()
}

/// Each target the rules write to: its backlog (jobs waiting, and running
/// here) and how long pushes took to reach it (push to tag, since start).
fn sites_table(
    rules: &[&crate::config::RuleConfig],
    waiting: &std::collections::BTreeMap<String, usize>,
    running: &[crate::jobs::Job],
    metrics: &crate::metrics::Metrics,
) -> Markup {
    let mut sites: Vec<&str> = rules
        .iter()
        .flat_map(|r| r.to.iter().map(String::as_str))
        .collect();
    sites.sort_unstable();
    sites.dedup();
    let lag = |site: &str| {
        let h = metrics.replication_lag.with_label_values(&[site]);
        let n = h.get_sample_count();
        match n {
            0 => ("—".to_string(), 0),
            _ => (format!("{:.1} s", h.get_sample_sum() / n as f64), n),
        }
    };
    html! {
        h2 { "Sites" }
        table {
            tr { th { "target" } th { "waiting" } th { "running" } th { "replicated since start" } th title="from the push (the event's time) to the tag on this target" { "mean lag" } }
            @for site in &sites {
                @let (mean, n) = lag(site);
                tr {
                    td { (site) }
                    td { (waiting.get(*site).copied().unwrap_or(0)) }
                    td { (running.iter().filter(|j| j.spec.to == *site).count()) }
                    td { (n) }
                    td { (mean) }
                }
            }
        }
        p.muted { "waiting: queued, retrying or held for this target; lag: the event's time to the tag on the target, for jobs that carried one" }
    }
}

/// The jobs being copied, with the bytes moved so far and, on a shared
/// store, the relay that runs each.
fn running_table(running: &[crate::jobs::Job], board: &crate::jobs::workers::Board) -> Markup {
    let fleet = running.iter().any(|j| j.relay.is_some());
    html! {
        @if running.is_empty() { p.muted { "nothing is being copied" } }
        @else {
            table {
                tr { th { "job" } th { "source → target" } th { "attempt" } th { "started" } th { "moved so far" } @if fleet { th { "relay" } } }
                @for j in running.iter().map(JobView::from) {
                    tr {
                        td { a href={ "/jobs/" (j.id) } { (j.id) } }
                        td { (j.source) " → " (j.target) }
                        td { (j.attempts) }
                        td { (j.started_at.clone().unwrap_or_default()) }
                        td { (board.moved(j.id).map(|b| bytesize::ByteSize::b(b).display().iec().to_string()).unwrap_or_else(|| "—".into())) }
                        @if fleet { td { (j.relay.clone().unwrap_or_default()) } }
                    }
                }
            }
        }
    }
}

/// The latest failed jobs, each with the command that retries it.
fn failures_table(failed: &[crate::jobs::Job], advice: &crate::advice::Advice) -> Markup {
    html! {
        @if failed.is_empty() { p.muted { "none" } }
        @else {
            table {
                tr { th { "job" } th { "source → target" } th { "error" } th { "retry" } }
                @for j in failed.iter().map(JobView::from) {
                    tr {
                        td { a href={ "/jobs/" (j.id) } { (j.id) } }
                        td { (j.source) " → " (j.target) }
                        td.failed { (j.last_error.unwrap_or_default()) }
                        td { code { (advice.retry(j.id)) } }
                    }
                }
            }
        }
    }
}

/// Held or refused jobs with the gate's reason: what each waits for (and
/// since when, and when it looks again by itself), or why it was refused.
fn gated_table(jobs: &[crate::jobs::Job], empty: &str) -> Markup {
    html! {
        @if jobs.is_empty() { p.muted { (empty) } }
        @else {
            table {
                tr { th { "job" } th { "source → target" } th { "reason" } th { "since" } th { "looks again" } }
                @for j in jobs.iter().map(JobView::from) {
                    tr {
                        td { a href={ "/jobs/" (j.id) } { (j.id) } }
                        td { (j.source) " → " (j.target) }
                        td { (j.reason.unwrap_or_default()) }
                        td { (j.held_since.or(j.finished_at).unwrap_or_default()) }
                        td { (j.next_attempt_at.unwrap_or_else(|| "never".into())) }
                    }
                }
            }
        }
    }
}

/// Each registry with its requests, retries, 429s and errors.
fn registries_table(live: &crate::live::Live, outages: &crate::jobs::outage::Outages) -> Markup {
    let mut registries: Vec<(&String, &crate::registry::Registry)> =
        live.registries.iter().collect();
    registries.sort_by_key(|(n, _)| n.as_str());
    html! {
            h2 { "Registries" }
            table {
                tr { th { "registry" } th { "state" } th { "url" } th title="adaptive: grows while used, cut on 429, 503 or slow answers" { "requests at once" } th { "requests" } th { "retries" } th { "429s" } th { "errors" } }
                @for (name, reg) in &registries {
                    @let s = reg.stats();
                    tr {
                        td { (name) }
                        @match outages.down_since(name) {
                            Some(since) => td.failed { "down since " (humantime::format_rfc3339_seconds(since)) "; one probe watches it" },
                            None => td.ok { "up" },
                        }
                        td { (live.config.registries.get(*name).map(|c| c.url.to_string()).unwrap_or_default()) }
                        td { (reg.concurrency()) " (cut " (s.concurrency_lowered.load(std::sync::atomic::Ordering::Relaxed)) "×)" }
                        td { (s.requests.load(std::sync::atomic::Ordering::Relaxed)) }
                        td { (s.retries.load(std::sync::atomic::Ordering::Relaxed)) }
                        td { (s.throttled.load(std::sync::atomic::Ordering::Relaxed)) }
                        td { (s.errors.load(std::sync::atomic::Ordering::Relaxed)) }
                    }
                }
            }
    }
}

/// `GET /jobs/{id}`: one job's record.
pub(super) async fn job(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !allowed(&app, &headers) {
        return ask_for_token();
    }
    let Ok(id) = id.parse::<u64>() else {
        return (StatusCode::BAD_REQUEST, "a job id is a number\n").into_response();
    };
    let advice = crate::advice::Advice::for_config(&app.live.get().config.file);
    match app.store.get(id).await {
        Ok(Some(j)) => {
            layout(&format!("job {id}"), job_body(&JobView::from(&j), &advice)).into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, format!("no job {id}\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// The record of one job.
fn job_body(j: &JobView, advice: &crate::advice::Advice) -> Markup {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
    html! {
        h2 { "Job " (j.id) ": " span class=(if j.state == "failed" { "failed" } else { "" }) { (j.state) } }
        table {
            tr { th { "rule" } td { (j.rule) } }
            tr { th { "action" } td { (j.action) } }
            tr { th { "source" } td { (j.source) } }
            tr { th { "target" } td { (j.target) } }
            tr { th { "digest" } td { (opt(&j.digest)) } }
            tr { th { "attempts" } td { (j.attempts) " (deliveries folded in: " (j.coalesced) ")" } }
            tr { th { "created" } td { (opt(&j.created_at)) } }
            tr { th { "started" } td { (opt(&j.started_at)) } }
            tr { th { "finished" } td { (opt(&j.finished_at)) } }
            tr { th { "next attempt" } td { (opt(&j.next_attempt_at)) } }
            @if let Some(r) = &j.relay { tr { th { "relay" } td { (r) } } }
            tr { th { "blobs" } td { (j.blobs_copied) " copied, " (j.blobs_skipped) " already there, " (j.blobs_mounted) " mounted, " (j.blobs_resumed) " resumed" } }
            tr { th { "bytes" } td { (bytesize::ByteSize::b(j.bytes_copied).display().iec()) } }
            tr { th { "manifests" } td { (j.manifests_copied) " written, " (j.referrers_copied) " referrers" } }
            @if let Some(s) = &j.skipped { tr { th { "skipped" } td { (s) } } }
            @if let Some(n) = &j.note { tr { th { "note" } td { (n) } } }
            @if let Some(e) = &j.last_error { tr { th { "last error" } td.failed { (e) } } }
        }
        @if j.state == "failed" { p { "Retry: " code { (advice.retry(j.id)) } } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_webhooks_and_registries_are_escaped() {
        let hostile = "<script>alert(1)</script>\"'&";
        let j: JobView = serde_json::from_value(serde_json::json!({
            "id": 3, "state": "failed", "action": "copy", "rule": hostile,
            "source": format!("external/{hostile}"), "target": "integrated/x:1",
            "source_registry": "external", "source_repository": hostile,
            "target_registry": "integrated", "target_repository": "x",
            "reference": "1", "event_digest": null, "attempts": 1, "coalesced": 0,
            "created_at": null, "started_at": null, "finished_at": null,
            "next_attempt_at": null, "duration_seconds": null, "digest": null,
            "bytes_copied": 0, "blobs_copied": 0, "blobs_skipped": 0, "blobs_mounted": 0,
            "blobs_resumed": 0, "manifests_copied": 0, "referrers_copied": 0, "deleted": false,
            "skipped": null, "note": hostile, "last_error": format!("registry said {hostile}"),
        }))
        .expect("view");
        let advice = crate::advice::Advice::for_url("http://127.0.0.1:8080");
        let page = document("t", job_body(&j, &advice));
        assert!(!page.contains("<script>"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("harbor-relay jobs --url http://127.0.0.1:8080 retry 3"));
    }
}
