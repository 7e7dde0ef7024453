//! The real `harbor-relay` binary as a child process, and CLI helpers.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::Deadline;

/// A config file for the one-shot commands: a `[store]` in its own temp
/// directory, then `body`.
pub struct ConfigFile {
    _dir: TempDir,
    /// Where it is.
    pub path: String,
}

impl ConfigFile {
    pub fn new(body: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            format!(
                "[store]\npath = \"{}\"\n\n{body}",
                dir.path().join("store").display()
            ),
        )
        .expect("config");
        ConfigFile {
            path: path.to_str().expect("utf-8").to_string(),
            _dir: dir,
        }
    }
}

/// A `harbor-relay serve` whose `[server]` section the test writes itself
/// (a [`Relay`] writes its own): `listen` on `port`, then `server_lines`,
/// and a store in a temp directory. Killed when dropped.
pub struct RawRelay {
    child: Child,
    /// Holds the config and the store.
    pub dir: TempDir,
}

impl RawRelay {
    pub fn spawn(port: u16, server_lines: &str) -> RawRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n{server_lines}\n[store]\npath = \"{}\"\n",
                dir.path().join("store").display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("relay.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_harbor-relay"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start harbor-relay");
        RawRelay { child, dir }
    }

    /// What the daemon logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (20 s at most) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < until, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RawRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (20 s at most) until `GET url` through `http` gets an answer;
/// `what` says what failed to happen otherwise.
pub async fn wait_until_answers(http: &reqwest::Client, url: &str, what: &str) {
    let wait = Deadline::new(Duration::from_secs(20));
    while http.get(url).send().await.is_err() {
        wait.tick(|| what.to_string()).await;
    }
}

/// The line of `harbor-relay check`'s output for one registry's check
/// (its first two words), or a panic showing the whole output.
pub fn check_row<'a>(text: &'a str, registry: &str, check: &str) -> &'a str {
    text.lines()
        .find(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(registry) && w.next() == Some(check)
        })
        .unwrap_or_else(|| panic!("no {registry} {check} row:\n{text}"))
}

/// Asserts that a command succeeded, showing its stderr if not, and
/// returns its stdout.
pub fn expect_success(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the `harbor-relay` binary with `args` and waits for it.
pub fn relay_cmd(args: &[&str]) -> std::process::Output {
    relay_cmd_env(args, &[])
}

/// [`relay_cmd`] with extra environment variables.
pub fn relay_cmd_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_harbor-relay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("HARBOR_RELAY_API_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run harbor-relay")
}

/// A free loopback port (bound and released; the window for a race is tiny).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `harbor-relay serve`.
pub struct Relay {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub url: String,
    pub dir: TempDir,
    pub config_path: PathBuf,
    http: reqwest::Client,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub const WEBHOOK_SECRET: &str = "Bearer webhook-s3cret";

/// The `server.api_token` of every [`Relay`]; its client sends it.
pub const API_TOKEN: &str = "api-t0ken-for-tests";

impl Relay {
    /// Writes a config with `[server]` and `[store]` filled in, followed by
    /// `rest` (registries and rules), and starts the daemon.
    pub async fn start(rest: &str) -> Relay {
        Self::start_with_jobs("", rest).await
    }

    /// Like [`Relay::start`], with extra lines for the `[jobs]` section.
    pub async fn start_with_jobs(jobs: &str, rest: &str) -> Relay {
        Self::start_on(free_port(), jobs, rest).await
    }

    /// Like [`Relay::start_with_jobs`], listening on `port`.
    pub async fn start_on(port: u16, jobs: &str, rest: &str) -> Relay {
        Self::start_env(port, jobs, rest, &[]).await
    }

    /// Like [`Relay::start_on`], with extra environment variables.
    pub async fn start_env(port: u16, jobs: &str, rest: &str, env: &[(&str, &str)]) -> Relay {
        Self::start_store(None, port, jobs, rest, env).await
    }

