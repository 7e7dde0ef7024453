//! A platform subset of an index (`rules[].platforms`).

use crate::manifest::Manifest;

/// An index that lists only the children whose platform is wanted
/// (`os/arch` matches any variant; `os/arch/variant` only that one). Other
/// fields are kept; the bytes, and so the digest, are new.
pub fn platform_subset(
    index: &Manifest,
    wanted: &[String],
) -> Result<Manifest, crate::manifest::ManifestError> {
    let malformed = |problem: String| crate::manifest::ManifestError::Malformed {
        digest: index.digest.clone(),
        problem,
    };
    let mut doc: serde_json::Value =
        serde_json::from_slice(&index.bytes).map_err(|e| malformed(e.to_string()))?;
    let list = doc["manifests"]
        .as_array()
        .ok_or_else(|| malformed("index without manifests".into()))?;
    let matches = |d: &serde_json::Value| {
        let p = &d["platform"];
        let (os, arch) = (p["os"].as_str(), p["architecture"].as_str());
        let variant = p["variant"].as_str();
        wanted.iter().any(|w| {
            let parts: Vec<&str> = w.split('/').collect();
            Some(parts[0]) == os
                && parts.get(1).copied() == arch
                && parts.get(2).is_none_or(|v| Some(*v) == variant)
        })
    };
    let kept: Vec<serde_json::Value> = list.iter().filter(|d| matches(d)).cloned().collect();
    if kept.is_empty() {
        return Err(malformed(format!(
            "none of its platforms is in {}",
            wanted.join(", ")
        )));
    }
    if kept.len() == list.len() {
        return Ok(index.clone());
    }
    doc["manifests"] = serde_json::Value::Array(kept);
    let bytes = bytes::Bytes::from(serde_json::to_vec(&doc).map_err(|e| malformed(e.to_string()))?);
    Manifest::from_bytes(bytes, Some(&index.media_type))
}
