//! Random test images and indexes, pushed with the project's own client; Harbor-shaped webhook bodies.

use bytes::Bytes;
use harbor_relay::manifest::{OCI_INDEX, OCI_MANIFEST, sha256_digest};
use harbor_relay::reference::Reference;
use harbor_relay::registry::Registry;
use rand::RngCore;
use serde_json::json;

/// Random bytes.
pub fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

/// A single-platform OCI image made of given layers.
#[derive(Clone)]
pub struct TestImage {
    pub config: Bytes,
    pub layers: Vec<Bytes>,
    pub manifest: Bytes,
    pub digest: String,
}

impl TestImage {
    /// A random image with layers of these sizes, pushed to `reg` as
    /// `repo:1`: how most tests start.
    pub async fn pushed(reg: &Registry, repo: &str, layer_sizes: &[usize]) -> TestImage {
        let img = TestImage::random(layer_sizes);
        img.push(reg, repo, &Reference::Tag("1".into())).await;
        img
    }

    pub fn random(layer_sizes: &[usize]) -> TestImage {
        Self::from_layers(
            layer_sizes.iter().map(|&n| random_bytes(n)).collect(),
            "linux",
            "amd64",
        )
    }

    pub fn from_layers(layers: Vec<Bytes>, os: &str, arch: &str) -> TestImage {
        let config = Bytes::from(
            serde_json::to_vec(&json!({
                "architecture": arch, "os": os,
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256_digest(l)).collect::<Vec<_>>()},
                "config": {"Labels": {"nonce": rand::random::<u64>().to_string()}},
            }))
            .expect("config json"),
        );
        let desc = |mt: &str, b: &Bytes| json!({"mediaType": mt, "digest": sha256_digest(b), "size": b.len()});
        let manifest = Bytes::from(
            serde_json::to_vec_pretty(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": desc("application/vnd.oci.image.config.v1+json", &config),
                "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
            }))
            .expect("manifest json"),
        );
        let digest = sha256_digest(&manifest);
        TestImage {
            config,
            layers,
            manifest,
            digest,
        }
    }

    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(&self.config)
            .chain(self.layers.iter())
            .map(|b| sha256_digest(b))
            .collect()
    }

    pub async fn push(&self, reg: &Registry, repo: &str, reference: &Reference) {
        for b in std::iter::once(&self.config).chain(self.layers.iter()) {
            if reg
                .has_blob(repo, &sha256_digest(b))
                .await
                .expect("HEAD blob")
            {
                continue;
            }
            reg.put_blob_bytes(repo, b.clone())
                .await
                .expect("push blob");
        }
        let m = harbor_relay::manifest::Manifest::from_bytes(self.manifest.clone(), None)
            .expect("manifest");
        reg.put_manifest(repo, reference, &m)
            .await
            .expect("push manifest");
    }
}

/// An OCI index listing image manifests (digest, size), each for
/// `linux/<architecture>`.
pub fn index_bytes<'a>(children: impl Iterator<Item = (&'a str, usize, String)>) -> Bytes {
    Bytes::from(
        serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children.map(|(digest, size, arch)| json!({
                "mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                "platform": {"os": "linux", "architecture": arch}
            })).collect::<Vec<_>>(),
        }))
        .expect("index json"),
    )
}

/// A multi-platform OCI index (two platforms unless asked).
pub struct TestIndex {
    pub images: Vec<TestImage>,
    pub manifest: Bytes,
    pub digest: String,
}

impl TestIndex {
    pub fn random() -> TestIndex {
        Self::with_platforms(2)
    }

    /// An index of `n` platform images (`linux/arch0`, `linux/arch1`, ...;
    /// the first two are amd64 and arm64), each of two layers.
    pub fn with_platforms(n: usize) -> TestIndex {
        let arch = |i: usize| match i {
            0 => "amd64".to_string(),
            1 => "arm64".to_string(),
            _ => format!("arch{i}"),
        };
        let images: Vec<TestImage> = (0..n)
            .map(|i| {
                TestImage::from_layers(
                    vec![
                        random_bytes(300_000 - 20_000 * i),
                        random_bytes(50_000 - 10_000 * (i % 2)),
                    ],
                    "linux",
                    &arch(i),
                )
            })
            .collect();
        let manifest = index_bytes(
            images
                .iter()
                .enumerate()
                .map(|(n, i)| (i.digest.as_str(), i.manifest.len(), arch(n))),
        );
        let digest = sha256_digest(&manifest);
        TestIndex {
            images,
            manifest,
            digest,
        }
    }

