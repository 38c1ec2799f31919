//! Group commit: writers that finish at about the same time share one flush.
//!
//! A writer applies its write, then waits on `durable()`. A single task collects every
//! waiter queued so far, runs one `Store::flush`, and answers them all. A waiter only
//! queues after its write completed, and the flush starts after the waiter was taken
//! from the queue, so the flush covers the write.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::{Store, StoreError, StoreResult};
use crate::metrics::Metrics;

type Waiter = oneshot::Sender<StoreResult<()>>;

/// Handle to the flush task; cheap to clone.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    /// Starts the flush task on the current tokio runtime, tracked by `tasks` (shutdown
    /// waits for it to let go of the store); flush times go to `metrics`.
    pub fn start(store: Arc<dyn Store>, metrics: Metrics, tasks: &TaskTracker) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        drop(tasks.spawn(flush_loop(store, metrics, rx)));
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
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let store = store.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or_else(|_| Err(StoreError::Backend("flush panicked".into())));
        metrics.flush(started.elapsed(), result.is_ok());
        for waiter in batch.drain(..) {
            // A waiter whose request was cancelled has gone; nothing to tell it.
            let _ = waiter.send(result.clone());
        }
    }
}
