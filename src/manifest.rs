//! Manifest types: the media types we copy, and reading a manifest's
//! children (child manifests of an index; config and layers of an image)
//! without re-serialising it. Bytes are never rewritten: the digest on the
//! target must equal the source's.

use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type we ask a registry for, in `Accept`.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// The largest manifest we read (Harbor's own limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest as bytes, with what is needed to push it again unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// `sha256:` of the bytes.
    pub digest: String,
    /// The media type to send as `Content-Type`.
    pub media_type: String,
}

/// A content descriptor (the parts we use).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a manifest points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Children {
    /// An index: child manifests.
    Manifests(Vec<Descriptor>),
    /// An image: config first, then layers.
    Blobs(Vec<Descriptor>),
}

/// Why a manifest could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON or not shaped like a manifest.
    #[error("manifest {digest} is malformed: {problem}")]
    Malformed {
        /// Its digest.
        digest: String,
        /// What is wrong.
        problem: String,
    },
    /// A media type we do not copy (e.g. Docker schema 1).
    #[error("manifest {digest} has unsupported media type '{media_type}'")]
    Unsupported {
        /// Its digest.
        digest: String,
        /// The media type.
        media_type: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
}

/// The Harbor artifact type for a media type (see [`Manifest::harbor_type`]).
fn harbor_type_of(media_type: &str) -> String {
    match media_type {
        OCI_INDEX | DOCKER_LIST => "image".into(),
        "application/vnd.oci.image.config.v1+json"
        | "application/vnd.docker.container.image.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => "image".into(),
        "application/vnd.cncf.helm.config.v1+json" => "chart".into(),
        "application/vnd.cnab.manifest.v1" => "cnab".into(),
        "application/vnd.wasm.config.v1+json" => "wasm".into(),
        "application/vnd.goharbor.harbor.sbom.v1" => "sbom".into(),
        "application/vnd.cncf.model.manifest.v1+json" => "cnai".into(),
        other => other
            .strip_prefix("application/vnd.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(_, r)| r.rsplit_once(".config."))
            .filter(|(_, v)| v.ends_with("+json") && !v.contains('.'))
            .map(|(t, _)| t.to_ascii_lowercase())
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Manifest {
    /// Wraps bytes read from a registry. The media type is the registry's
    /// `Content-Type` when known, else the document's `mediaType`, else
    /// inferred from its shape (OCI allows `mediaType` to be absent).
    pub fn from_bytes(bytes: Bytes, content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let digest = sha256_digest(&bytes);
        let doc = parse(&digest, &bytes)?;
        let media_type = match (content_type, doc.media_type.as_deref()) {
            (Some(ct), _) if ACCEPTED.contains(&ct) => ct.to_string(),
            (_, Some(mt)) => mt.to_string(),
            (_, None) if doc.manifests.is_some() => OCI_INDEX.to_string(),
            (_, None) if doc.config.is_some() => OCI_MANIFEST.to_string(),
            (_, None) => {
                return Err(ManifestError::Malformed {
                    digest,
                    problem: "no mediaType, config or manifests".into(),
                });
            }
        };
        if !ACCEPTED.contains(&media_type.as_str()) {
            return Err(ManifestError::Unsupported { digest, media_type });
        }
        Ok(Manifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// True for an image index or manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }

    /// The digest of the manifest this one refers to (OCI 1.1 `subject`):
    /// set on signatures, SBOMs and attestations pushed as referrers.
    pub fn subject(&self) -> Option<String> {
        parse(&self.digest, &self.bytes)
            .ok()?
            .subject
            .map(|s| s.digest)
            .filter(|d| crate::reference::is_valid_digest(d))
    }

    /// The artifact's type as Harbor names it (lowercase): Harbor picks a
    /// processor by the manifest's `artifactType`, else by its config's
    /// media type, else by the manifest's own (`ResolveArtifactType` in
    /// `src/pkg/artifact/model.go`; the processors under
    /// `src/controller/artifact/processor/`): `image` (image configs,
    /// indexes, manifest lists), `chart`, `cnab`, `wasm`, `sbom`, `cnai`;
    /// for other `application/vnd.<vendor>.<type>.config.<v>+json` the
    /// `<type>` (the default processor); else `unknown`.
    pub fn harbor_type(&self) -> String {
        let doc = parse(&self.digest, &self.bytes).ok();
        let of = doc
            .as_ref()
            .and_then(|d| d.artifact_type.clone())
            .or_else(|| {
                doc.as_ref()
                    .and_then(|d| d.config.as_ref())
                    .map(|c| c.media_type.clone())
            })
            .unwrap_or_else(|| self.media_type.clone());
        harbor_type_of(&of)
    }

    /// The tag suffix cosign gives this manifest when it stores it beside
    /// its subject as `sha256-<hex><suffix>` (cosign's tag schema, not
    /// OCI referrers): `.sig` for simple signing layers, `.att` for DSSE
    /// attestations, `.sbom` for an attached SBOM; `None` for anything
    /// else. A Harbor lists such accessories in its referrers API without
    /// a `subject`, so their tag must be put back from their layers.
    pub fn cosign_suffix(&self) -> Option<&'static str> {
        let Ok(Children::Blobs(blobs)) = self.children() else {
            return None;
        };
        let layers = &blobs[1..];
        let all = |f: &dyn Fn(&str) -> bool| {
            !layers.is_empty() && layers.iter().all(|l| f(&l.media_type))
        };
        if all(&|t| t == "application/vnd.dev.cosign.simplesigning.v1+json") {
            Some(".sig")
        } else if all(&|t| t == "application/vnd.dsse.envelope.v1+json") {
            Some(".att")
        } else if all(&|t| {
            t.starts_with("text/spdx")
                || t.starts_with("application/vnd.cyclonedx")
                || t.starts_with("application/vnd.syft")
                || t.starts_with("application/spdx")
        }) {
            Some(".sbom")
        } else {
            None
        }
    }

    /// The manifest's children.
    pub fn children(&self) -> Result<Children, ManifestError> {
        let doc = parse(&self.digest, &self.bytes)?;
        let malformed = |problem: &str| ManifestError::Malformed {
            digest: self.digest.clone(),
            problem: problem.to_string(),
        };
        let children = if self.is_index() {
            Children::Manifests(
                doc.manifests
                    .ok_or_else(|| malformed("index without manifests"))?,
            )
        } else {
            let config = doc
                .config
                .ok_or_else(|| malformed("image manifest without config"))?;
            let mut blobs = vec![config];
            blobs.extend(doc.layers.unwrap_or_default());
            Children::Blobs(blobs)
        };
        let all = match &children {
            Children::Manifests(d) | Children::Blobs(d) => d,
        };
        for d in all {
            if !crate::reference::is_valid_digest(&d.digest) {
                return Err(malformed(&format!("invalid child digest '{}'", d.digest)));
            }
        }
        Ok(children)
    }
}

fn parse(digest: &str, bytes: &[u8]) -> Result<Doc, ManifestError> {
    serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
        digest: digest.to_string(),
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_children_are_config_then_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":2}},"layers":[{{"mediaType":"y","digest":"{}","size":3}}]}}"#,
            d('a'),
            d('b')
        );
        let m = Manifest::from_bytes(Bytes::from(body.clone()), None).expect("valid");
        assert_eq!(m.digest, sha256_digest(body.as_bytes()));
        assert!(!m.is_index());
        match m.children().expect("children") {
            Children::Blobs(b) => {
                assert_eq!(b.len(), 2);
                assert_eq!(b[0].digest, d('a'));
                assert_eq!(b[1].size, 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_referrer_names_its_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}}}"#,
            d('a'),
            d('5')
        );
        let m = Manifest::from_bytes(Bytes::from(body.clone()), None).expect("valid");
        assert_eq!(m.subject(), Some(d('5')));
        // A subject that is not a digest is no subject: it would go into a
        // URL on the target.
        let bad = body.replace(&d('5'), "sha256:../../../api/v2.0/users");
        let m = Manifest::from_bytes(Bytes::from(bad), None).expect("valid");
        assert_eq!(m.subject(), None);
        let plain = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}","size":2}},"layers":[]}}"#,
            d('a')
        );
        let m = Manifest::from_bytes(Bytes::from(plain), None).expect("valid");
        assert_eq!(m.subject(), None);
    }

    #[test]
    fn media_type_is_inferred_when_absent() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}]}}"#,
            d('c')
        );
        let m = Manifest::from_bytes(Bytes::from(body), None).expect("valid");
        assert_eq!(m.media_type, OCI_INDEX);
        assert!(matches!(m.children(), Ok(Children::Manifests(v)) if v.len() == 1));
    }

    #[test]
    fn schema1_and_bad_digests_are_refused() {
        let s1 = r#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        assert!(matches!(
            Manifest::from_bytes(Bytes::from(s1), None),
            Err(ManifestError::Unsupported { .. })
        ));
        let bad = format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","config":{{"digest":"sha256:../x","size":1}}}}"#
        );
        let m = Manifest::from_bytes(Bytes::from(bad), None).expect("parses");
        assert!(m.children().is_err());
    }

    #[test]
    fn artifact_types_are_named_as_harbor_names_them() {
        let with_config = |mt: &str| {
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{mt}","digest":"{}","size":2}},"layers":[]}}"#,
                d('a')
            );
            Manifest::from_bytes(Bytes::from(body), None)
                .expect("valid")
                .harbor_type()
        };
        assert_eq!(
            with_config("application/vnd.oci.image.config.v1+json"),
            "image"
        );
        assert_eq!(
            with_config("application/vnd.cncf.helm.config.v1+json"),
            "chart"
        );
        assert_eq!(
            with_config("application/vnd.caicloud.model.config.v1alpha1+json"),
            "model"
        );
        assert_eq!(with_config("application/x-custom"), "unknown");
        let index = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        let m = Manifest::from_bytes(Bytes::from(index), None).expect("index");
        assert_eq!(m.harbor_type(), "image");
        let typed = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.wasm.config.v1+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
            d('a')
        );
        let m = Manifest::from_bytes(Bytes::from(typed), None).expect("typed");
        assert_eq!(m.harbor_type(), "wasm");
    }
    #[test]
    fn cosigns_tag_suffix_is_read_from_the_layers() {
        let image = |layer_type: &str| {
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"{layer_type}","digest":"{}","size":3}}]}}"#,
                d('a'),
                d('b')
            );
            Manifest::from_bytes(Bytes::from(body), None).expect("manifest")
        };
        assert_eq!(
            image("application/vnd.dev.cosign.simplesigning.v1+json").cosign_suffix(),
            Some(".sig")
        );
        assert_eq!(
            image("application/vnd.dsse.envelope.v1+json").cosign_suffix(),
            Some(".att")
        );
        assert_eq!(image("text/spdx+json").cosign_suffix(), Some(".sbom"));
        assert_eq!(
            image("application/vnd.oci.image.layer.v1.tar+gzip").cosign_suffix(),
            None
        );
    }
}