    pub async fn push(&self, reg: &Registry, repo: &str, tag: &str) {
        for i in &self.images {
            i.push(reg, repo, &Reference::Digest(i.digest.clone()))
                .await;
        }
        let m = harbor_relay::manifest::Manifest::from_bytes(self.manifest.clone(), None)
            .expect("index");
        reg.put_manifest(repo, &Reference::Tag(tag.into()), &m)
            .await
            .expect("push index");
    }
}

/// Asserts that `repo` on `reg` holds the image whole: manifest by digest,
/// every blob, and (if given) the tag resolving to the same digest.
pub async fn assert_image_on(reg: &Registry, repo: &str, image: &TestImage, tag: Option<&str>) {
    let m = reg
        .get_manifest(repo, &Reference::Digest(image.digest.clone()))
        .await
        .expect("manifest on target");
    assert_eq!(m.bytes, image.manifest, "manifest bytes differ");
    for d in image.blob_digests() {
        assert!(
            reg.has_blob(repo, &d).await.expect("HEAD blob"),
            "blob {d} missing on target"
        );
    }
    if let Some(t) = tag {
        let m = reg
            .get_manifest(repo, &Reference::Tag(t.into()))
            .await
            .expect("tag on target");
        assert_eq!(m.digest, image.digest, "tag {t} resolves elsewhere");
    }
}

/// A Harbor Default-format PUSH_ARTIFACT body.
pub fn push_event(repo_full: &str, tag: Option<&str>, digest: &str) -> Vec<u8> {
    let (ns, name) = repo_full.split_once('/').expect("project/name");
    let reference = tag.unwrap_or(digest);
    let url = match tag {
        Some(t) => format!("harbor.example.com/{repo_full}:{t}"),
        None => format!("harbor.example.com/{repo_full}@{digest}"),
    };
    serde_json::to_vec(&json!({
        "type": "PUSH_ARTIFACT",
        "occur_at": 1724572800,
        "operator": "robot$library+ci",
        "event_data": {
            "resources": [{"digest": digest, "tag": reference, "resource_url": url}],
            "repository": {"date_created": 1724500000, "name": name, "namespace": ns,
                            "repo_full_name": repo_full, "repo_type": "private"}
        }
    }))
    .expect("json")
}

/// The same event in Harbor's CloudEvents format.
pub fn push_cloudevent(repo_full: &str, tag: &str, digest: &str) -> Vec<u8> {
    let (ns, name) = repo_full.split_once('/').expect("project/name");
    serde_json::to_vec(&json!({
        "specversion": "1.0",
        "id": format!("{:032x}", rand::random::<u128>()),
        "source": "/projects/1/webhook/policies/3",
        "type": "harbor.artifact.pushed",
        "datacontenttype": "application/json",
        "time": "2024-08-25T08:00:00Z",
        "operator": "robot$library+ci",
        "data": {
            "resources": [{"digest": digest, "tag": tag, "resource_url": format!("harbor.example.com/{repo_full}:{tag}")}],
            "repository": {"date_created": 1724500000, "name": name, "namespace": ns,
                            "repo_full_name": repo_full, "repo_type": "private"}
        }
    }))
    .expect("json")
}

/// A copy job for `repo:tag` from `external` to `integrated`, under rule
/// `r`: what the store tests enqueue.
pub fn job_spec(repo: &str, tag: &str) -> harbor_relay::jobs::JobSpec {
    harbor_relay::jobs::JobSpec {
        rule: "r".into(),
        from: "external".into(),
        to: "integrated".into(),
        fanout: false,
        source_repository: repo.into(),
        target_repository: repo.into(),
        reference: Reference::Tag(tag.into()),
        digest: None,
        occurred_at: None,
        action: harbor_relay::jobs::Action::Copy,
        overwrite: true,
        referrers: true,
        platforms: None,
        referrer_only: false,
        artifact_types: None,
        labels: None,
        max_blob_size: None,
        gated: false,
    }
}
