//! The jobs API: `GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`,
//! `POST /api/v1/jobs/{id}/retry`, `POST /api/v1/jobs/{id}/cancel`, each
//! job as a [`JobView`].

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, error};
use crate::jobs::{CancelError, JobState, JobView, RetryError};

/// A job id from the path, or `400` saying it must be a number: one
/// check for every handler that takes `{id}`.
pub(super) struct JobId(u64);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for JobId {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<JobId, Response> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        raw.parse()
            .map(JobId)
            .map_err(|_| error(StatusCode::BAD_REQUEST, "job id must be a number"))
    }
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list_jobs(
    State(app): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Response {
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
    match app.store.list(state, limit).await {
        Ok(jobs) => {
            axum::Json(json!({ "jobs": jobs.iter().map(JobView::from).collect::<Vec<_>>() }))
                .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub(super) async fn get_job(State(app): State<Arc<AppState>>, JobId(id): JobId) -> Response {
    match app.store.get(id).await {
        Ok(Some(j)) => axum::Json(JobView::from(&j)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub(super) async fn retry_job(State(app): State<Arc<AppState>>, JobId(id): JobId) -> Response {
    match app.store.retry(id).await {
        Ok(j) => {
            tracing::info!(id, "failed job queued again by API request");
            app.metrics.queue_depth.set(app.store.queued() as i64);
            (StatusCode::ACCEPTED, axum::Json(JobView::from(&j))).into_response()
        }
        Err(e @ RetryError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ (RetryError::NotFailed { .. } | RetryError::Duplicate { .. })) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(RetryError::Store(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Cancels a job: a waiting one fails at once (`200`); one running on this
/// relay is told to stop, cancels its uploads and fails (`202`); one
/// running on another relay of the fleet is refused, naming it (`409`).
pub(super) async fn cancel_job(State(app): State<Arc<AppState>>, JobId(id): JobId) -> Response {
    let why = "cancelled by an operator (jobs cancel)";
    match app.store.cancel(id, why).await {
        Ok(j) => {
            tracing::info!(id, "waiting job cancelled by API request");
            app.metrics.queue_depth.set(app.store.queued() as i64);
            axum::Json(JobView::from(&j)).into_response()
        }
        Err(CancelError::Running { .. }) if app.board.cancel(id) => {
            tracing::info!(id, "running job told to stop by API request");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({
                    "id": id,
                    "state": "running",
                    "cancelling": true,
                    "message": format!("job {id} is stopping: its uploads are cancelled and it fails as cancelled"),
                })),
            )
                .into_response()
        }
        Err(CancelError::Running { relay, .. }) => error(
            StatusCode::CONFLICT,
            format!(
                "job {id} is running on {}, not on this relay: send the cancel to that relay",
                relay.unwrap_or_else(|| "another relay".into())
            ),
        ),
        Err(e @ CancelError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ CancelError::Finished { .. }) => error(StatusCode::CONFLICT, e.to_string()),
        Err(CancelError::Store(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
