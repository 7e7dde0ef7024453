//! Harbor's vulnerability scans in the double: what a scanner reported per
//! artifact, shown as Harbor's artifact API shows it (`gates.md` §6):
//!
//! - `with_scan_overview=true` adds `scan_overview`, keyed by the first
//!   report type of `X-Accept-Vulnerabilities` that Harbor knows, else
//!   its 1.0 type (`parseScanReportMimeTypes`,
//!   src/server/v2.0/handler/util.go; the assembler stops at the first
//!   summary, src/server/v2.0/handler/assembler/report.go);
//! - a scannable artifact without a report has no overview but its
//!   `addition_links.vulnerabilities`; without a scanner, neither
//!   (`IsScannable`, src/controller/scan/checker.go);
//! - `…/additions/vulnerabilities` answers `{}` before a report, 404
//!   without a scanner (GetVulnerabilitiesAddition,
//!   src/server/v2.0/handler/artifact.go);
//! - an index has no report of its own: no overview until every child
//!   has one (`GetReport`, src/controller/scan/base_controller.go), then
//!   the children merged: any `Running` is Running, else any `Stopped`,
//!   else any `Success` is Success even beside `Error`s
//!   (`MergeScanStatus`, src/pkg/scan/vuln/util.go), `complete_percent`
//!   the successful share, the findings' union de-duplicated on
//!   id-package-version (`Merge`, src/pkg/scan/vuln/summary.go).

use super::*;

/// The report types Harbor serves, in its order.
pub const REPORT_TYPES: [&str; 2] = [
    "application/vnd.security.vulnerability.report; version=1.1",
    "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0",
];

/// One artifact's scan as the scanner left it.
#[derive(Clone, Debug)]
pub struct Scan {
    /// The report summary (`NativeReportSummary`).
    pub summary: Value,
    /// The findings (`vuln.Report.vulnerabilities`).
    pub findings: Vec<Value>,
}

/// The report type the caller asked for, as Harbor picks it.
fn chosen_type(headers: &HeaderMap) -> &'static str {
    let asked = headers
        .get("x-accept-vulnerabilities")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    asked
        .split(',')
        .map(str::trim)
        .find_map(|a| REPORT_TYPES.iter().find(|t| **t == a).copied())
        .unwrap_or(REPORT_TYPES[1])
}

/// The children of `digest` in `repository` when it is an index.
async fn children(st: &HarborState, repository: &str, digest: &str) -> Vec<String> {
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v2/{repository}/manifests/{digest}",
            st.upstream
        ))
        .header("accept", harbor_relay::manifest::ACCEPTED.join(", "))
        .send()
        .await
        .expect("GET manifest");
    let m: Value = resp.json().await.unwrap_or_default();
    m["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["digest"].as_str().map(str::to_string))
        .collect()
}

