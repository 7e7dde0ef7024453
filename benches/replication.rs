//! Replication benchmarks against skopeo, in the same run, on the same
//! real registries the tests use: a plain-HTTP source and a TLS target with
//! basic auth and a certificate from a test CA. Run with `scripts/bench.sh`
//! (which installs skopeo and the registry when missing), or
//!
//!     cargo bench --bench replication
//!     BENCH_SCENARIOS=big,noop BENCH_RUNS=5 cargo bench --bench replication
//!
//! Scenarios (see docs/performance.md): big, huge, many, noop, shared,
//! latency. `big` also runs the minimal copier ([`minimal_copy`]) as
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
//! runs. CPU and peak RSS are the copier's own (`wait4` for one-shot
//! commands, `/proc` for the daemon). Results go to stdout as a table and
//! to `target/bench/replication-<unix time>.json`.

#[path = "../tests/support/mod.rs"]
mod support;

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

// ---------------------------------------------------------------- measuring

/// Wall time, CPU time and peak RSS of one run of a copier.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss: u64,
}

/// Runs a command to completion and takes its own resource use (`wait4`).
// The child is reaped by wait4, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn measured(cmd: &mut Command) -> Measure {
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
    }
}

/// CPU seconds a running process has used so far.
/// TCP connections opened on this machine so far (`ActiveOpens` in
/// `/proc/net/snmp`): how many connections a copy cost, when nothing else
/// runs.
fn tcp_opens() -> f64 {
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

fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median_of(runs: &[Measure]) -> Measure {
    Measure {
        seconds: median(runs.iter().map(|m| m.seconds).collect()),
        cpu_seconds: median(runs.iter().map(|m| m.cpu_seconds).collect()),
        peak_rss: median(runs.iter().map(|m| m.peak_rss as f64).collect()) as u64,
    }
}

// ---------------------------------------------------------------- content

/// Deterministic pseudo-random bytes (splitmix64), regenerated on demand so
/// that a 4 GiB layer never sits in memory.
fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    debug_assert_eq!(offset % 8, 0);
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut z = seed
            .wrapping_add((offset / 8 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

fn layer_stream(
    seed: u64,
    size: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    const PIECE: u64 = 1024 * 1024;
    futures_util::stream::iter((0..size.div_ceil(PIECE)).map(move |i| {
        let off = i * PIECE;
        let mut b = vec![0u8; PIECE.min(size - off) as usize];
        fill(seed, off, &mut b);
        Ok(Bytes::from(b))
    }))
}

fn layer_digest(seed: u64, size: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = MIB.min(size - off) as usize;
        fill(seed, off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// An image whose layers are generated, pushed streaming.
struct GenImage {
    layers: Vec<(u64, u64, String)>, // seed, size, digest
    config: Bytes,
    manifest: Bytes,
    digest: String,
}

impl GenImage {
    fn new(layers: &[(u64, u64)]) -> GenImage {
        let layers: Vec<(u64, u64, String)> = layers
            .iter()
            .map(|&(seed, size)| (seed, size, layer_digest(seed, size)))
            .collect();
        let config = Bytes::from(
            serde_json::to_vec(&json!({
                "architecture": "amd64", "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.2.clone()).collect::<Vec<_>>()},
                "config": {"Labels": {"seeds": layers.iter().map(|l| l.0.to_string()).collect::<Vec<_>>().join(",")}},
            }))
            .expect("json"),
        );
        let manifest = Bytes::from(
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
                "layers": layers.iter().map(|(_, size, d)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size})).collect::<Vec<_>>(),
            }))
            .expect("json"),
        );
        let digest = sha256_digest(&manifest);
        GenImage {
            layers,
            config,
            manifest,
            digest,
        }
    }

    fn bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.1).sum::<u64>() + self.config.len() as u64
    }

    async fn push(&self, reg: &Registry, repo: &str, tag: &str) {
        for (seed, size, digest) in &self.layers {
            if !reg.has_blob(repo, digest).await.expect("HEAD") {
                reg.put_blob(repo, digest, *size, layer_stream(*seed, *size))
                    .await
                    .expect("push layer");
            }
        }
        reg.put_blob_bytes(repo, self.config.clone())
            .await
            .expect("push config");
        let m = harbor_relay::manifest::Manifest::from_bytes(self.manifest.clone(), None)
            .expect("manifest");
        reg.put_manifest(repo, &Reference::Tag(tag.into()), &m)
            .await
            .expect("push manifest");
    }
}

