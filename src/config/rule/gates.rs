//! A rule's gates (issue 26): `require_signature`, `max_severity`,
//! `allow_cves`, `unscanned`, `hold_for` and `gate_recheck`, each checked
//! with a message that names the key, and every key file read and checked
//! here, so a file that is not a P-256 public key stops the load (and
//! `check`) instead of holding every job.

use std::time::Duration;

use super::super::raw::RawRule;
use super::super::{ConfigError, Loader, RegistryConfig};
use crate::gate::policy::{DEFAULT_HOLD_FOR, DEFAULT_RECHECK};
use crate::gate::scan::MaxSeverity;
use crate::gate::{Gates, ScanGate, SignatureGate, Unscanned};

impl Loader<'_> {
    /// The `i`th rule's gates; `None` when it sets neither gate (and then
    /// none of the keys that only a gate reads).
    pub(in crate::config) fn gates(
        &self,
        i: usize,
        r: &RawRule,
        from: &RegistryConfig,
    ) -> Result<Option<Gates>, ConfigError> {
        let key = |k: &str| format!("rules[{i}].{k}");
        let signature = match &r.require_signature {
            None => None,
            Some(s) => Some(self.signature_gate(&key("require_signature.keys"), s)?),
        };
        let scan = match &r.max_severity {
            None => None,
            Some(word) => Some(self.scan_gate(i, r, word, from)?),
        };
        if scan.is_none() {
            for (k, set) in [
                ("allow_cves", r.allow_cves.is_some()),
                ("unscanned", r.unscanned.is_some()),
            ] {
                if set {
                    return Err(self.invalid(key(k), "applies to the scan gate: set max_severity"));
                }
            }
        }
        if signature.is_none() && scan.is_none() {
            for (k, set) in [
                ("hold_for", r.hold_for.is_some()),
                ("gate_recheck", r.gate_recheck.is_some()),
            ] {
                if set {
                    return Err(self.invalid(
                        key(k),
                        "applies to gated rules: set require_signature or max_severity",
                    ));
                }
            }
            return Ok(None);
        }
        let hold_for = self
            .duration(&key("hold_for"), r.hold_for.clone())?
            .unwrap_or(DEFAULT_HOLD_FOR);
        let recheck = self
            .duration(&key("gate_recheck"), r.gate_recheck.clone())?
            .unwrap_or(DEFAULT_RECHECK);
        if recheck < Duration::from_secs(1) {
            return Err(self.invalid(key("gate_recheck"), "must be at least 1s"));
        }
        if hold_for < recheck {
            return Err(self.invalid(
                key("hold_for"),
                format!(
                    "is shorter than gate_recheck ({}): a held job would fail before it is looked at again",
                    humantime::format_duration(recheck)
                ),
            ));
        }
        Ok(Some(Gates {
            signature,
            scan,
            hold_for,
            recheck,
        }))
    }

    /// `require_signature = { keys = […], match_reference = … }`: at least
    /// one key, each a P-256 public key in PEM.
    fn signature_gate(
        &self,
        key: &str,
        raw: &super::super::raw::RawSignature,
    ) -> Result<SignatureGate, ConfigError> {
        if raw.keys.is_empty() {
            return Err(self.invalid(
                key,
                "is empty: name at least one public key file (cosign.pub)",
            ));
        }
        let mut keys = Vec::with_capacity(raw.keys.len());
        for k in &raw.keys {
            let path = self.expand(key, k)?;
            let loaded = crate::gate::keys::load(std::path::Path::new(&path))
                .map_err(|e| self.invalid(key, e.to_string()))?;
            keys.push(loaded);
        }
        Ok(SignatureGate {
            keys,
            match_reference: raw.match_reference.unwrap_or(false),
        })
    }

    /// `max_severity`, `allow_cves`, `unscanned`: the scan is the source
    /// Harbor's, so the source must be `kind = "harbor"`.
    fn scan_gate(
        &self,
        i: usize,
        r: &RawRule,
        word: &str,
        from: &RegistryConfig,
    ) -> Result<ScanGate, ConfigError> {
        let key = |k: &str| format!("rules[{i}].{k}");
        let max = MaxSeverity::parse(word).ok_or_else(|| {
            self.invalid(
                key("max_severity"),
                format!(
                    "`{word}` is not a severity: use none, low, medium, high or critical (the highest let through)"
                ),
            )
        })?;
        if !from.is_harbor {
            return Err(self.invalid(
                key("max_severity"),
                format!(
                    "the scan is the source Harbor's: the source registry '{}' needs kind = \"harbor\"",
                    from.name
                ),
            ));
        }
        let allow = r.allow_cves.clone().unwrap_or_default();
        if let Some(bad) = allow.iter().find(|c| c.trim().is_empty() || c.len() > 64) {
            return Err(self.invalid(
                key("allow_cves"),
                format!(
                    "`{}` is not a vulnerability id",
                    bad.chars().take(64).collect::<String>()
                ),
            ));
        }
        let unscanned = match r.unscanned.as_deref() {
            None | Some("hold") => Unscanned::Hold,
            Some("pass") => Unscanned::Pass,
            Some(other) => {
                return Err(self.invalid(
                    key("unscanned"),
                    format!("`{other}`: use \"hold\" (wait for a scan) or \"pass\""),
                ));
            }
        };
        Ok(ScanGate {
            max,
            allow,
            unscanned,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    /// A config whose rule (from a Harbor source) ends with `gate_lines`.
    fn config(gate_lines: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:9000\"\n[store]\npath = \"/var/lib/relay\"\n[registries.external]\nurl = \"https://harbor.example\"\nkind = \"harbor\"\n[registries.plain]\nurl = \"http://127.0.0.1:5000\"\n[registries.integrated]\nurl = \"https://harbor.local\"\n[[rules]]\nfrom = \"external\"\nto = \"integrated\"\n{gate_lines}\n"
        )
    }

    fn load(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/relay.toml"), text, &|_| None).map_err(|e| e.to_string())
    }

    /// A P-256 public key in PEM, written to `dir/name`.
    fn key_file(dir: &Path, name: &str) -> String {
        use p256::pkcs8::EncodePublicKey as _;
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("key");
        let pem = secret
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("pem");
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write");
        path.display().to_string()
    }

    #[test]
    fn gates_load_with_their_defaults_and_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_file(dir.path(), "ci.pub");
        let c = load(&config(&format!(
            "require_signature = {{ keys = [\"{key}\"] }}\nmax_severity = \"high\"\nallow_cves = [\"CVE-2026-1\"]"
        )))
        .expect("loads");
        let g = c.rules[0].gates.as_ref().expect("gated");
        let sig = g.signature.as_ref().expect("signature gate");
        assert_eq!((sig.keys.len(), sig.match_reference), (1, false));
        let scan = g.scan.as_ref().expect("scan gate");
        assert_eq!(scan.max, crate::gate::scan::MaxSeverity::High);
        assert_eq!(scan.unscanned, crate::gate::Unscanned::Hold);
        assert_eq!(scan.allow, vec!["CVE-2026-1".to_string()]);
        assert_eq!(g.hold_for, crate::gate::policy::DEFAULT_HOLD_FOR);
        assert_eq!(g.recheck, crate::gate::policy::DEFAULT_RECHECK);
        assert!(load(&config("")).expect("loads").rules[0].gates.is_none());
    }

    #[test]
    fn each_gate_key_refuses_what_it_cannot_use_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_file(dir.path(), "ci.pub");
        let not_a_key = dir.path().join("ci.key");
        std::fs::write(
            &not_a_key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let cases = [
            (
                format!(
                    "require_signature = {{ keys = [\"{}\"] }}",
                    not_a_key.display()
                ),
                vec!["rules[0].require_signature.keys", "ci.key"],
            ),
            (
                "require_signature = { keys = [\"/nonexistent/ci.pub\"] }".to_string(),
                vec!["/nonexistent/ci.pub", "cannot read"],
            ),
            (
                "require_signature = { keys = [] }".to_string(),
                vec!["require_signature.keys", "is empty"],
            ),
            (
                "max_severity = \"severe\"".to_string(),
                vec![
                    "rules[0].max_severity",
                    "none, low, medium, high or critical",
                ],
            ),
            (
                "allow_cves = [\"CVE-1\"]".to_string(),
                vec!["rules[0].allow_cves", "set max_severity"],
            ),
            (
                "max_severity = \"low\"\nunscanned = \"skip\"".to_string(),
                vec!["rules[0].unscanned", "\"hold\""],
            ),
            (
                "hold_for = \"1h\"".to_string(),
                vec!["rules[0].hold_for", "require_signature or max_severity"],
            ),
            (
                format!("require_signature = {{ keys = [\"{key}\"] }}\nhold_for = \"10s\""),
                vec!["rules[0].hold_for", "shorter than gate_recheck (1m)"],
            ),
            (
                format!("require_signature = {{ keys = [\"{key}\"] }}\ngate_recheck = \"10ms\""),
                vec!["rules[0].gate_recheck", "at least 1s"],
            ),
        ];
        for (lines, wanted) in cases {
            let e = load(&config(&lines)).expect_err(&lines);
            for w in wanted {
                assert!(e.contains(w), "{lines}: `{w}` not in: {e}");
            }
        }
        let plain =
            config("max_severity = \"high\"").replace("from = \"external\"", "from = \"plain\"");
        let e = load(&plain).expect_err("a scan needs Harbor");
        assert!(e.contains("'plain' needs kind = \"harbor\""), "{e}");
    }
}
