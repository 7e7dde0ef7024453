//! Big blobs read over several `Range` GETs at once (issue 29): real
//! registries, the source behind the fault proxy, which counts what the
//! relay reads and lies about ranges in each way a source or a proxy can.
//! Every case ends with the image exact on the target, or the job failed
//! with nothing of the blob on it: never a wrong blob.

mod support;

use harbor_relay::config::TlsMode;
use harbor_relay::registry::Registry;
use support::fault::{Fault, FaultProxy};
use support::*;

/// The layer: ten of the relay's 4 MiB pieces.
const LAYER: usize = 40 << 20;

struct World {
    _source: RegistryProc,
    _target: RegistryProc,
    proxy: FaultProxy,
    target_url: String,
    src: Registry,
    dst: Registry,
}

impl World {
    async fn new() -> World {
        let source = RegistryProc::start(None, Auth::None).await;
        let target = RegistryProc::start(None, Auth::None).await;
        let proxy = FaultProxy::start(&source.url).await;
        World {
            src: client(&source.url, None, TlsMode::System),
            dst: client(&target.url, None, TlsMode::System),
            proxy,
            target_url: target.url.clone(),
            _source: source,
            _target: target,
        }
    }

    /// The source read by ranges above 16 MiB; `target_extra` adds keys to
    /// the target's entry.
    fn config(&self, target_extra: &str) -> String {
        format!(
            "[registries.external]\nurl = \"{}\"\nrange_threshold = \"16MiB\"\n\n[registries.integrated]\nurl = \"{}\"\n{target_extra}\n\n{RULE}",
            self.proxy.url, self.target_url
        )
    }

    /// GETs of `digest` at the source so far.
    fn reads_of(&self, digest: &str) -> usize {
        self.proxy
            .requests()
            .iter()
            .filter(|(_, m, p, _)| m == "GET" && p.ends_with(digest))
            .count()
    }

    /// Pushes an image with one big layer to `repo`, replicates it with a
    /// relay of its own, and returns the job.
    async fn copy(
        &self,
        repo: &str,
        target_extra: &str,
        fault: Option<Fault>,
    ) -> (TestImage, serde_json::Value) {
        let img = TestImage::pushed(&self.src, repo, &[LAYER]).await;
        let layer = img.blob_digests()[1].clone();
        if let Some(fault) = fault {
            // The first piece is honest; the lie comes on the second.
            self.proxy.inject_after(Some("GET"), &layer, 1, 1, fault);
        }
        let relay = Relay::start_with_jobs(
            "max_attempts = 2\nretry_initial_delay = \"100ms\"\n",
            &self.config(target_extra),
        )
        .await;
        let ids = relay.push(push_event(repo, Some("1"), &img.digest)).await;
        let job = relay.wait_job(ids[0]).await;
        (img, job)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_blob_is_read_by_ranges_once_and_lands_exact() {
    let w = World::new().await;
    for (repo, target_extra) in [
        ("library/ranged", ""),
        // Uploaded in resumable chunks, read by ranges.
        (
            "library/ranged-chunked",
            "chunk_size_threshold = \"16MiB\"\n",
        ),
    ] {
        let before = w.proxy.downloaded();
        let (img, job) = w.copy(repo, target_extra, None).await;
        assert_eq!(job["state"], "succeeded", "{repo}: {job}");
        assert_eq!(job["attempts"], 1, "{repo}: {job}");
        assert_image_on(&w.dst, repo, &img, Some("1")).await;
        let layer = &img.blob_digests()[1];
        // Pieces while the relay measures whether more flows help (here,
        // on loopback, they do not), then the rest in one request.
        let reads = w.reads_of(layer);
        assert!(reads >= 2, "{repo}: read by ranges: {reads} GETs");
        let read = w.proxy.downloaded() - before;
        assert!(
            read < LAYER as u64 + (1 << 20),
            "{repo}: each byte read once: {read} bytes for a {LAYER}-byte layer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_lies_about_ranges_is_read_over_one_get_and_the_blob_is_exact() {
    let w = World::new().await;
    let cases = [
        ("library/ignores-range", Fault::DropRange),
        (
            "library/wrong-content-range",
            Fault::ShiftRange {
                by: 1 << 20,
                hide: false,
            },
        ),
        ("library/short-range", Fault::EndAfter(1 << 20)),
        (
            "library/past-the-end",
            Fault::Status {
                status: 416,
                retry_after: None,
            },
        ),
        ("library/reset-mid-range", Fault::ResetAfter(3 << 20)),
    ];
    for (n, (repo, fault)) in cases.into_iter().enumerate() {
        let (img, job) = w.copy(repo, "", Some(fault.clone())).await;
        assert_eq!(w.proxy.injected(), n + 1, "{fault:?} was served");
        assert_eq!(job["state"], "succeeded", "{fault:?}: {job}");
        assert_eq!(
            job["attempts"], 1,
            "fell back within the attempt: {fault:?}: {job}"
        );
        assert_image_on(&w.dst, repo, &img, Some("1")).await;
        let layer = &img.blob_digests()[1];
        let reads = w.reads_of(layer);
        assert!(reads >= 2, "{fault:?}: read by ranges first: {reads} GETs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_under_right_range_headers_fail_the_job_with_nothing_written() {
    let w = World::new().await;
    let repo = "library/wrong-bytes";
    // Every range but the first is moved on by one byte, its headers
    // rewritten to what was asked: only the digest can tell.
    let lie = Fault::ShiftRange { by: 1, hide: true };
    let img = TestImage::pushed(&w.src, repo, &[LAYER]).await;
    let layer = img.blob_digests()[1].clone();
    w.proxy.inject_after(Some("GET"), &layer, 1, 1000, lie);
    for extra in ["", "chunk_size_threshold = \"16MiB\"\n"] {
        let relay = Relay::start_with_jobs(
            "max_attempts = 2\nretry_initial_delay = \"100ms\"\n",
            &w.config(extra),
        )
        .await;
        let ids = relay.push(push_event(repo, Some("1"), &img.digest)).await;
        let job = relay.wait_job(ids[0]).await;
        assert_eq!(job["state"], "failed", "{extra}: {job}");
        let err = job["last_error"].as_str().unwrap_or_default();
        assert!(
            err.contains("digest mismatch") && err.contains(&layer),
            "{extra}: {err}"
        );
        assert!(
            !w.dst.has_blob(repo, &layer).await.expect("HEAD"),
            "{extra}"
        );
        assert!(
            !w.dst.has_manifest(repo, &img.digest).await.expect("HEAD"),
            "{extra}"
        );
    }
}
