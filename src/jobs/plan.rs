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
