//! A rule's gates and how their verdicts combine: pure, tested here in
//! milliseconds. `replicate::gates::judge` fetches what they need; the worker
//! records what [`Decision::overall`] says (pass, hold, refuse).

use std::time::Duration;

use super::keys::TrustedKey;
use super::scan::{MaxSeverity, ScanVerdict};
use super::signature::Signed;

/// Default `hold_for`: how long a held job waits before it fails.
pub const DEFAULT_HOLD_FOR: Duration = Duration::from_secs(24 * 3600);
/// Default `gate_recheck`: how often a held job looks again by itself.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(60);

/// A rule's gates, loaded (key files read and checked) with the config.
#[derive(Clone, Debug)]
pub struct Gates {
    /// `require_signature`, if set.
    pub signature: Option<SignatureGate>,
    /// `max_severity`, if set.
    pub scan: Option<ScanGate>,
    /// `hold_for`: a job held longer fails with its reason.
    pub hold_for: Duration,
    /// `gate_recheck`: a held job is looked at again this often, events
    /// or not.
    pub recheck: Duration,
}

/// `require_signature = { keys = […], match_reference = … }`.
#[derive(Clone, Debug)]
pub struct SignatureGate {
    /// The keys a signature may verify against (any one suffices).
    pub keys: Vec<TrustedKey>,
    /// The signed `docker-reference` must name the source repository (its
    /// path; never the host, which the signer saw as the external name).
    pub match_reference: bool,
}

/// `max_severity`, `allow_cves`, `unscanned`.
#[derive(Clone, Debug)]
pub struct ScanGate {
    /// The highest severity let through.
    pub max: MaxSeverity,
    /// Vulnerabilities that do not count (Harbor's CVE allowlist).
    pub allow: Vec<String>,
    /// What a source that cannot scan the artifact means.
    pub unscanned: Unscanned,
}

/// `unscanned = "hold" | "pass"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unscanned {
    /// Wait (and fail after `hold_for`): the default.
    Hold,
    /// Let it through: a source with no scanner.
    Pass,
}

/// One gate's word on one artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It may cross; the note says why (which key, which scan).
    Pass(String),
    /// Not yet: the reason, in words a job shows.
    Hold(String),
    /// Never, for this digest: the reason.
    Refuse(String),
}

impl Verdict {
    /// The metric label: `pass`, `hold` or `refuse`.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass(_) => "pass",
            Verdict::Hold(_) => "hold",
            Verdict::Refuse(_) => "refuse",
        }
    }

    /// The words that go with it.
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Pass(s) | Verdict::Hold(s) | Verdict::Refuse(s) => s,
        }
    }
}

/// Every gate's verdict on one artifact, in a fixed order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The gate digest judged (for a signature or a referrer, its subject).
    pub digest: String,
    /// `(gate, verdict)`: `signature`, then `scan`, for those set.
    pub verdicts: Vec<(&'static str, Verdict)>,
}

impl Decision {
    /// What the job does: refused if any gate refuses, held if any holds
    /// (every holding gate's reason, joined), else it passes.
    pub fn overall(&self) -> Verdict {
        let of = |word: &str| -> Vec<String> {
            self.verdicts
                .iter()
                .filter(|(_, v)| v.word() == word)
                .map(|(g, v)| format!("{g}: {}", v.reason()))
                .collect()
        };
        let refused = of("refuse");
        if !refused.is_empty() {
            return Verdict::Refuse(refused.join("; "));
        }
        let held = of("hold");
        if !held.is_empty() {
            return Verdict::Hold(held.join("; "));
        }
        Verdict::Pass(of("pass").join("; "))
    }
}

/// The signature gate's verdict from what the source's signatures say.
/// A signature that does not count (another digest, another key, broken)
/// holds, as no signature does: the right one may still be pushed, and
/// `hold_for` ends the wait.
pub fn signature_verdict(signed: &Signed, keys: usize) -> Verdict {
    match signed {
        Signed::By { key, layout } => {
            Verdict::Pass(format!("signed by {} ({layout})", key.display()))
        }
        Signed::Not(why) => Verdict::Hold(format!(
            "waiting for a signature by {}: {why}",
            match keys {
                1 => "the trusted key".to_string(),
                n => format!("one of {n} keys"),
            }
        )),
    }
}

/// The scan gate's verdict from the source Harbor's scan.
pub fn scan_verdict(scan: &ScanVerdict, gate: &ScanGate) -> Verdict {
    match scan {
        ScanVerdict::Clean => Verdict::Pass(format!(
            "scanned, nothing above {} that counts",
            gate.max.word()
        )),
        ScanVerdict::Pending(why) => Verdict::Hold(why.clone()),
        ScanVerdict::Refused(why) => Verdict::Refuse(why.clone()),
        ScanVerdict::Unscanned => match gate.unscanned {
            Unscanned::Hold => Verdict::Hold(
                "the source has no scan of it and cannot make one (no scanner, or not a scannable type); unscanned = \"hold\"".into(),
            ),
            Unscanned::Pass => Verdict::Pass("not scannable on the source; unscanned = \"pass\"".into()),
        },
    }
}

