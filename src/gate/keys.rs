//! The public keys a signature gate trusts (`require_signature = { keys =
//! [...] }`): PEM files holding an ECDSA P-256 key, which is what `cosign
//! generate-key-pair` writes as `cosign.pub`. Any other key is refused when
//! the file is read, naming the file and what it holds, so a wrong file
//! stops the config from loading instead of holding every image forever.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey as _;
use sha2::Digest as _;

/// A key signatures may verify against.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    /// The file it came from, for job notes and messages.
    pub file: PathBuf,
    /// The key.
    pub key: VerifyingKey,
    /// base64(SHA-256(DER SubjectPublicKeyInfo)): what cosign puts in a
    /// bundle's `verificationMaterial.publicKey.hint` (unauthenticated:
    /// used only to try this key first).
    pub hint: String,
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("{}: cannot read: {io}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The OS error.
        io: std::io::Error,
    },
    /// The file holds no PEM public key.
    #[error("{}: {what}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What it holds instead.
        what: String,
    },
}

/// Reads and checks one key file.
pub fn load(file: &Path) -> Result<TrustedKey, KeyError> {
    let text = std::fs::read_to_string(file).map_err(|io| KeyError::Read {
        file: file.to_path_buf(),
        io,
    })?;
    parse(file, &text)
}

/// The key in `text` (the contents of `file`).
pub fn parse(file: &Path, text: &str) -> Result<TrustedKey, KeyError> {
    let invalid = |what: String| KeyError::Invalid {
        file: file.to_path_buf(),
        what,
    };
    if text.contains("PRIVATE KEY-----") {
        return Err(invalid(
            "holds a private key: give the public key (cosign.pub), never the private one".into(),
        ));
    }
    if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        return Err(invalid(unsupported("an RSA")));
    }
    let der = pem_body(text, "PUBLIC KEY").ok_or_else(|| {
        invalid("is not a PEM public key (\"-----BEGIN PUBLIC KEY-----\", as cosign.pub)".into())
    })?;
    let key = VerifyingKey::from_public_key_der(&der)
        .map_err(|_| invalid(unsupported(key_kind(&der))))?;
    let hint = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&der));
    Ok(TrustedKey {
        file: file.to_path_buf(),
        key,
        hint,
    })
}

fn unsupported(kind: &str) -> String {
    format!(
        "holds {kind} key; only ECDSA P-256 keys are supported (what `cosign generate-key-pair` makes)"
    )
}

/// The base64 body of the first `-----BEGIN <label>-----` block, decoded.
fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// What kind of key a SubjectPublicKeyInfo that is not P-256 holds, by
/// the algorithm and curve identifiers it carries (their DER encodings).
fn key_kind(der: &[u8]) -> &'static str {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if has(RSA) {
        "an RSA"
    } else if has(P384) {
        "an ECDSA P-384"
    } else if has(P521) {
        "an ECDSA P-521"
    } else if has(ED25519) {
        "an Ed25519"
    } else {
        "an unknown kind of"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey as _;

    /// A fixed P-256 key, as tests of the gate make theirs.
    pub(crate) fn signing_key(label: &str) -> p256::ecdsa::SigningKey {
        let scalar = sha2::Sha256::digest(label.as_bytes());
        p256::ecdsa::SigningKey::from_slice(&scalar).expect("scalar")
    }

    fn pem_of(key: &p256::ecdsa::SigningKey) -> String {
        key.verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("pem")
    }

    #[test]
    fn a_cosign_public_key_loads_with_its_hint() {
        let sk = signing_key("ci");
        let k = parse(Path::new("ci.pub"), &pem_of(&sk)).expect("key");
        assert_eq!(&k.key, sk.verifying_key());
        let der = sk.verifying_key().to_public_key_der().expect("der");
        let want =
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der.as_bytes()));
        assert_eq!(k.hint, want);
    }

    #[test]
    fn other_files_are_refused_naming_the_file_and_what_it_holds() {
        let e = |text: &str| {
            parse(Path::new("/etc/k.pub"), text)
                .expect_err("refused")
                .to_string()
        };
        assert!(e("hello").contains("/etc/k.pub: is not a PEM public key"));
        assert!(
            e("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n").contains("private key")
        );
        assert!(
            e("-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n")
                .contains("an RSA key")
        );
        // A P-384 SubjectPublicKeyInfo (openssl ecparam -name secp384r1).
        let p384 = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEmix0Sb4s3kkKBu+C6zq9m6lGQopqkpLz\nHePCAYdPfZvkC4PkkMr9NTUtibNTjYRJXYbBdBQZ4zd6UeA1q4ALijm9jDbn/Y3S\nLnd0auRRSXfQKBQKWBNm2SRGLXFzSCMV\n-----END PUBLIC KEY-----\n";
        assert!(e(p384).contains("an ECDSA P-384 key"), "{}", e(p384));
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAMQPFSg5hH40Zz93phxwL4PENn9Z+6rJiD3tbnYdYjak=\n-----END PUBLIC KEY-----\n";
        assert!(e(ed).contains("an Ed25519 key"), "{}", e(ed));
    }
}
