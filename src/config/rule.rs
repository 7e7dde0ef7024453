//! Loading one `[[rules]]` entry: its registries, projects and
//! repositories, target naming, platforms, labels, artifact types and
//! reconcile interval, each checked with a message that names the key.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::*;
use super::*;

mod gates;

impl Loader<'_> {
    /// The `i`th `[[rules]]` entry, validated against `registries`.
    pub(super) fn rule(
        &self,
        i: usize,
        r: RawRule,
        registries: &BTreeMap<String, RegistryConfig>,
    ) -> Result<RuleConfig, ConfigError> {
        let key = |k: &str| format!("rules[{i}].{k}");
        self.known_registry(&key("from"), &r.from, registries)?;
        let to = self.targets(&key("to"), &r.from, &r.to, registries)?;
        let gates = self.gates(i, &r, &registries[&r.from])?;
        let name = match r.name {
            Some(n) => self.expand(&key("name"), &n)?,
            None => format!("{}-to-{}", r.from, to.join("+")),
        };
        if name.is_empty() {
            return Err(self.invalid(key("name"), "is empty"));
        }
        let projects = self.globs(&key("projects"), r.projects, &["**"])?;
        self.project_names(&key("projects"), &projects)?;
        let tags = self.globs(&key("tags"), r.tags, &["**"])?;
        let exclude_tags = self.globs(&key("exclude_tags"), r.exclude_tags, &[])?;
        let repositories = self.globs(&key("repositories"), r.repositories, &["**"])?;
        let labels = self.labels(&key("labels"), r.labels.clone(), &registries[&r.from])?;
        let target_project = self.target_project(&key("target_project"), r.target_project)?;
        Ok(RuleConfig {
            name,
            from: r.from,
            to,
            projects,
            repositories,
            target_project,
            flatten: r.flatten.unwrap_or(0),
            tags,
            exclude_tags,
            overwrite: r.overwrite.unwrap_or(true),
            replicate_deletes: r.replicate_deletes.unwrap_or(false),
            referrers: r.referrers.unwrap_or(true),
            platforms: self.platforms(&key("platforms"), r.platforms)?,
            artifact_types: self.artifact_types(&key("artifact_types"), r.artifact_types)?,
            labels,
            prune: r.prune.unwrap_or(false),
            max_blob_size: self.at_least(
                &key("max_blob_size"),
                self.size(&key("max_blob_size"), r.max_blob_size)?,
                1024 * 1024,
                "must be at least 1MiB",
            )?,
            reconcile_interval: self
                .reconcile_interval(&key("reconcile_interval"), r.reconcile_interval)?,
            gates,
        })
    }

    /// `rules[].from`/`to` name a registry of the config.
    /// A rule's `to`: one name or a list, each a configured registry other
    /// than the source, none twice.
    fn targets(
        &self,
        key: &str,
        from: &str,
        raw: &RawTargets,
        registries: &BTreeMap<String, RegistryConfig>,
    ) -> Result<Vec<String>, ConfigError> {
        let names = match raw {
            RawTargets::One(n) => vec![n.clone()],
            RawTargets::Many(n) => n.clone(),
        };
        if names.is_empty() {
            return Err(self.invalid(key, "names no registry: give one name or a list of them"));
        }
        for (j, name) in names.iter().enumerate() {
            let here = match raw {
                RawTargets::One(_) => key.to_string(),
                RawTargets::Many(_) => format!("{key}[{j}]"),
            };
            self.known_registry(&here, name, registries)?;
            if names[..j].contains(name) {
                return Err(self.invalid(here, format!("names '{name}' twice")));
            }
            if name == from && names.len() > 1 {
                return Err(self.invalid(here, format!("'{name}' is the rule's source")));
            }
        }
        Ok(names)
    }

    fn known_registry(
        &self,
        key: &str,
        name: &str,
        registries: &BTreeMap<String, RegistryConfig>,
    ) -> Result<(), ConfigError> {
        if registries.contains_key(name) {
            return Ok(());
        }
        let known: Vec<&str> = registries.keys().map(String::as_str).collect();
        let known = match known.is_empty() {
            true => "none".to_string(),
            false => known.join(", "),
        };
        Err(self.invalid(key, format!("unknown registry '{name}' (defined: {known})")))
    }

    /// A list of globs (`projects`, `repositories`, `tags`, …), each
    /// `${VAR}`-expanded and checked; `default` when absent.
    fn globs(
        &self,
        key: &str,
        v: Option<Vec<String>>,
        default: &[&str],
    ) -> Result<Vec<String>, ConfigError> {
        let v = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        let v = v
            .iter()
            .map(|p| self.expand(key, p))
            .collect::<Result<Vec<_>, _>>()?;
        for p in &v {
            globset::Glob::new(p)
                .map_err(|e| self.invalid(key, format!("`{p}` is not a glob: {e}")))?;
        }
        Ok(v)
    }

    /// `rules[].projects` name projects, which have no '/': a pattern with
    /// one was meant for `repositories`, and the error says how to write it.
    fn project_names(&self, key: &str, projects: &[String]) -> Result<(), ConfigError> {
        let Some(p) = projects.iter().find(|p| p.contains('/')) else {
            return Ok(());
        };
        Err(self.invalid(
            key,
            format!(
                "`{p}`: a project name has no '/'; to pick repositories inside a project, use `repositories` (e.g. projects = [\"{}\"], repositories = [\"{}\"])",
                p.split('/').next().unwrap_or(p),
                p.split_once('/').map(|(_, r)| if r.is_empty() { "**" } else { r }).unwrap_or("**")
            ),
        ))
    }

    /// `rules[].target_project`: a project name, or a path template with
    /// `{project}` and `{repository}`.
    fn target_project(&self, key: &str, raw: Option<String>) -> Result<String, ConfigError> {
        let target_project = self
            .expand_opt(key, raw)?
            .unwrap_or_else(|| "{project}".to_string());
        let whole_path = target_project.contains("{repository}");
        let probe = target_project
            .replace("{project}", "project")
            .replace("{repository}", "repo");
        if probe.contains('{') || probe.contains('}') {
            return Err(self.invalid(
                key,
                format!("`{target_project}`: the placeholders are {{project}} and {{repository}}"),
            ));
        }
        let first = crate::config::project_part(&target_project);
        if first.contains("{repository}") || first.is_empty() {
            return Err(self.invalid(
                key,
                format!(
                    "`{target_project}`: the first path component (the target project) must be a name or built from {{project}}, e.g. \"{{project}}/{{repository}}\" or \"mirror/{{repository}}\"; {{repository}} there would let a source repository choose which target project the relay writes into, with an account that can write every one"
                ),
            ));
        }
        if !crate::reference::is_valid_repository(&probe) || (probe.contains('/') && !whole_path) {
            return Err(self.invalid(
                key,
                format!(
                    "`{target_project}` is not a valid project name (lowercase letters, digits, '.', '_', '-')"
                ),
            ));
        }
        Ok(target_project)
    }

    /// `rules[].platforms`: `os/arch[/variant]` each, not empty.
    fn platforms(
        &self,
        key: &str,
        raw: Option<Vec<String>>,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(list) = raw else {
            return Ok(None);
        };
        for p in &list {
            let parts: Vec<&str> = p.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|x| x.is_empty()) {
                return Err(self.invalid(
                    key,
                    format!("`{p}` is not os/architecture[/variant], e.g. linux/amd64"),
                ));
            }
        }
        if list.is_empty() {
            return Err(self.invalid(key, "is empty; remove it to copy every platform"));
        }
        Ok(Some(list))
    }

    /// `rules[].labels`: Harbor label names, for a Harbor source only.
    fn labels(
        &self,
        key: &str,
        raw: Option<Vec<String>>,
        from: &RegistryConfig,
    ) -> Result<Vec<String>, ConfigError> {
        let list = raw.unwrap_or_default();
        if !list.is_empty() && !from.is_harbor {
            return Err(self.invalid(
                key,
                format!(
                    "labels are Harbor's: the source registry '{}' needs kind = \"harbor\"",
                    from.name
                ),
            ));
        }
        if list.iter().any(|l| l.trim().is_empty()) {
            return Err(self.invalid(key, "holds an empty label name"));
        }
        Ok(list)
    }

    /// `rules[].artifact_types`: Harbor type names (lowercase) or `*`.
    fn artifact_types(
        &self,
        key: &str,
        raw: Option<Vec<String>>,
    ) -> Result<Vec<String>, ConfigError> {
        let list = raw.unwrap_or_else(|| vec!["*".into()]);
        if list.is_empty() {
            return Err(self.invalid(key, "is empty; remove it to copy every type"));
        }
        for t in &list {
            let ok = t == "*"
                || (!t.is_empty()
                    && t.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    }));
            if !ok {
                return Err(self.invalid(
                    key,
                    format!("`{t}` is not a Harbor artifact type: use image, chart, cnab, wasm, sbom, … (lowercase) or \"*\""),
                ));
            }
        }
        Ok(list)
    }

    /// `rules[].reconcile_interval`: a duration of at least a second.
    fn reconcile_interval(
        &self,
        key: &str,
        raw: Option<String>,
    ) -> Result<Option<Duration>, ConfigError> {
        match self.duration(key, raw)? {
            Some(d) if d < Duration::from_secs(1) => Err(self.invalid(key, "must be at least 1s")),
            d => Ok(d),
        }
    }
}
