//! Uploads: the session `POST`, one streamed `PUT` or chunked `PATCH`es,
//! closing with the digest, cancelling, and the cross-repository mount.
//! A session's `Location` is followed only on the registry's own origin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use super::verify::ByteStream;
use super::{Registry, RegistryError, auth, push};
use crate::manifest;

impl Registry {
    /// Sends a streamed body of `len` bytes once (it cannot be replayed),
    /// paced to the bandwidth cap, and gives up if the registry stops
    /// taking bytes for `stall_timeout` (reads have their own timeout).
    #[allow(clippy::too_many_arguments)]
    async fn send_body(
        &self,
        what: &str,
        repository: &str,
        method: Method,
        url: &str,
        len: u64,
        body: ByteStream,
        content_range: Option<String>,
    ) -> Result<reqwest::Response, RegistryError> {
        let sent = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(std::time::Instant::now()));
        let (s2, l2) = (sent.clone(), last.clone());
        let tracked: ByteStream = Box::pin(
            self.metered(body, &self.t.stats.bytes_written)
                .inspect(move |item| {
                    if let Ok(b) = item {
                        s2.fetch_add(b.len() as u64, Ordering::Relaxed);
                        if let Ok(mut t) = l2.lock() {
                            *t = std::time::Instant::now();
                        }
                    }
                }),
        );
        let body = Mutex::new(Some(reqwest::Body::wrap_stream(tracked)));
        let scopes = push(repository);
        let make = |c: &reqwest::Client| {
            let mut rb = c
                .request(method.clone(), url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len);
            if let Some(r) = &content_range {
                rb = rb.header("content-range", r.as_str());
            }
            match body.lock().ok().and_then(|mut b| b.take()) {
                Some(b) => rb.body(b),
                None => rb,
            }
        };
        let send = self.t.send(what, &scopes, false, &make);
        let stall = self.t.limits.stall_timeout;
        let watchdog = async {
            loop {
                tokio::time::sleep((stall / 4).min(std::time::Duration::from_secs(1))).await;
                if sent.load(Ordering::Relaxed) >= len {
                    // The body is out; waiting for the answer is the read
                    // timeout's business.
                    std::future::pending::<()>().await;
                }
                let idle = last.lock().map(|t| t.elapsed()).unwrap_or_default();
                if idle >= stall {
                    return idle;
                }
            }
        };
        tokio::select! {
            r = send => r,
            idle = watchdog => Err(RegistryError::Connect {
                registry: self.t.name.clone(),
                url: self.t.base.clone(),
                detail: format!("{what}: stalled, the registry took no bytes for {idle:?}"),
            }),
        }
    }

    /// Starts an upload session; returns its URL and the registry's
    /// smallest accepted chunk (`OCI-Chunk-Min-Length`), if it says.
    pub async fn begin_upload(
        &self,
        repository: &str,
        what: &str,
    ) -> Result<(url::Url, Option<u64>), RegistryError> {
        let url = self.url(&format!("{repository}/blobs/uploads/"));
        let resp = self
            .t
            .send(what, &push(repository), true, &|c| {
                c.post(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.t.status_error(resp, what).await);
        }
        let min = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok((self.t.location(&resp, what)?, min))
    }

    async fn start_upload(&self, repository: &str, what: &str) -> Result<url::Url, RegistryError> {
        Ok(self.begin_upload(repository, what).await?.0)
    }

    /// How many bytes an upload session holds, asked of the registry
    /// (`GET` on the upload URL). `None` if the session is gone.
    pub async fn upload_offset(
        &self,
        repository: &str,
        location: &str,
    ) -> Result<Option<(url::Url, u64)>, RegistryError> {
        let what = format!("checking upload progress in {repository}");
        let resp = self
            .t
            .send(&what, &push(repository), true, &|c| c.get(location))
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.t.status_error(resp, &what).await),
        }
        let end = resp
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.rsplit('-').next())
            .and_then(|e| e.trim().parse::<u64>().ok());
        // Distribution answers "0-0" both for nothing and for one byte; we
        // only ever resume at offsets we recorded after whole chunks.
        let offset = match end {
            Some(0) | None => 0,
            Some(e) => e + 1,
        };
        let loc = match self.t.location(&resp, &what) {
            Ok(l) => l,
            Err(_) => url::Url::parse(location).map_err(|e| RegistryError::Other {
                registry: self.t.name.clone(),
                what: what.clone(),
                detail: e.to_string(),
            })?,
        };
        Ok(Some((loc, offset)))
    }

    /// Sends one chunk (`PATCH` with `Content-Range`) from a stream of
    /// exactly `len` bytes; returns the session URL for the next request.
    pub async fn upload_chunk(
        &self,
        repository: &str,
        location: &url::Url,
        offset: u64,
        len: u64,
        body: ByteStream,
    ) -> Result<url::Url, RegistryError> {
        let what = format!(
            "uploading bytes {offset}-{} in {repository}",
            offset + len.saturating_sub(1)
        );
        let range = format!("{offset}-{}", offset + len.saturating_sub(1));
        let resp = self
            .send_body(
                &what,
                repository,
                Method::PATCH,
                location.as_str(),
                len,
                body,
                Some(range),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED && resp.status() != StatusCode::NO_CONTENT {
            return Err(self.t.status_error(resp, &what).await);
        }
        self.t.location(&resp, &what)
    }

    /// Closes an upload session: the registry checks the digest and links
    /// the blob.
    pub async fn finish_upload(
        &self,
        repository: &str,
        location: &url::Url,
        digest: &str,
    ) -> Result<(), RegistryError> {
        let what = format!("completing upload of blob {repository}@{digest}");
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let url = url.to_string();
        let resp = self
            .t
            .send(&what, &push(repository), true, &|c| {
                c.put(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.t.status_error(resp, &what).await);
        }
        Ok(())
    }

    /// Abandons an upload session (best effort).
    pub async fn cancel_upload(&self, repository: &str, location: &str) {
        let what = format!("cancelling an upload in {repository}");
        if let Err(e) = self
            .t
            .send(&what, &push(repository), true, &|c| c.delete(location))
            .await
        {
            tracing::debug!(error = %e, "cancelling an upload");
        }
    }

    /// Uploads a blob from a stream: a `POST` for the session, then one
    /// `PUT` with the whole body and its length. Memory use does not depend
    /// on the blob size. The body is not replayable, so this request is not
    /// retried: a failure fails the job's attempt, and the next attempt
    /// starts the blob over (ARCHITECTURE.md, "Who retries what").
    pub async fn put_blob<S>(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = format!("uploading blob {repository}@{digest} ({size} bytes)");
        let location = self.start_upload(repository, &what).await?;
        self.put_blob_at(location, repository, digest, size, body)
            .await
    }

    /// Sends a blob's bytes into an upload session already started with
    /// [`Registry::begin_upload`] (so the caller can open the session while
    /// the source starts sending), and closes it with the digest.
    pub async fn put_blob_at<S>(
        &self,
        mut location: url::Url,
        repository: &str,
        digest: &str,
        size: u64,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = format!("uploading blob {repository}@{digest} ({size} bytes)");
        location.query_pairs_mut().append_pair("digest", digest);
        let url = location.to_string();
        let resp = self
            .send_body(
                &what,
                repository,
                Method::PUT,
                &url,
                size,
                Box::pin(body),
                None,
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.t.status_error(resp, &what).await);
        }
        Ok(())
    }

    /// Uploads a small blob held in memory (test images, configs).
    pub async fn put_blob_bytes(
        &self,
        repository: &str,
        data: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = manifest::sha256_digest(&data);
        let size = data.len() as u64;
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(data) });
        self.put_blob(repository, &digest, size, body).await?;
        Ok(digest)
    }

    /// Links a blob another repository of this registry holds into
    /// `repository` (`POST …/blobs/uploads/?mount=&from=`), with a token
    /// that may pull `from`. True if mounted; false if the registry
    /// declined (the upload session it opened instead is cancelled).
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<bool, RegistryError> {
        match self.mount_or_begin(repository, digest, from).await? {
            MountOrUpload::Mounted => Ok(true),
            MountOrUpload::Upload(loc) => {
                self.cancel_upload(repository, loc.as_str()).await;
                Ok(false)
            }
        }
    }

    /// One request that either links the blob from `from` (which may be
    /// `repository` itself: then it answers whether the blob is already
    /// there) or opens an upload session for it.
    pub async fn mount_or_begin(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<MountOrUpload, RegistryError> {
        let what = format!("mounting blob {digest} from {from} into {repository}");
        let url = format!(
            "{}?mount={}&from={}",
            self.url(&format!("{repository}/blobs/uploads/")),
            digest,
            from
        );
        let mut scopes = vec![auth::scope(repository, "pull,push")];
        if from != repository {
            scopes.push(auth::scope(from, "pull"));
        }
        let resp = self
            .t
            .send(&what, &scopes, true, &|c| {
                c.post(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountOrUpload::Mounted),
            StatusCode::ACCEPTED => Ok(MountOrUpload::Upload(self.t.location(&resp, &what)?)),
            _ => Err(self.t.status_error(resp, &what).await),
        }
    }
}

/// What a mount request did.
#[derive(Debug)]
pub enum MountOrUpload {
    /// The blob is in the repository now (it was mounted, or was there).
    Mounted,
    /// The registry opened an upload session at this URL instead.
    Upload(url::Url),
}
