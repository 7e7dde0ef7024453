//! Turning a webhook body into an [`Event`]: Harbor's Default payload and its
//! CloudEvents (structured mode) payload.
//!
//! Pure functions, no I/O: easy to test against the fixtures and to fuzz.
//! Everything a later step puts into a URL (repository, tag, digest) is
//! validated here against the OCI grammar, so nothing hostile gets further.

use serde::Deserialize;

use crate::reference::{self, Reference};

/// Which of Harbor's two webhook payload formats a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Content-Type: application/json`, Harbor's "Default" format.
    Default,
    /// `Content-Type: application/cloudevents+json`, structured CloudEvents 1.0.
    CloudEvents,
    /// CNCF distribution's notifications
    /// (`application/vnd.docker.distribution.events.v1+json`).
    Distribution,
}

impl Format {
    /// The label used in metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Default => "default",
            Format::CloudEvents => "cloudevents",
            Format::Distribution => "distribution",
        }
    }
}

/// What happened to an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `PUSH_ARTIFACT` / `harbor.artifact.pushed`.
    Push,
    /// `DELETE_ARTIFACT` / `harbor.artifact.deleted`.
    Delete,
    /// `SCANNING_COMPLETED`, `_FAILED`, `_STOPPED` / `harbor.scan.*`: a
    /// scan of the artifact settled. Nothing is copied for it; it releases
    /// the held jobs of its repository to look at their gates again (Harbor
    /// sends one per scanned child of an index and none for the index,
    /// `src/controller/event/handler/webhook/scan/scan.go`).
    Scan,
}

/// One artifact named by an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The tag it was pushed with, or its digest when pushed by digest.
    pub reference: Reference,
    /// The manifest digest Harbor reported.
    pub digest: Option<String>,
}

/// A validated artifact event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Push or delete.
    pub kind: EventKind,
    /// The Harbor project (first path component of the repository).
    pub project: String,
    /// The full repository path, e.g. `team-a/platform/api`.
    pub repository: String,
    /// The artifacts (Harbor sends exactly one).
    pub artifacts: Vec<Artifact>,
    /// When Harbor saw the event, in Unix seconds.
    pub occurred_at: Option<i64>,
}

/// The outcome of parsing a well-formed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An artifact event the daemon acts on.
    Artifact(Event),
    /// A valid event of a type the daemon does not act on.
    Ignored {
        /// The event type as Harbor named it.
        event_type: String,
        /// Why nothing is done.
        reason: String,
    },
}

