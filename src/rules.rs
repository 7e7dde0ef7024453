//! Which pushes replicate, and where to: the `[[rules]]` of the config,
//! compiled once into glob matchers.
//!
//! A rule matches on the source project (Harbor namespace) and on the tag;
//! it maps the repository into a target project. Rules know nothing of
//! HTTP or the store: they turn an artifact into zero or more [`Plan`]s.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::RuleConfig;
use crate::reference::{Reference, is_referrer_tag};

/// A compiled rule, for one of its targets: a rule with several `to`
/// compiles into one `Rule` per target, so that everything per target
/// (plans, reconcile passes, prune) reads one name.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as configured.
    pub config: RuleConfig,
    /// The target registry this compiled rule writes to (one of
    /// `config.to`).
    pub to: String,
    projects: GlobSet,
    repositories: GlobSet,
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
    /// The rule has other targets too: this plan's job is one of a
    /// fan-out, run with its siblings over one read of the source.
    pub fanout: bool,
    /// Repository on the source.
    pub source_repository: String,
    /// Repository on the target.
    pub target_repository: String,
    /// Overwrite a target tag that points elsewhere.
    pub overwrite: bool,
    /// Copy signatures, SBOMs and other referrers too.
    pub referrers: bool,
    /// Only these platforms of an index.
    pub platforms: Option<Vec<String>>,
    /// Copy only if the artifact turns out to be a referrer (an OCI 1.1
    /// `subject`): set for an artifact pushed by digest under a rule that
    /// selects tags and copies referrers.
    pub referrer_only: bool,
    /// Only artifacts of these Harbor types (`None`: every type).
    pub artifact_types: Option<Vec<String>>,
    /// Only artifacts carrying every one of these Harbor labels (`None`:
    /// no label filter).
    pub labels: Option<Vec<String>>,
    /// The rule's `max_blob_size`, if it sets one.
    pub max_blob_size: Option<u64>,
    /// The rule has gates: the job passes them before it writes.
    pub gated: bool,
}

/// The repository's path inside its project (`library/app` in `library`
/// is `app`); the whole path when it does not start with the project.
fn inside<'a>(project: &str, repository: &'a str) -> &'a str {
    repository
        .strip_prefix(project)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(repository)
}

