//! Group commit: writers that finish at about the same time share one flush.
//!
//! A writer applies its write, then waits on `durable()`. A single task collects every
//! waiter queued so far, runs one `Store::flush`, and answers them all. A waiter only
//! queues after its write completed, and the flush starts after the waiter was taken
//! from the queue, so the flush covers the write.
//!
//! With a `FlushMark`, each flush also stores the newest durable audit sequence number in
//! the store's metadata (`DATA_MARK`) and reports it once flushed: a store found at start
//! with an older mark than the one reported was rolled back (`service::HighWater`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::{Store, StoreError, StoreResult};
use crate::metrics::Metrics;

type Waiter = oneshot::Sender<StoreResult<()>>;

/// The metadata key of the audit sequence number the store's last flush covered.
pub const DATA_MARK: &str = "audit_data_mark";

/// Where a flush reads the mark it stores, and whom it tells once the mark is durable.
#[derive(Clone)]
pub struct FlushMark {
    /// The newest durable audit sequence number (kept by the audit writer).
    pub source: Arc<AtomicU64>,
    /// Called with the mark a successful flush made durable.
    pub flushed: Arc<dyn Fn(u64) + Send + Sync>,
}

/// Stores `mark` under `DATA_MARK` unless the stored one is as new.
fn store_mark(store: &dyn Store, mark: u64) -> StoreResult<()> {
    let stored = store.meta(DATA_MARK)?;
    let newer = stored
        .as_deref()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .is_none_or(|b| u64::from_be_bytes(b) < mark);
    if newer {
        store.meta_swap(DATA_MARK, stored.as_deref(), &mark.to_be_bytes())?;
    }
    Ok(())
}

/// The mark stored in `store` (0 when none is).
pub fn stored_mark(store: &dyn Store) -> StoreResult<u64> {
    Ok(store
        .meta(DATA_MARK)?
        .as_deref()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Handle to the flush task; cheap to clone.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    /// Starts the flush task on the current tokio runtime, tracked by `tasks` (shutdown
    /// waits for it to let go of the store); flush times go to `metrics`.
    pub fn start(
        store: Arc<dyn Store>, metrics: Metrics, tasks: &TaskTracker, mark: Option<FlushMark>,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        drop(tasks.spawn(flush_loop(store, metrics, rx, mark)));
        Self { queue }
    }

    /// Returns once every write completed before this call is on disk.
    pub async fn durable(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(tx)
            .map_err(|_| StoreError::Backend("flush task stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("flush task stopped".into()))?
    }
}

async fn flush_loop(
    store: Arc<dyn Store>, metrics: Metrics, mut rx: mpsc::UnboundedReceiver<Waiter>,
    mark: Option<FlushMark>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let store = store.clone();
        let started = Instant::now();
        let at = mark.as_ref().map(|m| m.source.load(Ordering::SeqCst));
        let result = tokio::task::spawn_blocking(move || {
            if let Some(at) = at.filter(|at| *at > 0) {
                store_mark(store.as_ref(), at)?;
            }
            store.flush()
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Backend("flush panicked".into())));
        if let (Some(m), Some(at), true) = (&mark, at, result.is_ok()) {
            (m.flushed)(at);
        }
        metrics.flush(started.elapsed(), result.is_ok());
        for waiter in batch.drain(..) {
            // A waiter whose request was cancelled has gone; nothing to tell it.
            let _ = waiter.send(result.clone());
        }
    }
}
