//! Waiting for something to happen, one way for every test: poll, and fail
//! with a message that says what did not happen once the time is up.

use std::time::{Duration, Instant};

/// How long and how often a test polls for one condition.
pub struct Deadline {
    until: Instant,
    every: Duration,
}

impl Deadline {
    /// Polls every 50 ms for at most `within`.
    pub fn new(within: Duration) -> Deadline {
        Deadline {
            until: Instant::now() + within,
            every: Duration::from_millis(50),
        }
    }

    /// True while there is time left.
    pub fn open(&self) -> bool {
        Instant::now() < self.until
    }

    /// Waits for the next poll; panics with `what()` once the time is up.
    pub async fn tick(&self, what: impl FnOnce() -> String) {
        assert!(self.open(), "{}", what());
        tokio::time::sleep(self.every).await;
    }
}

/// Polls `count` until it has not changed for 250 ms (10 s at most) and
/// returns it: for counters fed asynchronously, such as a registry's
/// access log, instead of sleeping and hoping they are complete.
pub async fn settled(count: impl Fn() -> usize) -> usize {
    let wait = Deadline::new(Duration::from_secs(10));
    let mut last = count();
    let mut same_since = Instant::now();
    loop {
        wait.tick(|| "the count never settled".into()).await;
        let now = count();
        if now != last {
            last = now;
            same_since = Instant::now();
        } else if same_since.elapsed() >= Duration::from_millis(250) {
            return now;
        }
    }
}
