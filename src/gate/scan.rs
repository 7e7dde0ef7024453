//! Whether the source Harbor's scan lets an artifact through
//! (`max_severity`), decided from Harbor's answers already read: pure, no
//! I/O. Built from Harbor's source (`shared/research/gates.md` §6):
//!
//! - the overview is keyed by report MIME type; REST answers one of the
//!   two Harbor uses, webhooks may carry both;
//! - `scan_status` is a task status: only `Success` is a result; a rescan
//!   drops back to `Pending`;
//! - the top-level `severity` is recomputed from the findings starting at
//!   `None`, so an image whose findings are all `Unknown` shows `None`:
//!   the decision is made from the findings' counts, never that field;
//! - an unrecognised severity string ranks above `Critical`
//!   (`src/pkg/scan/vuln/severity.go` gives it 99);
//! - an index has no overview until every child has a report, and a
//!   merged `Success` with `complete_percent` under 100 means some
//!   children failed (`MergeScanStatus`, `src/pkg/scan/vuln/util.go`):
//!   not clean.

use serde_json::Value;

/// The report types Harbor's scan overview is keyed by, in the order
/// Harbor's assembler tries them.
pub const REPORT_TYPES: [&str; 2] = [
    "application/vnd.security.vulnerability.report; version=1.1",
    "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0",
];

/// `max_severity`: the highest severity let through. Harbor's "prevent
/// vulnerable images" names the lowest it blocks, so Harbor's `high` is
/// this `medium`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MaxSeverity {
    /// No finding at all, not even one of unknown or negligible severity.
    None,
    /// Up to low (unknown and negligible included).
    Low,
    /// Up to medium.
    Medium,
    /// Up to high.
    High,
    /// Anything Harbor ranks (a severity it does not know still blocks).
    Critical,
}

impl MaxSeverity {
    /// From the config's word.
    pub fn parse(word: &str) -> Option<MaxSeverity> {
        Some(match word {
            "none" => MaxSeverity::None,
            "low" => MaxSeverity::Low,
            "medium" => MaxSeverity::Medium,
            "high" => MaxSeverity::High,
            "critical" => MaxSeverity::Critical,
            _ => return None,
        })
    }

    /// The config's word for it.
    pub fn word(self) -> &'static str {
        match self {
            MaxSeverity::None => "none",
            MaxSeverity::Low => "low",
            MaxSeverity::Medium => "medium",
            MaxSeverity::High => "high",
            MaxSeverity::Critical => "critical",
        }
    }

    /// The highest rank let through (see [`rank`]).
    fn ceiling(self) -> u8 {
        match self {
            MaxSeverity::None => 0,
            MaxSeverity::Low => 4,
            MaxSeverity::Medium => 6,
            MaxSeverity::High => 8,
            MaxSeverity::Critical => 10,
        }
    }
}

/// A severity's rank: Harbor's order, with `Unknown` between `None` and
/// `Negligible` (Harbor counts it as `None`; here it passes any threshold
/// but `none`), and a string Harbor does not know above `Critical`.
pub fn rank(severity: &str) -> u8 {
    match severity {
        "None" => 0,
        "Unknown" => 1,
        "Negligible" => 2,
        "Low" => 4,
        "Medium" => 6,
        "High" => 8,
        "Critical" => 10,
        _ => 99,
    }
}

/// What the scan says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanVerdict {
    /// Scanned, nothing above the threshold.
    Clean,
    /// Not settled yet (no report, running, failed, partial): hold, with
    /// the reason in words.
    Pending(String),
    /// Scanned, something above the threshold: refuse, with the reason.
    Refused(String),
    /// The source cannot scan it (no scanner, or not a scannable type):
    /// `unscanned = "hold"` or `"pass"` decides.
    Unscanned,
}