/// An index's scan: `None` until every child has a report, then merged.
fn merged(scans: &BTreeMap<String, Scan>, children: &[String]) -> Option<Scan> {
    let reports: Vec<&Scan> = children
        .iter()
        .map(|c| scans.get(c))
        .collect::<Option<_>>()?;
    let status = |s: &Scan| s.summary["scan_status"].as_str().unwrap_or("").to_string();
    let statuses: Vec<String> = reports.iter().map(|s| status(s)).collect();
    let any = |w: &str| statuses.iter().any(|s| s == w);
    let merged_status = if any("Running") {
        "Running"
    } else if any("Stopped") {
        "Stopped"
    } else if any("Success") {
        "Success"
    } else {
        "Error"
    };
    let ok = statuses.iter().filter(|s| *s == "Success").count();
    let percent = (ok * 100 / children.len().max(1)) as u64;
    let mut seen = std::collections::HashSet::new();
    let findings: Vec<Value> = reports
        .iter()
        .flat_map(|s| s.findings.iter().cloned())
        .filter(|f| seen.insert(format!("{}-{}-{}", f["id"], f["package"], f["version"])))
        .collect();
    let pairs: Vec<(String, String)> = findings
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap_or("").to_string(),
                f["severity"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut scan = report("merged", &pairs);
    scan.summary["scan_status"] = merged_status.into();
    scan.summary["complete_percent"] = percent.into();
    Some(scan)
}

/// A finished report with these findings (`(CVE id, severity)`), counted
/// as Harbor counts them.
fn report(id: &str, findings: &[(&str, &str)]) -> Scan {
    let mut counts = serde_json::Map::new();
    let mut top = ("None", 0u8);
    for (_, sev) in findings {
        let n = counts.get(*sev).and_then(Value::as_u64).unwrap_or(0);
        counts.insert(sev.to_string(), json!(n + 1));
        // Harbor's top-level severity: Unknown counts as None.
        let code = match *sev {
            "Negligible" => 1,
            "Low" => 2,
            "Medium" => 3,
            "High" => 4,
            "Critical" => 5,
            "None" | "Unknown" => 0,
            _ => 99,
        };
        if code > top.1 {
            top = (sev, code);
        }
    }
    let summary = json!({
        "report_id": format!("r-{id}"), "scan_status": "Success", "severity": top.0,
        "duration": 3, "summary": {"total": findings.len(), "fixable": 0, "summary": counts},
        "start_time": "2026-12-04T00:00:00Z", "end_time": "2026-12-04T00:00:03Z",
        "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "v0.60.0"},
        "complete_percent": 100
    });
    let findings = findings
        .iter()
        .map(|(id, sev)| json!({"id": id, "package": "openssl", "version": "3.0.0", "severity": sev}))
        .collect();
    Scan { summary, findings }
}

/// An artifact's scan: its own report, or an index's children merged.
pub(super) async fn scan_of(st: &HarborState, repository: &str, digest: &str) -> Option<Scan> {
    if let Some(s) = st.scans.lock().expect("scans").get(digest) {
        return Some(s.clone());
    }
    let kids = children(st, repository, digest).await;
    if kids.is_empty() {
        return None;
    }
    merged(&st.scans.lock().expect("scans"), &kids)
}

/// What `with_scan_overview=true` adds to an artifact's JSON.
pub(super) async fn add_overview(
    st: &HarborState,
    headers: &HeaderMap,
    repository: &str,
    digest: &str,
    artifact: &mut Value,
) {
    if !*st.scanner.lock().expect("scanner") {
        return;
    }
    match scan_of(st, repository, digest).await {
        Some(scan) => {
            artifact["scan_overview"] = json!({ chosen_type(headers): scan.summary });
        }
        None => {
            artifact["addition_links"] = json!({"vulnerabilities": {
                "href": format!("/api/v2.0/projects/x/repositories/y/artifacts/{digest}/additions/vulnerabilities"),
                "absolute": false
            }});
        }
    }
}

/// `GET …/artifacts/{reference}/additions/vulnerabilities`.
pub(super) async fn vulnerabilities(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, repo, reference)): Path<(String, String, String)>,
) -> Response {
    if who(&st, &headers).is_none() {
        return errors(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    if !*st.scanner.lock().expect("scanner") {
        return errors(StatusCode::NOT_FOUND, "no scanner");
    }
    let Some(repo) = super::artifacts::twice_decoded(&repo) else {
        return super::artifacts::not_twice_encoded();
    };
    let Some(digest) =
        super::artifacts::upstream_digest(&st, &format!("{project}/{repo}"), &reference).await
    else {
        return errors(StatusCode::NOT_FOUND, "artifact not found");
    };
    match scan_of(&st, &format!("{project}/{repo}"), &digest).await {
        None => axum::Json(json!({})).into_response(),
        Some(scan) => axum::Json(json!({ chosen_type(&headers): {
            "generated_at": "2026-12-04T00:00:00Z",
            "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "v0.60.0"},
            "severity": scan.summary["severity"],
            "vulnerabilities": scan.findings,
        }}))
        .into_response(),
    }
}

impl super::FakeHarbor {
    /// Turns the scanner on: artifacts are scannable, reports as set.
    pub fn enable_scanner(&self) {
        *self.state.scanner.lock().expect("scanner") = true;
    }

    /// The scanner's report for `digest`: a finished scan with these
    /// findings (`(CVE id, severity)`), counted as Harbor counts them.
    pub fn scanned(&self, digest: &str, findings: &[(&str, &str)]) {
        self.state
            .scans
            .lock()
            .expect("scans")
            .insert(digest.to_string(), report(digest, findings));
    }

    /// A scan that ended in `Error` for `digest` (`SCANNING_FAILED`).
    pub fn scan_failed(&self, digest: &str) {
        let summary = json!({"report_id": "r", "scan_status": "Error", "complete_percent": 0});
        self.state.scans.lock().expect("scans").insert(
            digest.to_string(),
            Scan {
                summary,
                findings: Vec::new(),
            },
        );
    }

    /// A scan in progress for `digest` (`Running`, `percent` done).
    pub fn scanning(&self, digest: &str, percent: u64) {
        let summary =
            json!({"report_id": "r", "scan_status": "Running", "complete_percent": percent});
        self.state.scans.lock().expect("scans").insert(
            digest.to_string(),
            Scan {
                summary,
                findings: Vec::new(),
            },
        );
    }
}
