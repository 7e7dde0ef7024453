//! Any manifest a (compromised) source registry can serve: reading it, its
//! children and a platform subset must never panic, and never reserve
//! memory for sizes it merely claims.
#![no_main]

use bytes::Bytes;
use harbor_relay::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for content_type in [
        None,
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
    ] {
        let Ok(m) = Manifest::from_bytes(Bytes::copy_from_slice(data), content_type) else {
            continue;
        };
        let _ = m.children();
        if m.is_index() {
            let _ = harbor_relay::replicate::platform_subset(&m, &["linux/amd64".to_string()]);
        }
    }
});
