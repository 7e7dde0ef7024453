//! The bandwidth cap (`max_bytes_per_second`): blob bytes spread over time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spreads blob bytes over time so they do not exceed a rate: each chunk
/// reserves its slot after the previous one and waits for it.
pub(super) struct Pacer {
    bytes_per_second: u64,
    next: Mutex<Instant>,
}

impl Pacer {
    pub(super) fn new(bytes_per_second: u64) -> Pacer {
        Pacer {
            bytes_per_second: bytes_per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `n` more bytes may pass.
    pub(super) async fn take(&self, n: usize) {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + cost;
            start
        };
        if start > Instant::now() {
            tokio::time::sleep_until(start).await;
        }
    }
}
