//! Moving jobs from one store to another: `harbor-relay store export`
//! writes a store's jobs as JSON Lines, `store import` queues the ones
//! still to do in another store.
//!
//! It exists for the move from one relay on the embedded store to several
//! on PostgreSQL (or back): the jobs the old relay accepted but had not
//! finished must not be lost in between. The format is a header line, then
//! one job per line, oldest first, each the record both backends keep.
//! The header counts the jobs, so an export cut short (a full disk, an
//! interrupted copy) is refused rather than half imported.
//!
//! Everything here is pure: the commands in `cli/store.rs` read and write
//! the stores and the files.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::jobs::{Job, JobSpec, JobState};

/// The header's `format`: what tells an export from any other JSON file.
pub const FORMAT: &str = "harbor-relay jobs";

/// The export format's version; a newer one is refused.
pub const VERSION: u32 = 1;

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written.
    pub version: u32,
    /// How many job lines follow.
    pub jobs: usize,
    /// When the export was written (Unix milliseconds).
    pub exported_ms: u64,
    /// The harbor-relay that wrote it, for whoever reads the file.
    pub by: String,
}

/// Why an export could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The first line is not an export's header.
    #[error("not a harbor-relay jobs export (the first line is not its header): {0}")]
    NotExport(String),
    /// Written by a newer harbor-relay.
    #[error("the export is format version {0}; this harbor-relay reads version {VERSION}")]
    Version(u32),
    /// A line is not a job a store could hold.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based, the header being line 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// Fewer or more jobs than the header counts.
    #[error(
        "the export is incomplete: its header counts {expected} jobs, {found} follow (was the file cut short?)"
    )]
    Count {
        /// From the header.
        expected: usize,
        /// Job lines read.
        found: usize,
    },
}

/// Writes `jobs` as an export, oldest first, whatever order they come in.
pub fn write(out: &mut impl Write, jobs: &[Job], now_ms: u64) -> Result<(), TransferError> {
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        jobs: jobs.len(),
        exported_ms: now_ms,
        by: format!("harbor-relay {}", env!("CARGO_PKG_VERSION")),
    };
    serde_json::to_writer(&mut *out, &header).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    let mut ordered: Vec<&Job> = jobs.iter().collect();
    ordered.sort_by_key(|j| j.id);
    for job in ordered {
        serde_json::to_writer(&mut *out, job).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads an export: the header, then every job, each checked with the
/// rules a webhook's job passes (an edited file is input like any other).
pub fn read(input: impl BufRead) -> Result<(Header, Vec<Job>), TransferError> {
    let mut lines = input.lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let header: Header = serde_json::from_str(&first)
        .map_err(|e| TransferError::NotExport(e.to_string()))
        .and_then(|h: Header| match h.format == FORMAT {
            true => Ok(h),
            false => Err(TransferError::NotExport(format!("format `{}`", h.format))),
        })?;
    if header.version > VERSION {
        return Err(TransferError::Version(header.version));
    }
    let mut jobs = Vec::with_capacity(header.jobs.min(100_000));
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| TransferError::Line {
            line: line_no,
            message,
        };
        let job: Job = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        job.spec
            .validate()
            .map_err(|e| bad(format!("job {}: {e}", job.id)))?;
        jobs.push(job);
    }
    if jobs.len() != header.jobs {
        return Err(TransferError::Count {
            expected: header.jobs,
            found: jobs.len(),
        });
    }
    Ok((header, jobs))
}

/// What an import does with an export's jobs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportPlan {
    /// The specs to enqueue, oldest first.
    pub specs: Vec<JobSpec>,
    /// The export's id of each spec, in the same order (for messages).
    pub from_ids: Vec<u64>,
    /// Succeeded jobs: history, left out.
    pub succeeded: usize,
    /// Failed jobs left out (without `--include-failed`).
    pub failed_left: usize,
}

