//! Registry authentication as clients meet it: the `WWW-Authenticate`
//! challenge of a `401`, then either HTTP Basic on every request or the
//! Docker token flow (`GET <realm>?service=…&scope=…` with Basic
//! credentials, answered with a bearer token), which is what Harbor does.
//!
//! Tokens are cached per set of scopes until shortly before they expire.
//! A mount needs `pull` on the *source* repository as well as `pull,push`
//! on the target one, so scopes are always a list.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// What a registry asked for in its challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…"`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// The `service` parameter to send back.
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value (one challenge; the first wins).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
    })
}

/// `key="value",key2="value2"` with commas allowed inside quotes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(stripped) = rest.strip_prefix('"') {
            let end = stripped.find('"').unwrap_or(stripped.len());
            value = stripped[..end].to_string();
            rest = stripped.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
}

/// A token service's answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long to use it: `expires_in` (default 60 s, as the
    /// spec says), less a margin so a token never expires mid-request.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token)?;
        if token.is_empty() {
            return None;
        }
        let life = self.expires_in.unwrap_or(60).max(10);
        let margin = (life / 10).clamp(5, 60);
        Some((token, Duration::from_secs(life - margin.min(life - 5))))
    }
}

/// Cached bearer tokens by scope set.
#[derive(Default)]
pub struct TokenCache {
    tokens: HashMap<String, (String, Instant)>,
}

impl TokenCache {
    /// A still-valid token for these scopes.
    pub fn get(&self, scopes: &str) -> Option<String> {
        self.tokens
            .get(scopes)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// Remembers a token.
    pub fn put(&mut self, scopes: &str, token: String, life: Duration) {
        if self.tokens.len() > 1000 {
            let now = Instant::now();
            self.tokens.retain(|_, (_, until)| *until > now);
        }
        self.tokens
            .insert(scopes.to_string(), (token, Instant::now() + life));
    }

    /// Forgets a token the registry refused.
    pub fn forget(&mut self, scopes: &str) {
        self.tokens.remove(scopes);
    }
}

/// `repository:<name>:<actions>`.
pub fn scope(repository: &str, actions: &str) -> String {
    format!("repository:{repository}:{actions}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_harbor_and_distribution_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://h.example/service/token",service="harbor-registry",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://h.example/service/token".into(),
                service: Some("harbor-registry".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="harbor""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        let p = parse_params(r#"realm="a,b", service=plain ,scope="x y""#);
        assert_eq!(p["realm"], "a,b");
        assert_eq!(p["service"], "plain");
        assert_eq!(p["scope"], "x y");
    }

    #[test]
    fn token_lifetime_keeps_a_margin() {
        let r: TokenResponse =
            serde_json::from_str(r#"{"access_token":"t","expires_in":1800}"#).expect("json");
        let (t, life) = r.into_token().expect("token");
        assert_eq!(t, "t");
        assert_eq!(life, Duration::from_secs(1740));
        let r: TokenResponse = serde_json::from_str(r#"{"token":"u"}"#).expect("json");
        assert_eq!(r.into_token().expect("token").1, Duration::from_secs(54));
        let r: TokenResponse = serde_json::from_str(r#"{"token":""}"#).expect("json");
        assert!(r.into_token().is_none());
    }
}