/// The artifact a cosign tag belongs to: `sha256-<hex>.sig` (and `.att`,
/// `.sbom`, and the bare referrers fallback tag `sha256-<hex>`) are about
/// `sha256:<hex>`, and are gated as it is.
pub fn cosign_subject(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex = [".sig", ".att", ".sbom"]
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest);
    let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| format!("sha256:{hex}"))
}

/// The digest the gates judge once the manifest is read: a cosign tag's
/// subject, a referrer's subject, else the artifact's own (an index's own:
/// cosign signs the index, not its children).
pub fn gated_digest(
    reference: &crate::reference::Reference,
    top: &crate::manifest::Manifest,
) -> String {
    if let crate::reference::Reference::Tag(t) = reference
        && let Some(d) = cosign_subject(t)
    {
        return d;
    }
    top.subject().unwrap_or_else(|| top.digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(unscanned: Unscanned) -> ScanGate {
        ScanGate {
            max: MaxSeverity::High,
            allow: vec![],
            unscanned,
        }
    }

    #[test]
    fn a_refusal_beats_a_hold_and_a_hold_beats_a_pass() {
        let mut d = Decision {
            digest: "sha256:a".into(),
            verdicts: vec![
                ("signature", Verdict::Pass("signed by k".into())),
                ("scan", Verdict::Hold("scan running, 40 %".into())),
            ],
        };
        assert_eq!(
            d.overall(),
            Verdict::Hold("scan: scan running, 40 %".into())
        );
        d.verdicts[0].1 = Verdict::Hold("waiting for a signature".into());
        d.verdicts[1].1 = Verdict::Refuse("critical above high: 3 vulnerabilities".into());
        assert_eq!(
            d.overall(),
            Verdict::Refuse("scan: critical above high: 3 vulnerabilities".into())
        );
        d.verdicts[1].1 = Verdict::Pass("clean".into());
        assert!(matches!(d.overall(), Verdict::Hold(r) if r.starts_with("signature: waiting")));
        d.verdicts[0].1 = Verdict::Pass("signed by k".into());
        assert_eq!(
            d.overall(),
            Verdict::Pass("signature: signed by k; scan: clean".into())
        );
        assert_eq!(Decision::default().overall(), Verdict::Pass(String::new()));
    }

    #[test]
    fn a_signature_that_does_not_count_holds_and_says_how_many_keys() {
        let v = signature_verdict(&Signed::Not("no signature yet".into()), 2);
        assert_eq!(
            v,
            Verdict::Hold("waiting for a signature by one of 2 keys: no signature yet".into())
        );
        let v = signature_verdict(&Signed::Not("a signature of sha256:b".into()), 1);
        assert!(
            v.reason().contains("by the trusted key: a signature of"),
            "{v:?}"
        );
        let v = signature_verdict(
            &Signed::By {
                key: "/k/ci.pub".into(),
                layout: "bundle",
            },
            2,
        );
        assert_eq!(v, Verdict::Pass("signed by /k/ci.pub (bundle)".into()));
    }

    #[test]
    fn unscanned_holds_unless_the_rule_says_pass() {
        let s = ScanVerdict::Unscanned;
        assert_eq!(scan_verdict(&s, &gate(Unscanned::Hold)).word(), "hold");
        assert_eq!(scan_verdict(&s, &gate(Unscanned::Pass)).word(), "pass");
        let s = ScanVerdict::Refused("critical above high".into());
        assert_eq!(
            scan_verdict(&s, &gate(Unscanned::Pass)),
            Verdict::Refuse("critical above high".into())
        );
        let s = ScanVerdict::Pending("scan running, 40 %".into());
        assert_eq!(scan_verdict(&s, &gate(Unscanned::Pass)).word(), "hold");
        assert_eq!(
            scan_verdict(&ScanVerdict::Clean, &gate(Unscanned::Hold)).word(),
            "pass"
        );
    }

    #[test]
    fn cosign_tags_name_their_subject() {
        let hex = "a".repeat(64);
        let want = Some(format!("sha256:{hex}"));
        for tag in ["", ".sig", ".att", ".sbom"] {
            assert_eq!(cosign_subject(&format!("sha256-{hex}{tag}")), want, "{tag}");
        }
        assert_eq!(cosign_subject(&format!("sha256-{hex}.tar")), None);
        assert_eq!(cosign_subject(&format!("sha256-{}", "A".repeat(64))), None);
        assert_eq!(cosign_subject("sha256-abc.sig"), None);
        assert_eq!(cosign_subject("v1"), None);
    }
}
