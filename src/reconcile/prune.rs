//! Pruning (`prune = true`): Harbor sends no event when a tag is removed
//! from an artifact (only `DELETE_ARTIFACT` when the artifact goes), so a
//! tag removed on the source stays on the target until a reconcile pass
//! notices it. A pass then lists each target repository the rule writes
//! and finds the tags the rule selects that none of its source
//! repositories has any more.
//!
//! What is removed, and how:
//! - the tag alone: on a Harbor target through its REST API (`DELETE
//!   …/artifacts/{digest}/tags/{tag}`, swagger `deleteTag`); on another
//!   registry by `DELETE /v2/<name>/manifests/<tag>` (OCI 1.1; CNCF
//!   distribution 2.x refuses it, and the prune of that tag fails saying
//!   so);
//! - with `replicate_deletes`, the manifest itself (`DELETE` by digest),
//!   when no other tag of the target repository points at it and no
//!   source repository holds it.
//!
//! Never outside the rule: only repositories a pass saw on the source, as
//! the rule maps them (several source repositories flattened onto one
//! target repository count together), and only tags the rule's filters
//! select. A failed source listing fails the pass before anything is
//! pruned.

use std::collections::{BTreeMap, BTreeSet};

use crate::reference::Reference;
use crate::registry::{Registry, RegistryError};
use crate::rules::Rule;

/// A source repository as a pass saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its project on the source.
    pub project: String,
    /// The repository (full path).
    pub source_repository: String,
    /// Where the rule writes it.
    pub target_repository: String,
    /// Every tag it has, before the rule's filters.
    pub tags: BTreeSet<String>,
}

/// A target tag to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The target repository.
    pub target_repository: String,
    /// The tag.
    pub tag: String,
    /// What it points at on the target.
    pub digest: String,
    /// Remove the manifest too (`replicate_deletes`, no other tag of the
    /// repository points at it, no source repository holds it).
    pub manifest: bool,
}

impl Stale {
    /// `repository:tag (digest)`, and what goes.
    pub fn describe(&self) -> String {
        format!(
            "{}:{} {} ({})",
            self.target_repository,
            self.tag,
            self.digest,
            if self.manifest {
                "tag and manifest"
            } else {
                "tag only"
            }
        )
    }
}

/// The source repositories of a pass grouped by target repository: the
/// sources that write each, and the union of their tags.
pub fn by_target(seen: &[Seen]) -> BTreeMap<String, (Vec<&Seen>, BTreeSet<String>)> {
    let mut groups: BTreeMap<String, (Vec<&Seen>, BTreeSet<String>)> = BTreeMap::new();
    for s in seen {
        let g = groups.entry(s.target_repository.clone()).or_default();
        g.0.push(s);
        g.1.extend(s.tags.iter().cloned());
    }
    groups
}

/// The target tags that are stale: selected by the rule for (one of) the
/// sources writing the repository, and held by none of them.
pub fn stale_tags(
    rule: &Rule,
    sources: &[&Seen],
    source_tags: &BTreeSet<String>,
    target_tags: &[String],
) -> Vec<String> {
    target_tags
        .iter()
        .filter(|t| !source_tags.contains(*t))
        .filter(|t| {
            let reference = Reference::Tag((*t).clone());
            sources.iter().any(|s| {
                rule.plan(&s.project, &s.source_repository, &reference)
                    .is_ok()
            })
        })
        .cloned()
        .collect()
}

/// Whether a stale tag's manifest goes too.
pub fn manifest_goes(
    replicate_deletes: bool,
    digest: &str,
    kept: &[Option<String>],
    source_holds: bool,
) -> bool {
    replicate_deletes && !source_holds && !kept.iter().flatten().any(|d| d == digest)
}

