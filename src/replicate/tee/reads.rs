//! One read from the source for every copy of a fan-out, of what is not a
//! blob: manifests, and the lookups of a subject's referrers.
//!
//! The copies of a fan-out read the same manifests: the pushed one (by
//! tag or digest), an index's children, the referrers. Read once per copy,
//! three sites cost three pulls of each on the source: a Harbor counts
//! each manifest `GET` as a pull of the artifact (its pull count, its
//! audit log, its `PULL_ARTIFACT` webhooks; a `HEAD` is not one:
//! `src/server/registry/manifest.go`, `getManifest`) and a rate-limited source
//! spends three times its budget. The same holds for the referrers API and
//! the cosign tags asked for each subject. So the first copy to ask reads
//! it, and the copies that ask meanwhile or later get the same answer.
//!
//! - A read that fails is not shared: the copies that waited for it each
//!   read on their own at once, and get their own answer (a source's error
//!   decides a job's retry, so each must see it).
//! - A read whose copy ends before it does (cancelled, failed elsewhere)
//!   lets the waiting copies read on their own, as a failure does.
//! - What is kept is bounded ([`KEPT_BYTES`] per fan-out and kind): past
//!   it, each copy reads for itself. Manifests are a few KiB; a source
//!   serving the largest it may (4 MiB each) cannot make a fan-out hold
//!   more than that bound plus the reads in flight.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::manifest::Manifest;

/// How many bytes of each kind one fan-out keeps for its copies.
pub const KEPT_BYTES: usize = 16 << 20;

/// What is kept, weighed against [`KEPT_BYTES`].
pub(in crate::replicate) trait Weigh {
    /// About how many bytes this holds.
    fn weight(&self) -> usize;
}

impl Weigh for Manifest {
    fn weight(&self) -> usize {
        self.bytes.len()
    }
}

/// One fan-out's answers of one kind, by what was asked.
pub(super) struct Reads<V>(Mutex<Kept<V>>);

impl<V> Default for Reads<V> {
    fn default() -> Self {
        Reads(Mutex::new(Kept {
            slots: HashMap::new(),
            bytes: 0,
        }))
    }
}

struct Kept<V> {
    slots: HashMap<String, Slot<V>>,
    bytes: usize,
}

enum Slot<V> {
    /// One copy reads it; these wait for its answer.
    Reading(Vec<oneshot::Sender<V>>),
    Read(V),
}

/// What a copy that asks does.
enum Turn<V> {
    Have(V),
    Wait(oneshot::Receiver<V>),
    Lead,
    /// The fan-out keeps no more: read alone.
    Alone,
}

impl<V: Clone + Weigh> Reads<V> {
    /// The answer under `key`: the fan-out's read of it, or `fetch`'s
    /// when this copy is the first to ask, the shared read failed, or the
    /// fan-out keeps no more.
    pub(super) async fn get<F, Fut, E>(&self, key: String, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        match self.turn(&key) {
            Turn::Have(m) => Ok(m),
            Turn::Alone => fetch().await,
            Turn::Wait(rx) => match rx.await {
                Ok(m) => Ok(m),
                Err(_) => fetch().await,
            },
            Turn::Lead => {
                let lead = Lead {
                    kept: self,
                    key,
                    done: false,
                };
                let got = fetch().await;
                lead.finish(got)
            }
        }
    }

