//! The pool of PostgreSQL connections: taking one (opened again if it closed), statements
//! outside a transaction, and the one SERIALIZABLE transaction loop with its retries.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::{Client, IsolationLevel, NoTls, Transaction};

use crate::storage::{StoreError, StoreResult};

use super::conn::{Conn, Db};
use super::error::{block, pg_error, Failure, R};
use super::tls::{Connector, Session};
use super::{off_worker, PgStore};

/// How often a transaction is tried before its conflict is reported.
const MAX_ATTEMPTS: u32 = 50;

impl PgStore {
    /// Runs `f` with a connection of the pool to itself, waiting for one if all are busy.
    pub(super) fn with_client<T>(&self, f: impl FnOnce(&mut Conn) -> R<T>) -> StoreResult<T> {
        off_worker(|| self.pooled(f))
    }

    fn pooled<T>(&self, f: impl FnOnce(&mut Conn) -> R<T>) -> StoreResult<T> {
        let slot = {
            let mut pool = self
                .pool
                .lock()
                .map_err(|_| StoreError::Backend("PostgreSQL pool poisoned".into()))?;
            loop {
                if let Some(slot) = pool.pop() {
                    break slot;
                }
                pool = self
                    .returned
                    .wait(pool)
                    .map_err(|_| StoreError::Backend("PostgreSQL pool poisoned".into()))?;
            }
        };
        let opened = match slot {
            Some(c) if !c.client.is_closed() => Ok(c),
            // A new connection, without the old one's prepared statements.
            _ => self.reconnect().map(Conn::new),
        };
        let (result, back) = match opened {
            Ok(mut client) => {
                let result = f(&mut client).map_err(Failure::into_store);
                (result, Some(client))
            }
            Err(e) => (Err(e), None),
        };
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(back);
        }
        self.returned.notify_one();
        result
    }

    /// A new connection in place of a closed one.
    pub(super) fn reconnect(&self) -> StoreResult<Client> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the PostgreSQL store is closing".into()))?;
        tracing::warn!("a PostgreSQL connection closed; opening it again");
        open_client(runtime, &self.session)
    }

    /// One statement on a pooled connection.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Db<'_, Client>) -> R<T>) -> StoreResult<T> {
        self.with_client(|c| f(&c.db()))
    }

    /// Runs `body` in a SERIALIZABLE transaction, again while it fails retryably.
    pub(super) fn tx<T>(&self, body: impl Fn(&Db<'_, Transaction<'_>>) -> R<T>) -> StoreResult<T> {
        self.tx_at(IsolationLevel::Serializable, body)
    }

    /// `tx` at another isolation level: READ COMMITTED for a body that serializes itself
    /// with a lock and must then see what the previous holder committed (each statement
    /// takes a new snapshot; a SERIALIZABLE one would keep the snapshot from before the wait).
    pub(super) fn tx_at<T>(
        &self, level: IsolationLevel, mut body: impl FnMut(&Db<'_, Transaction<'_>>) -> R<T>,
    ) -> StoreResult<T> {
        self.with_client(|c| {
            let (client, prepared) = c.split();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let outcome: R<T> = (|| {
                    let tx = block(client.build_transaction().isolation_level(level).start())?;
                    let value = body(&Db::within(&tx, prepared))?;
                    block(tx.commit())?;
                    Ok(value)
                })();
                match outcome {
                    Err(e) if e.retryable() && attempt < MAX_ATTEMPTS => {
                        std::thread::sleep(Duration::from_millis(u64::from(attempt.min(20))));
                    }
                    other => return other,
                }
            }
        })
    }
}

/// Opens one connection, driven by `runtime`.
pub(super) fn open_client(
    runtime: &tokio::runtime::Runtime, session: &Session,
) -> StoreResult<Client> {
    let Session { config, connector } = session.clone();
    let connected = runtime.spawn(async move {
        // The connection futures differ in type (plain or TLS stream): each is spawned here.
        let client = match connector {
            Connector::Plain => {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(drive(connection));
                client
            }
            Connector::Tls(tls) => {
                let (client, connection) = config.connect(tls).await?;
                tokio::spawn(drive(connection));
                client
            }
        };
        Ok::<_, tokio_postgres::Error>(client)
    });
    futures_executor::block_on(connected)
        .map_err(|e| StoreError::Backend(format!("PostgreSQL connect task: {e}")))?
        .map_err(|e| pg_error(&e))
}

/// Runs one connection until it closes.
async fn drive<F: Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %pg_error(&e), "PostgreSQL connection closed");
    }
}
