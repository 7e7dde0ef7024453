//! Turning a failed exchange or an error status into a [`RegistryError`]
//! that says what to do: TLS, connection, auth, not found, digest, size.

use reqwest::Response;

use super::RegistryError;
use super::transport::Transport;
use crate::config::TlsMode;

impl Transport {
    /// Turns an error status into an error that says what to do.
    pub(super) async fn status_error(&self, resp: Response, what: &str) -> RegistryError {
        let status = resp.status();
        let refused_token = resp
            .extensions()
            .get::<super::grant::RefusedToken>()
            .cloned();
        // Harbor's `v2auth` answers 401 with an empty challenge when the
        // check itself failed, which is how a missing project shows
        // (`src/server/middleware/v2auth/auth.go`, `projectID`).
        let no_challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .is_none_or(|v| v.as_bytes().trim_ascii().is_empty());
        // An answer from another origin (where a redirect led) is not the
        // registry's: its body is never echoed into the job's error, which
        // the jobs API shows, and its host is named instead.
        let foreign = (!super::trust::same_origin(resp.url(), &self.base_url))
            .then(|| super::trust::host_of(resp.url()));
        let body = match foreign {
            Some(_) => bytes::Bytes::new(),
            None => self
                .read_limited(resp, 64 * 1024, what)
                .await
                .unwrap_or_default(),
        };
        let registry = self.name.clone();
        let what = match &foreign {
            Some(host) => format!("{what} (redirected to {host})"),
            None => what.to_string(),
        };
        if let Some(detail) = harbor_refusal(status.as_u16(), &body) {
            return RegistryError::Refused {
                registry,
                what,
                detail,
            };
        }
        if status.as_u16() == 400 && self.base.starts_with("http://") && speaks_tls(&body) {
            return RegistryError::Status {
                registry,
                what,
                status: 400,
                detail: format!(
                    "answered 400: registry '{}' speaks TLS on this port; write its url as https:// (and pin its CA with tls.ca_file if its certificate is self-signed)",
                    self.name
                ),
            };
        }
        let detail = registry_message(&body);
        match status.as_u16() {
            401 | 403 => RegistryError::Unauthorized {
                registry,
                what,
                detail: format!(
                    "{status}{}{}; {}",
                    detail.map(|d| format!(": {d}")).unwrap_or_default(),
                    self.why_refused(status.as_u16(), refused_token.as_ref(), no_challenge),
                    self.sent_as()
                ),
            },
            404 => RegistryError::NotFound { registry, what },
            400 if detail
                .as_deref()
                .is_some_and(|d| d.contains("DIGEST_INVALID")) =>
            {
                RegistryError::DigestMismatch {
                    registry,
                    what,
                    detail: detail.unwrap_or_default(),
                }
            }
            413 => RegistryError::Status {
                registry,
                what,
                status: 413,
                detail: format!(
                    "answered 413 Request Entity Too Large: a proxy in front of registry '{}' limits request body size; set its chunk_size_threshold and chunk_size below that limit, or raise the limit (nginx: client_max_body_size 0)",
                    self.name
                ),
            },
            _ => RegistryError::Status {
                registry,
                what,
                status: status.as_u16(),
                detail: format!(
                    "answered {status}{}",
                    detail.map(|d| format!(": {d}")).unwrap_or_default()
                ),
            },
        }
    }

    /// Who the request went as, and what is known of the password file.
    fn sent_as(&self) -> String {
        format!(
            "sent as {}{}",
            match &self.username {
                Some(u) => format!("user '{u}'"),
                None => "anonymous (no username configured)".to_string(),
            },
            self.password_note
                .as_ref()
                .map(|n| format!("; note: the password file {n}"))
                .unwrap_or_default()
        )
    }

    /// What a `401` to a request made with a token, or without a
    /// challenge, tells beyond the registry's words.
    fn why_refused(
        &self,
        status: u16,
        token: Option<&super::grant::RefusedToken>,
        no_challenge: bool,
    ) -> String {
        if status != 401 {
            return String::new();
        }
        if let Some(words) = token.and_then(|t| super::grant::explain(t, self.username.as_deref()))
        {
            return format!("; {words}");
        }
        if no_challenge && (self.is_harbor || self.auth_kind() == "token") {
            return "; the answer has no challenge, which is Harbor's answer when the repository's project does not exist: create the project on the target, or set create_projects = true".into();
        }
        String::new()
    }

