//! A real PostgreSQL for the tests (Debian's `postgresql` package): a new
//! cluster made with `initdb` in a temp dir and run with `pg_ctl` on a free
//! loopback port, as an unprivileged user (the `postgres` account when the
//! tests run as root, since PostgreSQL refuses to run as root). Password
//! auth (SCRAM) over TCP, as a relay in production would meet it.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::free_port;

/// The role and password the cluster is made with.
pub const PG_USER: &str = "relay";
pub const PG_PASS: &str = "pg-test-pa55";
/// The database the tests use.
pub const PG_DB: &str = "harbor_relay";

/// A running PostgreSQL cluster; stopped (immediately) on drop.
pub struct Postgres {
    pub port: u16,
    /// Only TLS connections are accepted over TCP.
    tls: bool,
    bin: PathBuf,
    data: PathBuf,
    dir: TempDir,
}

/// The newest installed server's `bin` directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed; the store tests need a real one:\n    apt-get install -y postgresql\n(scripts/test.sh installs it)"
        )
    })
}

/// `program` as the unprivileged user the cluster belongs to.
fn as_owner(program: &Path) -> Command {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Command::new(program);
    }
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Makes a cluster, starts it and creates [`PG_DB`].
    pub fn start() -> Postgres {
        Self::start_with(None)
    }

    /// Like [`Postgres::start`], accepting only TLS over TCP, with the
    /// PKI's server certificate.
    pub fn start_tls(pki: &super::Pki) -> Postgres {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&super::Pki>) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown the cluster's directory",
            );
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASS).expect("password file");
        run(
            {
                let mut c = Command::new("chmod");
                c.arg("644").arg(&pwfile);
                c
            },
            "chmod the password file",
        );
        let data = dir.path().join("data");
        let mut initdb = as_owner(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                PG_USER,
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(initdb, "initdb");
        if let Some(pki) = pki {
            Self::require_tls(&data, pki);
        }
        let pg = Postgres {
            port: free_port(),
            tls: pki.is_some(),
            bin,
            data,
            dir,
        };
        pg.pg_ctl_start();
        let mut create = Command::new(pg.bin.join("psql"));
        create
            .env("PGPASSWORD", PG_PASS)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                PG_USER,
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(format!("CREATE DATABASE {PG_DB}"));
        run(create, "CREATE DATABASE");
        pg
    }

    /// `ssl = on` with the PKI's certificate, and `hostssl` only: a client
    /// that does not speak TLS is refused.
    fn require_tls(data: &Path, pki: &super::Pki) {
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::copy(&pki.cert_pem, &cert).expect("server cert");
        std::fs::copy(&pki.key_pem, &key).expect("server key");
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), conf).expect("conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all peer\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("hba");
        for f in [&cert, &key] {
            // SAFETY: getuid has no preconditions.
            if unsafe { libc::getuid() } == 0 {
                run(
                    {
                        let mut c = Command::new("chown");
                        c.arg("postgres:postgres").arg(f);
                        c
                    },
                    "chown",
                );
            }
            run(
                {
                    let mut c = Command::new("chmod");
                    c.arg("600").arg(f);
                    c
                },
                "chmod",
            );
        }
    }

    fn pg_ctl_start(&self) {
        let mut c = as_owner(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "start"]);
        run(c, "pg_ctl start");
    }

    /// Asks TCP clients for their password with `method` (`pg_hba.conf`'s
    /// `password`, `md5`, `scram-sha-256`) from now on.
    pub fn host_auth(&self, method: &str) {
        std::fs::write(
            self.data.join("pg_hba.conf"),
            format!("local all all peer\nhost all all 127.0.0.1/32 {method}\n"),
        )
        .expect("hba");
        let reloads = || self.log().matches("reloading configuration files").count();
        let before = reloads();
        let mut c = as_owner(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(&self.data).arg("reload");
        run(c, "pg_ctl reload");
        // A reload is signalled, not waited for: the postmaster logs when
        // it has read the files again, and new connections use them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if reloads() > before {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("pg_hba.conf with {method} was not loaded");
    }

    /// Stops the server at once (as a crash would) and starts it again on
    /// the same port and data.
    pub fn restart(&self) {
        self.stop();
        self.pg_ctl_start();
    }

    /// Stops the server (`-m immediate`: a crash), keeps it down for
    /// `down`, and starts it again.
    pub fn down_for(&self, down: std::time::Duration) {
        self.stop();
        std::thread::sleep(down);
        self.pg_ctl_start();
    }

    fn stop(&self) {
        let mut c = as_owner(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }

    /// `postgres://relay:…@127.0.0.1:<port>/harbor_relay?sslmode=disable`
    /// (`require` once [`Postgres::start_tls`] turned TLS on).
    pub fn url(&self) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASS}@127.0.0.1:{}/{PG_DB}?sslmode={}",
            self.port,
            if self.tls { "require" } else { "disable" }
        )
    }

    /// `psql` to [`PG_DB`] over TCP as [`PG_USER`] with this password.
    pub fn psql(&self, password: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.env("PGPASSWORD", password)
            .args(["-h", "127.0.0.1", "-p"]);
        c.arg(self.port.to_string())
            .args(["-U", PG_USER, "-d", PG_DB]);
        c
    }

    /// Runs one SQL statement with `psql` and returns its unaligned output.
    pub fn sql(&self, statement: &str) -> String {
        let out = self
            .psql(PG_PASS)
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", statement])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
