//! A WAN link in front of a loopback server: what the external Harbor is
//! to the integrated one, tens of milliseconds and a narrower pipe away.
//!
//! Every TCP connection through [`WanLink`] pays, as it would across a
//! WAN:
//! - the TCP handshake: nothing moves for one RTT after `connect`;
//! - propagation: each byte arrives half an RTT after it was sent, in
//!   each direction;
//! - bandwidth: one FIFO per direction, shared by every connection, drains
//!   at `bits_per_second`, so parallel connections split the link instead
//!   of each getting their own.
//!
//! - a cap per connection, if given ([`WanLink::start_capped`]): each
//!   TCP connection also drains through a pipe of its own at that rate,
//!   as WAN optimisers, firewalls and long fat pipes with small windows
//!   hold each flow well below the link.
//!
//! Both directions are modelled; the link's floor for moving `n` bytes one
//! way is `n × 8 / bits_per_second`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// One direction of the link: when it is next free to send.
struct Pipe {
    bits_per_second: Option<u64>,
    free_at: Mutex<Instant>,
    /// Time the pipe has spent carrying bytes so far, in nanoseconds.
    busy_ns: std::sync::atomic::AtomicU64,
}

impl Pipe {
    /// When `n` bytes handed over now finish crossing the pipe (before
    /// propagation).
    fn book(&self, n: usize) -> Instant {
        let now = Instant::now();
        let Some(bps) = self.bits_per_second else {
            return now;
        };
        let mut free = self.free_at.lock().expect("pipe");
        let start = (*free).max(now);
        let carrying = Duration::from_secs_f64(n as f64 * 8.0 / bps as f64);
        self.busy_ns.fetch_add(
            carrying.as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let done = start + carrying;
        *free = done;
        done
    }
}

/// A WAN link to `upstream`: clients connect to [`WanLink::addr`].
pub struct WanLink {
    pub addr: SocketAddr,
    pub rtt: Duration,
    pub bits_per_second: Option<u64>,
    /// Towards the client (what a copier reads).
    down: Arc<Pipe>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WanLink {
    /// A link with this round-trip time and, if given, this bandwidth
    /// each way.
    pub async fn start(
        upstream: SocketAddr,
        rtt: Duration,
        bits_per_second: Option<u64>,
    ) -> WanLink {
        Self::start_capped(upstream, rtt, bits_per_second, None).await
    }

    /// Like [`WanLink::start`], each connection also held to
    /// `per_connection` bits per second each way.
    pub async fn start_capped(
        upstream: SocketAddr,
        rtt: Duration,
        bits_per_second: Option<u64>,
        per_connection: Option<u64>,
    ) -> WanLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pipe = |bits_per_second| {
            Arc::new(Pipe {
                bits_per_second,
                free_at: Mutex::new(Instant::now()),
                busy_ns: Default::default(),
            })
        };
        let (up, down) = (pipe(bits_per_second), pipe(bits_per_second));
        let link_down = down.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let (up, down) = (up.clone(), down.clone());
                tokio::spawn(async move {
                    // The handshake's round trip.
                    tokio::time::sleep(rtt).await;
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let half = rtt / 2;
                    let flow = |link: Arc<Pipe>| Link {
                        link,
                        flow: per_connection.map(|bps| pipe(Some(bps))),
                    };
                    tokio::join!(
                        carry(cr, sw, flow(up), half),
                        carry(sr, cw, flow(down), half)
                    );
                });
            }
        });
        WanLink {
            addr,
            rtt,
            bits_per_second,
            down: link_down,
            task,
        }
    }

    /// `http://<addr>`, for a plain-HTTP upstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Seconds the link towards the client has spent carrying bytes so
    /// far (a capped link only): over a copy's wall time, how busy the
    /// copier kept it.
    pub fn busy_seconds(&self) -> f64 {
        self.down.busy_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9
    }

    /// Seconds the link needs, at least, to carry `bytes` one way.
    pub fn floor_seconds(&self, bytes: u64) -> Option<f64> {
        self.bits_per_second
            .map(|bps| bytes as f64 * 8.0 / bps as f64)
    }
}

/// One direction of one connection: the shared link, and the
/// connection's own cap if there is one.
struct Link {
    link: Arc<Pipe>,
    flow: Option<Arc<Pipe>>,
}

impl Link {
    /// When `n` bytes handed over now are through both.
    fn book(&self, n: usize) -> Instant {
        let through_link = self.link.book(n);
        match &self.flow {
            Some(flow) => through_link.max(flow.book(n)),
            None => through_link,
        }
    }
}

/// Bytes one connection has in flight at most, each way: a TCP receive
/// window of a Linux host that reads as data comes (`tcp_rmem`'s default
/// grows to a few MiB; a client that stops reading holds it where it is).
const WINDOW: usize = 1 << 20;

/// Moves bytes one way: each chunk is delivered once the pipe has carried
/// it and half an RTT has passed, in order.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    pipe: Link,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    // What is in flight on this connection is bounded, as TCP's receive
    // window bounds it: a client that does not read stops the sender once
    // a window is on its way, instead of the link carrying on for it.
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let freed = window.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Ok(room) = window.acquire_many(n as u32).await else {
                break;
            };
            room.forget();
            let at = pipe.book(n) + delay;
            if tx.send((at, buf[..n].to_vec())).is_err() {
                break;
            }
            // Do not read ahead of the pipe by more than a moment: the
            // sender's TCP window is what a real narrow link fills.
            let ahead = at.saturating_duration_since(Instant::now());
            if ahead > delay + Duration::from_millis(50) {
                tokio::time::sleep(ahead - delay).await;
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            freed.add_permits(bytes.len());
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
