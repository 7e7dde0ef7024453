//! Replication benchmarks against skopeo, in the same run, on the same
//! real registries the tests use: a plain-HTTP source and a TLS target with
//! basic auth and a certificate from a test CA. Run with `scripts/bench.sh`
//! (which installs skopeo and the registry when missing), or
//!
//!     cargo bench --bench replication
//!     BENCH_SCENARIOS=big,noop BENCH_RUNS=5 cargo bench --bench replication
//!
//! Scenarios (see docs/performance.md): big, huge, many, noop, gated (`many`
//! with both gates on, against the same with them off), outage (`many`
//! with the target stopped for 20 s: the last image after it is back),
//! shared,
//! latency on loopback, each with its floor (all the CPU the copy took,
//! registries' and copier's, over the cores); and wan-many, wan-big,
//! wan-one with the source across a [`WanLink`] (delay and a shared
//! bandwidth cap), against the link's floor. `BENCH_SOURCE_AUTH=token`
//! puts the source behind token auth too. `big` also runs the minimal copier ([`minimal_copy`]) as
//! a third tool, for what the least a verifying copier costs here (basic
//! auth targets only). `BENCH_TARGET_EXTRA` adds config lines to the target registry
//! (e.g. `chunk_size_threshold = "8GiB"`), `BENCH_PERF=FILE` profiles the
//! one-shot relay with `perf record`, `BENCH_RELAY_LOG` sets the daemon's
//! `RUST_LOG` (its log is kept as `target/bench/relay-latency.log` and
//! `relay-many.log`, with the registries' access logs of that run),
//! `BENCH_JOBS` replaces the daemon's `[jobs]` settings, and
//! `BENCH_TARGET_AUTH=token` puts the target behind Docker token auth (the
//! flow Harbor uses: a bearer token per repository scope, no password check
//! per request) instead of basic auth. Each copy runs against a fresh target (the target registry is
//! restarted on empty storage, the relay on an empty store); the tools
//! alternate, and each number is the median of `BENCH_RUNS` (default 3)
//! runs. `BENCH_REGISTRY_DIR` is where the registries keep their storage
//! (`scripts/bench.sh` sets it to `/dev/shm`, see `registry_storage`). CPU and peak RSS are the copier's own (`wait4` for one-shot
//! commands, `/proc` for the daemon). Results go to stdout as a table and
//! to `target/bench/replication-<unix time>.json`.

#[path = "../../tests/support/mod.rs"]
mod support;

mod content;
mod fanout;
mod flows;
mod gated;
mod index;
mod measure;
mod outage;
mod scenarios;
mod wan;
mod world;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use harbor_relay::manifest::{OCI_MANIFEST, sha256_digest};
use harbor_relay::reference::Reference;
use harbor_relay::registry::Registry;
use serde_json::{Value, json};
use support::*;

const MIB: u64 = 1024 * 1024;

use content::*;
use measure::*;
use scenarios::*;
use world::*;

// ---------------------------------------------------------------- measuring

/// Wall time, CPU time and peak RSS of one run of a copier.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss: u64,
    /// The bench's own CPU during a daemon run: the webhooks it sends (as
    /// Harbor would), in-process token issuers, and its looks at the
    /// daemon. Part of the machine's load, so part of the floor.
    sender_cpu: f64,
    /// Of the machine's CPU time during a daemon run: the share idle, and
    /// the share idle while waiting for the disk (the registries `fsync`
    /// every blob they write).
    idle_share: f64,
    iowait_share: f64,
}

/// An image whose layers are generated, pushed streaming.
struct GenImage {
    layers: Vec<(u64, u64, String)>, // seed, size, digest
    config: Bytes,
    manifest: Bytes,
    digest: String,
}

// ---------------------------------------------------------------- the bench world

struct Bench {
    _pki_dir: tempfile::TempDir,
    pki: Pki,
    work: tempfile::TempDir,
    source: RegistryProc,
    target: Option<RegistryProc>,
    target_port: u16,
    /// The source, reached directly (to push the images).
    src: Registry,
    /// Set with `BENCH_TARGET_AUTH=token`: the target trusts its tokens.
    issuer: Option<std::sync::Arc<TokenIssuer>>,
    /// Set with `BENCH_SOURCE_AUTH=token`: the source trusts its tokens.
    source_issuer: Option<std::sync::Arc<TokenIssuer>>,
    /// The WAN between the copiers and the source (and its token
    /// service), for the WAN scenarios.
    link: Option<WanLink>,
    realm_link: Option<WanLink>,
}

/// How a bench world is built: auth on each side, and the WAN in front of
/// the source.
#[derive(Clone, Copy, Default)]
struct Setup {
    target_token: bool,
    source_token: bool,
    /// Round-trip time and bandwidth (bits/s) of the link to the source.
    wan: Option<(Duration, Option<u64>)>,
    /// What each TCP connection over that link gets at most (bits/s).
    flow_cap: Option<u64>,
}