/// Why a rule did not match, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The project is not in `projects`.
    Project,
    /// The repository is not in `repositories`.
    Repository,
    /// The tag is not in `tags`.
    Tag,
    /// The tag is in `exclude_tags`.
    Excluded,
    /// Pushed by digest, and the rule selects tags.
    Untagged,
    /// The mapped target path would leave the target project the rule
    /// names (a source project or path that escapes `target_project`).
    Escapes,
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
    /// Compiles `config` for its first target; [`RuleSet::new`] compiles
    /// every target.
    pub fn new(config: RuleConfig) -> Result<Rule, globset::Error> {
        Ok(Rule {
            to: config.to.first().cloned().unwrap_or_default(),
            projects: globset(&config.projects)?,
            repositories: globset(&config.repositories)?,
            tags: globset(&config.tags)?,
            exclude_tags: globset(&config.exclude_tags)?,
            all_tags: config.tags.iter().any(|t| t == "**" || t == "*"),
            config,
        })
    }

    /// Where a repository goes: `flatten` drops leading components of the
    /// path inside the project (the last one always stays); then either
    /// `target_project/<path>` or, when `target_project` holds
    /// `{repository}`, that template as the whole path.
    pub fn target_path(&self, project: &str, inside: &str) -> String {
        let parts: Vec<&str> = inside.split('/').collect();
        let keep = parts.len().saturating_sub(self.config.flatten).max(1);
        let path = parts[parts.len() - keep..].join("/");
        let template = self.config.target_project.replace("{project}", project);
        if template.contains("{repository}") {
            template
                .replace("{repository}", &path)
                .trim_start_matches('/')
                .to_string()
        } else if template.is_empty() {
            // A plain registry's top-level repository has no project.
            path
        } else {
            format!("{template}/{path}")
        }
    }

    /// Whether `target` (a path this rule mapped for `project`) stays in the
    /// target project the rule names: the first component of
    /// `target_project` with `{project}` filled in (the load refuses a
    /// template whose first component is not made of a literal and
    /// `{project}`). Checked again at plan time, so no source project
    /// name or repository path can pick the project the relay's account
    /// writes into.
    pub fn confined(&self, project: &str, target: &str) -> bool {
        let template = &self.config.target_project;
        let first = crate::config::project_part(template);
        if first.contains("{repository}") {
            return false;
        }
        let want = first.replace("{project}", project);
        if want.is_empty() || want.contains('/') {
            // A plain registry's top-level path (no project) or a source
            // project with a '/', which no Harbor project has.
            return want.is_empty() && template.is_empty();
        }
        target
            .strip_prefix(want.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Where a repository (full path, in `project`) goes on the target.
    pub fn target_of(&self, project: &str, repository: &str) -> String {
        self.target_path(project, inside(project, repository))
    }

    /// True if this rule selects the project.
    pub fn takes_project(&self, project: &str) -> bool {
        self.projects.is_match(project)
    }

    /// True if `repository` (full path) is in this rule's projects and
    /// repositories, whatever its tags: the rule is about it.
    pub fn covers(&self, project: &str, repository: &str) -> bool {
        self.projects.is_match(project) && self.repositories.is_match(inside(project, repository))
    }

    /// The same rule for another of its targets.
    pub fn for_target(&self, to: &str) -> Rule {
        Rule {
            to: to.to_string(),
            ..self.clone()
        }
    }

    /// True when the rule has several targets: its jobs for one artifact
    /// run together over one read of the source ([`crate::replicate::Tee`]).
    pub fn fans_out(&self) -> bool {
        self.config.to.len() > 1
    }

    /// The name this rule's per-target work goes by where one name per
    /// target is needed (the reconcile turn): the rule's own when it has
    /// one target.
    pub fn turn_name(&self) -> String {
        match self.fans_out() {
            true => format!("{} -> {}", self.config.name, self.to),
            false => self.config.name.clone(),
        }
    }

    /// True if this rule replicates deletions.
    pub fn replicates_deletes(&self) -> bool {
        self.config.replicate_deletes
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
            // A signature, attestation or SBOM pushed after its image has a
            // tag of its own that tag filters were not written for: it
            // follows the rule's `referrers` setting instead.
            Reference::Tag(tag) if self.config.referrers && is_referrer_tag(tag) => {}
            Reference::Tag(tag) => {
                if self.exclude_tags.is_match(tag) {
                    return Err(Skip::Excluded);
                }
                if !self.tags.is_match(tag) {
                    return Err(Skip::Tag);
                }
            }
            // An artifact pushed without a tag is copied whole only by rules
            // that take every tag; a rule that selects tags waits for the
            // tagged push (an index's children arrive by digest and are
            // copied with their index anyway). One exception: an OCI 1.1
            // referrer (a signature, SBOM or attestation with a `subject`)
            // is pushed by digest after its image and has no tag to wait
            // for, so under a rule that copies referrers the job looks at
            // the manifest and copies it only if it has a subject.
            Reference::Digest(_) if !self.all_tags && !self.config.referrers => {
                return Err(Skip::Untagged);
            }
            Reference::Digest(_) => {}
        }
        let inside = inside(project, repository);
        if !self.repositories.is_match(inside) {
            return Err(Skip::Repository);
        }
        let target = self.target_path(project, inside);
        if !self.confined(project, &target) {
            return Err(Skip::Escapes);
        }
        // Under a gated rule an artifact pushed by digest alone (an index's
        // child) is not judged on its own digest: cosign signs the index,
        // and the child crosses with it. Only a referrer goes by itself,
        // gated on its subject.
        let gated = self.config.gates.is_some();
        Ok(Plan {
            referrer_only: matches!(reference, Reference::Digest(_)) && (!self.all_tags || gated),
            ..self.plan_for(repository, target)
        })
    }

    /// The rule's settings for copying `source_repository` to
    /// `target_repository`, decided elsewhere (reconcile lists both sides).
    pub fn plan_for(&self, source_repository: &str, target_repository: String) -> Plan {
        Plan {
            rule: self.config.name.clone(),
            from: self.config.from.clone(),
            to: self.to.clone(),
            fanout: self.fans_out(),
            source_repository: source_repository.to_string(),
            target_repository,
            overwrite: self.config.overwrite,
            referrers: self.config.referrers,
            platforms: self.config.platforms.clone(),
            referrer_only: false,
            artifact_types: (!self.config.artifact_types.iter().any(|t| t == "*"))
                .then(|| self.config.artifact_types.clone()),
            labels: (!self.config.labels.is_empty()).then(|| self.config.labels.clone()),
            max_blob_size: self.config.max_blob_size,
            gated: self.config.gates.is_some(),
        }
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
        let mut rules = Vec::new();
        for config in configs {
            let rule = Rule::new(config.clone())?;
            for to in &config.to {
                rules.push(rule.for_target(to));
            }
        }
        Ok(RuleSet { rules })
    }

    /// Every plan for one artifact; empty means no rule matches, and the
    /// second value then says why, for the webhook's answer.
    pub fn plans(
        &self,
        project: &str,
        repository: &str,
        reference: &Reference,
    ) -> (Vec<Plan>, Vec<(String, Skip)>) {
        self.plans_where(project, repository, reference, |_| true)
    }

    /// Plans for a deletion: only rules with `replicate_deletes`.
    pub fn delete_plans(
        &self,
        project: &str,
        repository: &str,
        reference: &Reference,
    ) -> (Vec<Plan>, Vec<(String, Skip)>) {
        self.plans_where(project, repository, reference, Rule::replicates_deletes)
    }

    fn plans_where(
        &self,
        project: &str,
        repository: &str,
        reference: &Reference,
        keep: impl Fn(&Rule) -> bool,
    ) -> (Vec<Plan>, Vec<(String, Skip)>) {
        let mut plans = Vec::new();
        let mut skips = Vec::new();
        for r in self.rules.iter().filter(|r| keep(r)) {
            match r.plan(project, repository, reference) {
                Ok(p) => plans.push(p),
                // A rule skips for every target alike: said once.
                Err(s) if !skips.iter().any(|(n, _)| *n == r.config.name) => {
                    skips.push((r.config.name.clone(), s))
                }
                Err(_) => {}
            }
        }
        (plans, skips)
    }

    /// True if some rule is about `repository` (its project and
    /// repository patterns match), whether or not it takes a given tag.
    pub fn covers(&self, project: &str, repository: &str) -> bool {
        self.rules.iter().any(|r| r.covers(project, repository))
    }

    /// The rules, in order, each target of a fan-out rule as its own.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// The rule with this name.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.config.name == name)
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
            Skip::Repository => "repository not in `repositories`",
            Skip::Tag => "tag not in `tags`",
            Skip::Excluded => "tag in `exclude_tags`",
            Skip::Untagged => "pushed by digest and the rule selects tags",
            Skip::Escapes => {
                "the target path would leave the target project that `target_project` names"
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(projects: &[&str], tags: &[&str], exclude: &[&str], target: &str) -> Rule {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Rule::new(RuleConfig {
            projects: s(projects),
            target_project: target.into(),
            tags: s(tags),
            exclude_tags: s(exclude),
            ..RuleConfig::new("r", "external", "integrated")
        })
        .expect("valid rule")
    }

    /// Tags `v*` only, referrers not copied.
    fn v_star_without_referrers() -> Rule {
        Rule::new(RuleConfig {
            tags: vec!["v*".into()],
            referrers: false,
            ..RuleConfig::new("r", "external", "integrated")
        })
        .expect("valid rule")
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.into())
    }

    #[test]
    fn a_rule_with_several_targets_plans_one_job_per_target_as_a_fan_out() {
        let sites = RuleSet::new(&[RuleConfig {
            to: vec!["site-a".into(), "site-b".into(), "site-c".into()],
            tags: vec!["v*".into()],
            ..RuleConfig::new("r", "external", "integrated")
        }])
        .expect("valid");
        let (plans, skips) = sites.plans("library", "library/app", &tag("v1"));
        assert!(skips.is_empty());
        let to: Vec<&str> = plans.iter().map(|p| p.to.as_str()).collect();
        assert_eq!(to, ["site-a", "site-b", "site-c"]);
        assert!(
            plans
                .iter()
                .all(|p| p.fanout && p.target_repository == "library/app")
        );
        // A skip is said once, not once per target.
        let (plans, skips) = sites.plans("library", "library/app", &tag("latest"));
        assert!(plans.is_empty());
        assert_eq!(skips.len(), 1, "{skips:?}");
        // Each target's reconcile takes its own turn.
        let turns: std::collections::BTreeSet<String> = sites.iter().map(Rule::turn_name).collect();
        assert_eq!(turns.len(), 3);
        // One target: the plan is as it always was, its key too.
        let one = rule(&["**"], &["**"], &[], "{project}");
        let plan = one
            .plan("library", "library/app", &tag("v1"))
            .expect("plans");
        assert!(!plan.fanout);
        assert_eq!(one.turn_name(), "r");
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
        // Pushed by digest under a tag filter: copied only if it turns
        // out to be a referrer, and not at all without `referrers`.
        let d = Reference::Digest(format!("sha256:{}", "a".repeat(64)));
        assert!(
            r.plan("p", "p/a", &d)
                .expect("referrer check")
                .referrer_only
        );
        assert_eq!(
            v_star_without_referrers().plan("p", "p/a", &d),
            Err(Skip::Untagged)
        );
        let all = rule(&["**"], &["**"], &[], "{project}");
        assert!(!all.plan("p", "p/a", &d).expect("every tag").referrer_only);
        assert!(!r.plan("p", "p/a", &tag("v1")).expect("tag").referrer_only);
    }

    #[test]
    fn referrer_tags_follow_the_referrers_setting_not_the_tag_filters() {
        let r = rule(&["**"], &["v*"], &["sha256-*"], "{project}");
        let hex = "0123456789abcdef".repeat(4);
        for t in [
            format!("sha256-{hex}"),
            format!("sha256-{hex}.sig"),
            format!("sha256-{hex}.att"),
            format!("sha256-{hex}.sbom"),
        ] {
            assert!(r.plan("p", "p/a", &tag(&t)).is_ok(), "{t}");
        }
        for t in [
            format!("sha256-{hex}.exe"),
            format!("sha256-{}", &hex[..63]),
            format!("sha256-{}.sig", hex.to_uppercase()),
            "sha256-latest".to_string(),
        ] {
            assert!(r.plan("p", "p/a", &tag(&t)).is_err(), "{t}");
        }
        // Still only in the rule's repositories.
        let scoped = Rule::new(RuleConfig {
            repositories: vec!["app".into()],
            tags: vec!["v*".into()],
            ..RuleConfig::new("r", "external", "integrated")
        })
        .expect("rule");
        let sig = tag(&format!("sha256-{hex}.sig"));
        assert!(scoped.plan("p", "p/app", &sig).is_ok());
        assert_eq!(scoped.plan("p", "p/other", &sig), Err(Skip::Repository));
        // With referrers off, they are tags like any other.
        assert_eq!(
            v_star_without_referrers().plan("p", "p/a", &sig),
            Err(Skip::Tag)
        );
    }

    #[test]
    fn several_rules_give_several_plans() {
        let mk = |name: &str, target: &str| RuleConfig {
            projects: vec!["library".into()],
            target_project: target.into(),
            ..RuleConfig::new(name, "external", "integrated")
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

    #[test]
    fn repositories_flatten_and_whole_path_templates() {
        let r = Rule::new(RuleConfig {
            repositories: vec!["platform/**".into()],
            flatten: 1,
            ..RuleConfig::new("r", "external", "integrated")
        })
        .expect("valid");
        let p = r
            .plan("team-a", "team-a/platform/api/v2", &tag("1"))
            .expect("matches");
        assert_eq!(p.target_repository, "team-a/api/v2");
        assert_eq!(
            r.plan("team-a", "team-a/tools/x", &tag("1")),
            Err(Skip::Repository)
        );
        // Flattening never drops the last component.
        let r = Rule::new(RuleConfig {
            flatten: 9,
            target_project: "mirror".into(),
            ..RuleConfig::new("r", "external", "integrated")
        })
        .expect("valid");
        assert_eq!(r.target_path("team-a", "platform/api"), "mirror/api");
        let r = Rule::new(RuleConfig {
            target_project: "{project}-dr/{repository}".into(),
            ..RuleConfig::new("r", "external", "integrated")
        })
        .expect("valid");
        assert_eq!(r.target_path("library", "nginx"), "library-dr/nginx");
    }

    #[test]
    fn a_target_path_stays_in_the_project_the_rule_names() {
        let mk = |target: &str| {
            Rule::new(RuleConfig {
                target_project: target.into(),
                ..RuleConfig::new("r", "external", "integrated")
            })
            .expect("valid")
        };
        let r = mk("{project}");
        assert!(r.confined("team-a", "team-a/app"));
        assert!(
            !r.confined("team-a", "team-ab/app"),
            "a prefix is not the project"
        );
        assert!(!r.confined("team-a", "secret/app"));
        assert!(
            !r.confined("team-a/x", "team-a/x/app"),
            "a project has no '/'"
        );
        let r = mk("{project}-dr/{repository}");
        assert!(r.confined("library", "library-dr/nginx"));
        // A template whose first component comes from the repository lets
        // the source pick the project: never confined (and refused at load).
        let r = mk("{repository}");
        assert!(!r.confined("team-a", "secret/app"));
        assert_eq!(
            r.plan("team-a", "team-a/secret/app", &tag("1")),
            Err(Skip::Escapes)
        );
        let r = mk("mirror");
        assert!(r.confined("anything", "mirror/app"));
    }

    #[test]
    fn deletions_follow_only_rules_that_ask_for_them() {
        let set = RuleSet::new(&[
            RuleConfig::new("copy", "external", "integrated"),
            RuleConfig {
                replicate_deletes: true,
                ..RuleConfig::new("mirror", "external", "integrated")
            },
        ])
        .expect("valid");
        let (plans, _) = set.delete_plans("library", "library/nginx", &tag("1"));
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].rule, "mirror");
    }
}
