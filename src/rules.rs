//! Which pushes replicate, and where to: the `[[rules]]` of the config,
//! compiled once into glob matchers.
//!
//! A rule matches on the source project (Harbor namespace) and on the tag;
//! it maps the repository into a target project. Rules know nothing of
//! HTTP or the store: they turn an artifact into zero or more [`Plan`]s.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::RuleConfig;
use crate::reference::Reference;

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as configured.
    pub config: RuleConfig,
    projects: GlobSet,
    tags: GlobSet,
    exclude_tags: GlobSet,
    all_tags: bool,
}

/// Where one artifact goes under one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The rule's name.
    pub rule: String,
    /// Source registry name.
    pub from: String,
    /// Target registry name.
    pub to: String,
    /// Repository on the source.
    pub source_repository: String,
    /// Repository on the target.
    pub target_repository: String,
}

/// Why a rule did not match, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The project is not in `projects`.
    Project,
    /// The tag is not in `tags`.
    Tag,
    /// The tag is in `exclude_tags`.
    Excluded,
    /// Pushed by digest, and the rule selects tags.
    Untagged,
}

/// Compiles one glob list. Patterns were validated when the config loaded;
/// a pattern that fails here is reported rather than unwrapped.
fn globset(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        // `literal_separator` so `*` stays within one path component and
        // `**` crosses them, as in Harbor's doublestar filters.
        b.add(
            globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .or_else(|_| Glob::new(p))?,
        );
    }
    b.build()
}

impl Rule {
    /// Compiles a configured rule.
    pub fn new(config: RuleConfig) -> Result<Rule, globset::Error> {
        Ok(Rule {
            projects: globset(&config.projects)?,
            tags: globset(&config.tags)?,
            exclude_tags: globset(&config.exclude_tags)?,
            all_tags: config.tags.iter().any(|t| t == "**" || t == "*"),
            config,
        })
    }

    /// Decides whether an artifact in `repository` (full path) replicates.
    pub fn plan(
        &self,
        project: &str,
        repository: &str,
        reference: &Reference,
    ) -> Result<Plan, Skip> {
        if !self.projects.is_match(project) {
            return Err(Skip::Project);
        }
        match reference {
            Reference::Tag(tag) => {
                if self.exclude_tags.is_match(tag) {
                    return Err(Skip::Excluded);
                }
                if !self.tags.is_match(tag) {
                    return Err(Skip::Tag);
                }
            }
            // An artifact pushed without a tag is copied only by rules that
            // take every tag; a rule that selects tags waits for the tagged
            // push (an index's children arrive by digest and are copied with
            // their index anyway).
            Reference::Digest(_) if !self.all_tags => return Err(Skip::Untagged),
            Reference::Digest(_) => {}
        }
        let rest = repository
            .strip_prefix(project)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(repository);
        let target_project = self.config.target_project.replace("{project}", project);
        Ok(Plan {
            rule: self.config.name.clone(),
            from: self.config.from.clone(),
            to: self.config.to.clone(),
            source_repository: repository.to_string(),
            target_repository: format!("{target_project}/{rest}"),
        })
    }
}

/// All rules of a config, in order.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// Compiles every rule.
    pub fn new(configs: &[RuleConfig]) -> Result<RuleSet, globset::Error> {
        Ok(RuleSet {
            rules: configs
                .iter()
                .cloned()
                .map(Rule::new)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Every plan for one artifact; empty means no rule matches, and the
    /// second value then says why, for the webhook's answer.
    pub fn plans(
        &self,
        project: &str,
        repository: &str,
        reference: &Reference,
    ) -> (Vec<Plan>, Vec<(String, Skip)>) {
        let mut plans = Vec::new();
        let mut skips = Vec::new();
        for r in &self.rules {
            match r.plan(project, repository, reference) {
                Ok(p) => plans.push(p),
                Err(s) => skips.push((r.config.name.clone(), s)),
            }
        }
        (plans, skips)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::Project => "project not in `projects`",
            Skip::Tag => "tag not in `tags`",
            Skip::Excluded => "tag in `exclude_tags`",
            Skip::Untagged => "pushed by digest and the rule selects tags",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(projects: &[&str], tags: &[&str], exclude: &[&str], target: &str) -> Rule {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Rule::new(RuleConfig {
            name: "r".into(),
            from: "external".into(),
            to: "integrated".into(),
            projects: s(projects),
            target_project: target.into(),
            tags: s(tags),
            exclude_tags: s(exclude),
        })
        .expect("valid rule")
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.into())
    }

    #[test]
    fn maps_project_and_keeps_nested_path() {
        let r = rule(&["team-*"], &["**"], &[], "mirror-{project}");
        let p = r
            .plan("team-a", "team-a/platform/api", &tag("2.0"))
            .expect("matches");
        assert_eq!(p.target_repository, "mirror-team-a/platform/api");
        assert_eq!(p.source_repository, "team-a/platform/api");
        assert_eq!(
            r.plan("library", "library/nginx", &tag("1")),
            Err(Skip::Project)
        );
    }

    #[test]
    fn tag_filters_and_exclusion_wins() {
        let r = rule(&["**"], &["v*", "1.*"], &["*-rc*"], "{project}");
        assert!(r.plan("p", "p/a", &tag("v1.2")).is_ok());
        assert!(r.plan("p", "p/a", &tag("1.4.2")).is_ok());
        assert_eq!(r.plan("p", "p/a", &tag("latest")), Err(Skip::Tag));
        assert_eq!(r.plan("p", "p/a", &tag("v2-rc1")), Err(Skip::Excluded));
        let d = Reference::Digest(format!("sha256:{}", "a".repeat(64)));
        assert_eq!(r.plan("p", "p/a", &d), Err(Skip::Untagged));
        let all = rule(&["**"], &["**"], &[], "{project}");
        assert!(all.plan("p", "p/a", &d).is_ok());
    }

    #[test]
    fn several_rules_give_several_plans() {
        let mk = |name: &str, target: &str| RuleConfig {
            name: name.into(),
            from: "external".into(),
            to: "integrated".into(),
            projects: vec!["library".into()],
            target_project: target.into(),
            tags: vec!["**".into()],
            exclude_tags: vec![],
        };
        let set = RuleSet::new(&[mk("a", "{project}"), mk("b", "backup")]).expect("valid");
        let (plans, skips) = set.plans("library", "library/nginx", &tag("1"));
        assert_eq!(plans.len(), 2);
        assert!(skips.is_empty());
        assert_eq!(plans[1].target_repository, "backup/nginx");
        let (plans, skips) = set.plans("other", "other/x", &tag("1"));
        assert!(plans.is_empty());
        assert_eq!(skips.len(), 2);
    }
}
