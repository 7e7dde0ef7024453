//! The bench world: registries, the tools' command lines, usage counters,
//! driving the daemon.

use super::*;

impl Bench {
    pub(crate) async fn new(setup: Setup) -> Bench {
        let pki_dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(pki_dir.path());
        let work = tempfile::tempdir().expect("tempdir");
        // skopeo reads a CA from a directory as ca.crt.
        std::fs::copy(&pki.ca_pem, work.path().join("ca.crt")).expect("ca");
        // The source is plain HTTP, so its token realm may be too.
        let source_issuer = match setup.source_token {
            true => Some(TokenIssuer::start(USER, PASS).await),
            false => None,
        };
        let realm_link = match (&source_issuer, setup.wan) {
            (Some(i), Some((rtt, bw))) => {
                let addr = i.realm_host().parse().expect("issuer address");
                Some(WanLink::start(addr, rtt, bw).await)
            }
            _ => None,
        };
        let source_auth = match (&source_issuer, &realm_link) {
            (Some(i), Some(l)) => Auth::TokenVia(i.clone(), l.url()),
            (Some(i), None) => Auth::Token(i.clone()),
            _ => Auth::None,
        };
        let source = RegistryProc::start_logged(free_port(), None, source_auth).await;
        let creds = source_issuer.as_ref().map(|_| (USER, PASS));
        let src = client(&source.url, creds, harbor_relay::config::TlsMode::System);
        let link = match setup.wan {
            Some((rtt, bw)) => {
                Some(WanLink::start_capped(source.addr, rtt, bw, setup.flow_cap).await)
            }
            None => None,
        };
        let issuer = match setup.target_token {
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
            source_issuer,
            link,
            realm_link,
        };
        b.fresh_target().await;
        b
    }

    /// The source as the copiers reach it: across the WAN link if any.
    pub(crate) fn source_url(&self) -> String {
        self.link
            .as_ref()
            .map_or_else(|| self.source.url.clone(), WanLink::url)
    }

    /// skopeo's source credentials, when the source wants them.
    fn src_creds(&self) -> Vec<String> {
        match self.source_issuer {
            Some(_) => vec!["--src-creds".into(), format!("{USER}:{PASS}")],
            None => Vec::new(),
        }
    }