// ---------------------------------------------------------------- a minimal copier

/// The reference point, run in the same sitting: the least a
/// verifying copier can do. It reads the manifest, then moves the config
/// and layers 4 at a time over HTTP/1.1 (reqwest, rustls), hashing each
/// blob with sha2 on the way (`POST`, then one streamed `PUT`), and writes
/// the manifest; no existence checks, mounts, retries, resume or records.
/// It runs as a child process of this bench (so its CPU and RSS are its
/// own): `BENCH_MINIMAL_COPY` holds its arguments.
async fn minimal_copy(args: &Value) {
    use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
    use sha2::Digest as _;
    let arg = |k: &str| args[k].as_str().expect("argument").to_string();
    let (src, dst, repo, tag) = (arg("source"), arg("target"), arg("repository"), arg("tag"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(arg("ca")).expect("ca")).expect("pem");
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .http1_only()
        .build()
        .expect("client");
    let manifest = http
        .get(format!("{src}/v2/{repo}/manifests/{tag}"))
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest")
        .bytes()
        .await
        .expect("manifest body");
    let doc: Value = serde_json::from_slice(&manifest).expect("manifest json");
    let blobs: Vec<(String, u64)> = std::iter::once(&doc["config"])
        .chain(doc["layers"].as_array().expect("layers"))
        .map(|d| {
            (
                d["digest"].as_str().expect("digest").to_string(),
                d["size"].as_u64().expect("size"),
            )
        })
        .collect();
    futures_util::stream::iter(blobs)
        .for_each_concurrent(4, |(digest, size)| {
            let (http, src, dst, repo) = (&http, &src, &dst, &repo);
            async move {
                let body = http
                    .get(format!("{src}/v2/{repo}/blobs/{digest}"))
                    .send()
                    .await
                    .expect("GET blob");
                let hasher = std::sync::Arc::new(std::sync::Mutex::new(sha2::Sha256::new()));
                let h = hasher.clone();
                let stream = body.bytes_stream().map(move |chunk| {
                    if let Ok(c) = &chunk {
                        h.lock().expect("hasher").update(c);
                    }
                    chunk
                });
                let opened = http
                    .post(format!("{dst}/v2/{repo}/blobs/uploads/"))
                    .basic_auth(USER, Some(PASS))
                    .header(CONTENT_LENGTH, 0)
                    .send()
                    .await
                    .expect("POST upload");
                assert_eq!(opened.status(), 202, "POST upload");
                let loc = opened.headers()[LOCATION].to_str().expect("location");
                let mut url = match loc.starts_with('/') {
                    true => url::Url::parse(&format!("{dst}{loc}")),
                    false => url::Url::parse(loc),
                }
                .expect("upload url");
                url.query_pairs_mut().append_pair("digest", &digest);
                let put = http
                    .put(url)
                    .basic_auth(USER, Some(PASS))
                    .header(CONTENT_LENGTH, size)
                    .body(reqwest::Body::wrap_stream(stream))
                    .send()
                    .await
                    .expect("PUT blob");
                assert_eq!(put.status(), 201, "PUT blob");
                let actual = hasher.lock().expect("hasher").clone().finalize();
                assert_eq!(format!("sha256:{}", hex::encode(actual)), digest);
            }
        })
        .await;
    let put = http
        .put(format!("{dst}/v2/{repo}/manifests/{tag}"))
        .basic_auth(USER, Some(PASS))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(put.status(), 201, "PUT manifest");
}

// ---------------------------------------------------------------- the bench world

struct Bench {
    _pki_dir: tempfile::TempDir,
    pki: Pki,
    work: tempfile::TempDir,
    source: RegistryProc,
    target: Option<RegistryProc>,
    target_port: u16,
    src: Registry,
    /// Set with `BENCH_TARGET_AUTH=token`: the target trusts its tokens.
    issuer: Option<std::sync::Arc<TokenIssuer>>,
}

impl Bench {
    async fn new(token_auth: bool) -> Bench {
        let pki_dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(pki_dir.path());
        let work = tempfile::tempdir().expect("tempdir");
        // skopeo reads a CA from a directory as ca.crt.
        std::fs::copy(&pki.ca_pem, work.path().join("ca.crt")).expect("ca");
        let source = RegistryProc::start_logged(free_port(), None, Auth::None).await;
        let src = client(&source.url, None, harbor_relay::config::TlsMode::System);
        let issuer = match token_auth {
            // The target is HTTPS, so its token realm must be too.
            true => Some(TokenIssuer::start_tls(USER, PASS, &pki).await),
            false => None,
        };
        let mut b = Bench {
            _pki_dir: pki_dir,
            pki,
            work,
            source,
            target: None,
            target_port: free_port(),
            src,
            issuer,
        };
        b.fresh_target().await;
        b
    }

    /// Replaces the target with an empty one on the same port.
    async fn fresh_target(&mut self) {
        self.target = None;
        self.target = Some(
            RegistryProc::start_logged(
                self.target_port,
                Some(&self.pki),
                match &self.issuer {
                    Some(issuer) => Auth::Token(issuer.clone()),
                    None => Auth::Basic {
                        user: USER.into(),
                        pass: PASS.into(),
                    },
                },
            )
            .await,
        );
    }

    fn target(&self) -> &RegistryProc {
        self.target.as_ref().expect("target")
    }

    fn dst(&self) -> Registry {
        client(&self.target().url, Some((USER, PASS)), pinned(&self.pki))
    }

    fn registries_toml(&self) -> String {
        format!(
            "{}{}",
            registry_toml("external", &self.source.url, None, ""),
            registry_toml(
                "integrated",
                &self.target().url,
                Some((USER, PASS)),
                &format!("{{ ca_file = \"{}\" }}", self.pki.ca_pem.display())
            ) + &std::env::var("BENCH_TARGET_EXTRA").unwrap_or_default()
                + &self
                    .issuer
                    .as_ref()
                    .map(|i| i.realm_toml())
                    .unwrap_or_default()
        )
    }

    fn host(url: &str) -> &str {
        url.trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// [`minimal_copy`] as a child process, measured like the others.
    fn minimal_replicate(&self, repo: &str, tag: &str) -> Measure {
        let args = json!({
            "source": self.source.url, "target": self.target().url,
            "ca": self.pki.ca_pem, "repository": repo, "tag": tag,
        });
        measured(
            Command::new(std::env::current_exe().expect("this bench"))
                .env("BENCH_MINIMAL_COPY", args.to_string()),
        )
    }

    fn skopeo(&self) -> Command {
        let mut c = Command::new("skopeo");
        c.arg("--insecure-policy");
        c
    }

    fn skopeo_copy(&self, repo: &str, tag: &str) -> Measure {
        measured(
            self.skopeo()
                .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
                .arg("--dest-cert-dir")
                .arg(self.work.path())
                .args(["--dest-creds", &format!("{USER}:{PASS}")])
                .arg(format!(
                    "docker://{}/{repo}:{tag}",
                    Self::host(&self.source.url)
                ))
                .arg(format!(
                    "docker://{}/{repo}:{tag}",
                    Self::host(&self.target().url)
                )),
        )
    }

    /// One `skopeo sync` of `images` (repository → tags).
    fn skopeo_sync(&self, images: &[(String, String)]) -> Measure {
        let mut yaml = format!(
            "{}:\n  tls-verify: false\n  images:\n",
            Self::host(&self.source.url)
        );
        let mut by_repo: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (r, t) in images {
            by_repo.entry(r).or_default().push(t);
        }
        for (r, tags) in by_repo {
            yaml.push_str(&format!("    {r}: [{}]\n", tags.join(", ")));
        }
        let file = self.work.path().join("sync.yaml");
        std::fs::write(&file, yaml).expect("yaml");
        measured(
            self.skopeo()
                .args([
                    "sync",
                    "--src",
                    "yaml",
                    "--dest",
                    "docker",
                    "--preserve-digests",
                ])
                .arg("--dest-cert-dir")
                .arg(self.work.path())
                .args(["--dest-creds", &format!("{USER}:{PASS}")])
                .arg(&file)
                .arg(Self::host(&self.target().url)),
        )
    }

    fn relay_replicate(&self, repo: &str, tag: &str) -> Measure {
        let cfg = self.work.path().join("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "[store]\npath = \"{}\"\n\n{}",
                self.work.path().join("store-oneshot").display(),
                self.registries_toml()
            ),
        )
        .expect("config");
        // BENCH_PERF=FILE profiles the relay with `perf record` (not for timing).
        let mut cmd = match std::env::var("BENCH_PERF") {
            Ok(out) => {
                let mut c = Command::new("perf");
                c.args(["record", "-F", "2000", "-g", "-o", &out, "--"])
                    .arg(env!("CARGO_BIN_EXE_harbor-relay"));
                c
            }
            Err(_) => Command::new(env!("CARGO_BIN_EXE_harbor-relay")),
        };
        measured(
            cmd.env("RUST_LOG", "warn")
                .args(["replicate", "--config"])
                .arg(&cfg)
                .args(["--from", "external", "--to", "integrated"])
                .arg(format!("{repo}:{tag}")),
        )
    }

    async fn relay_daemon(&self) -> Relay {
        Relay::start_env(
            free_port(),
            &std::env::var("BENCH_JOBS")
                .unwrap_or_else(|_| "workers = 8\ncoalesce_window = \"0s\"\n".into()),
            &format!("{}{RULE}", self.registries_toml()),
            &[(
                "RUST_LOG",
                &std::env::var("BENCH_RELAY_LOG").unwrap_or_else(|_| "warn".into()),
            )],
        )
        .await
    }

    /// What the registries, the token issuer and the machine have used so far.
    fn usage(&self) -> Usage {
        let target_cpu = cpu_of(self.target().pid());
        Usage {
            registries_cpu: cpu_of(self.source.pid()) + target_cpu,
            target_cpu,
            requests: (self.source.requests_served() + self.target().requests_served()) as f64,
            token_requests: self.issuer.as_ref().map_or(0.0, |i| {
                i.requests.load(std::sync::atomic::Ordering::Relaxed) as f64
            }),
            tcp_connections: tcp_opens(),
        }
    }

    /// [`Bench::usage`] once the access logs have caught up (they are
    /// written as requests finish).
    async fn settled_usage(&self) -> Usage {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.usage()
    }
}

/// Counters around a copy: registries' CPU seconds (both, and the target's
/// alone), requests they served, tokens issued (with `BENCH_TARGET_AUTH=token`),
/// TCP connections opened on the machine.
#[derive(Clone, Copy)]
struct Usage {
    registries_cpu: f64,
    target_cpu: f64,
    requests: f64,
    token_requests: f64,
    tcp_connections: f64,
}

impl Usage {
    /// What was used between `before` and `self`.
    fn since(self, before: Usage) -> Usage {
        Usage {
            registries_cpu: self.registries_cpu - before.registries_cpu,
            target_cpu: self.target_cpu - before.target_cpu,
            requests: self.requests - before.requests,
            token_requests: self.token_requests - before.token_requests,
            tcp_connections: self.tcp_connections - before.tcp_connections,
        }
    }

    /// The median of each counter over several runs.
    fn median(runs: &[Usage]) -> Usage {
        let of = |f: fn(&Usage) -> f64| median(runs.iter().map(f).collect());
        Usage {
            registries_cpu: of(|u| u.registries_cpu),
            target_cpu: of(|u| u.target_cpu),
            requests: of(|u| u.requests),
            token_requests: of(|u| u.token_requests),
            tcp_connections: of(|u| u.tcp_connections),
        }
    }
}

/// Sends one webhook per image, `concurrency` at a time; returns job ids.
async fn webhooks(
    relay: &Relay,
    images: &[(String, String, String)],
    concurrency: usize,
) -> Vec<u64> {
    let ids: Vec<Vec<u64>> = futures_util::stream::iter(
        images
            .iter()
            .map(|(r, t, d)| relay.push(push_event(r, Some(t), d))),
    )
    .buffer_unordered(concurrency)
    .collect()
    .await;
    ids.into_iter().flatten().collect()
}

/// Polls job `id` every millisecond until it succeeded; returns the job.
async fn done(http: &reqwest::Client, relay: &Relay, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let j: Value = http
            .get(format!("{}/api/v1/jobs/{id}", relay.url))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("GET job")
            .json()
            .await
            .expect("json");
        match j["state"].as_str() {
            Some("succeeded") => return j,
            Some("failed") => panic!("job {id} failed: {j}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {j}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the daemon has finished `ids.len()` more jobs than
/// `before` (from its metrics: one request per look, every 2 ms).
async fn all_done(relay: &Relay, ids: &[u64], before: f64) {
    let ok =
        "harbor_relay_jobs_finished_total{outcome=\"succeeded\",rule=\"external-to-integrated\"}";
    let failed =
        "harbor_relay_jobs_finished_total{outcome=\"failed\",rule=\"external-to-integrated\"}";
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let text = metrics_text(relay).await;
        assert_eq!(metric(&text, failed), 0.0, "jobs failed:\n{}", relay.logs());
        if metric(&text, ok) >= before + ids.len() as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "jobs did not finish");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Jobs the daemon has finished successfully so far.
async fn succeeded(relay: &Relay) -> f64 {
    metric(
        &metrics_text(relay).await,
        "harbor_relay_jobs_finished_total{outcome=\"succeeded\",rule=\"external-to-integrated\"}",
    )
}

/// Sends one webhook per image (`concurrency` at a time) to a running
/// daemon and measures until all those jobs succeeded.
async fn replicate_all(
    daemon: &Relay,
    images: &[(String, String, String)],
    concurrency: usize,
) -> Measure {
    let pid = daemon.pid();
    let cpu0 = cpu_of(pid);
    let before = succeeded(daemon).await;
    let t = Instant::now();
    let ids = webhooks(daemon, images, concurrency).await;
    all_done(daemon, &ids, before).await;
    Measure {
        seconds: t.elapsed().as_secs_f64(),
        cpu_seconds: cpu_of(pid) - cpu0,
        peak_rss: daemon.peak_rss(),
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_text(relay: &Relay) -> String {
    let (_, v) = relay.get("/metrics").await;
    v.as_str().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------- scenarios

struct Row {
    scenario: &'static str,
    relay: Measure,
    skopeo: Option<Measure>,
    bytes: u64,
    extra: Value,
}

impl Row {
    fn json(&self) -> Value {
        let m = |m: &Measure| json!({"seconds": m.seconds, "cpu_seconds": m.cpu_seconds, "peak_rss_bytes": m.peak_rss});
        json!({
            "scenario": self.scenario,
            "bytes": self.bytes,
            "relay": m(&self.relay),
            "skopeo": self.skopeo.as_ref().map(m),
            "ratio": self.skopeo.map(|s| self.relay.seconds / s.seconds),
            "relay_mb_per_s": self.bytes as f64 / 1e6 / self.relay.seconds,
            "relay_cpu_seconds_per_gib": self.relay.cpu_seconds / (self.bytes as f64 / (1u64 << 30) as f64),
            "extra": self.extra,
        })
    }
}

/// One big image, cold target: `skopeo copy` against `harbor-relay replicate`.
async fn one_image(
    b: &mut Bench,
    scenario: &'static str,
    layers: &[(u64, u64)],
    runs: usize,
    with_minimal: bool,
) -> Vec<Row> {
    let img = GenImage::new(layers);
    let repo = format!("bench/{scenario}");
    img.push(&b.src, &repo, "1").await;
    let (mut relay, mut skopeo, mut minimal) = (Vec::new(), Vec::new(), Vec::new());
    let (mut used_relay, mut used_skopeo, mut used_minimal) = (Vec::new(), Vec::new(), Vec::new());
    // One copy by `tool` onto a fresh target, checked, with what it used.
    async fn copy_by(
        b: &mut Bench,
        tool: fn(&Bench, &str, &str) -> Measure,
        repo: &str,
        digest: &str,
    ) -> (Measure, Usage) {
        b.fresh_target().await;
        let before = b.usage();
        let m = tool(b, repo, "1");
        let used = b.usage().since(before);
        assert!(b.dst().has_manifest(repo, digest).await.expect("HEAD"));
        (m, used)
    }
    for _ in 0..runs {
        let (m, u) = copy_by(b, Bench::skopeo_copy, &repo, &img.digest).await;
        skopeo.push(m);
        used_skopeo.push(u);
        let (m, u) = copy_by(b, Bench::relay_replicate, &repo, &img.digest).await;
        relay.push(m);
        used_relay.push(u);
        if with_minimal {
            let (m, u) = copy_by(b, Bench::minimal_replicate, &repo, &img.digest).await;
            minimal.push(m);
            used_minimal.push(u);
        }
    }
    let skopeo = median_of(&skopeo);
    let mut rows = vec![Row {
        scenario,
        relay: median_of(&relay),
        skopeo: Some(skopeo),
        bytes: img.bytes(),
        extra: json!({"runs": runs, "registries_cpu_seconds": Usage::median(&used_relay).registries_cpu, "registries_cpu_seconds_skopeo": Usage::median(&used_skopeo).registries_cpu}),
    }];
    if with_minimal {
        rows.push(Row {
            scenario: "  minimal",
            relay: median_of(&minimal),
            skopeo: Some(skopeo),
            bytes: img.bytes(),
            extra: json!({"runs": runs, "copier": "minimal: reqwest, rustls, sha2, 4 blobs at a time, no checks", "registries_cpu_seconds": Usage::median(&used_minimal).registries_cpu}),
        });
    }
    rows
}

/// 200 images of 5 layers (1–4 MiB) in 20 repositories, sharing a base
/// layer: 200 webhooks at once against one `skopeo sync`; then the same
/// again with everything present (no-op).
async fn many(b: &mut Bench, runs: usize) -> (Row, Row) {
    let base = (7_000_000u64, 2 * MIB);
    let mut imgs = Vec::new();
    let mut bytes = base.1;
    for i in 0..200u64 {
        let mut layers = vec![base];
        for j in 0..4u64 {
            let size = MIB + ((i * 7 + j * 13) % 4) * MIB - (i % 3) * 4096;
            layers.push((8_000_000 + i * 10 + j, size));
            bytes += size;
        }
        let img = GenImage::new(&layers);
        let repo = format!("many/app-{:02}", i % 20);
        let tag = format!("v{i}");
        img.push(&b.src, &repo, &tag).await;
        bytes += img.config.len() as u64;
        imgs.push((repo, tag, img.digest.clone()));
    }
    let pairs: Vec<(String, String)> = imgs
        .iter()
        .map(|(r, t, _)| (r.clone(), t.clone()))
        .collect();
    let (mut relay, mut skopeo, mut noop_relay, mut noop_skopeo) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut used_relay, mut used_skopeo, mut used_noop) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        b.fresh_target().await;
        let before = b.usage();
        skopeo.push(b.skopeo_sync(&pairs));
        used_skopeo.push(b.settled_usage().await.since(before));
        noop_skopeo.push(b.skopeo_sync(&pairs));

        b.fresh_target().await;
        let daemon = b.relay_daemon().await;
        let src_log0 = b.source.log().len();
        let before = b.usage();
        relay.push(replicate_all(&daemon, &imgs, 200).await);
        used_relay.push(b.settled_usage().await.since(before));
        // No-op: the same 200 again, everything already there.
        let before = b.usage();
        noop_relay.push(replicate_all(&daemon, &imgs, 200).await);
        used_noop.push(b.settled_usage().await.since(before));
        if std::env::var("BENCH_RELAY_LOG").is_ok() {
            let _ = std::fs::write("target/bench/relay-many.log", daemon.logs());
            let _ = std::fs::write("target/bench/source-many.log", &b.source.log()[src_log0..]);
            let _ = std::fs::write("target/bench/target-many.log", b.target().log());
        }
    }
    let (r, s, n) = (
        Usage::median(&used_relay),
        Usage::median(&used_skopeo),
        Usage::median(&used_noop),
    );
    let many = Row {
        scenario: "many small",
        relay: median_of(&relay),
        skopeo: Some(median_of(&skopeo)),
        bytes,
        extra: json!({"images": 200, "repositories": 20, "runs": runs, "registries_cpu_seconds": r.registries_cpu, "target_cpu_seconds": r.target_cpu, "registries_cpu_seconds_skopeo": s.registries_cpu, "requests": r.requests, "requests_skopeo": s.requests, "token_requests": r.token_requests, "token_requests_skopeo": s.token_requests, "tcp_connections": r.tcp_connections, "tcp_connections_skopeo": s.tcp_connections}),
    };
    let noop = Row {
        scenario: "no-op",
        relay: median_of(&noop_relay),
        skopeo: Some(median_of(&noop_skopeo)),
        bytes: 0,
        extra: json!({"requests_per_tag": n.requests / imgs.len() as f64, "runs": runs, "registries_cpu_seconds": n.registries_cpu, "target_cpu_seconds": n.target_cpu}),
    };
    (many, noop)
}

/// 20 repositories whose images share 3 base layers: bytes uploaded to the
/// target against the unique bytes.
async fn shared(b: &mut Bench, runs: usize) -> Row {
    let bases = [
        (9_000_001u64, 8 * MIB),
        (9_000_002, 4 * MIB),
        (9_000_003, 2 * MIB),
    ];
    let mut imgs = Vec::new();
    let mut unique: u64 = bases.iter().map(|b| b.1).sum();
    for i in 0..20u64 {
        let mut layers = bases.to_vec();
        layers.push((9_100_000 + i, MIB));
        unique += MIB;
        let img = GenImage::new(&layers);
        unique += img.config.len() as u64;
        let repo = format!("shared/svc-{i:02}");
        img.push(&b.src, &repo, "1").await;
        imgs.push((repo, "1".to_string(), img.digest.clone()));
    }
    let (mut relay, mut uploaded) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        b.fresh_target().await;
        let daemon = b.relay_daemon().await;
        relay.push(replicate_all(&daemon, &imgs, 20).await);
        let text = metrics_text(&daemon).await;
        uploaded.push(metric(
            &text,
            "harbor_relay_registry_written_bytes_total{registry=\"integrated\"}",
        ));
    }
    let up = median(uploaded);
    Row {
        scenario: "shared base",
        relay: median_of(&relay),
        skopeo: None,
        bytes: unique,
        extra: json!({"uploaded_bytes": up, "unique_bytes": unique, "overhead": up / unique as f64 - 1.0, "runs": runs}),
    }
}

/// From the webhook's arrival to the tag on the target, for a 1 MiB image.
async fn latency(b: &mut Bench) -> Row {
    b.fresh_target().await;
    let daemon = b.relay_daemon().await;
    let http = reqwest::Client::new();
    let mut lat = Vec::new();
    let (mut queued, mut running) = (Vec::new(), Vec::new());
    let pid = daemon.pid();
    let cpu0 = cpu_of(pid);
    for i in 0..100u64 {
        let img = GenImage::new(&[(10_000_000 + i, MIB)]);
        img.push(&b.src, "latency/app", &format!("t{i}")).await;
        let t = Instant::now();
        let ids = daemon
            .push(push_event(
                "latency/app",
                Some(&format!("t{i}")),
                &img.digest,
            ))
            .await;
        let j = done(&http, &daemon, ids[0]).await;
        lat.push(t.elapsed().as_secs_f64());
        let at = |k: &str| {
            humantime::parse_rfc3339(j[k].as_str().unwrap_or_default())
                .map(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64()
                })
                .unwrap_or(f64::NAN)
        };
        queued.push(at("started_at") - at("created_at"));
        running.push(at("finished_at") - at("started_at"));
    }
    if std::env::var("BENCH_RELAY_LOG").is_ok() {
        let _ = std::fs::write("target/bench/relay-latency.log", daemon.logs());
    }
    Row {
        scenario: "latency",
        relay: Measure {
            seconds: median(lat.clone()),
            cpu_seconds: cpu_of(pid) - cpu0,
            peak_rss: daemon.peak_rss(),
        },
        skopeo: None,
        bytes: MIB,
        extra: json!({"p50_seconds": percentile(lat.clone(), 0.5), "p99_seconds": percentile(lat, 0.99), "pushes": 100, "queued_p50_seconds": median(queued), "copy_p50_seconds": median(running)}),
    }
}

fn print(rows: &[Row]) {
    println!(
        "\n{:<12} {:>9} {:>9} {:>7} {:>9} {:>9} {:>10} {:>10}  notes",
        "scenario", "relay s", "skopeo s", "ratio", "MB/s", "relay cpu", "relay rss", "skopeo rss"
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
        let rate = if r.bytes > MIB {
            format!("{:.0}", r.bytes as f64 / 1e6 / r.relay.seconds)
        } else {
            "-".into()
        };
        println!(
            "{:<12} {:>9.3} {:>9} {:>7} {:>9} {:>9.2} {:>10} {:>10}  {}",
            r.scenario,
            r.relay.seconds,
            s,
            ratio,
            rate,
            r.relay.cpu_seconds,
            mb(r.relay.peak_rss),
            srss,
            r.extra
        );
    }
}

fn main() {
    if let Ok(args) = std::env::var("BENCH_MINIMAL_COPY") {
        let args: Value = serde_json::from_str(&args).expect("BENCH_MINIMAL_COPY");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(minimal_copy(&args));
        return;
    }
    let scenarios =
        std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| "big,huge,many,shared,latency".into());
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let want = |s: &str| scenarios.split(',').any(|x| x.trim() == s);
    let target_auth = match std::env::var("BENCH_TARGET_AUTH").as_deref() {
        Ok("token") => "token",
        Ok("basic") | Err(_) => "basic",
        Ok(other) => panic!("BENCH_TARGET_AUTH={other}: expected basic or token"),
    };
    // Calibration: what SHA-256 alone costs on this machine, per GiB.
    {
        use sha2::Digest;
        let buf = vec![7u8; 4 * MIB as usize];
        let t = Instant::now();
        let mut h = sha2::Sha256::new();
        for _ in 0..256 {
            h.update(&buf);
        }
        let _ = h.finalize();
        println!(
            "sha256 alone: {:.2} CPU-s/GiB (the floor for a copier that verifies every byte)",
            t.elapsed().as_secs_f64()
        );
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rows = rt.block_on(async {
        let mut b = Bench::new(target_auth == "token").await;
        let mut rows = Vec::new();
        if want("big") {
            let seeds: Vec<(u64, u64)> = (1..=4).map(|s| (s, 256 * MIB)).collect();
            // The minimal copier speaks basic auth only.
            let minimal = target_auth == "basic";
            let new = one_image(&mut b, "big", &seeds, runs, minimal).await;
            print(&new);
            rows.extend(new);
        }
        if want("huge") {
            let new = one_image(&mut b, "huge", &[(100, 4096 * MIB)], runs, false).await;
            print(&new);
            rows.extend(new);
        }
        if want("many") || want("noop") {
            let (m, n) = many(&mut b, runs).await;
            rows.push(m);
            rows.push(n);
            print(&rows[rows.len() - 2..]);
        }
        if want("shared") {
            rows.push(shared(&mut b, runs).await);
            print(&rows[rows.len() - 1..]);
        }
        if want("latency") {
            rows.push(latency(&mut b).await);
            print(&rows[rows.len() - 1..]);
        }
        rows
    });
    println!(
        "\nmedians of {runs} runs; machine: {} cores; target auth: {target_auth}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
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
        "target_auth": target_auth,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    std::fs::write(&file, serde_json::to_vec_pretty(&out).expect("json")).expect("write");
    println!("\nwritten to {}", file.display());
}
