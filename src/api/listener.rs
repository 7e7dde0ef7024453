//! The accept loop: HTTP/1.1 and h2, optional TLS, and the limits that keep
//! one client from locking out another (Harbor's deliveries above all).
//!
//! - at most [`ConnLimits::total`] connections, and at most
//!   [`ConnLimits::per_client`] from one address: a flood of sockets from
//!   one address never takes the slots of another;
//! - the first byte of a connection within [`ConnLimits::first_request`]
//!   (the auto-detecting builder waits for the HTTP/2 preface without a
//!   timer of its own), request headers within [`HEADER_READ_TIMEOUT`],
//!   a whole request within [`REQUEST_TIMEOUT`] (`408`), and nothing
//!   received for [`ConnLimits::idle`] closes the connection;
//! - HTTP/2 keep-alive pings, so a peer that vanished is noticed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::{ClientSlot, Conns, PerClient, client_key};

/// How long a client may take to send a request's headers (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take in all, body included (a body that
/// trickles in is cut off with `408`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection that sends nothing for this long is closed (longer than
/// [`REQUEST_TIMEOUT`], so an open request always ends first).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long open requests may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: a ping this often, and the peer must answer within
/// [`H2_PING_TIMEOUT`].
const H2_PING_EVERY: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection limits of one listener.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections at once, from everyone.
    pub total: usize,
    /// Connections at once from one client address
    /// (`server.max_connections_per_client`).
    pub per_client: usize,
    /// The first byte must arrive within this.
    pub first_request: Duration,
    /// Nothing received for this long closes the connection.
    pub idle: Duration,
    /// IPv6 clients are counted by this many leading bits of their address
    /// (`server.ipv6_client_prefix`).
    pub ipv6_prefix: u8,
}

impl ConnLimits {
    /// The limits `[server]` asks for.
    pub fn from_config(server: &crate::config::ServerConfig) -> ConnLimits {
        ConnLimits {
            total: server.max_connections,
            per_client: server.max_connections_per_client,
            ipv6_prefix: server.ipv6_client_prefix,
            ..ConnLimits::default()
        }
    }
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            total: MAX_CONNECTIONS,
            per_client: 128,
            first_request: HEADER_READ_TIMEOUT,
            idle: IDLE_TIMEOUT,
            ipv6_prefix: 64,
        }
    }
}

/// The listener's TLS settings; a reload swaps them, and new connections
/// get the new certificate.
pub struct TlsSlot(std::sync::RwLock<tokio_rustls::TlsAcceptor>);

impl TlsSlot {
    /// Starts with `config`.
    pub fn new(config: rustls::ServerConfig) -> TlsSlot {
        TlsSlot(std::sync::RwLock::new(Arc::new(config).into()))
    }

    /// Puts `config` in force for new connections.
    pub fn replace(&self, config: rustls::ServerConfig) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        *g = Arc::new(config).into();
    }

    fn get(&self) -> tokio_rustls::TlsAcceptor {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// When a connection last received a byte.
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    any: AtomicBool,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: Arc::default(),
            any: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        self.any.store(true, Ordering::Relaxed);
    }

    /// Returns once the connection has been silent too long: no first byte
    /// within `first`, or nothing for `idle` after that.
    async fn silent(&self, first: Duration, idle: Duration) {
        loop {
            let limit = if self.any.load(Ordering::Relaxed) {
                idle
            } else {
                first
            };
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that notes every byte it receives in an [`Activity`].
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

type Builder = hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>;

fn builder() -> Builder {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_EVERY))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    b
}