    /// Replaces the target with an empty one on the same port.
    pub(crate) async fn fresh_target(&mut self) {
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

    pub(crate) fn target(&self) -> &RegistryProc {
        self.target.as_ref().expect("target")
    }

    pub(crate) fn dst(&self) -> Registry {
        client(&self.target().url, Some((USER, PASS)), pinned(&self.pki))
    }

    /// The target's `[registries.integrated]` entry (and its token realm).
    pub(crate) fn target_toml(&self) -> String {
        registry_toml(
            "integrated",
            &self.target().url,
            Some((USER, PASS)),
            &format!("{{ ca_file = \"{}\" }}", self.pki.ca_pem.display()),
        ) + &std::env::var("BENCH_TARGET_EXTRA").unwrap_or_default()
            + &self
                .issuer
                .as_ref()
                .map(|i| i.realm_toml())
                .unwrap_or_default()
    }

    pub(crate) fn registries_toml(&self) -> String {
        format!("{}{}", self.source_toml(), self.target_toml())
    }

    /// The source's `[registries.external]` entry (and its token realm).
    pub(crate) fn source_toml(&self) -> String {
        registry_toml(
            "external",
            &self.source_url(),
            self.source_issuer.as_ref().map(|_| (USER, PASS)),
            "",
        ) + &self.source_realm_toml()
    }

    /// The source's `token_realm_hosts` line (its issuer, or the link to
    /// it), if it uses tokens.
    fn source_realm_toml(&self) -> String {
        match (&self.source_issuer, &self.realm_link) {
            (Some(_), Some(l)) => format!("token_realm_hosts = [\"{}\"]\n", l.addr),
            (Some(i), None) => i.realm_toml(),
            _ => String::new(),
        }
    }

    pub(crate) fn host(url: &str) -> &str {
        url.trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// [`minimal_copy`] as a child process, measured like the others.
    pub(crate) fn minimal_replicate(&self, repo: &str, tag: &str) -> Measure {
        let args = json!({
            "source": self.source_url(), "target": self.target().url,
            "ca": self.pki.ca_pem, "repository": repo, "tag": tag,
        });
        measured(
            Command::new(std::env::current_exe().expect("this bench"))
                .env("BENCH_MINIMAL_COPY", args.to_string()),
        )
    }

    pub(crate) fn skopeo(&self) -> Command {
        let mut c = Command::new("skopeo");
        c.arg("--insecure-policy");
        c
    }

    pub(crate) fn skopeo_copy(&self, repo: &str, tag: &str) -> Measure {
        self.skopeo_copy_with(repo, tag, &[])
    }

    /// `skopeo copy` with `extra` arguments (`--all`: every platform).
    pub(crate) fn skopeo_copy_with(&self, repo: &str, tag: &str, extra: &[&str]) -> Measure {
        measured(
            self.skopeo()
                .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
                .args(extra)
                .args(self.src_creds())
                .arg("--dest-cert-dir")
                .arg(self.work.path())
                .args(["--dest-creds", &format!("{USER}:{PASS}")])
                .arg(format!(
                    "docker://{}/{repo}:{tag}",
                    Self::host(&self.source_url())
                ))
                .arg(format!(
                    "docker://{}/{repo}:{tag}",
                    Self::host(&self.target().url)
                )),
        )
    }

    /// One `skopeo sync` of `images` (repository → tags).
    pub(crate) fn skopeo_sync(&self, images: &[(String, String)]) -> Measure {
        let dest = [
            "--dest-cert-dir".to_string(),
            self.work.path().display().to_string(),
            "--dest-creds".to_string(),
            format!("{USER}:{PASS}"),
        ];
        self.skopeo_sync_to(images, Self::host(&self.target().url), &dest)
    }

    /// One `skopeo sync` of `images` to the registry at `host`, with
    /// `dest` (its TLS and credentials options).
    pub(crate) fn skopeo_sync_to(
        &self,
        images: &[(String, String)],
        host: &str,
        dest: &[String],
    ) -> Measure {
        let mut yaml = format!(
            "{}:\n  tls-verify: false\n  images:\n",
            Self::host(&self.source_url())
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
                .args(self.src_creds())
                .args(dest)
                .arg(&file)
                .arg(host),
        )
    }

    pub(crate) fn relay_replicate(&self, repo: &str, tag: &str) -> Measure {
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

    pub(crate) async fn relay_daemon(&self) -> Relay {
        self.relay_daemon_with("", None).await
    }

    /// [`Bench::relay_daemon`] with `source_keys` added to the source's
    /// entry (an anchor's settings).
    pub(crate) async fn relay_daemon_with(&self, source_keys: &str, log: Option<&str>) -> Relay {
        let registries = self.registries_toml().replacen(
            "\n[registries.integrated]",
            &format!("{source_keys}\n[registries.integrated]"),
            1,
        );
        Self::daemon(&format!("{registries}{RULE}"), log).await
    }

    /// The daemon with `rest` (registries and rules) as its config, the
    /// `[jobs]` of `BENCH_JOBS` (the shipped defaults without it), and
    /// `log` as its `RUST_LOG` unless `BENCH_RELAY_LOG` says otherwise.
    pub(crate) async fn daemon(rest: &str, log: Option<&str>) -> Relay {
        Relay::start_env(
            free_port(),
            &std::env::var("BENCH_JOBS").unwrap_or_else(|_| DAEMON_JOBS.into()),
            rest,
            &[(
                "RUST_LOG",
                &std::env::var("BENCH_RELAY_LOG").unwrap_or_else(|_| log.unwrap_or("warn").into()),
            )],
        )
        .await
    }

    /// Seconds the link towards the copiers has carried bytes so far (0
    /// without a capped link): a run's share of it is how busy it kept it.
    pub(crate) fn link_busy(&self) -> f64 {
        self.link.as_ref().map_or(0.0, WanLink::busy_seconds)
    }

    /// What the registries, the token issuer and the machine have used so far.
    pub(crate) fn usage(&self) -> Usage {
        let target_cpu = cpu_of(self.target().pid());
        Usage {
            registries_cpu: cpu_of(self.source.pid()) + target_cpu,
            target_cpu,
            requests: (self.source.requests_served() + self.target().requests_served()) as f64,
            source_requests: self.source.requests_served() as f64,
            token_requests: issued(&self.issuer),
            source_token_requests: issued(&self.source_issuer),
            tcp_connections: tcp_opens(),
        }
    }

    /// [`Bench::usage`] once the access logs have caught up (they are
    /// written as requests finish).
    pub(crate) async fn settled_usage(&self) -> Usage {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.usage()
    }
}

impl Usage {
    /// What was used between `before` and `self`.
    pub(crate) fn since(self, before: Usage) -> Usage {
        Usage {
            registries_cpu: self.registries_cpu - before.registries_cpu,
            target_cpu: self.target_cpu - before.target_cpu,
            requests: self.requests - before.requests,
            source_requests: self.source_requests - before.source_requests,
            token_requests: self.token_requests - before.token_requests,
            source_token_requests: self.source_token_requests - before.source_token_requests,
            tcp_connections: self.tcp_connections - before.tcp_connections,
        }
    }

    /// The median of each counter over several runs.
    pub(crate) fn median(runs: &[Usage]) -> Usage {
        let of = |f: fn(&Usage) -> f64| median(runs.iter().map(f).collect());
        Usage {
            registries_cpu: of(|u| u.registries_cpu),
            target_cpu: of(|u| u.target_cpu),
            requests: of(|u| u.requests),
            source_requests: of(|u| u.source_requests),
            token_requests: of(|u| u.token_requests),
            source_token_requests: of(|u| u.source_token_requests),
            tcp_connections: of(|u| u.tcp_connections),
        }
    }
}

/// Tokens an issuer (if any) has given out.
fn issued(issuer: &Option<std::sync::Arc<TokenIssuer>>) -> f64 {
    issuer.as_ref().map_or(0.0, |i| {
        i.requests.load(std::sync::atomic::Ordering::Relaxed) as f64
    })
}

/// `n` webhook senders (at most [`WEBHOOK_SENDERS`]), made once per bench
/// run and kept, so no timed run pays for building them and their idle
/// connections to a daemon carry over from one run to the next.
pub(crate) fn webhook_clients(n: usize) -> &'static [reqwest::Client] {
    static CLIENTS: std::sync::OnceLock<Vec<reqwest::Client>> = std::sync::OnceLock::new();
    let all = CLIENTS.get_or_init(|| {
        (0..WEBHOOK_SENDERS)
            .map(|_| {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client")
            })
            .collect()
    });
    &all[..n.clamp(1, WEBHOOK_SENDERS)]
}

/// The daemon's `[jobs]` in the bench (`BENCH_JOBS` replaces it, for
/// exploring): none, so every row is what a user gets with the shipped
/// defaults (issue 28).
pub(crate) const DAEMON_JOBS: &str = "";

/// The most webhook senders a scenario may use.
pub(crate) const WEBHOOK_SENDERS: usize = 100;

/// Sends one webhook per image from `concurrency` clients, each sending
/// its share in turn over one connection of its own, as that many Harbor
/// webhook workers would; returns the job ids. (One shared pool would open
/// more connections than requests when a new one races an idle one, and
/// the relay caps connections per address.)
pub(crate) async fn webhooks(
    relay: &Relay,
    images: &[(String, String, String)],
    concurrency: usize,
) -> Vec<u64> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let url = format!("{}/webhooks/harbor", relay.url);
    let clients = webhook_clients(concurrency).iter().map(|http| {
        let (next, url) = (&next, &url);
        async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((r, t, d)) = images.get(i) else {
                    return ids;
                };
                let resp = http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("authorization", WEBHOOK_SECRET)
                    .body(push_event(r, Some(t), d))
                    .send()
                    .await
                    .expect("POST webhook");
                assert_eq!(resp.status(), 202, "webhook for {r}:{t}");
                let v: Value = resp.json().await.expect("json");
                ids.extend(
                    v["jobs"]
                        .as_array()
                        .expect("jobs")
                        .iter()
                        .filter_map(|j| j["id"].as_u64()),
                );
            }
        }
    });
    futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Polls job `id` every millisecond until it succeeded; returns the job.
