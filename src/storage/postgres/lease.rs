//! Job leases and the root key fence of a store shared by several nodes: PostgreSQL
//! advisory locks held on one session of their own, which the server releases when the
//! session ends (when this node stops or dies).

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::Client;

use crate::storage::{Fence, FenceHold, FenceMode, StoreError, StoreResult};

use super::error::{block, Failure};
use super::{off_worker, PgStore};

/// The session that holds this node's job leases and root key fences: PostgreSQL advisory
/// locks, which the server releases when the session ends (when this node stops or dies).
pub(super) struct LeaseSession {
    pub(super) client: Client,
    /// The jobs this node holds.
    pub(super) jobs: HashSet<String>,
    /// Counts the sessions opened after the first: a fence taken on an earlier session was
    /// lost with it.
    pub(super) generation: u64,
}

impl LeaseSession {
    /// The session, opened again if the server closed it. Whatever the old one held is
    /// gone, and another node may have taken it: this node starts again from nothing.
    fn live(&mut self, store: &PgStore) -> StoreResult<()> {
        if self.client.is_closed() {
            self.jobs.clear();
            self.client = store.reconnect()?;
            self.generation += 1;
        }
        Ok(())
    }
}

/// The advisory lock behind `Store::root_fence`.
const ROOT_FENCE: &str = "root key fence";
/// How long a node waits for the root key fence before giving up (the exclusive holder
/// re-wraps every tenant KEK while it holds it).
const FENCE_WAIT: Duration = Duration::from_secs(60);

/// A root key fence held on the lease session; released when dropped.
struct PgFence<'a> {
    store: &'a PgStore,
    unlock: &'static str,
    generation: u64,
}

impl FenceHold for PgFence<'_> {
    fn held(&self) -> bool {
        self.store
            .lease_session()
            .is_ok_and(|s| s.generation == self.generation && !s.client.is_closed())
    }
}

impl Drop for PgFence<'_> {
    fn drop(&mut self) {
        off_worker(|| self.release());
    }
}

impl PgFence<'_> {
    fn release(&self) {
        let Ok(session) = self.store.lease_session() else {
            return;
        };
        if session.generation != self.generation || session.client.is_closed() {
            // Released with the session that held it.
            return;
        }
        if let Err(e) = block(
            session
                .client
                .query_one(self.unlock, &[&job_key(ROOT_FENCE)]),
        ) {
            tracing::warn!(error = %e.into_store(), "cannot release the root key fence");
        }
    }
}

/// The advisory lock key of a job: the first 8 bytes of SHA-256 of its name, so every node
/// computes the same one.
fn job_key(job: &str) -> i64 {
    let digest = crate::crypto::sha256(format!("pii-vault job {job}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

impl PgStore {
    /// The lease session, locked.
    fn lease_session(&self) -> StoreResult<std::sync::MutexGuard<'_, LeaseSession>> {
        self.leases
            .lock()
            .map_err(|_| StoreError::Backend("PostgreSQL lease session poisoned".into()))
    }

    pub(super) fn take_lease(&self, job: &str) -> StoreResult<bool> {
        let mut session = self.lease_session()?;
        session.live(self)?;
        if session.jobs.contains(job) {
            return Ok(true);
        }
        let row = block(
            session
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&job_key(job)]),
        )
        .map_err(Failure::into_store)?;
        let granted: bool = row.get(0);
        if granted {
            tracing::info!(job, "this node now runs the job");
            session.jobs.insert(job.to_owned());
        }
        Ok(granted)
    }

    pub(super) fn take_fence(&self, mode: FenceMode) -> StoreResult<Fence<'_>> {
        // Advisory locks of one session never block each other: this node's own threads
        // are ordered by the keyring's lock.
        let (take, unlock) = match mode {
            FenceMode::Shared => (
                "SELECT pg_try_advisory_lock_shared($1)",
                "SELECT pg_advisory_unlock_shared($1)",
            ),
            FenceMode::Exclusive => (
                "SELECT pg_try_advisory_lock($1)",
                "SELECT pg_advisory_unlock($1)",
            ),
        };
        let deadline = std::time::Instant::now() + FENCE_WAIT;
        loop {
            // Polled, not waited for: the lease session serves every other lease meanwhile.
            let granted = {
                let mut session = self.lease_session()?;
                session.live(self)?;
                let row = block(session.client.query_one(take, &[&job_key(ROOT_FENCE)]))
                    .map_err(Failure::into_store)?;
                row.get::<_, bool>(0).then_some(session.generation)
            };
            if let Some(generation) = granted {
                return Ok(Fence::new(Box::new(PgFence {
                    store: self,
                    unlock,
                    generation,
                })));
            }
            if std::time::Instant::now() >= deadline {
                return Err(StoreError::Backend(format!(
                    "another vault node held the root key fence for over {} s",
                    FENCE_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
