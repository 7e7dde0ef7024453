//! Harbor's registry auth, as its source does it, for [`super::harbor::FakeHarbor`]:
//! accounts with per-project permissions, the token service
//! (`/service/token`) and the `v2auth` check in front of the registry.
//!
//! Each behaviour cites the Harbor file (`goharbor/harbor`, main) it
//! copies:
//! - `src/core/service/token/token.go`: an unknown `service` is `400`.
//! - `src/server/middleware/security/basic_auth.go` with `security.go`:
//!   wrong Basic credentials do not fail the request; the request goes on
//!   as anonymous.
//! - `src/core/service/token/creator.go` (`generalCreator.Create`): an
//!   anonymous request without a scope is `401` (that is `docker login`
//!   failing); with scopes it gets `200` and a token.
//!   `repositoryFilter.filter` *replaces* each repository scope's
//!   actions with every action the account holds on the project (asked or
//!   not; none for a project that does not exist); `registryFilter`
//!   keeps `registry:catalog:*` for system admins only, and any other
//!   type gets no actions.
//! - `src/core/service/token/authutils.go` (`MakeToken`): `expires_in`
//!   is `token_expiration` minutes × 60 (default 30 minutes, so 1800;
//!   `src/lib/config/metadata/metadatalist.go`), `aud` the service.
//! - `src/common/security/v2token/context.go`: a token's grant is kept
//!   per project (the first path component), the last entry for a
//!   project winning; `*` means pull, push and delete; a token with an
//!   empty `sub` is not authenticated.
//! - `src/server/middleware/security/v2_token.go`: a token issued (less
//!   the 60 s `JwtLeeway`) before its project was created is ignored.
//! - `src/server/middleware/v2auth/auth.go`: the method decides the
//!   action; `/v2/` needs an authenticated caller; a `GET`/`HEAD` of a
//!   repository without `Authorization` gets the Bearer challenge; a
//!   repository in a project that does not exist is `401` with an empty
//!   challenge and the message "project … not found"; a request the
//!   caller may not make gets `Basic realm="harbor"` when it carried
//!   `Authorization`, the Bearer challenge with the scope when not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

/// Harbor's `common.JwtLeeway` (`src/common/const.go`).
const LEEWAY_SECS: u64 = 60;
/// `token_expiration`'s default, in minutes.
const TOKEN_EXPIRATION_MINUTES: u64 = 30;
/// The service name Harbor's token service knows (`token.Registry`).
pub const SERVICE: &str = "harbor-registry";

/// One Harbor account: a user or a robot.
#[derive(Clone, Debug, Default)]
pub struct Account {
    pub password: String,
    /// A system admin: every action on every project, and the catalog.
    pub sysadmin: bool,
    /// Actions (`pull`, `push`, `delete`) on named projects.
    pub projects: BTreeMap<String, BTreeSet<String>>,
    /// Actions on every project (a system-level robot's "all projects").
    pub all_projects: BTreeSet<String>,
    /// May create projects (users may by default; robots only system
    /// robots given `project:create`).
    pub create_project: bool,
}

impl Account {
    /// A system admin.
    pub fn admin(password: &str) -> Account {
        Account {
            password: password.into(),
            sysadmin: true,
            create_project: true,
            ..Default::default()
        }
    }

    /// A project-level robot (`robot$<project>+<name>`) holding `actions`
    /// on `project` only.
    pub fn project_robot(password: &str, project: &str, actions: &[&str]) -> Account {
        Account {
            password: password.into(),
            projects: BTreeMap::from([(
                project.to_string(),
                actions.iter().map(|a| a.to_string()).collect(),
            )]),
            ..Default::default()
        }
    }

    /// A system-level robot (`robot$<name>`) holding `actions` on every
    /// project, and project creation if `create_project`.
    pub fn system_robot(password: &str, actions: &[&str], create_project: bool) -> Account {
        Account {
            password: password.into(),
            all_projects: actions.iter().map(|a| a.to_string()).collect(),
            create_project,
            ..Default::default()
        }
    }

    /// The registry actions this account holds on `project`
    /// (`resourceScopes` over `actionScopeMap`).
    pub fn actions_on(&self, project: &str) -> BTreeSet<String> {
        if self.sysadmin {
            return ["pull", "push", "delete"].map(String::from).into();
        }
        let mut held = self.all_projects.clone();
        if let Some(p) = self.projects.get(project) {
            held.extend(p.iter().cloned());
        }
        held
    }
}

/// What one token request asked and got.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The user the credentials named ("" when none, or wrong).
    pub subject: String,
    pub asked: Vec<String>,
    pub granted: Value,
}