    fn turn(&self, key: &str) -> Turn<V> {
        let mut kept = self.lock();
        if kept.bytes >= KEPT_BYTES && !kept.slots.contains_key(key) {
            return Turn::Alone;
        }
        match kept.slots.get_mut(key) {
            Some(Slot::Read(m)) => Turn::Have(m.clone()),
            Some(Slot::Reading(waiting)) => {
                let (tx, rx) = oneshot::channel();
                waiting.push(tx);
                Turn::Wait(rx)
            }
            None => {
                kept.slots
                    .insert(key.to_string(), Slot::Reading(Vec::new()));
                Turn::Lead
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept<V>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The copy reading for the others: if it ends without an answer, the
/// slot is cleared and the waiting copies read on their own.
struct Lead<'a, V: Clone + Weigh> {
    kept: &'a Reads<V>,
    key: String,
    done: bool,
}

impl<V: Clone + Weigh> Lead<'_, V> {
    fn finish<E>(mut self, got: Result<V, E>) -> Result<V, E> {
        self.done = true;
        let mut kept = self.kept.lock();
        let waiting = match kept.slots.remove(&self.key) {
            Some(Slot::Reading(waiting)) => waiting,
            _ => Vec::new(),
        };
        if let Ok(m) = &got {
            kept.bytes += m.weight();
            kept.slots.insert(self.key.clone(), Slot::Read(m.clone()));
            for w in waiting {
                let _ = w.send(m.clone());
            }
        }
        // On an error the senders drop here: each waiting copy reads alone.
        got
    }
}

impl<V: Clone + Weigh> Drop for Lead<'_, V> {
    fn drop(&mut self) {
        if !self.done {
            self.kept.lock().slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::registry::RegistryError;

    type Manifests = Reads<Manifest>;

    fn manifest(n: usize) -> Manifest {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"digest":"sha256:{}","size":{n}}},"layers":[]}}"#,
            crate::manifest::OCI_MANIFEST,
            "a".repeat(64)
        );
        Manifest::from_bytes(bytes::Bytes::from(body), None).expect("manifest")
    }

    fn refused() -> RegistryError {
        RegistryError::Other {
            registry: "source".into(),
            what: "manifest".into(),
            detail: "refused".into(),
        }
    }

    /// A fetch that counts its calls, waits `after`, then answers `ok`.
    async fn fetch(
        calls: &AtomicUsize,
        after: Duration,
        ok: bool,
    ) -> Result<Manifest, RegistryError> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(after).await;
        match ok {
            true => Ok(manifest(1)),
            false => Err(refused()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn copies_asking_at_once_or_later_share_one_read() {
        let kept = Manifests::default();
        let calls = AtomicUsize::new(0);
        let slow = Duration::from_millis(100);
        let asks = (0..3).map(|_| kept.get("k".into(), || fetch(&calls, slow, true)));
        let got = futures_util::future::join_all(asks).await;
        assert!(got.iter().all(|m| m.as_ref().ok() == Some(&manifest(1))));
        let later = kept.get("k".into(), || fetch(&calls, slow, true)).await;
        assert_eq!(later.expect("kept"), manifest(1));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one read of the source");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_is_not_shared_each_copy_reads_alone() {
        let kept = Manifests::default();
        let calls = AtomicUsize::new(0);
        let slow = Duration::from_millis(100);
        let first = kept.get("k".into(), || fetch(&calls, slow, false));
        let others = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            futures_util::future::join(
                kept.get("k".into(), || fetch(&calls, slow, true)),
                kept.get("k".into(), || fetch(&calls, slow, false)),
            )
            .await
        };
        let started = tokio::time::Instant::now();
        let (first, (second, third)) = futures_util::future::join(first, others).await;
        assert!(first.is_err(), "the leader's own error");
        assert_eq!(second.expect("its own read"), manifest(1));
        assert!(third.is_err(), "its own read's error");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // The two waiting read at once after the failure, not in turn.
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_ends_early_lets_the_others_read() {
        let kept = Manifests::default();
        let calls = AtomicUsize::new(0);
        let slow = Duration::from_secs(60);
        let leader = kept.get("k".into(), || fetch(&calls, slow, true));
        // The leading copy is dropped (its job was cancelled) mid-read.
        let _ = tokio::time::timeout(Duration::from_millis(10), leader).await;
        let quick = Duration::from_millis(1);
        let got = kept.get("k".into(), || fetch(&calls, quick, true)).await;
        assert_eq!(got.expect("reads alone"), manifest(1));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_each_copy_reads_for_itself() {
        let kept = Manifests::default();
        kept.lock().bytes = KEPT_BYTES;
        let calls = AtomicUsize::new(0);
        let quick = Duration::from_millis(1);
        for _ in 0..2 {
            kept.get("new".into(), || fetch(&calls, quick, true))
                .await
                .expect("read");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "nothing more is kept");
        assert!(!kept.lock().slots.contains_key("new"));
    }
}
