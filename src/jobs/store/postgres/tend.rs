//! What keeps a relay's part of the shared store alive in the background:
//! lease renewal, the fleet's counts (and `/readyz`), and `LISTEN` for the
//! `NOTIFY` that wakes idle workers when a job is queued anywhere.

use std::time::Duration;

use super::PgStore;

/// Keeps this relay's leases and gauges fresh, and wakes its workers on
/// `NOTIFY relay_jobs` (or every second, if notifications are lost), until
/// `stop`.
pub async fn tend(
    store: std::sync::Arc<PgStore>,
    connect: tokio_postgres::Config,
    stop: tokio_util::sync::CancellationToken,
) {
    let listen = listen(store.clone(), connect, stop.clone());
    let chores = async {
        let mut renew = tokio::time::interval(store.lease() / 3);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    if let Err(e) = store.renew_leases().await {
                        tracing::warn!(error = %e, "renewing job leases");
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = store.refresh().await {
                        tracing::warn!(error = %e, "reading the job store's counts");
                    }
                    store.wake();
                }
                _ = stop.cancelled() => return,
            }
        }
    };
    tokio::join!(listen, chores);
}

/// `LISTEN relay_jobs` on a connection of its own, reconnecting after a
/// second when it drops.
async fn listen(
    store: std::sync::Arc<PgStore>,
    connect: tokio_postgres::Config,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        if listen_once(&store, &connect, &stop).await {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One `LISTEN` connection, until it drops (false) or `stop` (true).
async fn listen_once(
    store: &PgStore,
    connect: &tokio_postgres::Config,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    use futures_util::StreamExt as _;
    let (client, mut conn) = match super::guard::connect(connect, &store.tls).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "connecting to the job store to LISTEN");
            return false;
        }
    };
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    let listening = client.batch_execute("LISTEN relay_jobs");
    let pump = async {
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => store.wake(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the LISTEN connection to the job store dropped");
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = async { let _ = listening.await; std::future::pending::<()>().await } => false,
        _ = pump => false,
        _ = stop.cancelled() => true,
    }
}
