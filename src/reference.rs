//! Names, tags and digests as the OCI Distribution spec defines them.
//!
//! Everything that reaches a registry URL passes through these checks first,
//! so a webhook cannot smuggle `../`, query strings or look-alike characters
//! into a request path.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

static REPOSITORY: LazyLock<Regex> = LazyLock::new(|| {
    // distribution-spec: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
    Regex::new(
        r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$",
    )
    .expect("static regex")
});
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("static regex"));
static DIGEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$").expect("static regex")
});

/// The longest repository name the CNCF distribution registry accepts.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// True if `name` is a valid repository name (path components, lowercase).
pub fn is_valid_repository(name: &str) -> bool {
    name.len() <= MAX_REPOSITORY_LEN && REPOSITORY.is_match(name)
}

/// True for a name Harbor accepts as a project's
/// (`^[a-z0-9]+(?:[._-][a-z0-9]+)*$`, at most 255 characters: its
/// `restrictedNameChars` in `src/pkg/project/manager.go`); stricter than an
/// OCI path component (no `__`, no `--`).
pub fn is_valid_harbor_project(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 255
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || matches!(c, b'.' | b'_' | b'-'))
        && !b.windows(2).any(|w| !alnum(w[0]) && !alnum(w[1]))
}

/// True if `tag` is a valid tag.
pub fn is_valid_tag(tag: &str) -> bool {
    TAG.is_match(tag)
}

/// True for the tags that carry an artifact's referrers rather than an
/// image: the OCI referrers tag schema's `sha256-<hex>` (an index of
/// referrers) and cosign's `sha256-<hex>.sig`, `.att` and `.sbom`.
pub fn is_referrer_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let (hex, suffix) = rest.split_at(rest.len().min(64));
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && matches!(suffix, "" | ".sig" | ".att" | ".sbom")
}

/// True if `digest` is a sha256 or sha512 digest in canonical form.
pub fn is_valid_digest(digest: &str) -> bool {
    DIGEST.is_match(digest)
}

/// What a manifest is addressed by: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// A tag, e.g. `1.4.2`.
    Tag(String),
    /// A digest, e.g. `sha256:…`.
    Digest(String),
}

impl Reference {
    /// The string used in a manifest URL.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) | Reference::Digest(t) => t,
        }
    }

    /// The tag, if this is one.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => write!(f, ":{t}"),
            Reference::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// A repository plus a reference, e.g. `library/nginx:1.4.2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository path inside the registry.
    pub repository: String,
    /// Tag or digest.
    pub reference: Reference,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.repository, self.reference)
    }
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Not a valid repository name.
    #[error(
        "invalid repository name '{0}': use lowercase path components of [a-z0-9] separated by '.', '_', '__' or '-', at most 255 characters"
    )]
    Repository(String),
    /// Not a valid tag.
    #[error(
        "invalid tag '{0}': up to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
    )]
    Tag(String),
    /// Not a valid digest.
    #[error("invalid digest '{0}': expected sha256:<64 hex> or sha512:<128 hex>")]
    Digest(String),
    /// Neither tag nor digest given.
    #[error("'{0}' names no tag or digest: write repository:tag or repository@sha256:…")]
    Missing(String),
}

/// Checks a repository name.
pub fn repository(name: &str) -> Result<&str, ReferenceError> {
    if is_valid_repository(name) {
        Ok(name)
    } else {
        Err(ReferenceError::Repository(truncate(name)))
    }
}

/// Checks a tag.
pub fn tag(tag: &str) -> Result<Reference, ReferenceError> {
    if is_valid_tag(tag) {
        Ok(Reference::Tag(tag.to_string()))
    } else {
        Err(ReferenceError::Tag(truncate(tag)))
    }
}

/// Checks a digest.
pub fn digest(digest: &str) -> Result<Reference, ReferenceError> {
    if is_valid_digest(digest) {
        Ok(Reference::Digest(digest.to_string()))
    } else {
        Err(ReferenceError::Digest(truncate(digest)))
    }
}

/// Parses `repo:tag` or `repo@digest` (the form the CLI takes).
pub fn parse_image(text: &str) -> Result<ImageRef, ReferenceError> {
    let (repo, reference) = if let Some((repo, d)) = text.split_once('@') {
        (repo, digest(d)?)
    } else {
        // A tag follows the last ':' that comes after the last '/'.
        let slash = text.rfind('/').map_or(0, |i| i + 1);
        match text[slash..].rfind(':') {
            Some(i) => (&text[..slash + i], tag(&text[slash + i + 1..])?),
            None => return Err(ReferenceError::Missing(truncate(text))),
        }
    };
    Ok(ImageRef {
        repository: repository(repo)?.to_string(),
        reference,
    })
}

/// Keeps hostile input from bloating error messages and logs.
fn truncate(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:947f187506f7629c81c81879a2cb2256455038e4ac770091d897fa0a8b945e3b";

    #[test]
    fn repository_grammar() {
        for ok in ["library/nginx", "team-a/platform/api", "a", "a__b/c.d/e--f"] {
            assert!(is_valid_repository(ok), "{ok}");
        }
        for bad in [
            "",
            "Library/nginx",
            "library/../etc",
            "library//nginx",
            "/library",
            "library/",
            "library/nginx?x=1",
            "lіbrary/nginx", // Cyrillic і
            "a___b",
            "-a",
        ] {
            assert!(!is_valid_repository(bad), "{bad}");
        }
        assert!(!is_valid_repository(&"a".repeat(256)));
    }

    #[test]
    fn tag_and_digest_grammar() {
        assert!(is_valid_tag("1.4.2"));
        assert!(is_valid_tag("_x"));
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(is_valid_digest(D));
        assert!(!is_valid_digest(&D[..70]));
        assert!(!is_valid_digest(&D.replace("sha256", "md5")));
        assert!(!is_valid_digest(&D.to_uppercase()));
    }

    #[test]
    fn parses_cli_references() {
        let r = parse_image("library/nginx:1.4.2").expect("valid");
        assert_eq!(r.repository, "library/nginx");
        assert_eq!(r.reference, Reference::Tag("1.4.2".into()));
        let r = parse_image(&format!("team-a/platform/api@{D}")).expect("valid");
        assert_eq!(r.reference, Reference::Digest(D.into()));
        assert_eq!(r.to_string(), format!("team-a/platform/api@{D}"));
        assert!(matches!(
            parse_image("library/nginx"),
            Err(ReferenceError::Missing(_))
        ));
        assert!(parse_image("Library/nginx:1").is_err());
    }
}