/// Decides which jobs the new store takes: every job not yet done
/// (queued, running when the old relay stopped, or waiting for a retry)
/// starts again as a new queued job; failed jobs only when asked
/// (`include_failed`), since someone may have given up on them on
/// purpose; succeeded jobs never.
pub fn plan(mut jobs: Vec<Job>, include_failed: bool) -> ImportPlan {
    jobs.sort_by_key(|j| j.id);
    let mut plan = ImportPlan::default();
    for job in jobs {
        match job.state {
            JobState::Succeeded => plan.succeeded += 1,
            JobState::Failed | JobState::Refused if !include_failed => plan.failed_left += 1,
            JobState::Queued
            | JobState::Running
            | JobState::Retrying
            | JobState::Held
            | JobState::Failed
            | JobState::Refused => {
                plan.from_ids.push(job.id);
                plan.specs.push(job.spec);
            }
        }
    }
    plan
}

/// The registry names the specs use that `known` does not: such jobs
/// could only fail in the new relay, so the import refuses them up front.
pub fn unknown_registries<'a>(
    specs: impl IntoIterator<Item = &'a JobSpec>,
    known: impl Fn(&str) -> bool,
) -> BTreeSet<String> {
    specs
        .into_iter()
        .flat_map(|s| [&s.from, &s.to])
        .filter(|name| !known(name))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::store::tests::spec;
    use crate::jobs::store::transition::new_job;

    fn job(id: u64, state: JobState) -> Job {
        Job {
            state,
            ..new_job(id, spec(&format!("t{id}")), 1_000)
        }
    }

    fn export(jobs: &[Job]) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, jobs, 5).expect("write");
        out
    }

    #[test]
    fn an_export_reads_back_whole_and_oldest_first() {
        let jobs = vec![job(3, JobState::Failed), job(1, JobState::Queued)];
        let (header, back) = read(&export(&jobs)[..]).expect("read");
        assert_eq!((header.format.as_str(), header.jobs), (FORMAT, 2));
        assert_eq!(back, vec![jobs[1].clone(), jobs[0].clone()]);
    }

    #[test]
    fn a_file_that_is_not_an_export_or_is_cut_short_is_refused() {
        let text = String::from_utf8(export(&[
            job(1, JobState::Queued),
            job(2, JobState::Queued),
        ]))
        .expect("utf-8");
        let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(matches!(
            read(cut.as_bytes()),
            Err(TransferError::Count {
                expected: 2,
                found: 1
            })
        ));
        assert!(matches!(
            read(&b"{\"jobs\": []}\n"[..]),
            Err(TransferError::NotExport(_))
        ));
        assert!(matches!(read(&b""[..]), Err(TransferError::NotExport(_))));
        let newer = String::from_utf8(export(&[]))
            .expect("utf-8")
            .replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            read(newer.as_bytes()),
            Err(TransferError::Version(2))
        ));
    }

    #[test]
    fn a_job_line_is_checked_like_webhook_input() {
        let mut bad = job(7, JobState::Queued);
        bad.spec.target_repository = "../etc".into();
        let text = export(&[job(1, JobState::Queued), bad]);
        let err = read(&text[..]).expect_err("refused");
        assert!(
            matches!(&err, TransferError::Line { line: 3, message } if message.contains("job 7")),
            "{err}"
        );
        let garbage = format!(
            "{}not json\n",
            String::from_utf8(export(&[])).expect("utf-8")
        );
        assert!(matches!(
            read(garbage.as_bytes()),
            Err(TransferError::Line { line: 2, .. })
        ));
    }

    #[test]
    fn pending_jobs_move_failed_ones_only_when_asked_succeeded_never() {
        let jobs = vec![
            job(5, JobState::Succeeded),
            job(4, JobState::Failed),
            job(3, JobState::Retrying),
            job(2, JobState::Running),
            job(1, JobState::Queued),
        ];
        let p = plan(jobs.clone(), false);
        assert_eq!(p.from_ids, vec![1, 2, 3]);
        assert_eq!(p.specs[0], jobs[4].spec);
        assert_eq!((p.succeeded, p.failed_left), (1, 1));
        let p = plan(jobs, true);
        assert_eq!(p.from_ids, vec![1, 2, 3, 4]);
        assert_eq!((p.succeeded, p.failed_left), (1, 0));
    }

    #[test]
    fn registries_the_new_config_lacks_are_named() {
        let mut other = spec("x");
        other.to = "site-b".into();
        let specs = [spec("a"), other];
        let unknown = unknown_registries(&specs, |n| n == "external" || n == "integrated");
        assert_eq!(unknown.into_iter().collect::<Vec<_>>(), vec!["site-b"]);
    }
}
