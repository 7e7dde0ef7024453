//! The double's webhook deliveries: after its registry took a manifest
//! `PUT`, it sends `PUSH_ARTIFACT` to every enabled policy of the project
//! that asks for it, as Harbor does, and records each delivery as an
//! execution (what `check` reads back).
//!
//! From Harbor's source (`shared/research/harbor.md` §1):
//! - the event is fired by `putManifest` (src/server/registry/manifest.go),
//!   one per manifest `PUT`, tag or digest;
//! - the payload is `constructArtifactPayload`
//!   (src/controller/event/handler/webhook/artifact/artifact.go): one
//!   resource, `tag` the pushed tag or else the digest, `resource_url`
//!   `<host>/<repo>:<tag>` (or `@digest`), `operator` the caller;
//! - Default is `application/json`, CloudEvents 1.0 structured mode
//!   `application/cloudevents+json` (src/pkg/notifier/formats/);
//! - the policy's `auth_header` goes as `Authorization`
//!   (src/jobservice/job/impl/notification/webhook_job.go).

use super::*;
use crate::support::harbor_auth::Caller;

/// What the observer saw: a manifest `PUT` the registry accepted, with who
/// made it.
pub(super) fn pushed(
    st: &St,
    method: &str,
    path: &str,
    status: u16,
    headers: &HeaderMap,
    host: &str,
) {
    if method != "PUT" || status != 201 {
        return;
    }
    let path = path.split('?').next().unwrap_or(path);
    let Some((repo, reference)) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.rsplit_once("/manifests/"))
    else {
        return;
    };
    let operator = match st.auth.caller(headers) {
        Caller::User(u, _) => u,
        Caller::Token { subject, .. } => subject,
        Caller::Anonymous => "anonymous".into(),
    };
    let digest = headers_digest(reference);
    let event = Push {
        repo: repo.to_string(),
        reference: reference.to_string(),
        digest,
        operator,
        host: host.to_string(),
    };
    let st = st.clone();
    tokio::spawn(async move { deliver(&st, event).await });
}

/// The digest, when the push was by digest (by tag, it is asked of the
/// registry when the payload is made).
fn headers_digest(reference: &str) -> Option<String> {
    reference
        .starts_with("sha256:")
        .then(|| reference.to_string())
}

struct Push {
    repo: String,
    reference: String,
    digest: Option<String>,
    operator: String,
    host: String,
}

/// Sends the event to each enabled policy of the project with
/// `PUSH_ARTIFACT`, recording an execution per target.
async fn deliver(st: &St, push: Push) {
    let project = push.repo.split('/').next().unwrap_or_default().to_string();
    let policies = super::webhooks::policies_of(st, &project);
    let digest = match &push.digest {
        Some(d) => d.clone(),
        None => manifest_digest(st, &push.repo, &push.reference).await,
    };
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    for policy in policies.iter().filter(|p| wants_push(p)) {
        let id = policy["id"].as_u64().unwrap_or_default();
        for target in policy["targets"].as_array().into_iter().flatten() {
            let cloud = target["payload_format"] == "CloudEvents";
            let body = payload(&push, &digest, cloud, id);
            let mut req = http
                .post(target["address"].as_str().unwrap_or_default())
                .header(
                    "content-type",
                    if cloud {
                        "application/cloudevents+json"
                    } else {
                        "application/json"
                    },
                )
                .body(body.to_string());
            if let Some(auth) = target["auth_header"].as_str().filter(|a| !a.is_empty()) {
                req = req.header("authorization", auth);
            }
            let (status, message) = match req.send().await {
                Ok(r) if r.status().is_success() => ("Success", String::new()),
                Ok(r) => ("Error", format!("status {}", r.status().as_u16())),
                Err(e) => ("Error", e.to_string()),
            };
            record(st, id, status, &message);
        }
    }
}

fn wants_push(policy: &Value) -> bool {
    policy["enabled"] != false
        && policy["event_types"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "PUSH_ARTIFACT"))
}

/// The digest the registry behind holds for `repo:reference`.
async fn manifest_digest(st: &St, repo: &str, reference: &str) -> String {
    let r = reqwest::Client::new()
        .head(format!("{}/v2/{repo}/manifests/{reference}", st.upstream))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .await
        .expect("head manifest");
    r.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The event body in the policy's format.
fn payload(push: &Push, digest: &str, cloud: bool, policy: u64) -> Value {
    let (namespace, name) = push.repo.split_once('/').unwrap_or((&push.repo, ""));
    let by_digest = push.reference.starts_with("sha256:");
    let resource_url = if by_digest {
        format!("{}/{}@{}", push.host, push.repo, push.reference)
    } else {
        format!("{}/{}:{}", push.host, push.repo, push.reference)
    };
    let data = json!({
        "resources": [{"digest": digest, "tag": push.reference, "resource_url": resource_url}],
        "repository": {
            "date_created": now_secs(), "name": name, "namespace": namespace,
            "repo_full_name": push.repo, "repo_type": "private"
        }
    });
    if cloud {
        json!({
            "specversion": "1.0", "id": format!("{policy}-{}", now_secs()),
            "source": format!("/projects/1/webhook/policies/{policy}"),
            "type": "harbor.artifact.pushed", "datacontenttype": "application/json",
            "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "operator": push.operator, "data": data
        })
    } else {
        json!({"type": "PUSH_ARTIFACT", "occur_at": now_secs(), "operator": push.operator, "event_data": data})
    }
}

fn now_secs() -> u64 {
    super::super::harbor_auth::now()
}

/// One execution of the policy, newest first, as ListExecutions answers.
fn record(st: &St, policy: u64, status: &str, message: &str) {
    let mut all = st.executions.lock().expect("executions");
    let list = all.entry(policy).or_default();
    let id = list.len() as u64 + 1;
    list.insert(
        0,
        json!({
            "id": id, "vendor_type": "WEBHOOK", "vendor_id": policy, "status": status,
            "status_message": message, "trigger": "EVENT",
            "extra_attrs": {"event_type": "PUSH_ARTIFACT"},
            "start_time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }),
    );
}
