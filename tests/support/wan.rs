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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pipe = || {
            Arc::new(Pipe {
                bits_per_second,
                free_at: Mutex::new(Instant::now()),
                busy_ns: Default::default(),
            })
        };
        let (up, down) = (pipe(), pipe());
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
                    tokio::join!(carry(cr, sw, up, half), carry(sr, cw, down, half));
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

/// Moves bytes one way: each chunk is delivered once the pipe has carried
/// it and half an RTT has passed, in order.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    pipe: Arc<Pipe>,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
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
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
