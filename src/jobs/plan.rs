//! From an event to jobs: which jobs the rules ask for, and why none when
//! none. Policy, not HTTP: the webhook handlers call it and store what it
//! returns; a deletion without a digest is refused here, because only a
//! digest names what to delete safely.

use super::{Action, JobSpec};
use crate::event::{Event, EventKind};
use crate::reference::Reference;
use crate::rules::RuleSet;

/// The jobs one event asks for; why none, in `skipped`.
pub fn for_event(rules: &RuleSet, ev: &Event, skipped: &mut Vec<String>) -> Vec<JobSpec> {
    if ev.kind == EventKind::Scan {
        // A scan copies nothing: it releases held jobs (see the webhook).
        return Vec::new();
    }
    let deleting = ev.kind == EventKind::Delete;
    let action = if deleting {
        Action::Delete
    } else {
        Action::Copy
    };
    let mut specs = Vec::new();
    for a in &ev.artifacts {
        let (plans, skips) = if deleting {
            rules.delete_plans(&ev.project, &ev.repository, &a.reference)
        } else {
            rules.plans(&ev.project, &ev.repository, &a.reference)
        };
        if plans.is_empty() {
            let why: Vec<String> = skips
                .iter()
                .map(|(r, s)| format!("rule '{r}': {s}"))
                .collect();
            skipped.push(format!(
                "{}{}: {}",
                ev.repository,
                a.reference,
                if why.is_empty() && deleting {
                    "no rule has replicate_deletes = true".to_string()
                } else if why.is_empty() {
                    "no rules are configured".to_string()
                } else {
                    why.join("; ")
                }
            ));
        }
        let digest = a.digest.clone().or_else(|| match &a.reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => None,
        });
        if deleting && digest.is_none() {
            skipped.push(format!(
                "{}{}: a deletion without a digest cannot be replicated safely",
                ev.repository, a.reference
            ));
            continue;
        }
        specs.extend(plans.into_iter().map(|p| {
            JobSpec::from_plan(
                p,
                action,
                a.reference.clone(),
                digest.clone(),
                ev.occurred_at,
            )
        }));
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    fn event(tag: &str) -> Event {
        Event {
            kind: EventKind::Push,
            project: "library".into(),
            repository: "library/app".into(),
            artifacts: vec![crate::event::Artifact {
                reference: Reference::Tag(tag.into()),
                digest: None,
            }],
            occurred_at: None,
        }
    }

    #[test]
    fn a_fan_out_makes_one_job_per_target_none_folded_into_another_all_in_one_group() {
        let sites = RuleSet::new(&[RuleConfig {
            to: vec!["site-a".into(), "site-b".into(), "site-c".into()],
            ..RuleConfig::new("r", "external", "integrated")
        }])
        .expect("valid");
        let specs = for_event(&sites, &event("v1"), &mut Vec::new());
        assert_eq!(specs.len(), 3);
        let keys: std::collections::BTreeSet<String> =
            specs.iter().map(|s| s.dedupe_key()).collect();
        assert_eq!(keys.len(), 3, "one job per target");
        let groups: std::collections::BTreeSet<Option<String>> =
            specs.iter().map(|s| s.fanout_group()).collect();
        assert_eq!(groups.len(), 1, "one group");
        assert!(groups.iter().all(Option::is_some));
        // One target: no group, and the key stores already hold.
        let one = RuleSet::new(&[RuleConfig::new("r", "external", "integrated")]).expect("valid");
        let specs = for_event(&one, &event("v1"), &mut Vec::new());
        assert_eq!(specs[0].fanout_group(), None);
        assert_eq!(
            specs[0].dedupe_key(),
            "copy\nr\nlibrary/app\nlibrary/app\n:v1\n"
        );
    }
}
