//! An HTTP proxy in front of a real (plain-HTTP) registry that injects the
//! faults registries and networks produce on a bad day: error statuses with
//! or without `Retry-After`, connections dropped in the middle of a body, a
//! body that stalls, a flipped byte. It streams bodies both ways, rewrites
//! `Location` headers so uploads keep going through it, and counts the
//! bytes it forwards upstream (what the daemon actually uploaded).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;

/// One injected fault.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (and `Retry-After`, if given) instead of
    /// forwarding.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Forward, but drop the connection after this many response bytes.
    ResetAfter(u64),
    /// Forward, but stop sending for a while after this many bytes.
    StallAfter(u64, Duration),
    /// Forward, with the byte at this offset of the response body flipped.
    FlipByte(u64),
    /// Forward, but stop reading the request body for a while after this
    /// many bytes (a target that hangs during an upload).
    StallUpload(u64, Duration),
    /// Hold the request without reading it, then answer 503 without
    /// forwarding (a request stuck in front of the registry).
    HoldThenFail(Duration),
    /// Forward without the request's `Range`: the registry answers `200`
    /// with the whole blob (a source, or a proxy, that ignores ranges).
    DropRange,
    /// Forward with the asked range moved on by this many bytes; with
    /// `hide`, the answer's `Content-Range` is rewritten to the range that
    /// was asked (the bytes are wrong, the headers right).
    ShiftRange { by: u64, hide: bool },
    /// Forward, but end the body cleanly (no `Content-Length`) after this
    /// many bytes: a short answer that is not an error on the wire.
    EndAfter(u64),
}

/// A fault for the first `times` requests that match.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: Option<&'static str>,
    pub path_contains: String,
    /// Matching requests to let through before the fault applies.
    pub skip: usize,
    pub times: usize,
    pub fault: Fault,
}

#[derive(Default)]
pub struct Log {
    /// (arrival, method, path, status answered) of every request.
    pub requests: Mutex<Vec<(Instant, String, String, u16)>>,
    /// Request body bytes forwarded upstream.
    pub uploaded: AtomicU64,
    /// Faults injected so far.
    pub injected: AtomicUsize,
    /// Response body bytes sent to the client (what it read).
    pub downloaded: AtomicU64,
}

