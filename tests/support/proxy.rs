//! A TCP proxy that slows the upstream's answers down.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A TCP proxy that forwards to `upstream`, sending the upstream's bytes
/// back at no more than `bytes_per_sec`.
pub struct SlowProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowProxy {
    pub async fn start(upstream: SocketAddr, bytes_per_sec: u64) -> SlowProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let to_up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut uw).await;
                        let _ = uw.shutdown().await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    let start = Instant::now();
                    let mut sent: u64 = 0;
                    loop {
                        let n = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n as u64;
                        let due = Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    let _ = cw.shutdown().await;
                    to_up.abort();
                });
            }
        });
        SlowProxy { addr, task }
    }
}