/// Counters around a copy: registries' CPU seconds (both, and the target's
/// alone), requests they served (each side), tokens issued (each side, with
/// token auth), TCP connections opened on the machine.
#[derive(Clone, Copy)]
struct Usage {
    registries_cpu: f64,
    target_cpu: f64,
    requests: f64,
    source_requests: f64,
    token_requests: f64,
    source_token_requests: f64,
    tcp_connections: f64,
}

// ---------------------------------------------------------------- scenarios

struct Row {
    scenario: &'static str,
    relay: Measure,
    skopeo: Option<Measure>,
    bytes: u64,
    /// The least time this could take, and from what: `cpu` (the
    /// registries' and the copier's CPU over the machine's cores, on
    /// loopback), `link` (bytes ÷ bandwidth), `rtt` (one round trip).
    floor: Option<(&'static str, f64)>,
    /// The loopback floor without the copier's own overhead: the
    /// registries' CPU, plus SHA-256 and TLS encryption of every byte, each
    /// measured alone on this machine ([`Calibration`]), over the cores.
    /// The least any verifying copier over HTTPS can spend (issue 28).
    floor_min: Option<f64>,
    extra: Value,
}

/// The loopback floor: all the CPU the copy took (the registries, the
/// copier and, for the daemon, the bench sending it webhooks) spread over
/// every core, as if nothing else ran. Waiting for the disk is not in it:
/// the JSON has the machine's idle and iowait shares beside it.
fn cpu_floor(registries_cpu: f64, copier_cpu: f64) -> Option<(&'static str, f64)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Some(("cpu", (registries_cpu + copier_cpu) / cores))
}

fn print(rows: &[Row]) {
    println!(
        "\n{:<12} {:>9} {:>9} {:>7} {:>13} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}  notes",
        "scenario",
        "relay s",
        "skopeo s",
        "ratio",
        "floor s",
        "÷ floor",
        "÷ min fl",
        "MB/s",
        "relay cpu",
        "relay rss",
        "skopeo rss"
    );
    for r in rows {
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        let (s, ratio, srss) = match r.skopeo {
            Some(s) => (
                format!("{:.3}", s.seconds),
                format!("{:.2}", r.relay.seconds / s.seconds),
                mb(s.peak_rss),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let (floor, over) = match r.floor {
            Some((kind, f)) => (
                format!("{f:.3} {kind}"),
                format!("{:.2}", r.relay.seconds / f),
            ),
            None => ("-".into(), "-".into()),
        };
        let over_min = r
            .floor_min
            .map_or("-".into(), |f| format!("{:.2}", r.relay.seconds / f));
        let rate = if r.bytes > MIB {
            format!("{:.0}", r.bytes as f64 / 1e6 / r.relay.seconds)
        } else {
            "-".into()
        };
        println!(
            "{:<12} {:>9.3} {:>9} {:>7} {:>13} {:>9} {:>9} {:>9} {:>9.2} {:>10} {:>10}  {}",
            r.scenario,
            r.relay.seconds,
            s,
            ratio,
            floor,
            over,
            over_min,
            rate,
            r.relay.cpu_seconds,
            mb(r.relay.peak_rss),
            srss,
            r.extra
        );
    }
}

/// `basic` or `token`, from an environment variable.
fn auth_of(var: &str) -> &'static str {
    match std::env::var(var).as_deref() {
        Ok("token") => "token",
        Ok("basic") | Err(_) => "basic",
        Ok(other) => panic!("{var}={other}: expected basic or token"),
    }
}

/// What a verifying copier cannot avoid per byte, measured alone on this
/// machine in the same sitting: SHA-256 (`sha2`, and `aws-lc-rs` to
/// compare) and TLS encryption (AES-128-GCM in 16 KiB records, with
/// aws-lc-rs as rustls uses it), in CPU seconds per byte.
#[derive(Clone, Copy, Debug)]
struct Calibration {
    sha256: f64,
    tls: f64,
}

static CALIBRATION: std::sync::OnceLock<Calibration> = std::sync::OnceLock::new();

/// The second loopback floor ([`Row::floor_min`]): the registries' CPU and
/// the hashing and encryption of `bytes`, over the cores.
fn min_floor(registries_cpu: f64, bytes: u64) -> Option<f64> {
    let c = CALIBRATION.get()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Some((registries_cpu + bytes as f64 * (c.sha256 + c.tls)) / cores)
}

fn calibrate() -> Calibration {
    let buf = vec![7u8; 4 * MIB as usize];
    let gib = (256 * buf.len()) as f64;
    let t = Instant::now();
    {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for _ in 0..256 {
            h.update(&buf);
        }
        let _ = h.finalize();
    }
    let sha2 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for _ in 0..256 {
        h.update(&buf);
    }
    let _ = h.finish();
    let aws = t.elapsed().as_secs_f64();
    use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[9u8; 16]).expect("key"));
    let mut record = vec![1u8; 16 * 1024];
    let t = Instant::now();
    for n in 0..(gib as u64 / record.len() as u64) {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        let _tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut record,
            )
            .expect("seal");
    }
    let tls = t.elapsed().as_secs_f64();
    println!(
        "alone, CPU-s/GiB: sha256 {sha2:.2} (sha2), {aws:.2} (aws-lc-rs); TLS encryption (AES-128-GCM) {tls:.2}: what a verifying copier over HTTPS cannot avoid"
    );
    Calibration {
        sha256: sha2.min(aws) / gib,
        tls: tls / gib,
    }
}