/// Finds the stale tags of every target repository a pass saw.
pub async fn find(
    rule: &Rule,
    source: &Registry,
    target: &Registry,
    seen: &[Seen],
) -> Result<Vec<Stale>, RegistryError> {
    let mut out = Vec::new();
    for (target_repository, (sources, source_tags)) in by_target(seen) {
        let target_tags = match target.tags(&target_repository).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let stale = stale_tags(rule, &sources, &source_tags, &target_tags);
        if stale.is_empty() {
            continue;
        }
        // What the other tags point at, only when a manifest may go.
        let mut kept = Vec::new();
        if rule.replicates_deletes() {
            for t in target_tags.iter().filter(|t| !stale.contains(t)) {
                kept.push(
                    target
                        .resolve(&target_repository, &Reference::Tag(t.clone()))
                        .await?,
                );
            }
        }
        for tag in stale {
            let reference = Reference::Tag(tag.clone());
            let Some(digest) = target.resolve(&target_repository, &reference).await? else {
                continue;
            };
            let mut source_holds = false;
            if rule.replicates_deletes() {
                for s in &sources {
                    source_holds |= source.has_manifest(&s.source_repository, &digest).await?;
                }
            }
            out.push(Stale {
                manifest: manifest_goes(rule.replicates_deletes(), &digest, &kept, source_holds),
                target_repository: target_repository.clone(),
                tag,
                digest,
            });
        }
    }
    Ok(out)
}

/// Removes one stale tag (and its manifest, if it goes).
pub async fn remove(target: &Registry, stale: &Stale) -> Result<(), RegistryError> {
    let repository = &stale.target_repository;
    if stale.manifest {
        target.delete_manifest(repository, &stale.digest).await?;
        return Ok(());
    }
    if target.is_harbor() {
        return crate::harbor::delete_tag(target, repository, &stale.digest, &stale.tag).await;
    }
    if target.delete_tag(repository, &stale.tag).await? {
        return Ok(());
    }
    Err(RegistryError::Refused {
        registry: target.name().to_string(),
        what: format!("removing tag {repository}:{}", stale.tag),
        detail: "the registry cannot delete a tag alone (OCI 1.1 tag deletion; CNCF distribution 2.x refuses it): set replicate_deletes = true on the rule to delete the manifest when no other tag uses it, or remove the tag on the target by hand".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    fn seen(repo: &str, target: &str, tags: &[&str]) -> Seen {
        Seen {
            project: repo.split('/').next().unwrap_or("").into(),
            source_repository: repo.into(),
            target_repository: target.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_tags_the_rule_selects_and_the_source_lacks_are_stale() {
        let rule = Rule::new(RuleConfig {
            tags: vec!["v*".into()],
            exclude_tags: vec!["v0*".into()],
            ..RuleConfig::new("r", "a", "b")
        })
        .expect("rule");
        let s = seen("team/app", "team/app", &["v1", "v2"]);
        let groups = by_target(std::slice::from_ref(&s));
        let (sources, tags) = &groups["team/app"];
        let stale = stale_tags(
            &rule,
            sources,
            tags,
            &strings(&["v1", "v2", "v3", "latest", "v0.9"]),
        );
        // v3 is gone from the source; `latest` and `v0.9` are not the rule's.
        assert_eq!(stale, strings(&["v3"]));
    }

    #[test]
    fn sources_flattened_onto_one_target_count_together() {
        let rule = Rule::new(RuleConfig {
            flatten: 1,
            ..RuleConfig::new("r", "a", "b")
        })
        .expect("rule");
        let a = seen("team/x/app", "team/app", &["1"]);
        let b = seen("team/y/app", "team/app", &["2"]);
        let all = [a, b];
        let groups = by_target(&all);
        let (sources, tags) = &groups["team/app"];
        assert_eq!(sources.len(), 2);
        let stale = stale_tags(&rule, sources, tags, &strings(&["1", "2", "3"]));
        assert_eq!(stale, strings(&["3"]), "tag 2 is team/y's, not stale");
    }

    #[test]
    fn a_manifest_goes_only_when_nothing_else_holds_it() {
        let d = "sha256:aa";
        let other = Some("sha256:bb".to_string());
        assert!(manifest_goes(true, d, std::slice::from_ref(&other), false));
        assert!(!manifest_goes(
            false,
            d,
            std::slice::from_ref(&other),
            false
        ));
        assert!(!manifest_goes(true, d, &[other, Some(d.into())], false));
        assert!(!manifest_goes(true, d, &[], true), "the source holds it");
    }
}
