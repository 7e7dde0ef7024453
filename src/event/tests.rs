//! Unit tests of the parent module.

use super::*;
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/harbor")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn event(p: Parsed) -> Event {
    match p {
        Parsed::Artifact(e) => e,
        other => panic!("expected an artifact event, got {other:?}"),
    }
}

const D947: &str = "sha256:947f187506f7629c81c81879a2cb2256455038e4ac770091d897fa0a8b945e3b";
const D586: &str = "sha256:5861314d7fccb39c2192173240eab44fa35ca66426201ca2acd0630a6258dd51";

#[test]
fn push_by_tag() {
    let e = event(parse_default(&fixture("push-by-tag.json")).expect("parses"));
    assert_eq!(e.kind, EventKind::Push);
    assert_eq!(e.project, "library");
    assert_eq!(e.repository, "library/nginx");
    assert_eq!(e.occurred_at, Some(1724572800));
    assert_eq!(
        e.artifacts,
        vec![Artifact {
            reference: Reference::Tag("1.4.2".into()),
            digest: Some(D947.into())
        }]
    );
}

#[test]
fn push_by_digest_into_nested_repository() {
    let e = event(parse_default(&fixture("push-by-digest-nested.json")).expect("parses"));
    assert_eq!(e.project, "team-a");
    assert_eq!(e.repository, "team-a/platform/api");
    assert_eq!(e.artifacts[0].reference, Reference::Digest(D586.into()));
}

#[test]
fn cloudevents_push() {
    let e = event(parse_cloudevents(&fixture("push-cloudevents.json")).expect("parses"));
    assert_eq!(e.kind, EventKind::Push);
    assert_eq!(e.repository, "library/nginx");
    assert_eq!(e.occurred_at, Some(1724572800));
    assert_eq!(e.artifacts[0].reference, Reference::Tag("1.4.2".into()));
}

#[test]
fn multiarch_sequence_parses_each_event() {
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&fixture("push-multiarch-sequence.json")).expect("json");
    let refs: Vec<Reference> = all
        .iter()
        .map(|v| {
            let body = serde_json::to_vec(v).expect("json");
            event(parse_default(&body).expect("parses")).artifacts[0]
                .reference
                .clone()
        })
        .collect();
    assert!(matches!(refs[0], Reference::Digest(_)));
    assert!(matches!(refs[1], Reference::Digest(_)));
    assert_eq!(refs[2], Reference::Tag("2.0".into()));
}

#[test]
fn delete_is_parsed() {
    let e = event(parse_default(&fixture("delete-artifact.json")).expect("parses"));
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.artifacts[0].digest.as_deref(), Some(D947));
}

#[test]
fn other_event_types_are_ignored_with_a_reason() {
    for (name, ty) in [
        ("pull-artifact.json", "PULL_ARTIFACT"),
        ("quota-exceed.json", "QUOTA_EXCEED"),
        ("replication.json", "REPLICATION"),
        ("tag-retention.json", "TAG_RETENTION"),
    ] {
        match parse_default(&fixture(name)).expect(name) {
            Parsed::Ignored { event_type, reason } => {
                assert_eq!(event_type, ty);
                assert!(!reason.is_empty());
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_settled_scan_is_an_event_of_its_repository_by_digest() {
    let body = fixture("scanning-completed.json");
    let e = event(parse_default(&body).expect("parses"));
    assert_eq!(e.kind, EventKind::Scan);
    assert_eq!(e.repository, "library/nginx");
    assert_eq!(e.artifacts[0].reference, Reference::Digest(D947.into()));
    for ty in ["SCANNING_FAILED", "SCANNING_STOPPED"] {
        let mut v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        v["type"] = ty.into();
        let e = event(parse_default(&serde_json::to_vec(&v).expect("json")).expect(ty));
        assert_eq!(e.kind, EventKind::Scan, "{ty}");
    }
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let ce = serde_json::json!({
        "specversion": "1.0", "type": "harbor.scan.completed", "id": "x",
        "source": "/projects/1/webhook/policies/1", "time": "2024-08-25T08:01:40Z",
        "data": v["event_data"],
    });
    let e = event(parse_cloudevents(&serde_json::to_vec(&ce).expect("json")).expect("parses"));
    assert_eq!(
        (e.kind, e.repository.as_str()),
        (EventKind::Scan, "library/nginx")
    );
}

fn body_with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&fixture("push-by-tag.json")).expect("json");
    edit(&mut v);
    serde_json::to_vec(&v).expect("json")
}

#[test]
fn malformed_bodies_say_what_is_wrong() {
    let e = parse_default(b"{not json").expect_err("refused");
    assert!(matches!(e, EventError::Json(_)), "{e}");

    let e = parse_default(&body_with(|v| {
        v["event_data"]["repository"]
            .as_object_mut()
            .expect("object")
            .remove("repo_full_name");
    }))
    .expect_err("refused");
    assert_eq!(
        e.to_string(),
        "missing field event_data.repository.repo_full_name"
    );

    let e = parse_default(&body_with(|v| {
        v["event_data"]["repository"]["repo_full_name"] = "library/../etc".into();
    }))
    .expect_err("refused");
    assert!(e.to_string().contains("invalid repository name"), "{e}");

    let e = parse_default(&body_with(|v| {
        v["event_data"]["resources"][0]["digest"] = "sha256:abc".into();
    }))
    .expect_err("refused");
    assert!(
        e.to_string()
            .starts_with("event_data.resources[0].digest: invalid digest"),
        "{e}"
    );

    let e = parse_default(&body_with(|v| {
        v["event_data"]["resources"][0]["tag"] = "-bad".into();
    }))
    .expect_err("refused");
    assert!(e.to_string().contains("invalid tag"), "{e}");

    let e = parse_default(&body_with(|v| {
        v["occur_at"] = "yesterday".into();
    }))
    .expect_err("refused");
    assert!(matches!(e, EventError::Json(_)), "{e}");

    let e = parse_default(&body_with(|v| {
        v["event_data"]["repository"]["namespace"] = "other".into();
    }))
    .expect_err("refused");
    assert!(e.to_string().contains("namespace"), "{e}");
}

#[test]
fn distribution_notifications_keep_manifest_pushes_only() {
    let d = format!("sha256:{}", "b".repeat(64));
    let body = serde_json::json!({"events": [
        {"action": "push", "timestamp": "2024-08-25T08:00:00.123456789Z",
         "target": {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "repository": "library/app"}},
        {"action": "pull", "target": {"mediaType": crate::manifest::OCI_MANIFEST, "digest": d, "repository": "library/app", "tag": "1"}},
        {"action": "push", "target": {"mediaType": crate::manifest::OCI_MANIFEST, "digest": d, "repository": "library/app", "tag": "1"}},
        {"action": "push", "target": {"mediaType": crate::manifest::DOCKER_MANIFEST, "digest": d, "repository": "hello"}},
    ]});
    let events = parse_distribution(&serde_json::to_vec(&body).expect("json")).expect("parses");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].project, "library");
    assert_eq!(events[0].artifacts[0].reference, Reference::Tag("1".into()));
    assert_eq!(events[1].project, "");
    assert_eq!(
        events[1].artifacts[0].reference,
        Reference::Digest(d.clone())
    );
    let bad = serde_json::json!({"events": [
            {"action": "push", "target": {"mediaType": crate::manifest::OCI_MANIFEST, "digest": d, "repository": "../x"}}]});
    assert!(parse_distribution(&serde_json::to_vec(&bad).expect("json")).is_err());
}
