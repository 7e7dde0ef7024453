//! The PostgreSQL store's schema and connections: the migrations this
//! binary ships, applied at start under a lock, and the TLS the URL's
//! `sslmode` asks for.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;

use super::{PgStore, db};
use crate::jobs::store::StoreError;

/// The schema, one migration per entry, applied in order.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE relay_jobs (
    id bigint PRIMARY KEY,
    dedupe_key text NOT NULL,
    state text NOT NULL,
    next_attempt_ms bigint,
    finished_ms bigint,
    lease_owner text,
    lease_until_ms bigint,
    job jsonb NOT NULL
);
CREATE SEQUENCE relay_jobs_id;
CREATE INDEX relay_jobs_waiting ON relay_jobs (id) WHERE state = 'queued';
CREATE INDEX relay_jobs_due ON relay_jobs (next_attempt_ms) WHERE state = 'retrying';
CREATE INDEX relay_jobs_leases ON relay_jobs (lease_until_ms) WHERE state = 'running';
CREATE INDEX relay_jobs_dedupe ON relay_jobs (dedupe_key, id DESC);
CREATE INDEX relay_jobs_finished ON relay_jobs (finished_ms) WHERE finished_ms IS NOT NULL;
"#,
    r#"
CREATE TABLE relay_reconcile (
    rule text PRIMARY KEY,
    last_pass_ms bigint NOT NULL,
    owner text NOT NULL
);
"#,
    r#"
CREATE TABLE relay_uploads (key text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE relay_blobs (key text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE relay_tags (key text PRIMARY KEY, record jsonb NOT NULL);
"#,
    r#"
CREATE TABLE relay_upload_turns (key text PRIMARY KEY, owner text NOT NULL, until_ms bigint NOT NULL);
"#,
    r#"
DROP INDEX relay_jobs_due;
CREATE INDEX relay_jobs_due ON relay_jobs (next_attempt_ms) WHERE state IN ('retrying','held');
CREATE INDEX relay_jobs_held ON relay_jobs ((job->'spec'->>'source_repository')) WHERE state = 'held';
"#,
];

/// Advisory lock key for migrations ("hrmigrat").
const MIGRATION_LOCK: i64 = 0x6872_6d69_6772_6174;

/// How connections to the database are made: in the clear (the URL says
/// `sslmode=disable`), or with TLS whose certificate and host name are
/// checked against `store.ca_file` or the system's trust store (`require`,
/// the default the config gives a URL without `sslmode`, as libpq's
/// `verify-full`; `prefer` may fall back to the clear). Every connection
/// goes through `guard`: without TLS, a password is never sent in
/// cleartext or as MD5.
#[derive(Clone)]
pub enum DbTls {
    /// `sslmode=disable`.
    Clear,
    /// TLS.
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl DbTls {
    /// The connector `connect`'s `sslmode` asks for.
    pub fn new(
        connect: &tokio_postgres::Config,
        ca_pem: Option<&[u8]>,
    ) -> Result<DbTls, StoreError> {
        if connect.get_ssl_mode() == SslMode::Disable {
            return Ok(DbTls::Clear);
        }
        let tls_err = |e: String| StoreError::Postgres(format!("TLS to the database: {e}"));
        let config = match ca_pem {
            Some(pem) => {
                use rustls_pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| tls_err(format!("store.ca_file: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| tls_err(format!("store.ca_file: {e}")))?;
                }
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
            None => {
                use rustls_platform_verifier::ConfigVerifierExt;
                rustls::ClientConfig::with_platform_verifier()
                    .map_err(|e| tls_err(e.to_string()))?
            }
        };
        Ok(DbTls::Rustls(
            tokio_postgres_rustls::MakeRustlsConnect::new(config),
        ))
    }

    /// A connection pool over this connector.
    pub(super) fn pool(&self, config: tokio_postgres::Config) -> Result<Pool, StoreError> {
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = Manager::from_connect(config, super::guard::GuardedConnect(self.clone()), mc);
        Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| StoreError::Postgres(e.to_string()))
    }
}

impl PgStore {
    /// Applies the migrations this binary has and the database lacks,
    /// under an advisory lock (several relays may start at once).
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS relay_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
        let row = tx
            .query_one("SELECT coalesce(max(version), 0) FROM relay_schema", &[])
            .await
            .map_err(db)?;
        let have: i32 = row.get(0);
        let know = MIGRATIONS.len() as i32;
        if have > know {
            return Err(StoreError::Postgres(format!(
                "the database's schema is version {have}, newer than this harbor-relay knows ({know}): a newer relay migrated it; upgrade this one"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            let version = i as i32 + 1;
            tx.execute(
                "INSERT INTO relay_schema (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(db)?;
            tracing::info!(version, "migrated the PostgreSQL job store");
        }
        tx.commit().await.map_err(db)
    }
}
