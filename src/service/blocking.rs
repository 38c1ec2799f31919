//! Where blocking store work leaves the async workers: decided here, once, for the service
//! (the api layer does none of it).
//!
//! A use case calls the store inline when the call is short (one record read or one
//! transaction on sled, whose commit waits for no disk: durability comes from the group
//! commit's flush, which runs on a blocking thread of its own in `storage::GroupCommit`).
//! Work that reads or writes much, or waits on a disk or a network, goes through `run` (or
//! `detach`) below: export chunks, backups, purges of erased subjects, keyring work that
//! walks a tenant (rotations, re-wraps, counts, root key file rewrites), and the audit high-water
//! mark's fsyncs. The audit writer is a thread of its own (`audit::log`): every batch it
//! appends waits for the disk.
//!
//! The PostgreSQL backend adds a second, inner answer for its own calls: each waits on the
//! network, so `PgStore` moves off the async worker itself (`off_worker`, a
//! `block_in_place` that does nothing on a thread that is not a runtime worker). The two
//! compose: a store call made inside `run` is already on a blocking thread and stays there;
//! one made inline by a use case is moved off the worker by the backend. sled needs neither.

use std::future::Future;

use tokio_util::task::task_tracker::{TaskTracker, TaskTrackerToken};

use super::ServiceError;

/// The blocking work panicked; its result is lost.
#[derive(Debug, Clone, Copy)]
pub(super) struct Panicked;

/// Every task and blocking job the vault starts, tracked so that shutdown can wait for the
/// last of them (`Vault::closing`) instead of polling for the store's last handle: the
/// drain is over exactly when each has ended and every `Vault` handle is dropped.
#[derive(Clone, Debug, Default)]
pub(super) struct Background(TaskTracker);

impl Background {
    /// The tracker, for the layers below that start tasks of their own (group commit).
    pub(super) fn tracker(&self) -> &TaskTracker {
        &self.0
    }

    /// A token that counts as a running task until dropped (held by the `Vault` itself).
    pub(super) fn token(&self) -> TaskTrackerToken {
        self.0.token()
    }

    /// Starts an async task (the purger).
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        drop(self.0.spawn(task));
    }

    /// Runs `work` on tokio's blocking pool, inside the caller's tracing span (method,
    /// request id), and waits for it.
    pub(super) async fn run<T: Send + 'static>(
        &self, work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Panicked> {
        let span = tracing::Span::current();
        self.0
            .spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(|_| Panicked)
    }

    /// `run` for work that fails as a use case does; a panic is an internal error naming
    /// `what`.
    pub(super) async fn run_service<T: Send + 'static>(
        &self, what: &'static str, work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        self.run(work)
            .await
            .map_err(|Panicked| ServiceError::Internal(format!("{what} panicked")))?
    }

    /// Starts `work` on the blocking pool without waiting for it (its outcome is its own
    /// to log).
    pub(super) fn detach(&self, work: impl FnOnce() + Send + 'static) {
        let span = tracing::Span::current();
        drop(self.0.spawn_blocking(move || span.in_scope(work)));
    }
}
