//! How many requests one registry gets at once: a limit that follows what
//! the registry can take (issue 28), instead of a number a user must find.
//!
//! The decision ([`Aimd`]) is pure and tested below; [`Limiter`] applies it
//! to the permits requests wait for. It is TCP's congestion control
//! (RFC 5681: slow start, then additive increase, multiplicative decrease)
//! with a latency signal taken from Netflix's concurrency-limits
//! (`AIMDLimit`: grow by one while the limit is in use, back off on a drop;
//! `VegasLimit`/`Gradient2Limit`: a request much slower than the fastest
//! recent one means requests queue at the registry, which is a drop too):
//!
//! - it starts at [`INITIAL`] and doubles while nothing pushes back (slow
//!   start), then grows by one per full window of answers;
//! - it grows only while at least half of it is in use: an idle registry
//!   does not earn a limit it never tested;
//! - a `429` or `503`, or answers slower (smoothed, as TCP smooths its
//!   RTT) than twice the baseline plus [`LATENCY_SLACK`], cut it to [`DECREASE`] of itself, once per window
//!   (one burst of 429s is one signal, as one loss event halves TCP's window
//!   once);
//! - the baseline is the fastest answer (`GET`/`HEAD`, to headers) of the
//!   last window of [`BASELINE_WINDOW`] answers, so a registry that got
//!   slower for good becomes the new normal;
//! - it stays within `[MIN, max]`; `max` is `max_concurrent_requests` when
//!   set (a cap), else [`AUTO_MAX`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Where every registry's limit starts.
pub const INITIAL: usize = 16;
/// The lowest a limit goes: one request waiting for another's answer is
/// never the fault of the other.
pub const MIN: usize = 2;
/// The highest a limit grows when `max_concurrent_requests` is not set.
pub const AUTO_MAX: usize = 64;
/// What a push-back leaves of the limit.
pub const DECREASE: f64 = 0.75;
/// Smoothed latency under this much above twice the baseline is noise, not
/// a queue (a loopback registry's 1 ms baseline would otherwise read a busy
/// machine's scheduling as overload).
pub const LATENCY_SLACK: Duration = Duration::from_millis(20);
/// Answers over which the baseline is the fastest.
pub const BASELINE_WINDOW: u32 = 256;

/// What one answer says about the registry's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// An answer; `latency` to its headers when it is one worth comparing
    /// (a `GET` or `HEAD`, not an upload whose time is its body's).
    Answered {
        latency: Option<Duration>,
        in_flight: usize,
    },
    /// `429 Too Many Requests` or `503 Service Unavailable`.
    Overloaded,
}

/// Which way the limit moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Same,
    Raised,
    Lowered,
}

/// The adaptive limit's state: see the module doc.
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: f64,
    max: f64,
    slow_start: bool,
    since_cut: u32,
    baseline: Option<Duration>,
    window_min: Option<Duration>,
    window_seen: u32,
    /// Recent latency, smoothed as TCP smooths its RTT (RFC 6298's 1/8),
    /// so that one slow answer is not a queue.
    smoothed: Option<Duration>,
}

impl Aimd {
    /// A limit that starts at [`INITIAL`] (or `max`, if lower).
    pub fn new(max: usize) -> Aimd {
        let max = max.max(MIN) as f64;
        Aimd {
            limit: (INITIAL as f64).min(max),
            max,
            slow_start: true,
            since_cut: u32::MAX,
            baseline: None,
            window_min: None,
            window_seen: 0,
            smoothed: None,
        }
    }

    /// Requests allowed at once now.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Takes one answer into account.
    pub fn on(&mut self, sample: Sample) -> Change {
        let before = self.limit();
        self.since_cut = self.since_cut.saturating_add(1);
        let overloaded = match sample {
            Sample::Overloaded => true,
            Sample::Answered { latency, .. } => latency.is_some_and(|l| self.slow(l)),
        };
        if overloaded {
            if self.since_cut >= before as u32 {
                self.limit = (self.limit * DECREASE).max(MIN as f64);
                self.slow_start = false;
                self.since_cut = 0;
            }
        } else if let Sample::Answered { in_flight, .. } = sample
            && in_flight * 2 >= before
        {
            let step = if self.slow_start {
                1.0
            } else {
                1.0 / self.limit
            };
            self.limit = (self.limit + step).min(self.max);
        }
        match self.limit().cmp(&before) {
            std::cmp::Ordering::Greater => Change::Raised,
            std::cmp::Ordering::Less => Change::Lowered,
            std::cmp::Ordering::Equal => Change::Same,
        }
    }

