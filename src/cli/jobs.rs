//! `harbor-relay jobs`: a client of the daemon's jobs API. It reads the
//! same [`JobView`] the API writes, so the two cannot drift apart.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;

use harbor_relay::jobs::JobView;

use super::args::JobsAction;

/// The daemon's jobs API at `base`, with the token if there is one.
struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// Sends `req` and reads the answer as `T`; an error status becomes
    /// an error carrying the daemon's message.
    async fn call<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach harbor-relay at {}", self.base))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.context("reading the answer")?;
        if !status.is_success() {
            bail!(
                "{}: {}",
                status,
                body["error"].as_str().unwrap_or("request failed")
            );
        }
        serde_json::from_value(body).context("the answer is not a job")
    }
}

#[derive(serde::Deserialize)]
struct JobList {
    jobs: Vec<JobView>,
}

/// Runs `harbor-relay jobs …`.
pub async fn run(
    url: Option<String>,
    config: Option<PathBuf>,
    token: Option<String>,
    action: JobsAction,
) -> anyhow::Result<()> {
    let base = match (&url, &config) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(c)) => harbor_relay::config::api_url(c)?,
        (None, None) => "http://127.0.0.1:8080".to_string(),
    };
    // The daemon's own token, read from its config as the daemon reads it
    // (api_token or api_token_file, CREDENTIALS_DIRECTORY included), unless
    // one was given.
    let token = match (token, &config) {
        (Some(t), _) => Some(t),
        (None, Some(c)) => harbor_relay::config::api_token(c)?.map(|s| s.expose().to_string()),
        (None, None) => None,
    };
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
        base,
        token,
    };
    let base = &api.base;
    match action {
        JobsAction::List { state, limit } => {
            let mut req = api
                .http
                .get(format!("{base}/api/v1/jobs"))
                .query(&[("limit", limit.to_string())]);
            if let Some(s) = state {
                req = req.query(&[("state", s)]);
            }
            let list: JobList = api.call(req).await?;
            print_list(&list.jobs);
        }
        JobsAction::Show { id } => {
            let job: JobView = api
                .call(api.http.get(format!("{base}/api/v1/jobs/{id}")))
                .await?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobsAction::Retry { id } => {
            let job: JobView = api
                .call(api.http.post(format!("{base}/api/v1/jobs/{id}/retry")))
                .await?;
            println!("job {id} queued again ({})", job.source);
        }
    }
    Ok(())
}

fn print_list(jobs: &[JobView]) {
    println!(
        "{:>6}  {:<9}  {:>3}  {:<20}  {:<50}  LAST ERROR",
        "ID", "STATE", "TRY", "RULE", "SOURCE -> TARGET"
    );
    for j in jobs {
        println!(
            "{:>6}  {:<9}  {:>3}  {:<20}  {:<50}  {}",
            j.id,
            j.state,
            j.attempts,
            j.rule,
            format!("{} -> {}", j.source, j.target),
            j.last_error.as_deref().unwrap_or("")
        );
    }
    if jobs.is_empty() {
        println!("(no jobs)");
    }
}
