//! Registry authentication as clients meet it: the `WWW-Authenticate`
//! challenge of a `401`, then either HTTP Basic on every request or the
//! Docker token flow (`GET <realm>?service=…&scope=…` with Basic
//! credentials, answered with a bearer token), which is what Harbor does.
//!
//! Tokens are cached per set of scopes until shortly before they expire.
//! A mount needs `pull` on the *source* repository as well as `pull,push`
//! on the target one, so scopes are always a list.

use std::collections::{HashMap, HashSet};
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
    tokens: HashMap<String, Cached>,
    /// Scope sets whose token is being renewed early, in the background.
    renewing: HashSet<String>,
}

struct Cached {
    token: String,
    until: Instant,
    /// From here on, the token is renewed in the background while it is
    /// still used: no request waits for the token service at expiry.
    renew_at: Instant,
}

/// What [`TokenCache::lookup`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A token to use.
    Fresh(String),
    /// A token to use, past three quarters of its life: the caller starts
    /// the one background renewal for these scopes.
    Renew(String),
    /// None: the caller asks the token service before its request.
    Missing,
}

impl TokenCache {
    /// The token for these scopes at `now`, and whether to renew it.
    pub fn lookup(&mut self, scopes: &str, now: Instant) -> Lookup {
        let Some(c) = self.tokens.get(scopes).filter(|c| now < c.until) else {
            return Lookup::Missing;
        };
        if now >= c.renew_at && self.renewing.insert(scopes.to_string()) {
            Lookup::Renew(c.token.clone())
        } else {
            Lookup::Fresh(c.token.clone())
        }
    }

    /// Remembers a token, got at `now`, to use for `life`.
    pub fn put_at(&mut self, scopes: &str, token: String, life: Duration, now: Instant) {
        if self.tokens.len() > 1000 {
            self.tokens.retain(|_, c| c.until > now);
        }
        self.renewing.remove(scopes);
        self.tokens.insert(
            scopes.to_string(),
            Cached {
                token,
                until: now + life,
                renew_at: now + life * 3 / 4,
            },
        );
    }

    /// Remembers a token got now.
    pub fn put(&mut self, scopes: &str, token: String, life: Duration) {
        self.put_at(scopes, token, life, Instant::now());
    }

    /// An early renewal failed: the token in hand stays until it expires,
    /// and the next use past its renewal time tries again.
    pub fn renewal_failed(&mut self, scopes: &str) {
        self.renewing.remove(scopes);
    }

    /// Forgets a token the registry refused.
    pub fn forget(&mut self, scopes: &str) {
        self.tokens.remove(scopes);
        self.renewing.remove(scopes);
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
    fn a_token_past_three_quarters_of_its_life_is_renewed_once_in_the_background() {
        let mut c = TokenCache::default();
        let t0 = Instant::now();
        let life = Duration::from_secs(100);
        assert_eq!(c.lookup("s", t0), Lookup::Missing);
        c.put_at("s", "one".into(), life, t0);
        assert_eq!(
            c.lookup("s", t0 + Duration::from_secs(74)),
            Lookup::Fresh("one".into())
        );
        // One caller starts the renewal; the others use the token meanwhile.
        let late = t0 + Duration::from_secs(80);
        assert_eq!(c.lookup("s", late), Lookup::Renew("one".into()));
        assert_eq!(c.lookup("s", late), Lookup::Fresh("one".into()));
        assert_eq!(c.lookup("other", late), Lookup::Missing);
        // A failed renewal is tried again by the next use; a new token
        // starts its own life.
        c.renewal_failed("s");
        assert_eq!(c.lookup("s", late), Lookup::Renew("one".into()));
        c.put_at("s", "two".into(), life, late);
        assert_eq!(
            c.lookup("s", late + Duration::from_secs(70)),
            Lookup::Fresh("two".into())
        );
        // Expired is missing, renewing or not.
        assert_eq!(c.lookup("s", late + life), Lookup::Missing);
        c.forget("s");
        assert_eq!(c.lookup("s", late), Lookup::Missing);
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