/// Why a body was refused (answered with `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or a field of the wrong type.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// A required field is absent.
    #[error("missing field {0}")]
    Missing(String),
    /// A field is present but its value is not acceptable.
    #[error("{field}: {problem}")]
    Invalid {
        /// The JSON path of the field.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// How many resources one event may name; Harbor sends one.
pub const MAX_RESOURCES: usize = 100;

#[derive(Deserialize)]
struct DefaultPayload {
    #[serde(rename = "type")]
    event_type: Option<String>,
    occur_at: Option<i64>,
    event_data: Option<EventData>,
}

#[derive(Deserialize)]
struct CloudEvent {
    specversion: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    time: Option<String>,
    data: Option<EventData>,
}

#[derive(Deserialize)]
struct EventData {
    resources: Option<Vec<Resource>>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct Resource {
    digest: Option<String>,
    tag: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    namespace: Option<String>,
    repo_full_name: Option<String>,
}

/// Parses a webhook body in the given format.
pub fn parse(format: Format, body: &[u8]) -> Result<Parsed, EventError> {
    match format {
        Format::Default => parse_default(body),
        Format::CloudEvents => parse_cloudevents(body),
        Format::Distribution => Err(EventError::Invalid {
            field: "Content-Type".into(),
            problem: "distribution notifications go to /webhooks/distribution".into(),
        }),
    }
}

#[derive(Deserialize)]
struct Envelope {
    events: Option<Vec<DistEvent>>,
}

#[derive(Deserialize)]
struct DistEvent {
    action: Option<String>,
    timestamp: Option<String>,
    target: Option<DistTarget>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DistTarget {
    media_type: Option<String>,
    digest: Option<String>,
    repository: Option<String>,
    tag: Option<String>,
}

/// Parses CNCF distribution's notifications envelope. Only manifest pushes
/// become events; blob pushes, pulls and deletes are dropped (the registry
/// sends them all). A repository without a `/` has an empty project.
pub fn parse_distribution(body: &[u8]) -> Result<Vec<Event>, EventError> {
    let env: Envelope = from_json(body)?;
    let events = env.events.ok_or_else(|| missing("events"))?;
    if events.len() > MAX_RESOURCES {
        return Err(EventError::Invalid {
            field: "events".into(),
            problem: format!(
                "{} events; at most {MAX_RESOURCES} are accepted",
                events.len()
            ),
        });
    }
    let mut out = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        let field = |f: &str| format!("events[{i}].{f}");
        if e.action.as_deref() != Some("push") {
            continue;
        }
        let Some(t) = e.target else {
            return Err(missing(&field("target")));
        };
        if !t
            .media_type
            .as_deref()
            .is_some_and(|m| crate::manifest::ACCEPTED.contains(&m))
        {
            continue;
        }
        let repository = t
            .repository
            .ok_or_else(|| missing(&field("target.repository")))?;
        reference::repository(&repository).map_err(|e| EventError::Invalid {
            field: field("target.repository"),
            problem: e.to_string(),
        })?;
        let digest = t.digest.ok_or_else(|| missing(&field("target.digest")))?;
        reference::digest(&digest).map_err(|e| EventError::Invalid {
            field: field("target.digest"),
            problem: e.to_string(),
        })?;
        let reference = match t.tag.filter(|t| !t.is_empty()) {
            Some(tag) => reference::tag(&tag).map_err(|e| EventError::Invalid {
                field: field("target.tag"),
                problem: e.to_string(),
            })?,
            None => Reference::Digest(digest.clone()),
        };
        let project = repository
            .split_once('/')
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        let occurred_at = e
            .timestamp
            .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
            .and_then(|st| st.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        out.push(Event {
            kind: EventKind::Push,
            project,
            repository,
            artifacts: vec![Artifact {
                reference,
                digest: Some(digest),
            }],
            occurred_at,
        });
    }
    Ok(out)
}

/// Parses Harbor's Default format.
pub fn parse_default(body: &[u8]) -> Result<Parsed, EventError> {
    let p: DefaultPayload = from_json(body)?;
    let event_type = p.event_type.ok_or_else(|| missing("type"))?;
    let kind = match event_type.as_str() {
        "PUSH_ARTIFACT" => EventKind::Push,
        "DELETE_ARTIFACT" => EventKind::Delete,
        "SCANNING_COMPLETED" | "SCANNING_FAILED" | "SCANNING_STOPPED" => EventKind::Scan,
        _ => return Ok(ignored(event_type)),
    };
    let data = p.event_data.ok_or_else(|| missing("event_data"))?;
    artifact_event(kind, data, "event_data", p.occur_at)
}

/// Parses Harbor's CloudEvents (structured mode) format.
pub fn parse_cloudevents(body: &[u8]) -> Result<Parsed, EventError> {
    let e: CloudEvent = from_json(body)?;
    let version = e.specversion.ok_or_else(|| missing("specversion"))?;
    if version != "1.0" {
        return Err(EventError::Invalid {
            field: "specversion".into(),
            problem: format!("'{version}' is not supported; expected \"1.0\""),
        });
    }
    let event_type = e.event_type.ok_or_else(|| missing("type"))?;
    let kind = match event_type.as_str() {
        "harbor.artifact.pushed" => EventKind::Push,
        "harbor.artifact.deleted" => EventKind::Delete,
        "harbor.scan.completed" | "harbor.scan.failed" | "harbor.scan.stopped" => EventKind::Scan,
        _ => return Ok(ignored(event_type)),
    };
    let occurred_at = match e.time {
        None => None,
        Some(t) => Some(
            humantime::parse_rfc3339_weak(&t)
                .ok()
                .and_then(|st| st.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .ok_or_else(|| EventError::Invalid {
                    field: "time".into(),
                    problem: format!("'{}' is not an RFC 3339 time", short(&t)),
                })?,
        ),
    };
    let data = e.data.ok_or_else(|| missing("data"))?;
    artifact_event(kind, data, "data", occurred_at)
}

fn from_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, EventError> {
    serde_json::from_slice(body).map_err(|e| EventError::Json(e.to_string()))
}

fn missing(field: &str) -> EventError {
    EventError::Missing(field.to_string())
}

fn ignored(event_type: String) -> Parsed {
    let reason = match event_type.as_str() {
        "PULL_ARTIFACT" | "harbor.artifact.pulled" => {
            "a pull changes nothing on the source, so there is nothing to replicate"
        }
        "REPLICATION" | "harbor.replication.status.changed" => {
            "Harbor's own replication status is not acted on"
        }
        "QUOTA_EXCEED" | "QUOTA_WARNING" | "harbor.quota.exceeded" | "harbor.quota.warned" => {
            "quota events are not acted on"
        }
        "TAG_RETENTION" | "harbor.tag_retention.finished" => {
            "tag retention runs are not acted on (deleted artifacts arrive as DELETE_ARTIFACT)"
        }
        _ => "only PUSH_ARTIFACT, DELETE_ARTIFACT and SCANNING_* events are acted on",
    };
    Parsed::Ignored {
        event_type: short(&event_type),
        reason: reason.to_string(),
    }
}

fn artifact_event(
    kind: EventKind,
    data: EventData,
    prefix: &str,
    occurred_at: Option<i64>,
) -> Result<Parsed, EventError> {
    let repo = data
        .repository
        .ok_or_else(|| missing(&format!("{prefix}.repository")))?;
    let full = repo
        .repo_full_name
        .ok_or_else(|| missing(&format!("{prefix}.repository.repo_full_name")))?;
    let field = format!("{prefix}.repository.repo_full_name");
    reference::repository(&full).map_err(|e| EventError::Invalid {
        field: field.clone(),
        problem: e.to_string(),
    })?;
    let Some((project, _)) = full.split_once('/') else {
        return Err(EventError::Invalid {
            field,
            problem: format!("'{full}' has no project: Harbor repositories are <project>/<name>"),
        });
    };
    if let Some(ns) = &repo.namespace
        && ns != project
    {
        return Err(EventError::Invalid {
            field: format!("{prefix}.repository.namespace"),
            problem: format!(
                "'{}' does not match the project of repo_full_name '{full}'",
                short(ns)
            ),
        });
    }

    let resources = data
        .resources
        .ok_or_else(|| missing(&format!("{prefix}.resources")))?;
    if resources.is_empty() {
        return Err(EventError::Invalid {
            field: format!("{prefix}.resources"),
            problem: "is empty: an artifact event names at least one artifact".into(),
        });
    }
    if resources.len() > MAX_RESOURCES {
        return Err(EventError::Invalid {
            field: format!("{prefix}.resources"),
            problem: format!(
                "{} resources; at most {MAX_RESOURCES} are accepted",
                resources.len()
            ),
        });
    }
    let artifacts = resources
        .into_iter()
        .enumerate()
        .map(|(i, r)| artifact(&format!("{prefix}.resources[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Parsed::Artifact(Event {
        kind,
        project: project.to_string(),
        repository: full,
        artifacts,
        occurred_at,
    }))
}

fn artifact(prefix: &str, r: Resource) -> Result<Artifact, EventError> {
    let invalid = |field: &str, e: reference::ReferenceError| EventError::Invalid {
        field: format!("{prefix}.{field}"),
        problem: e.to_string(),
    };
    let digest = match r.digest {
        Some(d) => match reference::digest(&d).map_err(|e| invalid("digest", e))? {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        },
        None => None,
    };
    // Harbor puts the digest into `tag` when an artifact was pushed by digest.
    let reference = match r.tag {
        Some(t) if t.contains(':') => {
            let r = reference::digest(&t).map_err(|e| invalid("tag", e))?;
            if let Some(d) = &digest
                && d != r.as_str()
            {
                return Err(EventError::Invalid {
                    field: format!("{prefix}.tag"),
                    problem: "holds a digest that differs from `digest`".into(),
                });
            }
            r
        }
        Some(t) => reference::tag(&t).map_err(|e| invalid("tag", e))?,
        None => match &digest {
            Some(d) => Reference::Digest(d.clone()),
            None => return Err(missing(&format!("{prefix}.digest"))),
        },
    };
    Ok(Artifact { reference, digest })
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests;