    /// Like [`Relay::start_env`], with `store` as the `[store]` section's
    /// lines (e.g. a PostgreSQL `url`) instead of a `path` of its own.
    pub async fn start_store(
        store: Option<&str>,
        port: u16,
        jobs: &str,
        rest: &str,
        env: &[(&str, &str)],
    ) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = match store {
            Some(lines) => lines.to_string(),
            None => format!("path = \"{}\"\n", dir.path().join("store").display()),
        };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nwebhook_auth = \"{WEBHOOK_SECRET}\"\napi_token = \"{API_TOKEN}\"\n\n[store]\n{store}\n[jobs]\n{}{jobs}\n{rest}",
            if jobs.contains("shutdown_grace") {
                ""
            } else {
                "shutdown_grace = \"5s\"\n"
            }
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, config).expect("config");
        let mut r = Relay {
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            url: format!("http://127.0.0.1:{port}"),
            dir,
            config_path,
            // A request the daemon never answers fails the test with a
            // message instead of hanging the suite.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .default_headers(
                    [(
                        reqwest::header::AUTHORIZATION,
                        format!("Bearer {API_TOKEN}").parse().expect("header"),
                    )]
                    .into_iter()
                    .collect(),
                )
                .build()
                .expect("client"),
        };
        r.spawn().await;
        r
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_harbor-relay"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,harbor_relay=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start harbor-relay");
        self.child = Some(child);
        let wait = Deadline::new(Duration::from_secs(20));
        loop {
            // Each probe has its own timeout: a connection accepted before
            // the daemon serves (it binds, then opens its store) must not
            // hold the wait past its deadline and its log.
            let probe = self.http.get(format!("{}/healthz", self.url));
            if let Ok(r) = probe.timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("harbor-relay exited with {status}; log:\n{}", self.logs());
            }
            wait.tick(|| format!("harbor-relay did not become healthy; log:\n{}", self.logs()))
                .await;
        }
    }

    /// Peak resident memory of the daemon so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (e.g. "HUP") to the daemon.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal}");
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the daemon to exit by itself (at most `within`).
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let wait = Deadline::new(within);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return status;
            }
            wait.tick(|| format!("harbor-relay did not exit; log:\n{}", self.logs()))
                .await;
        }
    }

    /// Starts the daemon again after it exited (or was killed).
    pub async fn start_again(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// POSTs a webhook; returns status and JSON body.
    pub async fn webhook(
        &self,
        body: Vec<u8>,
        content_type: &str,
        auth: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/harbor", self.url))
            .header("content-type", content_type)
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("POST webhook");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Sends a Harbor webhook (JSON) with the right secret; returns status
    /// and JSON body, whatever they are.
    pub async fn deliver(&self, body: Vec<u8>) -> (u16, Value) {
        self.webhook(body, "application/json", Some(WEBHOOK_SECRET))
            .await
    }

    /// Sends a push webhook with the right secret and returns the job ids.
    pub async fn push(&self, body: Vec<u8>) -> Vec<u64> {
        let (status, v) = self.deliver(body).await;
        assert_eq!(status, 202, "webhook answer: {v}");
        v["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["id"].as_u64().expect("id"))
            .collect()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::answer(self.http.get(format!("{}{path}", self.url)), "GET").await
    }

    /// POSTs to `path` with no body; returns status and JSON body.
    pub async fn post(&self, path: &str) -> (u16, Value) {
        Self::answer(self.http.post(format!("{}{path}", self.url)), "POST").await
    }

    /// Sends `req`: its status, and its body as JSON (or as a string).
    async fn answer(req: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
        let resp = req.send().await.expect(what);
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn job(&self, id: u64) -> Value {
        let (status, v) = self.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Waits until job `id` has finished, and returns it.
    pub async fn wait_job(&self, id: u64) -> Value {
        let wait = Deadline::new(Duration::from_secs(120));
        loop {
            let j = self.job(id).await;
            if j["state"] == "succeeded" || j["state"] == "failed" || j["state"] == "refused" {
                return j;
            }
            wait.tick(|| format!("job {id} did not finish: {j}\nlog:\n{}", self.logs()))
                .await;
        }
    }

    /// A job that fails at once: an event for a tag the source does not
    /// have (`library/gone:1`). Its id.
    pub async fn failed_job(&self) -> u64 {
        let digest = format!("sha256:{}", "e".repeat(64));
        let ids = self
            .push(super::push_event("library/gone", Some("1"), &digest))
            .await;
        let job = self.wait_job(ids[0]).await;
        assert_eq!(job["state"], "failed", "{job}");
        ids[0]
    }

    /// Waits until job `id` is in `state`.
    pub async fn wait_state(&self, id: u64, state: &str) -> Value {
        let wait = Deadline::new(Duration::from_secs(60));
        loop {
            let j = self.job(id).await;
            if j["state"] == state {
                return j;
            }
            wait.tick(|| format!("job {id} never became {state}: {j}\nlog:\n{}", self.logs()))
                .await;
        }
    }

    /// Waits for the job and asserts it succeeded.
    pub async fn wait_success(&self, id: u64) -> Value {
        let j = self.wait_job(id).await;
        assert_eq!(
            j["state"],
            "succeeded",
            "job failed: {j}\nlog:\n{}",
            self.logs()
        );
        j
    }
}
