//! How requests to one registry are authenticated: what a `401` teaches
//! (within the trust rules of [`super::trust`]), Basic credentials, and the
//! Docker token flow.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

use super::RegistryError;
use super::auth::{self, Challenge};
use super::transport::{AuthHeader, Authn, Learned, Transport, apply, lock};
use super::trust::{check_realm, cut, host_of, same_origin, widen};

impl Transport {
    /// Learns from a `401` to a request sent with `sent`: whether to send
    /// it again (the challenge is new, a token was refused and is renewed,
    /// or the request went out without credentials while another learned
    /// the challenge). A challenge from another origin (a blob store a
    /// redirect led to) teaches nothing; a token realm the registry may not
    /// use is an error; and once tokens are in use a `Basic` challenge to a
    /// request that carried one (Harbor's `v2auth` answers a token it does
    /// not accept so) renews the token, wider if the method needs it, and
    /// never switches to Basic.
    pub(super) fn learn(
        &self,
        from: &url::Url,
        headers: &HeaderMap,
        scopes: &[String],
        sent: &AuthHeader,
        method: &reqwest::Method,
    ) -> Result<Learned, RegistryError> {
        if !same_origin(from, &self.base_url) {
            tracing::debug!(registry = %self.name, from = %host_of(from), "ignoring a 401 challenge from another host");
            return Ok(Learned::Stop);
        }
        let parsed = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(auth::parse_challenge)
            .next();
        let Some(challenge) = parsed else {
            return Ok(Learned::Stop);
        };
        if let Challenge::Bearer { realm, .. } = &challenge {
            check_realm(realm, &self.base_url, &self.realm_hosts).map_err(|detail| {
                RegistryError::Untrusted {
                    registry: self.name.clone(),
                    detail,
                }
            })?;
        }
        let key = scopes.join(" ");
        lock(&self.tokens).forget(&key);
        let mut current = lock(&self.challenge);
        let sent_token = matches!(sent, AuthHeader::Bearer(_));
        if sent_token && matches!(*current, Some(Challenge::Bearer { .. })) {
            // Keep the Bearer challenge (a Basic one here is Harbor's way
            // of refusing the token); renew the token, wider if need be.
            if let Challenge::Bearer { .. } = &challenge {
                *current = Some(challenge);
            }
            return Ok(match widen(scopes, method) {
                Some(wider) => Learned::Widen(wider),
                None => Learned::Retry,
            });
        }
        let changed = current.as_ref() != Some(&challenge);
        *current = Some(challenge);
        let anonymous = matches!(sent, AuthHeader::None);
        Ok(if changed || sent_token || anonymous {
            Learned::Retry
        } else {
            Learned::Stop
        })
    }

    /// Our credentials as Basic auth (none if there is no username).
    pub(super) fn basic(&self) -> AuthHeader {
        match (&self.username, &self.password) {
            (Some(u), p) => AuthHeader::Basic(
                u.clone(),
                p.as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            ),
            _ => AuthHeader::None,
        }
    }

    /// How requests are authenticated, as learned from the registry.
    pub(super) fn auth_kind(&self) -> &'static str {
        match &*lock(&self.challenge) {
            None => "anonymous",
            Some(Challenge::Basic) => "basic",
            Some(Challenge::Bearer { .. }) => "token",
        }
    }

    pub(super) async fn auth_header(
        &self,
        scopes: &[String],
        what: &str,
    ) -> Result<AuthHeader, RegistryError> {
        let challenge = lock(&self.challenge).clone();
        match challenge {
            None => Ok(AuthHeader::None),
            Some(Challenge::Basic) => Ok(self.basic()),
            Some(Challenge::Bearer { realm, service }) => {
                let key = scopes.join(" ");
                let found = lock(&self.tokens).lookup(&key, std::time::Instant::now());
                match found {
                    auth::Lookup::Fresh(t) => return Ok(AuthHeader::Bearer(t)),
                    auth::Lookup::Renew(t) => {
                        self.renew_early(realm, service, scopes.to_vec(), what);
                        return Ok(AuthHeader::Bearer(t));
                    }
                    auth::Lookup::Missing => {}
                }
                // Boxed: the token request goes through `exchange` too.
                let token =
                    Box::pin(self.fetch_token(&realm, service.as_deref(), scopes, what)).await?;
                Ok(AuthHeader::Bearer(token))
            }
        }
    }

    /// Renews the token for `scopes` in the background while the one in
    /// hand is still used (issue 28: no job waits for the token service
    /// when a token expires); a failure is logged, and the next use past
    /// the renewal time tries again.
    fn renew_early(&self, realm: String, service: Option<String>, scopes: Vec<String>, what: &str) {
        let key = scopes.join(" ");
        let Some(me) = self.me.upgrade() else {
            lock(&self.tokens).renewal_failed(&key);
            return;
        };
        let what = format!("{what} (renewing its token early)");
        tokio::spawn(async move {
            if let Err(e) = me
                .fetch_token(&realm, service.as_deref(), &scopes, &what)
                .await
            {
                tracing::debug!(registry = %me.name, error = %e, "early token renewal failed; the token in hand stays until it expires");
                lock(&me.tokens).renewal_failed(&key);
            }
        });
    }

    /// The Docker token flow: `GET <realm>?service=…&scope=…`, with Basic
    /// credentials when we have them.
    pub(super) async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        what: &str,
    ) -> Result<String, RegistryError> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let creds = self.basic();
        let token_what = format!("token for {what}");
        let resp = self
            .exchange(&token_what, Authn::Given, true, &|c| {
                apply(c.get(realm).query(&query), &creds)
            })
            .await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Unauthorized {
                    registry: self.name.clone(),
                    what: what.to_string(),
                    detail: format!(
                        "the token service answered {}; sent as user '{}'{}",
                        resp.status(),
                        self.username.as_deref().unwrap_or("(none)"),
                        self.password_note
                            .as_ref()
                            .map(|n| format!("; note: the password file {n}"))
                            .unwrap_or_default()
                    ),
                });
            }
            _ => return Err(self.status_error(resp, &token_what).await),
        }
        let body = self.read_limited(resp, 1 << 20, &token_what).await?;
        let parsed: auth::TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Other {
                registry: self.name.clone(),
                what: token_what.clone(),
                detail: format!(
                    "the token service's answer is not JSON: {}",
                    cut(&e.to_string())
                ),
            })?;
        let (token, life) = parsed.into_token().ok_or_else(|| RegistryError::Other {
            registry: self.name.clone(),
            what: token_what,
            detail: "the token service's answer holds no token".into(),
        })?;
        lock(&self.tokens).put(&scopes.join(" "), token.clone(), life);
        Ok(token)
    }
}