/// A check in front of the forwarding (a Harbor's `v2auth`): `Some`
/// answers the request instead of forwarding it.
pub type Gate = Arc<
    dyn Fn(
            axum::http::Method,
            String,
            axum::http::HeaderMap,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Response>> + Send>>
        + Send
        + Sync,
>;

/// Told of every forwarded request once the upstream answered: (method,
/// path, status, the request's headers). A Harbor fires its webhooks so,
/// after the registry took a push.
pub type Observer = Arc<dyn Fn(&str, &str, u16, &axum::http::HeaderMap) + Send + Sync>;

struct St {
    gate: Option<Gate>,
    observer: Option<Observer>,
    upstream: String,
    me: String,
    http: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    log: Arc<Log>,
}

pub struct FaultProxy {
    pub url: String,
    pub log: Arc<Log>,
    state: Arc<St>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy for `upstream` (e.g. `http://127.0.0.1:5000`).
    pub async fn start(upstream: &str) -> FaultProxy {
        Self::start_with_routes(upstream, axum::Router::new()).await
    }

    /// Like [`FaultProxy::start`], answering `routes` itself (a fake
    /// registry API in front of a real registry) and forwarding the rest.
    pub async fn start_with_routes(upstream: &str, routes: axum::Router) -> FaultProxy {
        Self::start_gated(upstream, routes, None).await
    }

    /// Like [`FaultProxy::start_with_routes`], with every forwarded request
    /// first put to `gate`.
    pub async fn start_gated(
        upstream: &str,
        routes: axum::Router,
        gate: Option<Gate>,
    ) -> FaultProxy {
        Self::start_observed(upstream, routes, gate, None, None).await
    }

    /// Like [`FaultProxy::start_gated`], telling `observer` of each
    /// forwarded request's answer, and serving HTTPS with `pki`'s
    /// certificate when given.
    pub async fn start_observed(
        upstream: &str,
        routes: axum::Router,
        gate: Option<Gate>,
        observer: Option<Observer>,
        pki: Option<&super::Pki>,
    ) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let scheme = if pki.is_some() { "https" } else { "http" };
        let me = format!("{scheme}://{addr}");
        let log = Arc::new(Log::default());
        let state = Arc::new(St {
            gate,
            observer,
            upstream: upstream.trim_end_matches('/').to_string(),
            me: me.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            rules: Mutex::new(Vec::new()),
            log: log.clone(),
        });
        let forward = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let app = routes.fallback_service(forward);
        let (task, _) = super::serve(listener, app, pki);
        FaultProxy {
            url: me,
            log,
            state,
            task,
        }
    }

    /// Adds a fault rule.
    pub fn inject(
        &self,
        method: Option<&'static str>,
        path_contains: &str,
        times: usize,
        fault: Fault,
    ) {
        self.inject_after(method, path_contains, 0, times, fault);
    }

    /// Adds a fault rule that lets `skip` matching requests through first.
    pub fn inject_after(
        &self,
        method: Option<&'static str>,
        path_contains: &str,
        skip: usize,
        times: usize,
        fault: Fault,
    ) {
        self.state.rules.lock().expect("rules").push(Rule {
            method,
            path_contains: path_contains.to_string(),
            skip,
            times,
            fault,
        });
    }

    pub fn uploaded(&self) -> u64 {
        self.log.uploaded.load(Ordering::Relaxed)
    }

    /// Response body bytes the client was sent.
    pub fn downloaded(&self) -> u64 {
        self.log.downloaded.load(Ordering::Relaxed)
    }

    pub fn injected(&self) -> usize {
        self.log.injected.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> Vec<(Instant, String, String, u16)> {
        self.log.requests.lock().expect("log").clone()
    }
}

fn take_fault(st: &St, method: &str, path: &str) -> Option<Fault> {
    let mut rules = st.rules.lock().expect("rules");
    for r in rules.iter_mut() {
        if r.times > 0 && r.method.is_none_or(|m| m == method) && path.contains(&r.path_contains) {
            if r.skip > 0 {
                r.skip -= 1;
                continue;
            }
            r.times -= 1;
            st.log.injected.fetch_add(1, Ordering::Relaxed);
            return Some(r.fault.clone());
        }
    }
    None
}

async fn handle(State(st): State<Arc<St>>, req: Request) -> Response {
    let arrived = Instant::now();
    let method = req.method().as_str().to_string();
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let record = |status: u16| {
        st.log.requests.lock().expect("log").push((
            arrived,
            method.clone(),
            path_q.clone(),
            status,
        ));
    };
    if let Some(gate) = &st.gate
        && let Some(refused) =
            gate(req.method().clone(), path_q.clone(), req.headers().clone()).await
    {
        record(refused.status().as_u16());
        drain(req).await;
        return refused;
    }
    let fault = take_fault(&st, &method, &path_q);
    match &fault {
        Some(Fault::HoldThenFail(d)) => {
            tokio::time::sleep(*d).await;
            record(503);
            return (StatusCode::SERVICE_UNAVAILABLE, "held, then dropped\n").into_response();
        }
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            // Read what the client sends first, so that it reads the answer
            // rather than a connection closed under its upload.
            drain(req).await;
            record(*status);
            return injected_status(*status, retry_after.as_deref());
        }
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let stall_upload = match &fault {
        Some(Fault::StallUpload(n, d)) => Some((*n, *d)),
        _ => None,
    };
    let upload = counted_upload(body, st.log.clone(), stall_upload);
    let mut fwd = st
        .http
        .request(parts.method.clone(), format!("{}{}", st.upstream, path_q));
    for (name, value) in parts.headers.iter() {
        if name == "range" {
            match &fault {
                Some(Fault::DropRange) => continue,
                Some(Fault::ShiftRange { by, .. }) => {
                    fwd = fwd.header(name, shifted(value.to_str().unwrap_or(""), *by));
                    continue;
                }
                _ => {}
            }
        }
        if name != "host" && name != "transfer-encoding" {
            fwd = fwd.header(name, value);
        }
    }
    let asked_range = parts
        .headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match fwd.body(reqwest::Body::wrap_stream(upload)).send().await {
        Ok(resp) => {
            record(resp.status().as_u16());
            if let Some(observe) = &st.observer {
                observe(&method, &path_q, resp.status().as_u16(), &parts.headers);
            }
            faulty_response(&st, resp, fault, asked_range)
        }
        Err(e) => {
            record(502);
            (StatusCode::BAD_GATEWAY, format!("proxy: {e}\n")).into_response()
        }
    }
}

/// Reads and drops a request's body.
async fn drain(req: Request) {
    let mut body = req.into_body().into_data_stream();
    while let Some(Ok(_)) = body.next().await {}
}

/// An injected error status, with `Retry-After` if given.
fn injected_status(status: u16, retry_after: Option<&str>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).expect("status"),
        "injected fault\n",
    )
        .into_response();
    if let Some(ra) = retry_after {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_str(ra).expect("header"));
    }
    r
}

