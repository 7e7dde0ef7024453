//! The replicator's ledger in PostgreSQL, so that every relay of a fleet
//! sees it: a job one relay took over from another resumes its chunked
//! uploads from the recorded offset and hash state, mounts blobs from where
//! any relay put them, and knows what any relay left under a tag. Tables
//! `relay_uploads`, `relay_blobs` and `relay_tags` (migration 3). As on
//! sled, a failure to record is logged, never fatal: at worst bytes are
//! sent again.

use futures_util::future::BoxFuture;

use super::PgStore;
use crate::replicate::ledger::{FleetTurn, Ledger, TagRecord, UploadRecord, remember, tag_key};

/// Logs a ledger failure (never fatal).
fn logged<T: Default>(what: &str, r: Result<T, super::StoreError>) -> T {
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "{what}");
        T::default()
    })
}

fn blob_key(registry: &str, digest: &str) -> String {
    format!("{registry}\n{digest}")
}

impl PgStore {
    /// One record of a ledger table. Its statements, as the ledger's
    /// others, are prepared once per connection: a copy writes the
    /// ledger at every chunk and every blob.
    async fn ledger_get(
        &self,
        table: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, super::StoreError> {
        let c = self.client().await?;
        let get = c
            .prepare_cached(&format!("SELECT record FROM {table} WHERE key = $1"))
            .await
            .map_err(super::db)?;
        let row = c.query_opt(&get, &[&key]).await.map_err(super::db)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn ledger_put(
        &self,
        table: &str,
        key: &str,
        record: serde_json::Value,
    ) -> Result<(), super::StoreError> {
        let c = self.client().await?;
        let put = c
            .prepare_cached(&format!("INSERT INTO {table} (key, record) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = $2"))
            .await
            .map_err(super::db)?;
        c.execute(&put, &[&key, &record]).await.map_err(super::db)?;
        Ok(())
    }

    async fn blob_seen_tx(&self, key: &str, repository: &str) -> Result<(), super::StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(super::db)?;
        let (read, write) = futures_util::try_join!(
            tx.prepare_cached("SELECT record FROM relay_blobs WHERE key = $1 FOR UPDATE"),
            tx.prepare_cached(
                "INSERT INTO relay_blobs (key, record) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = $2"
            ),
        )
        .map_err(super::db)?;
        let old = tx.query_opt(&read, &[&key]).await.map_err(super::db)?;
        let mut list: Vec<String> = old
            .and_then(|r| serde_json::from_value(r.get(0)).ok())
            .unwrap_or_default();
        remember(&mut list, repository);
        tx.execute(&write, &[&key, &serde_json::to_value(&list)?])
            .await
            .map_err(super::db)?;
        tx.commit().await.map_err(super::db)
    }
}

/// How often a relay waiting for another's upload of the same blob looks
/// again.
const TURN_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl PgStore {
    /// Takes the fleet's turn for `key` if no other relay holds it (or
    /// its hold ran out with its lease): true when taken.
    async fn try_turn(&self, key: &str) -> Result<bool, super::StoreError> {
        use super::{db, ms};
        let now = (self.clock)();
        let c = self.client().await?;
        let take = c
            .prepare_cached(
                "INSERT INTO relay_upload_turns (key, owner, until_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET owner = $2, until_ms = $3
                 WHERE relay_upload_turns.until_ms < $4 OR relay_upload_turns.owner = $2",
            )
            .await
            .map_err(db)?;
        let n = c
            .execute(
                &take,
                &[&key, &self.owner, &ms(now + self.lease_ms), &ms(now)],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Renews the upload turns this relay holds (with its job leases).
    pub(super) async fn renew_turns(&self) -> Result<(), super::StoreError> {
        use super::{db, ms};
        let keys: Vec<String> = self
            .turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let until = ms((self.clock)() + self.lease_ms);
        self.client()
            .await?
            .execute(
                "UPDATE relay_upload_turns SET until_ms = $1 WHERE key = ANY($2) AND owner = $3",
                &[&until, &keys, &self.owner],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The turn's end: forgotten here, released in the database (by a task
    /// of its own: a drop cannot wait).
    fn release_turn(&self, key: String) -> FleetTurn {
        let (pool, owner, turns) = (self.pool.clone(), self.owner.clone(), self.turns.clone());
        FleetTurn::new(move || {
            turns.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Ok(c) = pool.get().await
                        && let Err(e) = c
                            .execute(
                                "DELETE FROM relay_upload_turns WHERE key = $1 AND owner = $2",
                                &[&key, &owner],
                            )
                            .await
                    {
                        tracing::warn!(error = %e, "releasing an upload turn");
                    }
                });
            }
        })
    }
}

impl Ledger for PgStore {
    /// Waits while another relay holds the turn (it is uploading the same
    /// blob to the same target), looking every 250 ms; a relay that died
    /// holding it loses it with its lease. A database that cannot answer
    /// does not stop the copy: it goes on without the turn.
    fn upload_turn<'a>(&'a self, registry: &'a str, digest: &'a str) -> BoxFuture<'a, FleetTurn> {
        Box::pin(async move {
            let key = blob_key(registry, digest);
            loop {
                match self.try_turn(&key).await {
                    Ok(true) => break,
                    Ok(false) => tokio::time::sleep(TURN_POLL).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "taking the upload turn; uploading without it");
                        return FleetTurn::default();
                    }
                }
            }
            self.turns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone());
            self.release_turn(key)
        })
    }

    fn upload<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<UploadRecord>> {
        Box::pin(async move {
            let v = logged(
                "reading upload progress",
                self.ledger_get("relay_uploads", key).await,
            );
            v.and_then(|v| serde_json::from_value(v).ok())
        })
    }

    /// Committed when it returns: nothing left for [`Ledger::persist`].
    fn save_upload<'a>(&'a self, key: &'a str, record: &'a UploadRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let put = async {
                let v = serde_json::to_value(record)?;
                self.ledger_put("relay_uploads", key, v).await
            };
            logged("recording upload progress", put.await);
        })
    }

    fn persist(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn clear_upload<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let del = async {
                self.client()
                    .await?
                    .execute("DELETE FROM relay_uploads WHERE key = $1", &[&key])
                    .await
                    .map_err(super::db)
            };
            logged("clearing upload progress", del.await);
        })
    }

    fn blob_locations<'a>(
        &'a self,
        registry: &'a str,
        digest: &'a str,
    ) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let key = blob_key(registry, digest);
            let v = logged(
                "reading blob locations",
                self.ledger_get("relay_blobs", &key).await,
            );
            v.and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default()
        })
    }

    fn blob_seen<'a>(
        &'a self,
        registry: &'a str,
        digest: &'a str,
        repository: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = blob_key(registry, digest);
            logged(
                "recording a blob location",
                self.blob_seen_tx(&key, repository).await,
            );
        })
    }

    fn tag_synced<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Option<TagRecord>> {
        Box::pin(async move {
            let key = tag_key(registry, repository, tag);
            let v = logged(
                "reading a replicated tag",
                self.ledger_get("relay_tags", &key).await,
            );
            v.and_then(|v| serde_json::from_value(v).ok())
        })
    }

    fn record_tag<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        tag: &'a str,
        record: &'a TagRecord,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let put = async {
                let v = serde_json::to_value(record)?;
                self.ledger_put("relay_tags", &tag_key(registry, repository, tag), v)
                    .await
            };
            logged("recording a replicated tag", put.await);
        })
    }
}
