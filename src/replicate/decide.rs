//! What a copy asks, skips and writes, decided without I/O.
//!
//! [`Replicator::copy`](super::Replicator::copy) runs these steps and does
//! what they say; they hold the whole decision table, tested below in
//! milliseconds:
//!
//! 1. [`settled_by`]: an event for what this daemon already left under the
//!    tag needs one target `HEAD` and nothing else.
//! 2. [`first_asks`]: what to ask the target while the source manifest is
//!    read (its tag, whether it holds the event's digest).
//! 3. [`next`]: with the source manifest in hand, skip (not a referrer,
//!    `override = false`), stop (in sync), ask the tag after all, or write
//!    (with or without a `HEAD` for the manifest first).
//! 4. [`deletion`]: whether a replicated deletion deletes.

use super::ledger::TagRecord;

/// The target digest to expect under the tag if an event is settled by
/// one `HEAD`: a tagged event whose digest is the source digest the ledger
/// recorded for this tag. `None`: take the full path.
pub fn settled_by<'a>(
    tagged: bool,
    event_digest: Option<&str>,
    record: Option<&'a TagRecord>,
) -> Option<&'a str> {
    match (tagged, event_digest, record) {
        (true, Some(event), Some(r)) if r.source == event => Some(r.target.as_str()),
        _ => None,
    }
}

/// What to ask the target while the source manifest is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstAsks<'a> {
    /// Where the target's tag points.
    pub tag: bool,
    /// Whether the target holds this manifest (the event's digest).
    pub held: Option<&'a str>,
}

/// With the event's digest, whether the target holds that manifest is
/// asked at once. When it does not (a new image, the usual case) and the
/// tag may be overwritten, where the target's tag points cannot matter:
/// it cannot point at a manifest the target lacks, so that request is
/// saved. Otherwise (no event digest, `override = false`) the tag is asked
/// at once too. A digest reference has no tag to ask and its event digest
/// is the reference itself.
pub fn first_asks(tagged: bool, event_digest: Option<&str>, overwrite: bool) -> FirstAsks<'_> {
    let held = event_digest.filter(|_| tagged);
    FirstAsks {
        tag: tagged && !(held.is_some() && overwrite),
        held,
    }
}

/// Whether a rule's `artifact_types` filter keeps an artifact of Harbor
/// type `kind` (`IMAGE`, `CHART`, …; `*` keeps all). No filter keeps all.
pub fn type_wanted(types: Option<&[String]>, kind: Option<&str>) -> bool {
    match (types, kind) {
        (Some(types), Some(kind)) => types.iter().any(|t| t == "*" || t == kind),
        _ => true,
    }
}

/// What is known once the source manifest has been read.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// The job names a tag (not a digest).
    pub tagged: bool,
    /// `override`: a target tag pointing elsewhere may be moved.
    pub overwrite: bool,
    /// Copy only if the manifest is a referrer.
    pub referrer_only: bool,
    /// The artifact's Harbor type is one the rule copies.
    pub type_wanted: bool,
    /// The manifest has an OCI 1.1 `subject`.
    pub has_subject: bool,
    /// The digest to write (after a platform subset).
    pub top: &'a str,
    /// Whether the target's tag was asked; then `there` is its answer.
    pub tag_asked: bool,
    /// Where the target's tag points (`None`: no such tag).
    pub there: Option<&'a str>,
    /// The answer to [`FirstAsks::held`]: that digest, and whether the
    /// target holds it.
    pub held: Option<(&'a str, bool)>,
}

/// The next step of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Pushed by digest under a rule that selects tags and not a referrer:
    /// it is copied with its tagged push; skip.
    NotAReferrer,
    /// Ask where the target's tag points, then decide again.
    AskTag,
    /// The target's tag already points at the digest: nothing to write.
    InSync,
    /// Of a Harbor artifact type the rule does not copy (a referrer, with
    /// a subject, follows its subject whatever its type): skip.
    OtherType,
    /// `override = false` and the target's tag points elsewhere (at this
    /// digest): skip.
    KeepTheirs(String),
    /// Write: copy the content unless the manifest is there (`Some(true)`:
    /// known present, `Some(false)`: known absent, `None`: ask first), then
    /// write the manifest (under the tag, for a tagged copy).
    Write {
        /// What is known of the manifest on the target.
        manifest_there: Option<bool>,
    },
}