/// Accounts, projects' creation times, the signing key, and what was
/// asked of the token service.
pub struct HarborAuth {
    pub accounts: Mutex<BTreeMap<String, Account>>,
    /// Project name → when it was created (seconds since the epoch);
    /// projects made before the test ran are not listed (old).
    pub created_at: Mutex<BTreeMap<String, u64>>,
    key: String,
    pub grants: Mutex<Vec<Grant>>,
    /// Registry requests authorised by Basic credentials.
    pub basic_uses: AtomicUsize,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Value>,
}

/// Who a request's credentials name, and whether they hold.
pub enum Caller {
    Anonymous,
    /// Basic credentials of an account.
    User(String, Account),
    /// A token this Harbor signed: its subject and grant by project.
    Token {
        subject: String,
        iat: u64,
        grant: BTreeMap<String, BTreeSet<String>>,
    },
}

impl HarborAuth {
    pub fn new(accounts: BTreeMap<String, Account>) -> HarborAuth {
        HarborAuth {
            accounts: Mutex::new(accounts),
            created_at: Mutex::default(),
            key: format!("harbor-{}", rand::random::<u64>()),
            grants: Mutex::default(),
            basic_uses: AtomicUsize::new(0),
        }
    }

    /// The account the Basic credentials name, if the password is right.
    pub fn basic(&self, headers: &HeaderMap) -> Option<(String, Account)> {
        let h = headers.get("authorization")?.to_str().ok()?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(h.strip_prefix("Basic ")?)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        let account = self.accounts.lock().expect("accounts").get(u).cloned()?;
        (account.password == p).then(|| (u.to_string(), account))
    }

    /// `GET /service/token` (`token.go`, `creator.go`, `authutils.go`).
    pub fn token(
        &self,
        headers: &HeaderMap,
        query: &[(String, String)],
        exists: &dyn Fn(&str) -> bool,
    ) -> Response {
        if !query.iter().any(|(k, v)| k == "service" && v == SERVICE) {
            return (StatusCode::BAD_REQUEST, "Unable to handle service").into_response();
        }
        let asked: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        let account = self.basic(headers);
        if account.is_none() && asked.is_empty() {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let access: Vec<Value> = asked
            .iter()
            .map(|s| grant_one(s, account.as_ref().map(|(_, a)| a), exists))
            .collect();
        let subject = account.map(|(u, _)| u).unwrap_or_default();
        self.grants.lock().expect("grants").push(Grant {
            subject: subject.clone(),
            asked: asked.clone(),
            granted: Value::Array(access.clone()),
        });
        let iat = now();
        let expires_in = TOKEN_EXPIRATION_MINUTES * 60;
        let claims = Claims {
            iss: "harbor-token-issuer".into(),
            sub: subject,
            aud: SERVICE.into(),
            exp: iat + expires_in,
            nbf: iat,
            iat,
            jti: format!("{:016x}", rand::random::<u64>()),
            access,
        };
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.key.as_bytes()),
        )
        .expect("sign");
        axum::Json(json!({
            "token": token,
            "expires_in": expires_in,
            "issued_at": httpdate::fmt_http_date(std::time::SystemTime::now()),
        }))
        .into_response()
    }

    /// Who a `/v2/` request comes from (`v2_token.go`, `basic_auth.go`):
    /// a valid token of ours, or Basic credentials that hold; anything
    /// else is anonymous.
    pub fn caller(&self, headers: &HeaderMap) -> Caller {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(t) = auth.strip_prefix("Bearer ") {
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.set_audience(&[SERVICE]);
            v.leeway = LEEWAY_SECS;
            let Ok(data) = jsonwebtoken::decode::<Claims>(
                t,
                &jsonwebtoken::DecodingKey::from_secret(self.key.as_bytes()),
                &v,
            ) else {
                return Caller::Anonymous;
            };
            let c = data.claims;
            return Caller::Token {
                subject: c.sub,
                iat: c.iat,
                grant: grant_by_project(&c.access),
            };
        }
        match self.basic(headers) {
            Some((u, a)) => Caller::User(u, a),
            None => Caller::Anonymous,
        }
    }

    /// `v2auth`'s check of a registry request: `None` lets it through,
    /// `Some` is Harbor's refusal. `origin` is the instance's external
    /// endpoint (`scheme://host[:port]`), which the challenge's realm is
    /// built from (`getChallenge`, src/server/middleware/v2auth/auth.go).
    pub fn check_v2(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        origin: &str,
        exists: &dyn Fn(&str) -> bool,
    ) -> Option<Response> {
        let caller = self.caller(headers);
        let has_auth = headers.contains_key("authorization");
        let path = path.split('?').next().unwrap_or(path);
        let challenge = |scope: Option<String>| {
            if has_auth {
                "Basic realm=\"harbor\"".to_string()
            } else {
                let base = format!("Bearer realm=\"{origin}/service/token\",service=\"{SERVICE}\"");
                match scope {
                    Some(s) => format!("{base},scope=\"{s}\""),
                    None => base,
                }
            }
        };
        if path == "/v2/" || path == "/v2" {
            let authenticated = match &caller {
                Caller::Anonymous => false,
                Caller::User(..) => true,
                Caller::Token { subject, .. } => !subject.is_empty(),
            };
            if let Caller::User(..) = caller {
                self.basic_uses.fetch_add(1, Ordering::Relaxed);
            }
            return (!authenticated).then(|| refuse(&challenge(None), "unauthorized"));
        }
        if path.starts_with("/v2/_catalog") {
            let admin = matches!(&caller, Caller::User(_, a) if a.sysadmin);
            return (!admin)
                .then(|| refuse("Basic realm=\"harbor\"", "unauthorized to list catalog"));
        }
        let repo = repository_of(path)?;
        let action = match *method {
            Method::GET | Method::HEAD => "pull",
            Method::DELETE => "delete",
            _ => "push",
        };
        let scope = format!("repository:{repo}:{action}");
        if !has_auth && (*method == Method::GET || *method == Method::HEAD) {
            return Some(refuse(
                &challenge(Some(scope)),
                "authorize header needed to send HEAD to repository",
            ));
        }
        let project = repo.split('/').next().unwrap_or("");
        if !exists(project) {
            return Some(refuse("", &format!("project {project} not found")));
        }
        let held = match &caller {
            Caller::Anonymous => BTreeSet::new(),
            Caller::User(_, a) => {
                self.basic_uses.fetch_add(1, Ordering::Relaxed);
                a.actions_on(project)
            }
            Caller::Token { iat, grant, .. } => {
                let created = self
                    .created_at
                    .lock()
                    .expect("created")
                    .get(project)
                    .copied();
                if created.is_some_and(|c| iat + LEEWAY_SECS < c) {
                    BTreeSet::new()
                } else {
                    grant.get(project).cloned().unwrap_or_default()
                }
            }
        };
        (!held.contains(action)).then(|| {
            refuse(
                &challenge(Some(scope)),
                &format!("unauthorized to access repository: {repo}, action: {action}"),
            )
        })
    }
}