/// Serves `router` on `listener` until `shutdown` is cancelled, within
/// `limits` (see the module doc); each request carries the client's
/// address (`ConnectInfo`). At shutdown it stops accepting and lets open
/// requests finish (at most 10 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<TlsSlot>>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn(request_timeout));
    let builder = builder();
    let gate = Gate {
        slots: Arc::new(tokio::sync::Semaphore::new(limits.total)),
        per_client: Arc::new(PerClient::default()),
        conns: Arc::new(Conns::default()),
        refusing: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS)),
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let plain = tls.is_none();
        let Some((stream, admitted)) = gate.admit(stream, peer, &limits, plain) else {
            continue;
        };
        let router = router.clone();
        let builder = builder.clone();
        let stop = shutdown.clone();
        let acceptor = tls.as_ref().map(|t| t.get());
        let limits = limits.clone();
        let (registry, slots, refusing) = (
            gate.conns.clone(),
            gate.slots.clone(),
            gate.refusing.clone(),
        );
        conns.spawn(async move {
            let held = match admitted {
                Admitted::Now(held) => held,
                // Room is being made: the evicted connection gives back
                // its place as it closes.
                Admitted::Soon(client) => {
                    match tokio::time::timeout(MAKING_ROOM, slots.acquire_owned()).await {
                        Ok(Ok(slot)) => (slot, client),
                        _ => {
                            tracing::warn!(%peer, "too many connections, and none could be closed in time; refusing a new one");
                            refuse(stream, plain, &refusing, "too many connections at once");
                            return;
                        }
                    }
                }
            };
            let _held = held;
            let seat = registry.clone();
            connection(stream, peer, acceptor, builder, router, stop, limits, &seat).await;
        });
    }
    drop(listener);
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        conns.abort_all();
    }
    Ok(())
}

/// How long a new connection waits for the place an evicted one frees.
const MAKING_ROOM: Duration = Duration::from_secs(2);

/// A connection let in: with its places, or (every place taken, the
/// idlest unauthenticated connection told to close) with its client's
/// place, to wait for the freed one.
enum Admitted {
    Now((tokio::sync::OwnedSemaphorePermit, ClientSlot)),
    Soon(ClientSlot),
}

/// What a new connection must get past: a place among `limits.total`,
/// and among its client's `limits.per_client`.
struct Gate {
    slots: Arc<tokio::sync::Semaphore>,
    per_client: Arc<PerClient>,
    /// Every open connection, to make room when all places are taken.
    conns: Arc<Conns>,
    /// Refusals being answered at once (each a task; capped so a flood
    /// cannot make unbounded work).
    refusing: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    /// Lets the connection in with the places it holds until dropped
    /// (when every place is taken, after the idlest connection that never
    /// authenticated closes), or refuses it (a `503` with `Retry-After` on
    /// a plain listener) and says why in the log.
    fn admit(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        limits: &ConnLimits,
        plain: bool,
    ) -> Option<(tokio::net::TcpStream, Admitted)> {
        let key = client_key(peer.ip(), limits.ipv6_prefix);
        let Some(client) = self.per_client.enter(key, limits.per_client) else {
            tracing::warn!(%peer, limit = limits.per_client, "too many connections from one address (server.max_connections_per_client); refusing a new one");
            refuse(
                stream,
                plain,
                &self.refusing,
                "too many connections from this address at once (server.max_connections_per_client)",
            );
            return None;
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            if self.conns.evict_idlest() {
                tracing::info!(%peer, limit = limits.total, "all connections taken: closing the idlest one that never authenticated to make room");
                return Some((stream, Admitted::Soon(client)));
            }
            tracing::warn!(%peer, limit = limits.total, "too many connections, all authenticated; refusing a new one");
            refuse(
                stream,
                plain,
                &self.refusing,
                "too many connections at once",
            );
            return None;
        };
        Some((stream, Admitted::Now((slot, client))))
    }
}

