//! Measuring a copier: wall time, CPU, peak RSS, medians.

use super::*;

/// Runs a command to completion and takes its own resource use (`wait4`).
// The child is reaped by wait4, which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub(crate) fn measured(cmd: &mut Command) -> Measure {
    let started = Instant::now();
    let err_file = tempfile::tempfile().expect("temp file");
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(err_file.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet waited for.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(rc, pid, "wait4 failed");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let mut err = String::new();
        let mut f = err_file;
        let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0));
        let _ = std::io::Read::read_to_string(&mut f, &mut err);
        panic!("{cmd:?} failed ({status}):\n{err}");
    }
    drop(child);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measure {
        seconds,
        cpu_seconds: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak_rss: usage.ru_maxrss as u64 * 1024,
        ..Measure::default()
    }
}

/// CPU seconds a running process has used so far.
/// TCP connections opened on this machine so far (`ActiveOpens` in
/// `/proc/net/snmp`): how many connections a copy cost, when nothing else
/// runs.
pub(crate) fn tcp_opens() -> f64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().expect("Tcp header"),
        tcp.next().expect("Tcp values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ActiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .expect("ActiveOpens")
}

pub(crate) fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The machine's CPU time so far (all cores, seconds): busy, idle, and
/// idle waiting for I/O, from `/proc/stat`.
pub(crate) fn machine_cpu() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let f: Vec<f64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("ticks"))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (idle, iowait) = (f[3], f[4]);
    let total: f64 = f.iter().take(8).sum();
    ((total - idle - iowait) / tck, idle / tck, iowait / tck)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

pub(crate) fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn median_of(runs: &[Measure]) -> Measure {
    Measure {
        seconds: median(runs.iter().map(|m| m.seconds).collect()),
        cpu_seconds: median(runs.iter().map(|m| m.cpu_seconds).collect()),
        peak_rss: median(runs.iter().map(|m| m.peak_rss as f64).collect()) as u64,
        sender_cpu: median(runs.iter().map(|m| m.sender_cpu).collect()),
        idle_share: median(runs.iter().map(|m| m.idle_share).collect()),
        iowait_share: median(runs.iter().map(|m| m.iowait_share).collect()),
    }
}