/// Decides the next step from what is known.
pub fn next(k: &Known<'_>) -> Next {
    if k.referrer_only && !k.has_subject {
        return Next::NotAReferrer;
    }
    if !k.type_wanted && !k.has_subject {
        return Next::OtherType;
    }
    let held_top = match k.held {
        Some((d, held)) if d == k.top => Some(held),
        _ => None,
    };
    if k.tagged && !k.tag_asked && held_top != Some(false) {
        // The target may hold the manifest, or a platform subset changed
        // the digest: its tag may point anywhere.
        return Next::AskTag;
    }
    if k.there == Some(k.top) {
        return Next::InSync;
    }
    if !k.overwrite
        && let Some(there) = k.there
    {
        return Next::KeepTheirs(there.to_string());
    }
    Next::Write {
        manifest_there: held_top,
    }
}

/// The target project of a repository: its first path component (Harbor's
/// project). A one-component name has none (Harbor cannot hold it).
pub fn project_of(repository: &str) -> Option<&str> {
    repository.split_once('/').map(|(project, _)| project)
}

/// Where a blob missing from `repo` may be mounted from, of the target
/// repositories the ledger saw it in: only other repositories of the same
/// target project (at most three tries). A mount from another project
/// would hand that project's layer to whoever can pull `repo`, on the
/// word of a source that named its digest: what one source project feeds
/// never reaches another's (invariant 10, SECURITY.md).
pub fn mount_sources<'a>(known: &'a [String], repo: &str) -> Vec<&'a str> {
    let Some(project) = project_of(repo) else {
        return Vec::new();
    };
    known
        .iter()
        .map(String::as_str)
        .filter(|r| *r != repo && project_of(r) == Some(project))
        .take(3)
        .collect()
}

/// What may be done with a blob the target already holds or could mount,
/// once the source has answered whether it holds the blob in the job's
/// source repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The source holds it and so does the target repository: skip.
    Skip,
    /// The source holds it; the target repository does not: mount it if a
    /// mount source is left, else upload.
    MountOrUpload,
    /// The source does not hold it (in that repository): nothing may be
    /// skipped or mounted on its account; reading it will fail, saying so.
    Read,
}

/// A blob is skipped or mounted only on the source's proof that it holds
/// the blob in the job's source repository: otherwise a hostile source
/// could name another project's layer and have the relay link it for it.
pub fn held(source_has: bool, target_has: bool) -> Held {
    match (source_has, target_has) {
        (false, _) => Held::Read,
        (true, true) => Held::Skip,
        (true, false) => Held::MountOrUpload,
    }
}

/// The largest blob a copy may move and the key that sets it: the least of
/// the source's and the target's `max_blob_size` and the rule's, if set.
pub fn blob_limit<'a>(
    source: (&'a str, u64),
    target: (&'a str, u64),
    rule: Option<u64>,
) -> (u64, String) {
    let mut limit = (source.1, format!("registries.{}.max_blob_size", source.0));
    if target.1 < limit.0 {
        limit = (target.1, format!("registries.{}.max_blob_size", target.0));
    }
    if let Some(r) = rule.filter(|r| *r < limit.0) {
        limit = (r, "the rule's max_blob_size".to_string());
    }
    limit
}

/// The first blob a manifest declares bigger than `limit`: the copy fails
/// before any byte moves (a declared size is what the stream is held to).
pub fn too_big(
    blobs: &[crate::manifest::Descriptor],
    limit: u64,
) -> Option<&crate::manifest::Descriptor> {
    blobs.iter().find(|b| b.size > limit)
}

/// What a replicated deletion does, given where the target's reference
/// points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// The source still has the manifest: the event is not the source's
    /// state (replayed, reordered or forged); leave the target alone.
    SourceHolds,
    /// Nothing is there: skip.
    Absent,
    /// The target's reference points at this other digest: leave it.
    Other(String),
    /// The target has the deleted digest there: delete it.
    Delete,
}