    /// Classifies a failed exchange: TLS, connection, or other.
    pub(super) fn transport_error(&self, e: &reqwest::Error, what: &str) -> RegistryError {
        let chain = error_chain(e);
        let lower = chain.to_ascii_lowercase();
        let registry = self.name.clone();
        let https = self.base.starts_with("https://");
        let tls_words = [
            "certificate",
            "unknownissuer",
            "handshake",
            "invalidcontenttype",
            "corrupt message",
        ];
        if https && tls_words.iter().any(|w| lower.contains(w)) {
            let plain = lower.contains("invalidcontenttype") || lower.contains("corrupt message");
            let hint = if plain {
                format!(
                    "registry '{}' does not answer with TLS; if it serves plain HTTP, write its url as http://",
                    self.name
                )
            } else {
                match &self.tls {
                    TlsMode::System => format!(
                        "set tls.ca_file for registry '{}' to the CA that signed its certificate (or, at your own risk, tls.insecure_skip_verify = true)",
                        self.name
                    ),
                    TlsMode::Pinned { file, .. } => format!(
                        "registry '{}' presented a certificate not signed by the CA in {} (check tls.ca_file and the certificate's host names)",
                        self.name,
                        file.display()
                    ),
                    TlsMode::InsecureSkipVerify => "TLS handshake failed".to_string(),
                }
            };
            let detail = match lower.find("invalid peer certificate") {
                Some(i) => chain[i..].to_string(),
                None => last_cause(&chain),
            };
            return RegistryError::Tls {
                registry,
                problem: if plain {
                    "no TLS on this port"
                } else {
                    "certificate not trusted"
                },
                hint,
                detail,
            };
        }
        if e.is_redirect() {
            // A redirect the trust boundary refused (or too many): the
            // registry's answer, the same every time.
            let detail = match lower.find("it redirected to") {
                Some(i) => chain[i..].to_string(),
                None => last_cause(&chain),
            };
            return RegistryError::Untrusted {
                registry,
                detail: format!("{what}: {detail}"),
            };
        }
        if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
            let detail = if e.is_timeout() {
                format!(
                    "no data for {:?} (stalled): {}",
                    self.limits.stall_timeout,
                    last_cause(&chain)
                )
            } else {
                last_cause(&chain)
            };
            return RegistryError::Connect {
                registry,
                url: self.base.clone(),
                detail,
            };
        }
        RegistryError::Other {
            registry,
            what: what.to_string(),
            detail: chain,
        }
    }
}

/// An OCI (and Harbor) error body: `{"errors":[{"code","message"}]}`.
#[derive(serde::Deserialize)]
struct Envelope {
    errors: Vec<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    code: Option<String>,
    message: Option<String>,
}

/// The code and message of an OCI error body, if it has one.
fn registry_message(body: &[u8]) -> Option<String> {
    if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
        let parts: Vec<String> = env
            .errors
            .iter()
            .map(|i| {
                format!(
                    "{} {}",
                    i.code.as_deref().unwrap_or(""),
                    i.message.as_deref().unwrap_or("")
                )
                .trim()
                .to_string()
            })
            .collect();
        if !parts.is_empty() {
            return Some(parts.join("; ").chars().take(300).collect());
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(300).collect())
}

/// True for the answer a TLS server gives a plain-HTTP request (Go's
/// net/http: "Client sent an HTTP request to an HTTPS server."; nginx: "The
/// plain HTTP request was sent to HTTPS port").
fn speaks_tls(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    text.contains("HTTPS server") || text.contains("HTTPS port")
}

/// A Harbor policy that refused a write, in words that say which and how
/// to change it, read from Harbor's error envelope:
/// - `412 PRECONDITION` "… configured as immutable" from the immutable-tag
///   middleware (`src/server/middleware/immutable/pushmf.go`, `error.go`);
/// - `403 DENIED` "The system is in read only mode" from the read-only
///   middleware (`src/server/middleware/readonly/readonly.go`);
///   status codes per `src/lib/http/error.go`.
pub(super) fn harbor_refusal(status: u16, body: &[u8]) -> Option<String> {
    let env: Envelope = serde_json::from_slice(body).ok()?;
    env.errors.iter().find_map(|e| {
        let code = e.code.as_deref().unwrap_or("");
        let message = e.message.as_deref().unwrap_or("");
        let said = super::cut(message);
        match (status, code) {
            (412, "PRECONDITION") if message.contains("immutable") => Some(format!(
                "Harbor refused: the tag is protected by a tag immutability rule of the target project ({said}); remove or narrow the rule (project > Policy > Tag Immutability), or replicate to another tag"
            )),
            (403, "DENIED") if message.to_ascii_lowercase().contains("read only") => Some(format!(
                "Harbor refused: the target Harbor is in read-only mode ({said}); turn off Administration > Configuration > System Settings > Repository Read Only"
            )),
            _ => None,
        }
    })
}

/// The error and its sources, joined, for matching and for messages.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn last_cause(chain: &str) -> String {
    chain.rsplit(": ").next().unwrap_or(chain).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harbors_immutable_tags_and_read_only_mode_are_named() {
        let immutable = br#"{"errors":[{"code":"PRECONDITION","message":"Failed to process request due to 'library/app:1' configured as immutable."}]}"#;
        let d = harbor_refusal(412, immutable).expect("immutable");
        assert!(
            d.contains("Tag Immutability") && d.contains("library/app:1"),
            "{d}"
        );
        let ro = br#"{"errors":[{"code":"DENIED","message":"The system is in read only mode. Any modification is prohibited."}]}"#;
        let d = harbor_refusal(403, ro).expect("read only");
        assert!(d.contains("Repository Read Only"), "{d}");
        // Other 403s (permissions) and other bodies are not policies.
        let denied = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
        assert_eq!(harbor_refusal(403, denied), None);
        assert_eq!(harbor_refusal(412, b"not json"), None);
    }

    #[test]
    fn a_tls_server_answering_plain_http_is_recognised() {
        assert!(speaks_tls(
            b"Client sent an HTTP request to an HTTPS server.\n"
        ));
        assert!(speaks_tls(
            b"<html>The plain HTTP request was sent to HTTPS port</html>"
        ));
        assert!(!speaks_tls(br#"{"errors":[{"code":"UNSUPPORTED"}]}"#));
    }

    #[test]
    fn registry_error_bodies_are_summarised() {
        let body = br#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#;
        assert_eq!(
            registry_message(body).as_deref(),
            Some("DIGEST_INVALID provided digest did not match uploaded content")
        );
        assert_eq!(registry_message(b"  ").as_deref(), None);
        assert_eq!(
            registry_message(b"upstream down").as_deref(),
            Some("upstream down")
        );
    }
}
