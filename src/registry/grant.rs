//! Why a registry refused a request made with a token it issued: read from
//! the token's own claims.
//!
//! Harbor's token service never answers `401` for a missing permission or
//! a wrong password when a scope is asked: it grants what the account
//! holds on the project, and credentials it does not accept get an
//! anonymous token (`src/core/service/token/creator.go`; the Basic
//! security generator falls through to anonymous,
//! `src/server/middleware/security/basic_auth.go`). The refusal comes
//! later, as a `401` to the request itself, with words that cannot tell
//! the two apart. The token's JWT claims can: `sub` is empty for an
//! anonymous token, and `access` lists what was granted. The claims are
//! read, not verified: they only choose the words of an error.

use base64::Engine as _;
use serde::Deserialize;

/// The claims of a Docker registry token that matter here.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    access: Vec<Access>,
}

#[derive(Deserialize)]
struct Access {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

/// A token the registry refused, kept on the `401` answer so the error can
/// say why.
#[derive(Clone)]
pub(super) struct RefusedToken {
    pub token: String,
    pub scopes: Vec<String>,
    pub method: reqwest::Method,
}

/// Keeps the token of a `401` answer on it, so the error made from the
/// answer can say what the token granted.
pub(super) fn keep(
    resp: &mut reqwest::Response,
    sent: &super::transport::AuthHeader,
    scopes: &[String],
    method: reqwest::Method,
) {
    if let (reqwest::StatusCode::UNAUTHORIZED, super::transport::AuthHeader::Bearer(token)) =
        (resp.status(), sent)
    {
        resp.extensions_mut().insert(RefusedToken {
            token: token.clone(),
            scopes: scopes.to_vec(),
            method,
        });
    }
}

/// The action Harbor's `v2auth` (and distribution) asks of a method.
fn action_of(method: &reqwest::Method) -> &'static str {
    match *method {
        reqwest::Method::GET | reqwest::Method::HEAD => "pull",
        reqwest::Method::DELETE => "delete",
        _ => "push",
    }
}

/// Words for a refused token, or `None` when its claims cannot be read or
/// grant what the request needs (then the refusal has another cause).
/// `user` is the configured username, if any.
pub(super) fn explain(refused: &RefusedToken, user: Option<&str>) -> Option<String> {
    let payload = refused.token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&raw).ok()?;
    let who = user.map_or("(no username configured)".to_string(), |u| {
        format!("user '{u}'")
    });
    if claims.sub.is_empty() {
        return Some(format!(
            "the token service issued an anonymous token: it did not accept the credentials of {who} (a token service such as Harbor's answers refused credentials so, not with 401); check the password"
        ));
    }
    let needed = action_of(&refused.method);
    // The request's own repository is the first scope's.
    let repository = refused
        .scopes
        .first()
        .and_then(|s| s.strip_prefix("repository:"))
        .and_then(|s| s.rsplit_once(':'))
        .map(|(name, _)| name)?;
    let project = repository.split('/').next().unwrap_or(repository);
    let granted: Vec<&str> = claims
        .access
        .iter()
        .filter(|a| a.kind == "repository" && a.name == repository)
        .flat_map(|a| a.actions.iter().map(String::as_str))
        .collect();
    if granted.iter().any(|a| *a == needed || *a == "*") {
        return None;
    }
    let what = if granted.is_empty() {
        "nothing".to_string()
    } else {
        format!("only {}", granted.join(","))
    };
    Some(format!(
        "the token service granted {who} {what} on {}; this request needs {needed}: give the account {needed} permission on project '{project}' (a Harbor robot: '{} Repository'), or create the project if it does not exist",
        crate::registry::cut(repository),
        match needed {
            "pull" => "Pull",
            "delete" => "Delete",
            _ => "Push",
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(claims: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.sig", enc(&json!({"alg": "RS256"})), enc(&claims))
    }

    fn refused(claims: serde_json::Value, method: reqwest::Method) -> RefusedToken {
        RefusedToken {
            token: token(claims),
            scopes: vec![
                "repository:proj/app:pull,push".into(),
                "repository:other/app:pull".into(),
            ],
            method,
        }
    }

    #[test]
    fn an_anonymous_token_means_the_password_was_not_accepted() {
        let r = refused(
            json!({"sub": "", "access": [{"type": "repository", "name": "proj/app", "actions": []}]}),
            reqwest::Method::PUT,
        );
        let words = explain(&r, Some("robot$ci")).expect("explained");
        assert!(
            words.contains("anonymous token") && words.contains("'robot$ci'"),
            "{words}"
        );
    }

    #[test]
    fn a_grant_without_the_needed_action_names_both() {
        let r = refused(
            json!({"sub": "robot$ci", "access": [
                {"type": "repository", "name": "proj/app", "actions": ["pull"]},
                {"type": "repository", "name": "other/app", "actions": ["pull", "push"]}
            ]}),
            reqwest::Method::POST,
        );
        let words = explain(&r, Some("robot$ci")).expect("explained");
        assert!(
            words.contains("granted user 'robot$ci' only pull on proj/app")
                && words.contains("needs push")
                && words.contains("project 'proj'")
                && words.contains("'Push Repository'"),
            "{words}"
        );
        let none = refused(
            json!({"sub": "u", "access": [{"type": "repository", "name": "proj/app", "actions": []}]}),
            reqwest::Method::DELETE,
        );
        let words = explain(&none, Some("u")).expect("explained");
        assert!(
            words.contains("granted user 'u' nothing") && words.contains("needs delete"),
            "{words}"
        );
    }

    #[test]
    fn a_sufficient_grant_or_an_opaque_token_explains_nothing() {
        let ok = refused(
            json!({"sub": "u", "access": [{"type": "repository", "name": "proj/app", "actions": ["*"]}]}),
            reqwest::Method::PATCH,
        );
        assert_eq!(explain(&ok, Some("u")), None);
        let opaque = RefusedToken {
            token: "not-a-jwt".into(),
            scopes: vec!["repository:proj/app:pull".into()],
            method: reqwest::Method::GET,
        };
        assert_eq!(explain(&opaque, Some("u")), None);
    }
}