/// The verdict from an artifact as Harbor's artifact API answers it with
/// `with_scan_overview=true`: its `scan_overview`, and, without one, its
/// `addition_links.vulnerabilities` (present when the artifact is
/// scannable but has no report yet).
pub fn from_artifact(artifact: &Value, max: MaxSeverity) -> ScanVerdict {
    let overview = &artifact["scan_overview"];
    match REPORT_TYPES.iter().find_map(|t| overview.get(*t)) {
        Some(report) => from_report(report, max),
        None if artifact["addition_links"]["vulnerabilities"].is_object() => {
            ScanVerdict::Pending("not scanned yet".into())
        }
        None => ScanVerdict::Unscanned,
    }
}

/// The verdict from one report summary (a `NativeReportSummary`).
pub fn from_report(report: &Value, max: MaxSeverity) -> ScanVerdict {
    let status = report["scan_status"].as_str().unwrap_or_default();
    let percent = report["complete_percent"].as_u64().unwrap_or(0);
    match status {
        "Success" => {}
        "Pending" | "Scheduled" => return ScanVerdict::Pending("scan queued".into()),
        "Running" => return ScanVerdict::Pending(format!("scan running, {percent} %")),
        "" => return ScanVerdict::Pending("no scan status".into()),
        other => return ScanVerdict::Pending(format!("scan {}", other.to_lowercase())),
    }
    // An index merged from children: Success with some failed.
    if report.get("complete_percent").is_some() && percent < 100 {
        return ScanVerdict::Pending(format!("scan incomplete: {percent} % of its parts scanned"));
    }
    let counts = report["summary"]["summary"].as_object();
    let Some(counts) = counts else {
        // Success and no counts: nothing found, or a body that does not
        // parse, which must not count as clean.
        return match report["summary"]["total"].as_u64() {
            Some(0) => ScanVerdict::Clean,
            _ => ScanVerdict::Pending("the scan's summary cannot be read".into()),
        };
    };
    judge(
        counts
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(1) > 0)
            .map(|(s, n)| (s.as_str(), n.as_u64().unwrap_or(1))),
        max,
    )
}

/// The verdict from the findings themselves (`…/additions/vulnerabilities`,
/// one report type to `{vulnerabilities: [...]}`), with the CVEs in
/// `allow` not counted, as Harbor's allowlist does (exact ids).
pub fn from_findings(body: &Value, allow: &[String], max: MaxSeverity) -> ScanVerdict {
    let Some(report) = REPORT_TYPES.iter().find_map(|t| body.get(*t)) else {
        return ScanVerdict::Pending("no findings report yet".into());
    };
    let Some(list) = report["vulnerabilities"].as_array() else {
        return ScanVerdict::Pending("the findings cannot be read".into());
    };
    let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
    for v in list {
        let id = v["id"].as_str().unwrap_or_default();
        if allow.iter().any(|a| a == id) {
            continue;
        }
        *counts
            .entry(v["severity"].as_str().unwrap_or("(none)"))
            .or_default() += 1;
    }
    judge(counts.into_iter(), max)
}