/// A client that starts a TLS handshake on the plain-HTTP listener (Harbor
/// told `https://` while `server.tls_cert` is not set): said once in the
/// log with the peer, later ones at debug level. The byte is only peeked.
async fn notice_tls_on_plain(stream: &tokio::net::TcpStream, peer: std::net::SocketAddr) {
    static SAID: AtomicBool = AtomicBool::new(false);
    let mut first = [0u8; 1];
    if matches!(stream.peek(&mut first).await, Ok(1)) && first[0] == 0x16 {
        if SAID.swap(true, Ordering::Relaxed) {
            tracing::debug!(%peer, "a TLS handshake on the plain-HTTP listener");
        } else {
            tracing::warn!(%peer, "a client started a TLS handshake on the plain-HTTP listener: its URL says https:// but server.tls_cert is not set; use http:// in Harbor's webhook, or set server.tls_cert and server.tls_key");
        }
    }
}

/// One accepted connection: the TLS handshake when the listener has TLS,
/// then HTTP until the client is done, the connection is silent too long
/// (`limits.first_request`, `limits.idle`) or the daemon stops (neither
/// waiting for a first byte nor a handshake holds up a stop).
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    builder: Builder,
    router: Router,
    stop: CancellationToken,
    limits: ConnLimits,
    registry: &Arc<Conns>,
) {
    use tower::ServiceExt as _;
    let activity = Activity::new();
    let seat = registry.register(activity.last_ms.clone(), activity.start);
    // Each request carries the client's address, and the mark its
    // handlers set once it authenticates.
    let mark = seat.mark.clone();
    let svc = hyper_util::service::TowerToHyperService::new(router.map_request(
        move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req.extensions_mut().insert(mark.clone());
            req.map(axum::body::Body::new)
        },
    ));
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let served = async {
        match acceptor {
            None => {
                tokio::select! {
                    _ = notice_tls_on_plain(&io.inner, peer) => {}
                    _ = stop.cancelled() => return,
                }
                serve_connection(&builder, io, svc, stop).await
            }
            Some(acceptor) => {
                let handshake = tokio::select! {
                    h = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(io)) => h,
                    _ = stop.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls)) => serve_connection(&builder, tls, svc, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    };
    tokio::select! {
        _ = served => {}
        _ = activity.silent(limits.first_request, limits.idle) => {
            tracing::debug!(%peer, "closing a connection that sent nothing in time");
        }
        _ = seat.close.cancelled() => {
            tracing::debug!(%peer, "closing an idle connection to make room for a new one");
        }
    }
}

/// Serves one connection until it ends, or finishes its open requests
/// once `stop` is cancelled.
async fn serve_connection<I, S>(builder: &Builder, io: I, svc: S, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Cuts off a request that takes longer than [`REQUEST_TIMEOUT`] (a body
/// sent a byte at a time) with `408`.
async fn request_timeout(req: Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({
                "error": format!("the request took longer than {REQUEST_TIMEOUT:?}")
            })),
        )
            .into_response(),
    }
}

/// Refusals answered at once; past this a refused connection is just
/// closed (a flood must not turn into a flood of tasks).
const MAX_REFUSALS: usize = 32;

/// Answers a connection over the limits `503 Service Unavailable` with
/// `Retry-After: 1` and closes it, so a client sees why instead of a reset.
/// Only on the plain listener (an answer over TLS would need a handshake
/// first) and only [`MAX_REFUSALS`] at a time; the request is read briefly
/// first so that closing does not reset the connection under the answer.
fn refuse(
    mut stream: tokio::net::TcpStream,
    plain: bool,
    refusing: &Arc<tokio::sync::Semaphore>,
    why: &'static str,
) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    if !plain {
        return;
    }
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _permit = permit;
        let mut buf = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        let body = format!("{why}; try again\n");
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let linger = async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            while stream.read(&mut buf).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_silent_after_the_first_request_deadline() {
        let a = Activity::new();
        let started = Instant::now();
        a.silent(Duration::from_secs(10), Duration::from_secs(60))
            .await;
        assert_eq!(started.elapsed().as_secs(), 10);
        a.touch();
        let t = Instant::now();
        a.silent(Duration::from_secs(10), Duration::from_secs(60))
            .await;
        assert_eq!(t.elapsed().as_secs(), 60);
    }
}