/// The request body as forwarded upstream: each byte counted in
/// `log.uploaded`, and a stall once `stall` = (offset, how long) is passed.
fn counted_upload(
    body: Body,
    log: Arc<Log>,
    stall: Option<(u64, Duration)>,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    let mut taken: u64 = 0;
    body.into_data_stream().then(move |c| {
        let start = taken;
        if let Ok(b) = &c {
            taken += b.len() as u64;
            log.uploaded.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        let end = taken;
        async move {
            if let Some((n, d)) = stall
                && start <= n
                && end > n
            {
                tokio::time::sleep(d).await;
            }
            c
        }
    })
}

/// The upstream's answer, with `Location` pointing back through the proxy
/// and the response body reset, stalled or with a byte flipped as `fault`
/// says.
fn faulty_response(
    st: &St,
    resp: reqwest::Response,
    fault: Option<Fault>,
    asked_range: Option<String>,
) -> Response {
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers().iter() {
        if name == "content-length" && matches!(fault, Some(Fault::EndAfter(_))) {
            continue;
        }
        if name == "content-range"
            && let (Some(Fault::ShiftRange { hide: true, .. }), Some(asked)) =
                (&fault, &asked_range)
        {
            // `bytes=a-b` asked; the answer says `bytes a-b/<total>`.
            let total = value
                .to_str()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("*");
            let range = asked.trim_start_matches("bytes=");
            out = out.header(name, format!("bytes {range}/{total}"));
            continue;
        }
        if name == "location" {
            let v = value.to_str().unwrap_or("").replace(&st.upstream, &st.me);
            out = out.header(name, v);
        } else if name != "transfer-encoding" && name != "connection" {
            out = out.header(name, value);
        }
    }
    let mut sent: u64 = 0;
    let log = st.log.clone();
    let stream = resp.bytes_stream().then(move |chunk| {
        let log = log.clone();
        let fault = fault.clone();
        let start = sent;
        let chunk = chunk.map_err(std::io::Error::other);
        if let Ok(b) = &chunk {
            sent += b.len() as u64;
        }
        async move {
            let mut b = chunk?;
            let end = start + b.len() as u64;
            match fault {
                Some(Fault::EndAfter(n)) if end > n => {
                    b.truncate(n.saturating_sub(start) as usize);
                }
                Some(Fault::ResetAfter(n)) if end > n => {
                    return Err(std::io::Error::other("injected connection reset"));
                }
                Some(Fault::StallAfter(n, d)) if start <= n && end > n => {
                    tokio::time::sleep(d).await;
                }
                Some(Fault::FlipByte(at)) if start <= at && at < end => {
                    let mut v = b.to_vec();
                    v[(at - start) as usize] ^= 0xff;
                    b = Bytes::from(v);
                }
                _ => {}
            }
            log.downloaded.fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(b)
        }
    });
    out.body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `bytes=a-b` moved on by `by` bytes.
fn shifted(range: &str, by: u64) -> String {
    let r = range.trim_start_matches("bytes=");
    let (a, b) = r.split_once('-').unwrap_or((r, ""));
    let a: u64 = a.parse().unwrap_or(0);
    match b.parse::<u64>() {
        Ok(b) => format!("bytes={}-{}", a + by, b + by),
        Err(_) => format!("bytes={}-", a + by),
    }
}

/// Which requests (method, path and query) a [`Meeting`] holds.
pub type Matcher = dyn Fn(&axum::http::Method, &str) -> bool + Send + Sync;

/// A [`Gate`] that holds the first `n` requests it `matches` until all `n`
/// have arrived, then lets them through together: whether they ever were
/// in flight at once is [`Meeting::met`]. A client that sends them one
/// after another leaves the first held until `patience` runs out, and the
/// meeting unmet (the requests then go on, so the copy still ends).
pub struct Meeting {
    n: usize,
    matches: Box<Matcher>,
    patience: Duration,
    /// (matching requests that arrived, those held now).
    arrived: Mutex<(usize, usize)>,
    all_here: tokio::sync::Notify,
    met: std::sync::atomic::AtomicBool,
}

impl Meeting {
    pub fn new(
        n: usize,
        patience: Duration,
        matches: impl Fn(&axum::http::Method, &str) -> bool + Send + Sync + 'static,
    ) -> Arc<Meeting> {
        Arc::new(Meeting {
            n,
            matches: Box::new(matches),
            patience,
            arrived: Mutex::new((0, 0)),
            all_here: tokio::sync::Notify::new(),
            met: Default::default(),
        })
    }

    /// All `n` were held at once.
    pub fn met(&self) -> bool {
        self.met.load(Ordering::SeqCst)
    }

    /// How many matching requests arrived.
    pub fn arrived(&self) -> usize {
        self.arrived.lock().expect("meeting").0
    }

    async fn hold(&self, method: &axum::http::Method, path: &str) {
        if !(self.matches)(method, path) {
            return;
        }
        if self.met() {
            self.arrived.lock().expect("meeting").0 += 1;
            return;
        }
        let notified = self.all_here.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let waiting = {
            let mut a = self.arrived.lock().expect("meeting");
            a.0 += 1;
            a.1 += 1;
            a.1
        };
        if waiting >= self.n {
            self.met.store(true, Ordering::SeqCst);
            self.all_here.notify_waiters();
            return;
        }
        if tokio::time::timeout(self.patience, notified).await.is_err() {
            // Gone on alone: it no longer counts as held.
            self.arrived.lock().expect("meeting").1 -= 1;
        }
    }

    /// These meetings as one proxy gate, each request put to each.
    pub fn gate(meetings: Vec<Arc<Meeting>>) -> Gate {
        Arc::new(move |method, path, _headers| {
            let meetings = meetings.clone();
            Box::pin(async move {
                for m in &meetings {
                    m.hold(&method, &path).await;
                }
                None
            })
        })
    }
}
