//! `harbor-relay jobs`: a client of the daemon's jobs API. It reads the
//! same [`JobView`] the API writes, so the two cannot drift apart.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;

use harbor_relay::advice::Advice;
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
    // The commands this prints reach the same relay the same way.
    let advice = match (&url, &config) {
        (None, Some(c)) => Advice::for_config(c),
        _ => Advice::for_url(&base),
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
        JobsAction::List { state, limit, json } => {
            let mut req = api
                .http
                .get(format!("{base}/api/v1/jobs"))
                .query(&[("limit", limit.to_string())]);
            if let Some(s) = state {
                req = req.query(&[("state", s)]);
            }
            let list: JobList = api.call(req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list.jobs)?);
            } else {
                print!("{}", list_table(&list.jobs));
            }
        }
        JobsAction::Show { id, json } => {
            let job: JobView = api
                .call(api.http.get(format!("{base}/api/v1/jobs/{id}")))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print!("{}", show(&job, &advice));
            }
        }
        JobsAction::Retry { id } => {
            let job: JobView = api
                .call(api.http.post(format!("{base}/api/v1/jobs/{id}/retry")))
                .await?;
            println!("job {id} queued again ({})", job.source);
        }
        JobsAction::Cancel { id } => {
            let answer: serde_json::Value = api
                .call(api.http.post(format!("{base}/api/v1/jobs/{id}/cancel")))
                .await?;
            match answer["cancelling"].as_bool() {
                Some(true) => println!(
                    "job {id} is stopping: its uploads are cancelled and it fails as cancelled (`harbor-relay jobs show {id}` to see it)"
                ),
                _ => println!(
                    "job {id} cancelled ({})",
                    answer["source"].as_str().unwrap_or_default()
                ),
            }
        }
    }
    Ok(())
}

/// Bytes as people read them.
fn size(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// A job's error or note for one table cell: digests shortened to their
/// first 12 hex digits (the part people compare), so the message's hint at
/// its end still fits; past 160 characters it is cut, pointing at `jobs
/// show`, which prints it whole.
fn brief(text: &str, id: u64) -> String {
    const MAX: usize = 160;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sha256:") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let hex: String = from[7..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        if hex.len() == 64 {
            out.push_str(&format!("sha256:{}…", &hex[..12]));
            rest = &from[7 + 64..];
        } else {
            out.push_str("sha256:");
            rest = &from[7..];
        }
    }
    out.push_str(rest);
    if out.chars().count() <= MAX {
        return out;
    }
    let cut: String = out.chars().take(MAX).collect();
    format!("{cut}… (harbor-relay jobs show {id})")
}