/// Clean unless a severity with findings ranks above the threshold.
fn judge<'a>(counts: impl Iterator<Item = (&'a str, u64)>, max: MaxSeverity) -> ScanVerdict {
    let mut above: Vec<(u8, String)> = counts
        .filter(|(s, _)| rank(s) > max.ceiling())
        .map(|(s, n)| (rank(s), format!("{n} {s}")))
        .collect();
    if above.is_empty() {
        return ScanVerdict::Clean;
    }
    above.sort_by_key(|a| std::cmp::Reverse(a.0));
    let listed: Vec<String> = above.into_iter().map(|(_, t)| t).collect();
    ScanVerdict::Refused(format!(
        "{} above max_severity {}",
        listed.join(", "),
        max.word()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(status: &str, counts: Value, percent: u64) -> Value {
        json!({"scan_status": status, "severity": "None", "complete_percent": percent,
               "summary": {"total": 1, "fixable": 0, "summary": counts}})
    }

    #[test]
    fn a_clean_scan_passes_and_findings_above_the_threshold_refuse() {
        let r = report("Success", json!({"Medium": 1, "Low": 2}), 100);
        assert_eq!(from_report(&r, MaxSeverity::Medium), ScanVerdict::Clean);
        assert_eq!(
            from_report(&r, MaxSeverity::Low),
            ScanVerdict::Refused("1 Medium above max_severity low".into())
        );
        let r = report("Success", json!({"Critical": 3, "High": 1}), 100);
        assert_eq!(
            from_report(&r, MaxSeverity::Medium),
            ScanVerdict::Refused("3 Critical, 1 High above max_severity medium".into())
        );
    }

    #[test]
    fn none_on_top_does_not_hide_unknown_findings_and_strange_words_rank_highest() {
        // Harbor shows severity None for an image whose findings are all Unknown.
        let r = report("Success", json!({"Unknown": 2}), 100);
        assert!(matches!(
            from_report(&r, MaxSeverity::None),
            ScanVerdict::Refused(_)
        ));
        assert_eq!(from_report(&r, MaxSeverity::Low), ScanVerdict::Clean);
        let r = report("Success", json!({"Catastrophic": 1}), 100);
        assert!(matches!(
            from_report(&r, MaxSeverity::Critical),
            ScanVerdict::Refused(_)
        ));
    }

    #[test]
    fn what_is_not_settled_holds() {
        let r = report("Running", json!({}), 40);
        assert_eq!(
            from_report(&r, MaxSeverity::High),
            ScanVerdict::Pending("scan running, 40 %".into())
        );
        let r = report("Error", Value::Null, 0);
        assert_eq!(
            from_report(&r, MaxSeverity::High),
            ScanVerdict::Pending("scan error".into())
        );
        // An index whose merged Success hides failed children.
        let r = report("Success", json!({"Low": 1}), 50);
        assert!(matches!(
            from_report(&r, MaxSeverity::High),
            ScanVerdict::Pending(_)
        ));
        // A summary that does not parse is not clean.
        let r = json!({"scan_status": "Success", "summary": "garbage"});
        assert!(matches!(
            from_report(&r, MaxSeverity::High),
            ScanVerdict::Pending(_)
        ));
    }

    #[test]
    fn no_overview_is_pending_when_scannable_and_unscanned_otherwise() {
        let scannable =
            json!({"addition_links": {"vulnerabilities": {"href": "/x", "absolute": false}}});
        assert!(matches!(
            from_artifact(&scannable, MaxSeverity::High),
            ScanVerdict::Pending(_)
        ));
        assert_eq!(
            from_artifact(&json!({}), MaxSeverity::High),
            ScanVerdict::Unscanned
        );
        let old = json!({"scan_overview": {REPORT_TYPES[1]: report("Success", json!({}), 100)}});
        assert_eq!(from_artifact(&old, MaxSeverity::None), ScanVerdict::Clean);
    }

    #[test]
    fn allowed_cves_do_not_count() {
        let body = json!({REPORT_TYPES[0]: {"vulnerabilities": [
            {"id": "CVE-2026-0001", "severity": "Critical"},
            {"id": "CVE-2026-0002", "severity": "Low"},
        ]}});
        assert!(matches!(
            from_findings(&body, &[], MaxSeverity::High),
            ScanVerdict::Refused(_)
        ));
        let allow = vec!["CVE-2026-0001".to_string()];
        assert_eq!(
            from_findings(&body, &allow, MaxSeverity::Low),
            ScanVerdict::Clean
        );
        assert!(matches!(
            from_findings(&json!({}), &allow, MaxSeverity::Low),
            ScanVerdict::Pending(_)
        ));
    }

    #[test]
    fn max_severity_reads_the_configs_words() {
        assert_eq!(MaxSeverity::parse("high"), Some(MaxSeverity::High));
        assert_eq!(MaxSeverity::parse("High"), None);
    }
}