/// Where the registries keep their blobs (`BENCH_REGISTRY_DIR`, set by
/// `scripts/bench.sh` to tmpfs unless `BENCH_REGISTRY_STORAGE=disk`): on a
/// disk their `fsync`s are waits that a CPU floor does not count. The
/// relay's own store is always under `$TMPDIR`.
fn registry_storage() -> String {
    std::env::var("BENCH_REGISTRY_DIR").unwrap_or_else(|_| "$TMPDIR".into())
}

fn main() {
    if let Ok(args) = std::env::var("BENCH_MINIMAL_COPY") {
        let args: Value = serde_json::from_str(&args).expect("BENCH_MINIMAL_COPY");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(minimal_copy(&args));
        return;
    }
    let scenarios = std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| {
        "big,huge,many,gated,outage,shared,latency,wan-many,wan-small-layers,wan-big,wan-flows,fan-out,wan-one,wan-index".into()
    });
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let want = |s: &str| scenarios.split(',').any(|x| x.trim() == s);
    let (target_auth, source_auth) = (auth_of("BENCH_TARGET_AUTH"), auth_of("BENCH_SOURCE_AUTH"));
    let setup = Setup {
        target_token: target_auth == "token",
        source_token: source_auth == "token",
        wan: None,
        flow_cap: None,
    };
    let _ = CALIBRATION.set(calibrate());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rows = rt.block_on(async {
        // Built before any timing (see webhook_clients).
        world::webhook_clients(world::WEBHOOK_SENDERS);
        let mut rows = Vec::new();
        let show = |new: Vec<Row>, rows: &mut Vec<Row>| {
            print(&new);
            rows.extend(new);
        };
        if [
            "big", "huge", "many", "noop", "gated", "outage", "shared", "latency",
        ]
        .iter()
        .any(|s| want(s))
        {
            let mut b = Bench::new(setup).await;
            if want("big") {
                let seeds: Vec<(u64, u64)> = (1..=4).map(|s| (s, 256 * MIB)).collect();
                // The minimal copier speaks basic auth only.
                let minimal = !setup.target_token && !setup.source_token;
                show(
                    one_image(&mut b, "big", &seeds, runs, minimal).await,
                    &mut rows,
                );
            }
            if want("huge") {
                show(
                    one_image(&mut b, "huge", &[(100, 4096 * MIB)], runs, false).await,
                    &mut rows,
                );
            }
            if want("many") || want("noop") {
                let (m, n) = many(&mut b, runs).await;
                show(vec![m, n], &mut rows);
            }
            if want("gated") {
                show(gated::gated(&mut b, runs).await, &mut rows);
            }
            if want("outage") {
                show(outage::outage(&mut b, runs).await, &mut rows);
            }
            if want("shared") {
                show(vec![shared(&mut b, runs).await], &mut rows);
            }
            if want("latency") {
                show(vec![latency(&mut b).await], &mut rows);
            }
        }
        if want("ha") {
            let mut b = Bench::new(setup).await;
            show(scenarios::ha(&mut b, runs).await, &mut rows);
        }
        if want("wan-many") {
            show(wan::wan_many(setup, runs).await, &mut rows);
        }
        if want("wan-small-layers") {
            show(wan::wan_small_layers(setup, runs).await, &mut rows);
        }
        if want("wan-big") {
            show(wan::wan_big(setup, runs).await, &mut rows);
        }
        if want("wan-flows") {
            show(flows::wan_flows(setup, runs).await, &mut rows);
        }
        if want("fan-out") {
            show(fanout::fan_out(setup, runs).await, &mut rows);
        }
        if want("wan-index") {
            show(index::wan_index(setup, 6).await, &mut rows);
        }
        if want("wan-one") {
            show(vec![wan::wan_one(setup, 11).await], &mut rows);
        }
        rows
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let storage = registry_storage();
    println!(
        "\nmedians of {runs} runs; machine: {cores} cores; source auth: {source_auth}; target auth: {target_auth}; registries' storage: {storage}"
    );
    print(&rows);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("mkdir target/bench");
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = dir.join(format!("replication-{at}.json"));
    let out = json!({
        "unix_time": at,
        "runs": runs,
        "source_auth": source_auth,
        "target_auth": target_auth,
        "cores": cores,
        "registry_storage": storage,
        "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    std::fs::write(&file, serde_json::to_vec_pretty(&out).expect("json")).expect("write");
    println!("\nwritten to {}", file.display());
}