/// The job list as a table whose columns line up with their header.
fn list_table(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "(no jobs)\n".into();
    }
    let rows: Vec<[String; 8]> = jobs
        .iter()
        .map(|j| {
            [
                j.id.to_string(),
                j.state.clone(),
                j.attempts.to_string(),
                j.rule.clone(),
                format!("{} -> {}", j.source, j.target),
                size(j.bytes_copied),
                j.duration_seconds
                    .map(|s| format!("{s:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                brief(
                    j.last_error
                        .as_deref()
                        .or(j.skipped.as_deref())
                        .unwrap_or(""),
                    j.id,
                ),
            ]
        })
        .collect();
    let header = [
        "ID",
        "STATE",
        "TRY",
        "RULE",
        "SOURCE -> TARGET",
        "BYTES",
        "TIME",
        "LAST ERROR / NOTE",
    ];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i == cells.len() - 1 {
                out.push_str(c);
            } else if i == 0 || i == 2 || i == 5 || i == 6 {
                out.push_str(&format!("{c:>w$}  "));
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for r in &rows {
        out.push_str(&line(r.each_ref().map(String::as_str)));
    }
    out
}

/// One job, for a person: what, where it is, when, what it moved, why it
/// failed.
fn show(j: &JobView, advice: &Advice) -> String {
    let mut out = format!("job {}: {} ({})\n", j.id, j.state, j.action);
    let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<12} {v}\n"));
    row("rule", j.rule.clone());
    row("source", j.source.clone());
    row("target", j.target.clone());
    if let Some(d) = &j.digest {
        row("digest", d.clone());
    }
    row(
        "attempts",
        format!(
            "{} (folded in: {} more deliveries)",
            j.attempts, j.coalesced
        ),
    );
    for (k, v) in [
        ("created", &j.created_at),
        ("started", &j.started_at),
        ("finished", &j.finished_at),
        ("next try", &j.next_attempt_at),
    ] {
        if let Some(v) = v {
            row(k, v.clone());
        }
    }
    if let Some(s) = j.duration_seconds {
        row("took", format!("{s:.2}s"));
    }
    if let Some(r) = &j.relay {
        row("relay", r.clone());
    }
    row(
        "blobs",
        format!(
            "{} copied, {} already there, {} mounted, {} resumed",
            j.blobs_copied, j.blobs_skipped, j.blobs_mounted, j.blobs_resumed
        ),
    );
    row("bytes", size(j.bytes_copied));
    row(
        "manifests",
        format!(
            "{} written, {} referrers copied",
            j.manifests_copied, j.referrers_copied
        ),
    );
    for (k, v) in [
        ("skipped", &j.skipped),
        ("note", &j.note),
        ("last error", &j.last_error),
    ] {
        if let Some(v) = v {
            row(k, v.clone());
        }
    }
    if j.state == "failed" {
        row("retry with", advice.retry(j.id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_cell_keeps_its_hint_and_shortens_digests() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let e = format!(
            "copying blob {d}: reading from source 'external' failed: digest mismatch; the source serves other bytes"
        );
        let b = brief(&e, 7);
        assert!(b.contains("sha256:abababababab…"), "{b}");
        assert!(!b.contains(&d), "{b}");
        assert!(b.ends_with("the source serves other bytes"), "{b}");
        let long = "x".repeat(500);
        let b = brief(&long, 7);
        assert!(b.ends_with("… (harbor-relay jobs show 7)"), "{b}");
        assert_eq!(brief("sha256:abc short", 1), "sha256:abc short");
    }

    fn job(id: u64, error: Option<&str>) -> JobView {
        serde_json::from_value(serde_json::json!({
            "id": id, "state": if error.is_some() { "failed" } else { "succeeded" },
            "action": "copy", "rule": "tanzu",
            "source": "external/library/app:1", "target": "integrated/library/app:1",
            "source_registry": "external", "source_repository": "library/app",
            "target_registry": "integrated", "target_repository": "library/app",
            "reference": "1", "event_digest": null, "attempts": 1, "coalesced": 0,
            "created_at": "2026-11-30T10:00:00.000Z", "started_at": null, "finished_at": null,
            "next_attempt_at": null, "duration_seconds": 1.25, "digest": null,
            "bytes_copied": 3_500_000, "blobs_copied": 2, "blobs_skipped": 0, "blobs_mounted": 0,
            "blobs_resumed": 0, "manifests_copied": 1, "referrers_copied": 0, "deleted": false,
            "skipped": null, "note": null, "last_error": error,
        }))
        .expect("view")
    }

    #[test]
    fn the_list_lines_up_and_shows_bytes_and_time() {
        let t = list_table(&[job(7, None), job(1234, Some("registry 'integrated': boom"))]);
        let lines: Vec<&str> = t.lines().collect();
        let col = |l: &str, what: &str| l.find(what).expect(what);
        assert_eq!(col(lines[0], "STATE"), col(lines[1], "succeeded"));
        assert_eq!(col(lines[0], "STATE"), col(lines[2], "failed"));
        assert!(
            lines[1].contains("3.3 MiB") && lines[1].contains("1.2s"),
            "{t}"
        );
        assert!(lines[2].ends_with("registry 'integrated': boom"), "{t}");
    }

    #[test]
    fn show_reads_as_a_record_with_the_retry_line() {
        let s = show(
            &job(9, Some("boom")),
            &Advice::for_url("http://127.0.0.1:8080"),
        );
        assert!(s.starts_with("job 9: failed (copy)"), "{s}");
        assert!(s.contains("bytes        3.3 MiB"), "{s}");
        assert!(
            s.contains("harbor-relay jobs --url http://127.0.0.1:8080 retry 9"),
            "{s}"
        );
    }
}