pub(crate) async fn done(http: &reqwest::Client, relay: &Relay, id: u64) -> Value {
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

/// A time of a job (`created_at`, `started_at`, `finished_at`) as Unix
/// seconds, NaN when missing.
pub(crate) fn job_time(job: &Value, key: &str) -> f64 {
    humantime::parse_rfc3339(job[key].as_str().unwrap_or_default())
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        })
        .unwrap_or(f64::NAN)
}

/// Waits until the daemon has finished `ids.len()` more jobs than
/// `before` (from its metrics: one request per look, every 20 ms; the
/// time is then read from the jobs themselves, see [`last_finished`], so
/// looking more often would only load the machine being measured).
pub(crate) async fn all_done(relay: &Relay, ids: &[u64], before: f64) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let text = metrics_text(relay).await;
        assert_eq!(
            finished(&text, "failed"),
            0.0,
            "jobs failed:\n{}",
            relay.logs()
        );
        if finished(&text, "succeeded") >= before + ids.len() as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "jobs did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs the daemon has finished successfully so far.
pub(crate) async fn succeeded(relay: &Relay) -> f64 {
    finished(&metrics_text(relay).await, "succeeded")
}

/// Jobs finished with `outcome`, under every rule.
fn finished(text: &str, outcome: &str) -> f64 {
    let series = format!("harbor_relay_jobs_finished_total{{outcome=\"{outcome}\",rule=");
    text.lines()
        .filter_map(|l| l.strip_prefix(series.as_str()))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Unix time now, in seconds: the clock the daemon's job times use.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// When each of `ids` finished, by the daemon's own record (Unix seconds,
/// millisecond precision).
pub(crate) async fn finished_times(relay: &Relay, ids: &[u64]) -> Vec<f64> {
    futures_util::stream::iter(ids)
        .map(|id| async move { job_time(&relay.job(*id).await, "finished_at") })
        .buffer_unordered(16)
        .collect()
        .await
}

/// When the last of `ids` finished.
pub(crate) async fn last_finished(relay: &Relay, ids: &[u64]) -> f64 {
    finished_times(relay, ids)
        .await
        .into_iter()
        .fold(f64::NAN, f64::max)
}

/// Sends one webhook per image (`concurrency` at a time) to a running
/// daemon and measures until all those jobs succeeded: from the first
/// webhook sent to the last job's `finished_at`.
pub(crate) async fn replicate_all(
    daemon: &Relay,
    images: &[(String, String, String)],
    concurrency: usize,
) -> Measure {
    let (pid, me) = (daemon.pid(), std::process::id());
    let before = succeeded(daemon).await;
    let (cpu0, sender0, machine0) = (cpu_of(pid), cpu_of(me), machine_cpu());
    let t0 = unix_now();
    let ids = webhooks(daemon, images, concurrency).await;
    all_done(daemon, &ids, before).await;
    let (cpu1, sender1, machine1) = (cpu_of(pid), cpu_of(me), machine_cpu());
    let (busy, idle, iowait) = (
        machine1.0 - machine0.0,
        machine1.1 - machine0.1,
        machine1.2 - machine0.2,
    );
    let all = (busy + idle + iowait).max(f64::MIN_POSITIVE);
    Measure {
        seconds: last_finished(daemon, &ids).await - t0,
        cpu_seconds: cpu1 - cpu0,
        peak_rss: daemon.peak_rss(),
        sender_cpu: sender1 - sender0,
        idle_share: idle / all,
        iowait_share: iowait / all,
    }
}

pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Each registry's adaptive request limit now, and how often it was cut
/// and raised so far: what the relay settled on by itself.
pub(crate) async fn limits(relay: &Relay) -> Value {
    let text = metrics_text(relay).await;
    let mut out = serde_json::Map::new();
    for r in ["external", "integrated"] {
        let of = |name: &str| metric(&text, &format!("{name}{{registry=\"{r}\"}}"));
        out.insert(
            r.into(),
            json!({"limit": of("harbor_relay_concurrency"),
                "cut": of("harbor_relay_concurrency_lowered_total"),
                "raised": of("harbor_relay_concurrency_raised_total")}),
        );
    }
    Value::Object(out)
}

pub(crate) async fn metrics_text(relay: &Relay) -> String {
    let (_, v) = relay.get("/metrics").await;
    v.as_str().unwrap_or_default().to_string()
}

impl Row {
    pub(crate) fn json(&self) -> Value {
        let m = |m: &Measure| json!({"seconds": m.seconds, "cpu_seconds": m.cpu_seconds, "peak_rss_bytes": m.peak_rss, "sender_cpu_seconds": m.sender_cpu, "machine_idle_share": m.idle_share, "machine_iowait_share": m.iowait_share});
        json!({
            "scenario": self.scenario,
            "bytes": self.bytes,
            "relay": m(&self.relay),
            "skopeo": self.skopeo.as_ref().map(m),
            "ratio": self.skopeo.map(|s| self.relay.seconds / s.seconds),
            "relay_mb_per_s": self.bytes as f64 / 1e6 / self.relay.seconds,
            "relay_cpu_seconds_per_gib": self.relay.cpu_seconds / (self.bytes as f64 / (1u64 << 30) as f64),
            "floor": self.floor.map(|(kind, s)| json!({"from": kind, "seconds": s, "ratio": self.relay.seconds / s})),
            "floor_min": self.floor_min.map(|s| json!({"from": "registries' CPU + sha256 + TLS encryption, each alone", "seconds": s, "ratio": self.relay.seconds / s})),
            "extra": self.extra,
        })
    }
}