/// One asked scope with the actions Harbor grants for it.
fn grant_one(scope: &str, account: Option<&Account>, exists: &dyn Fn(&str) -> bool) -> Value {
    // `GetResourceActions`: type, name (may hold ':'), actions.
    let items: Vec<&str> = scope.split(':').collect();
    let (typ, name) = match items.len() {
        1 => (items[0], String::new()),
        2 => (items[0], items[1].to_string()),
        n => (items[0], items[1..n - 1].join(":")),
    };
    let actions: Vec<String> = match typ {
        "repository" => {
            // `parseImg`: a name without a project gets nothing.
            match (name.split_once('/'), account) {
                (Some((project, _)), Some(a)) if exists(project) => {
                    a.actions_on(project).into_iter().collect()
                }
                _ => Vec::new(),
            }
        }
        "registry" if name == "catalog" && account.is_some_and(|a| a.sysadmin) => items
            .last()
            .map(|a| vec![a.to_string()])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    json!({"type": typ, "name": name, "actions": actions})
}

/// `v2token.New`: the grant per project, the last entry winning.
fn grant_by_project(access: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut m = BTreeMap::new();
    for a in access {
        if a["type"] != "repository" {
            continue;
        }
        let name = a["name"].as_str().unwrap_or("");
        let project = name.split('/').next().unwrap_or("").to_string();
        let mut actions = BTreeSet::new();
        for x in a["actions"].as_array().into_iter().flatten() {
            match x.as_str() {
                Some("*") => actions.extend(["pull", "push", "delete"].map(String::from)),
                Some(s) => {
                    actions.insert(s.to_string());
                }
                None => {}
            }
        }
        m.insert(project, actions);
    }
    m
}

/// The repository a `/v2/<name>/{manifests,blobs,tags,referrers}/…` path
/// names.
fn repository_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    for marker in ["/manifests/", "/blobs/", "/tags/", "/referrers/"] {
        if let Some(i) = rest.find(marker) {
            return Some(rest[..i].to_string());
        }
    }
    None
}

/// Harbor's `401` (`lib_http.SendError` of an `UnauthorizedError`).
fn refuse(challenge: &str, message: &str) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]})),
    )
        .into_response();
    r.headers_mut().insert(
        "docker-distribution-api-version",
        axum::http::HeaderValue::from_static("registry/2.0"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(challenge) {
        r.headers_mut().insert("www-authenticate", v);
    }
    r
}