    /// Learns from `latency`; true if it is far above the baseline.
    fn slow(&mut self, latency: Duration) -> bool {
        self.window_min = Some(self.window_min.map_or(latency, |m| m.min(latency)));
        self.window_seen += 1;
        if self.baseline.is_none() || self.window_seen >= BASELINE_WINDOW {
            self.baseline = match (self.baseline, self.window_seen >= BASELINE_WINDOW) {
                (Some(_), true) => self.window_min,
                (b, _) => Some(b.map_or(latency, |b| b.min(latency))),
            };
            if self.window_seen >= BASELINE_WINDOW {
                self.window_min = None;
                self.window_seen = 0;
            }
        }
        let smoothed = match self.smoothed {
            None => latency,
            Some(s) => (s * 7 + latency) / 8,
        };
        self.smoothed = Some(smoothed);
        let Some(base) = self.baseline else {
            return false;
        };
        smoothed > base * 2 + LATENCY_SLACK
    }
}

/// The permits of one registry's requests, as many as [`Aimd`] allows.
#[derive(Debug)]
pub struct Limiter {
    permits: Semaphore,
    state: Mutex<Aimd>,
    in_flight: AtomicUsize,
    /// Permits to take out of circulation as they come back (a cut below
    /// what is in flight).
    owed: AtomicUsize,
}

/// One request's permit; given back (or retired after a cut) on drop.
pub struct Permit<'a> {
    permit: Option<SemaphorePermit<'a>>,
    limiter: &'a Limiter,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::Relaxed);
        let retire = self
            .limiter
            .owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| o.checked_sub(1))
            .is_ok();
        if let (true, Some(p)) = (retire, self.permit.take()) {
            p.forget();
        }
    }
}

impl Limiter {
    /// A limiter with at most `max` requests at once.
    pub fn new(max: usize) -> Limiter {
        let aimd = Aimd::new(max);
        Limiter {
            permits: Semaphore::new(aimd.limit()),
            state: Mutex::new(aimd),
            in_flight: AtomicUsize::new(0),
            owed: AtomicUsize::new(0),
        }
    }

