//! Generated content (layers regenerated on demand, never held whole)
//! and the minimal copier, the least a verifying copier can do.

use super::*;

// ---------------------------------------------------------------- content

/// Deterministic pseudo-random bytes (splitmix64), regenerated on demand so
/// that a 4 GiB layer never sits in memory.
pub(crate) fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    debug_assert_eq!(offset % 8, 0);
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut z = seed
            .wrapping_add((offset / 8 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

pub(crate) fn layer_stream(
    seed: u64,
    size: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    const PIECE: u64 = 1024 * 1024;
    futures_util::stream::iter((0..size.div_ceil(PIECE)).map(move |i| {
        let off = i * PIECE;
        let mut b = vec![0u8; PIECE.min(size - off) as usize];
        fill(seed, off, &mut b);
        Ok(Bytes::from(b))
    }))
}

pub(crate) fn layer_digest(seed: u64, size: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = MIB.min(size - off) as usize;
        fill(seed, off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

impl GenImage {
    pub(crate) fn new(layers: &[(u64, u64)]) -> GenImage {
        let layers: Vec<(u64, u64, String)> = layers
            .iter()
            .map(|&(seed, size)| (seed, size, layer_digest(seed, size)))
            .collect();
        let config = Bytes::from(
            serde_json::to_vec(&json!({
                "architecture": "amd64", "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.2.clone()).collect::<Vec<_>>()},
                "config": {"Labels": {"seeds": layers.iter().map(|l| l.0.to_string()).collect::<Vec<_>>().join(",")}},
            }))
            .expect("json"),
        );
        let manifest = Bytes::from(
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
                "layers": layers.iter().map(|(_, size, d)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size})).collect::<Vec<_>>(),
            }))
            .expect("json"),
        );
        let digest = sha256_digest(&manifest);
        GenImage {
            layers,
            config,
            manifest,
            digest,
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.1).sum::<u64>() + self.config.len() as u64
    }

    pub(crate) async fn push(&self, reg: &Registry, repo: &str, tag: &str) {
        self.push_as(reg, repo, &Reference::Tag(tag.into())).await;
    }

    /// Its blobs, then its manifest under `reference` (a tag or its digest).
    pub(crate) async fn push_as(&self, reg: &Registry, repo: &str, reference: &Reference) {
        for (seed, size, digest) in &self.layers {
            if !reg.has_blob(repo, digest).await.expect("HEAD") {
                reg.put_blob(repo, digest, *size, layer_stream(*seed, *size))
                    .await
                    .expect("push layer");
            }
        }
        reg.put_blob_bytes(repo, self.config.clone())
            .await
            .expect("push config");
        let m = harbor_relay::manifest::Manifest::from_bytes(self.manifest.clone(), None)
            .expect("manifest");
        reg.put_manifest(repo, reference, &m)
            .await
            .expect("push manifest");
    }
}

/// A multi-platform index of [`GenImage`]s (`linux/arch0`, `linux/arch1`...).
pub(crate) struct GenIndex {
    pub(crate) images: Vec<GenImage>,
    pub(crate) manifest: Bytes,
    pub(crate) digest: String,
}

impl GenIndex {
    pub(crate) fn new(images: Vec<GenImage>) -> GenIndex {
        let manifest = index_bytes(
            images
                .iter()
                .enumerate()
                .map(|(n, i)| (i.digest.as_str(), i.manifest.len(), format!("arch{n}"))),
        );
        let digest = sha256_digest(&manifest);
        GenIndex {
            images,
            manifest,
            digest,
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.images.iter().map(GenImage::bytes).sum()
    }

    /// Each platform image by digest, then the index under `tag`.
    pub(crate) async fn push(&self, reg: &Registry, repo: &str, tag: &str) {
        for i in &self.images {
            i.push_as(reg, repo, &Reference::Digest(i.digest.clone()))
                .await;
        }
        let m = harbor_relay::manifest::Manifest::from_bytes(self.manifest.clone(), None)
            .expect("index");
        reg.put_manifest(repo, &Reference::Tag(tag.into()), &m)
            .await
            .expect("push index");
    }
}

// ---------------------------------------------------------------- a minimal copier

/// The reference point, run in the same sitting: the least a
/// verifying copier can do. It reads the manifest, then moves the config
/// and layers 4 at a time over HTTP/1.1 (reqwest, rustls), hashing each
/// blob with sha2 on the way (`POST`, then one streamed `PUT`), and writes
/// the manifest; no existence checks, mounts, retries, resume or records.
/// It runs as a child process of this bench (so its CPU and RSS are its
/// own): `BENCH_MINIMAL_COPY` holds its arguments.
pub(crate) async fn minimal_copy(args: &Value) {
    use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
    use sha2::Digest as _;
    let arg = |k: &str| args[k].as_str().expect("argument").to_string();
    let (src, dst, repo, tag) = (arg("source"), arg("target"), arg("repository"), arg("tag"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(arg("ca")).expect("ca")).expect("pem");
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .http1_only()
        .build()
        .expect("client");
    let manifest = http
        .get(format!("{src}/v2/{repo}/manifests/{tag}"))
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest")
        .bytes()
        .await
        .expect("manifest body");
    let doc: Value = serde_json::from_slice(&manifest).expect("manifest json");
    let blobs: Vec<(String, u64)> = std::iter::once(&doc["config"])
        .chain(doc["layers"].as_array().expect("layers"))
        .map(|d| {
            (
                d["digest"].as_str().expect("digest").to_string(),
                d["size"].as_u64().expect("size"),
            )
        })
        .collect();
    futures_util::stream::iter(blobs)
        .for_each_concurrent(4, |(digest, size)| {
            let (http, src, dst, repo) = (&http, &src, &dst, &repo);
            async move {
                let body = http
                    .get(format!("{src}/v2/{repo}/blobs/{digest}"))
                    .send()
                    .await
                    .expect("GET blob");
                let hasher = std::sync::Arc::new(std::sync::Mutex::new(sha2::Sha256::new()));
                let h = hasher.clone();
                let stream = body.bytes_stream().map(move |chunk| {
                    if let Ok(c) = &chunk {
                        h.lock().expect("hasher").update(c);
                    }
                    chunk
                });
                let opened = http
                    .post(format!("{dst}/v2/{repo}/blobs/uploads/"))
                    .basic_auth(USER, Some(PASS))
                    .header(CONTENT_LENGTH, 0)
                    .send()
                    .await
                    .expect("POST upload");
                assert_eq!(opened.status(), 202, "POST upload");
                let loc = opened.headers()[LOCATION].to_str().expect("location");
                let mut url = match loc.starts_with('/') {
                    true => url::Url::parse(&format!("{dst}{loc}")),
                    false => url::Url::parse(loc),
                }
                .expect("upload url");
                url.query_pairs_mut().append_pair("digest", &digest);
                let put = http
                    .put(url)
                    .basic_auth(USER, Some(PASS))
                    .header(CONTENT_LENGTH, size)
                    .body(reqwest::Body::wrap_stream(stream))
                    .send()
                    .await
                    .expect("PUT blob");
                assert_eq!(put.status(), 201, "PUT blob");
                let actual = hasher.lock().expect("hasher").clone().finalize();
                assert_eq!(format!("sha256:{}", hex::encode(actual)), digest);
            }
        })
        .await;
    let put = http
        .put(format!("{dst}/v2/{repo}/manifests/{tag}"))
        .basic_auth(USER, Some(PASS))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(put.status(), 201, "PUT manifest");
}
