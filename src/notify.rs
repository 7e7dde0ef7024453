//! Telling systemd how the daemon is doing (`Type=notify`).
//!
//! systemd starts the unit's dependants only after `READY=1`, restarts the
//! daemon when `WATCHDOG=1` pings stop (a wedged runtime), and shows the
//! `STATUS=` line in `systemctl status`. Outside systemd (no
//! `NOTIFY_SOCKET`) every call does nothing, so the same binary runs in a
//! container or a shell unchanged.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The daemon listens and its workers run.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A configuration reload starts.
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the configuration"),
    ];
    // systemd 253+ requires the monotonic time with RELOADING=1.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The daemon is stopping: finishing running jobs, flushing the store.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing running jobs"),
    ]);
}

/// A watchdog ping: the runtime is alive and the workers run.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping systemd's watchdog, if the unit has one
/// (`WatchdogSec=`): half its timeout, as `sd_watchdog_enabled(3)` advises.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}