    /// Waits for a permit.
    pub async fn acquire(&self) -> Permit<'_> {
        let permit = self.permits.acquire().await.ok();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Permit {
            permit,
            limiter: self,
        }
    }

    /// Requests in flight now (for [`Sample::Answered`]).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).limit()
    }

    /// Takes one answer into account, moving permits to the new limit.
    pub fn record(&self, sample: Sample) -> Change {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.limit();
        let change = state.on(sample);
        let after = state.limit();
        if after > before {
            let mut more = after - before;
            // Cancel a debt first: those permits are still in circulation.
            while more > 0
                && self
                    .owed
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| o.checked_sub(1))
                    .is_ok()
            {
                more -= 1;
            }
            self.permits.add_permits(more);
        } else if before > after {
            let fewer = before - after;
            let gone = self.permits.forget_permits(fewer);
            self.owed.fetch_add(fewer - gone, Ordering::Relaxed);
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64, in_flight: usize) -> Sample {
        Sample::Answered {
            latency: Some(Duration::from_millis(ms)),
            in_flight,
        }
    }

    #[test]
    fn it_doubles_while_used_and_nothing_pushes_back_up_to_its_cap() {
        let mut a = Aimd::new(AUTO_MAX);
        assert_eq!(a.limit(), INITIAL);
        for _ in 0..INITIAL {
            a.on(ok(10, a.limit()));
        }
        assert_eq!(a.limit(), 2 * INITIAL, "slow start: one per answer");
        for _ in 0..1000 {
            a.on(ok(10, a.limit()));
        }
        assert_eq!(a.limit(), AUTO_MAX);
        let mut capped = Aimd::new(8);
        assert_eq!(capped.limit(), 8, "a set max_concurrent_requests is a cap");
        capped.on(ok(10, 8));
        assert_eq!(capped.limit(), 8);
    }

    #[test]
    fn an_idle_registry_does_not_earn_a_limit_it_never_used() {
        let mut a = Aimd::new(AUTO_MAX);
        for _ in 0..100 {
            assert_eq!(a.on(ok(10, 1)), Change::Same);
        }
        assert_eq!(a.limit(), INITIAL);
    }

    #[test]
    fn a_burst_of_429s_cuts_once_per_window_then_growth_is_additive() {
        let mut a = Aimd::new(AUTO_MAX);
        for _ in 0..INITIAL {
            a.on(ok(10, a.limit()));
        }
        assert_eq!(a.limit(), 32);
        assert_eq!(a.on(Sample::Overloaded), Change::Lowered);
        assert_eq!(a.limit(), 24);
        for _ in 0..20 {
            a.on(Sample::Overloaded);
        }
        assert_eq!(a.limit(), 24, "one cut for the burst, within one window");
        for _ in 0..4 {
            a.on(Sample::Overloaded);
        }
        assert_eq!(a.limit(), 18, "the next window's push-back cuts again");
        for _ in 0..18 {
            a.on(ok(10, 18));
        }
        assert_eq!(a.limit(), 18, "after a cut: +1 per window of answers");
        a.on(ok(10, 18));
        assert_eq!(a.limit(), 19);
        for _ in 0..100 {
            a.on(Sample::Overloaded);
        }
        assert_eq!(a.limit(), MIN, "never below MIN");
    }

    #[test]
    fn answers_far_slower_than_the_fastest_recent_one_are_a_push_back() {
        let mut a = Aimd::new(AUTO_MAX);
        a.on(ok(100, 1));
        assert_eq!(
            a.on(ok(400, 1)),
            Change::Same,
            "one slow answer is not a queue"
        );
        let cut = (0..10).position(|_| a.on(ok(400, 1)) == Change::Lowered);
        assert!(
            cut.is_some(),
            "answers 4x the fastest, again and again: a queue"
        );
        assert_eq!(a.limit(), 12);
        // A registry slower for good: once a whole window has seen
        // nothing faster, 400 ms is the new normal and the limit grows.
        for _ in 0..2 * BASELINE_WINDOW {
            a.on(ok(400, 1));
        }
        let settled = a.limit();
        for _ in 0..50 {
            assert_ne!(a.on(ok(400, settled)), Change::Lowered);
        }
        assert!(a.limit() > settled, "{} > {settled}", a.limit());
        // Uploads (no latency) never read as slow.
        let mut b = Aimd::new(AUTO_MAX);
        b.on(ok(1, 1));
        let upload = Sample::Answered {
            latency: None,
            in_flight: 16,
        };
        assert_eq!(b.on(upload), Change::Raised);
    }

    #[tokio::test]
    async fn a_cut_below_what_is_in_flight_retires_permits_as_they_come_back() {
        let l = Limiter::new(AUTO_MAX);
        let held: Vec<_> = futures_util::future::join_all((0..INITIAL).map(|_| l.acquire())).await;
        assert_eq!(l.in_flight(), INITIAL);
        assert_eq!(l.record(Sample::Overloaded), Change::Lowered);
        assert_eq!(l.limit(), 12);
        drop(held);
        assert_eq!(l.in_flight(), 0);
        let again: Vec<_> = futures_util::future::join_all((0..12).map(|_| l.acquire())).await;
        let more = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(more.is_err(), "the 13th waits: 12 permits after the cut");
        drop(again);
        for _ in 0..13 {
            l.record(ok(10, 12));
        }
        let held: Vec<_> = futures_util::future::join_all((0..13).map(|_| l.acquire())).await;
        assert_eq!(held.len(), 13, "grown back by one");
    }
}