/// A deletion deletes only the digest that was deleted on the source, and
/// only once the source confirms it is gone (`source_has` is its answer
/// to a `HEAD` of the manifest by digest).
pub fn deletion(source_has: bool, there: Option<&str>, deleted: &str) -> Deletion {
    if source_has {
        return Deletion::SourceHolds;
    }
    match there {
        None => Deletion::Absent,
        Some(t) if t != deleted => Deletion::Other(t.to_string()),
        Some(_) => Deletion::Delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaa";
    const B: &str = "sha256:bbbb";

    fn known<'a>() -> Known<'a> {
        Known {
            tagged: true,
            overwrite: true,
            referrer_only: false,
            type_wanted: true,
            has_subject: false,
            top: A,
            tag_asked: false,
            there: None,
            held: Some((A, false)),
        }
    }

    #[test]
    fn a_redelivered_event_is_settled_by_one_head_when_the_ledger_knows_it() {
        let r = TagRecord {
            source: A.into(),
            target: B.into(),
        };
        assert_eq!(settled_by(true, Some(A), Some(&r)), Some(B));
        assert_eq!(
            settled_by(true, Some(B), Some(&r)),
            None,
            "tag moved on the source"
        );
        assert_eq!(settled_by(true, None, Some(&r)), None, "no event digest");
        assert_eq!(settled_by(false, Some(A), Some(&r)), None, "by digest");
        assert_eq!(settled_by(true, Some(A), None), None, "never recorded");
    }

    #[test]
    fn a_new_tagged_image_asks_only_whether_the_target_holds_it() {
        let a = first_asks(true, Some(A), true);
        assert_eq!(
            a,
            FirstAsks {
                tag: false,
                held: Some(A)
            }
        );
        // override = false: where the tag points matters at once.
        assert_eq!(
            first_asks(true, Some(A), false),
            FirstAsks {
                tag: true,
                held: Some(A)
            }
        );
        // No event digest (reconcile by tag, the CLI): ask the tag.
        assert_eq!(
            first_asks(true, None, true),
            FirstAsks {
                tag: true,
                held: None
            }
        );
        // By digest: nothing to ask before reading the source.
        assert_eq!(
            first_asks(false, Some(A), true),
            FirstAsks {
                tag: false,
                held: None
            }
        );
    }

    #[test]
    fn a_new_image_is_written_without_asking_its_tag() {
        assert_eq!(
            next(&known()),
            Next::Write {
                manifest_there: Some(false)
            }
        );
    }

    #[test]
    fn a_manifest_the_target_holds_makes_the_tag_worth_asking() {
        let k = Known {
            held: Some((A, true)),
            ..known()
        };
        assert_eq!(next(&k), Next::AskTag);
        let asked = Known {
            tag_asked: true,
            there: Some(A),
            ..k
        };
        assert_eq!(next(&asked), Next::InSync, "same digest: nothing to do");
        let moved = Known {
            tag_asked: true,
            there: Some(B),
            ..k
        };
        assert_eq!(
            next(&moved),
            Next::Write {
                manifest_there: Some(true)
            },
            "tag moved: only the tag is written"
        );
    }

    #[test]
    fn override_false_keeps_a_tag_that_points_elsewhere() {
        let k = Known {
            overwrite: false,
            tag_asked: true,
            there: Some(B),
            ..known()
        };
        assert_eq!(next(&k), Next::KeepTheirs(B.into()));
        let absent = Known { there: None, ..k };
        assert_eq!(
            next(&absent),
            Next::Write {
                manifest_there: Some(false)
            }
        );
    }

    #[test]
    fn a_digest_pushed_under_a_tag_rule_is_copied_only_if_it_is_a_referrer() {
        let k = Known {
            tagged: false,
            referrer_only: true,
            held: None,
            ..known()
        };
        assert_eq!(next(&k), Next::NotAReferrer);
        let referrer = Known {
            has_subject: true,
            ..k
        };
        assert_eq!(
            next(&referrer),
            Next::Write {
                manifest_there: None
            }
        );
    }

    #[test]
    fn a_platform_subset_has_a_new_digest_so_the_tag_is_asked() {
        // The event's digest (the source index) is absent, but the subset
        // index written is another digest: the tag may point at it.
        let k = Known {
            top: B,
            held: Some((A, false)),
            ..known()
        };
        assert_eq!(next(&k), Next::AskTag);
        let asked = Known {
            tag_asked: true,
            there: Some(B),
            ..k
        };
        assert_eq!(next(&asked), Next::InSync);
    }

    #[test]
    fn an_artifact_of_another_type_is_skipped_unless_it_is_a_referrer() {
        let k = Known {
            type_wanted: false,
            ..known()
        };
        assert_eq!(next(&k), Next::OtherType);
        let signature = Known {
            has_subject: true,
            ..k
        };
        assert_eq!(
            next(&signature),
            Next::Write {
                manifest_there: Some(false)
            }
        );
    }

    #[test]
    fn the_type_filter_keeps_listed_types_or_all_with_a_star() {
        let images = ["IMAGE".to_string()];
        let all = ["*".to_string()];
        assert!(type_wanted(None, None));
        assert!(type_wanted(Some(&images), Some("IMAGE")));
        assert!(!type_wanted(Some(&images), Some("CHART")));
        assert!(type_wanted(Some(&all), Some("CHART")));
    }

    #[test]
    fn mounts_come_only_from_the_same_target_project() {
        let known: Vec<String> = [
            "secret/app",
            "team-a/base",
            "team-a/app",
            "team-a/x",
            "team-a/y",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            mount_sources(&known, "team-a/app"),
            vec!["team-a/base", "team-a/x", "team-a/y"],
            "itself and another project are never mount sources; three tries"
        );
        assert!(mount_sources(&known, "evil/steal").is_empty());
        assert_eq!(project_of("app"), None);
        assert!(
            mount_sources(&["app".to_string()], "app/x").is_empty(),
            "a repository without a project is no project's"
        );
        assert!(mount_sources(&["x".to_string()], "y").is_empty());
    }

    #[test]
    fn the_smallest_blob_limit_wins_and_is_named() {
        let gib = 1 << 30;
        assert_eq!(
            blob_limit(("external", 20 * gib), ("integrated", 20 * gib), None),
            (20 * gib, "registries.external.max_blob_size".to_string())
        );
        assert_eq!(
            blob_limit(("external", 20 * gib), ("integrated", gib), None),
            (gib, "registries.integrated.max_blob_size".to_string())
        );
        assert_eq!(
            blob_limit(("external", 20 * gib), ("integrated", gib), Some(gib / 2)),
            (gib / 2, "the rule's max_blob_size".to_string())
        );
        let d = |size| crate::manifest::Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{size}"),
            size,
        };
        let blobs = [d(10), d(gib + 1), d(5)];
        assert_eq!(too_big(&blobs, gib).map(|b| b.size), Some(gib + 1));
        assert!(
            too_big(&blobs, gib + 1).is_none(),
            "the limit itself is allowed"
        );
    }

    #[test]
    fn nothing_is_skipped_or_mounted_without_the_sources_word() {
        assert_eq!(held(false, true), Held::Read);
        assert_eq!(held(false, false), Held::Read);
        assert_eq!(held(true, true), Held::Skip);
        assert_eq!(held(true, false), Held::MountOrUpload);
    }

    #[test]
    fn a_deletion_deletes_only_the_deleted_digest() {
        assert_eq!(deletion(false, None, A), Deletion::Absent);
        assert_eq!(deletion(false, Some(B), A), Deletion::Other(B.into()));
        assert_eq!(deletion(false, Some(A), A), Deletion::Delete);
        assert_eq!(
            deletion(true, Some(A), A),
            Deletion::SourceHolds,
            "what the source still has is never deleted"
        );
    }
}
