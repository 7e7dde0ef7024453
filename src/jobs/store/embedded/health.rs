//! The embedded store under faults: whether it can write now (for
//! `/readyz` and the daemon's watch: sled refuses every write after one
//! failed, so a store that cannot write is reopened by restarting), what
//! an enqueue whose flush failed takes back (a `503` means nothing was
//! stored), and the high-water mark, a file beside sled's log that says
//! which job ids were accepted, so a store that opens behind it (a
//! truncated file, a lost snapshot, an old backup) refuses to start
//! instead of silently dropping jobs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{SledStore, key};
use crate::jobs::store::StoreError;

/// The high-water mark's file, in the store's directory (outside sled's
/// log and snapshot).
pub const MARK_FILE: &str = "harbor-relay.high-water";

/// The key in sled's `meta` tree of the highest job id ever created.
pub(super) const HIGH: &[u8] = b"high";

/// How often at most the mark is written (after a successful flush).
const MARK_EVERY: Duration = Duration::from_secs(1);

/// Write health and the mark's bookkeeping.
#[derive(Default)]
pub(super) struct Health {
    /// The last write failure and when writes began to fail.
    failing: Mutex<Option<(String, Instant)>>,
    /// When the mark was last written.
    marked: Mutex<Option<Instant>>,
}

/// What an enqueue wrote, to take back if its flush fails.
pub(super) enum Wrote {
    /// A new job, queued or not, under its dedupe key.
    New {
        id: u64,
        dedupe: String,
        queued: bool,
    },
    /// One more delivery folded into job `id`.
    Folded(u64),
}

/// Whether a store whose `meta` says `high` may open under a mark that
/// says `mark`: only if it is not behind.
pub fn behind(high: u64, mark: Option<u64>) -> Option<u64> {
    mark.filter(|m| high < *m)
}

/// Reads the mark in `dir`: the highest job id accepted, if recorded.
pub(super) fn read_mark(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(MARK_FILE)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("accepted-up-to "))
        .and_then(|v| v.trim().parse().ok())
}

fn write_mark(dir: &Path, high: u64) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!("{MARK_FILE}.tmp"));
    std::fs::write(
        &tmp,
        format!(
            "# harbor-relay: the highest job id this store accepted; a store that opens\n# behind it lost jobs and is refused. Remove this file to start with what is left.\naccepted-up-to {high}\n"
        ),
    )?;
    std::fs::rename(tmp, dir.join(MARK_FILE))
}

impl SledStore {
    /// The highest job id ever created here (sled's `meta` tree).
    pub(super) fn high(&self) -> Result<u64, StoreError> {
        Ok(self.meta.get(HIGH)?.map(|v| super::id_of(&v)).unwrap_or(0))
    }

    /// Flushes sled and notes how it went: a failure for `/readyz`; after a
    /// success the mark moves up (see [`SledStore::wrote_ok`]). Returns the
    /// highest job id the flush covers, read before it began: the mark
    /// must never lead what is on disk.
    pub(super) async fn flush_noted(&self) -> Result<u64, StoreError> {
        let high = self.high()?;
        if let Err(e) = self.db.flush_async().await {
            let e = StoreError::Db(e);
            self.write_failed(&e);
            return Err(e);
        }
        self.wrote_ok(high);
        Ok(high)
    }

    /// After a successful flush that covers jobs up to `high` (read before
    /// it began): writes stop failing, and the mark moves up to `high` (at
    /// most once a second; it may lag what is on disk, never lead it, or a
    /// `kill -9` right after would leave a store "behind" its mark).
    fn wrote_ok(&self, high: u64) {
        *self
            .health
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let mut marked = self.health.marked.lock().unwrap_or_else(|p| p.into_inner());
        if marked.is_some_and(|t| t.elapsed() < MARK_EVERY) {
            return;
        }
        *marked = Some(Instant::now());
        drop(marked);
        self.mark(high);
    }

    /// Writes the mark: jobs up to `high` are on disk.
    pub(super) fn mark(&self, high: u64) {
        if high > 0
            && let Err(e) = write_mark(&self.dir, high)
        {
            tracing::warn!(error = %e, "writing the job store's high-water mark");
        }
    }

    /// A flush failed: said by `/readyz` until one succeeds.
    fn write_failed(&self, e: &StoreError) {
        let mut failing = self
            .health
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let since = failing.as_ref().map_or_else(Instant::now, |(_, t)| *t);
        *failing = Some((e.to_string(), since));
    }

    /// Why the store cannot write, and for how long, if it cannot.
    pub fn write_problem(&self) -> Option<(String, Duration)> {
        self.health
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(e, t)| (e.clone(), t.elapsed()))
    }

    /// Takes back what an enqueue wrote whose flush failed, so nothing of
    /// it reaches the disk with a later flush.
    pub(super) fn take_back(&self, wrote: &[Wrote]) {
        let _g = self.guard();
        for w in wrote {
            let undone = match w {
                Wrote::New { id, dedupe, queued } => (|| {
                    self.jobs.remove(key(*id))?;
                    if *queued && self.queue.remove(key(*id))?.is_some() {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                    }
                    if self.dedupe.get(dedupe.as_bytes())?.as_deref() == Some(&key(*id)[..]) {
                        self.dedupe.remove(dedupe.as_bytes())?;
                    }
                    Ok::<_, StoreError>(())
                })(),
                Wrote::Folded(id) => (|| {
                    if let Some(mut job) = self.load(*id)? {
                        job.coalesced = job.coalesced.saturating_sub(1);
                        self.save(&job)?;
                    }
                    Ok(())
                })(),
            };
            if let Err(e) = undone {
                tracing::warn!(error = %e, "taking back a write whose flush failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_behind_its_mark_is_named() {
        assert_eq!(behind(50, Some(50)), None);
        assert_eq!(behind(60, Some(50)), None, "ahead: the mark lags");
        assert_eq!(behind(2, Some(50)), Some(50));
        assert_eq!(behind(0, None), None, "no mark yet");
    }

    #[test]
    fn the_mark_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_mark(dir.path()), None);
        write_mark(dir.path(), 42).expect("write");
        assert_eq!(read_mark(dir.path()), Some(42));
        std::fs::write(dir.path().join(MARK_FILE), "garbage").expect("write");
        assert_eq!(read_mark(dir.path()), None);
    }
}
