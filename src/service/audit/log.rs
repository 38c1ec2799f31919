//! Writing, querying, verifying and pruning the audit log.
//!
//! One writer task owns the chain: callers send drafts, the task gives each a sequence
//! number and a MAC, stores the batch with the new head in one transaction, waits for a
//! flush (shared with data writes through `GroupCommit`), and only then answers. A caller
//! waits at most `timeout`; past it the request fails closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::audit::{
    verify, AuditEvent, AuditFilter, ChainMark, EventDraft, VerifyReport, CHECKPOINT, HEAD,
};
use crate::crypto::{Audit, Key, MAC_LEN};
use crate::domain::Timestamp;
use crate::metrics::Metrics;
use crate::storage::{GroupCommit, Store, StoreError};

use super::super::blocking::Background;
use super::high_water::HighWater;
use super::sink::JsonlSink;
use super::syslog::SyslogSink;

/// Most events one batch takes.
const MAX_BATCH: usize = 1024;
/// Events read per storage scan.
const SCAN_PAGE: usize = 1024;
/// Most events one query call examines before it returns what it found and where to
/// resume: a filter that matches little never holds a thread for a whole scan.
const SCAN_BUDGET: usize = 32 * SCAN_PAGE;
/// How often a batch is re-chained after other writers of a shared store appended first.
const MAX_RECHAIN: u32 = 100;

/// The audit log could not record an event in time.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("audit log did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("audit writer stopped")]
    Stopped,
}

struct Append {
    draft: EventDraft,
    done: oneshot::Sender<Result<u64, AuditError>>,
}

/// What a prune did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    pub deleted: u64,
    /// Sequence number of the last pruned event (the new checkpoint), if any.
    pub through: Option<u64>,
}

/// What one `AuditLog::query` call found.
#[derive(Debug)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `after` to continue; the last sequence number examined.
    pub cursor: u64,
    /// True when the scan reached the newest event (nothing more can match, for now).
    pub end: bool,
}

/// Handle to the audit log (clones share the writer).
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Append>,
    store: Arc<dyn Store>,
    key: Arc<Key<Audit>>,
    timeout: Duration,
    high_water: Option<Arc<HighWater>>,
    /// Where the mark's fsyncs run (tracked, so shutdown waits for them).
    background: Background,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Where the chain stands: the next sequence number and the MAC it must link to.
struct ChainState {
    next_seq: u64,
    last_mac: [u8; MAC_LEN],
}

fn chain_state(store: &dyn Store) -> Result<ChainState, StoreError> {
    if let Some((seq, bytes)) = store.audit_last()? {
        let event = AuditEvent::decode(&bytes)?;
        return Ok(ChainState {
            next_seq: seq + 1,
            last_mac: event.mac,
        });
    }
    // Everything was pruned (or nothing was ever written): continue from the checkpoint.
    match store.audit_marks()?.checkpoint {
        Some(bytes) => {
            let mark = ChainMark::decode(&bytes)?;
            Ok(ChainState {
                next_seq: mark.seq + 1,
                last_mac: mark.mac,
            })
        }
        None => Ok(ChainState {
            next_seq: 1,
            last_mac: [0; MAC_LEN],
        }),
    }
}

impl AuditLog {
    /// Starts the writer task, continuing the chain found in the writer's store; a request
    /// waits at most `timeout` for its event.
    pub(in crate::service) fn start(
        writer: Writer, sink: Option<JsonlSink>, timeout: Duration,
    ) -> Result<Self, StoreError> {
        let state = chain_state(writer.store.as_ref())?;
        let (queue, rx) = mpsc::channel(4 * MAX_BATCH);
        let log = Self {
            queue,
            store: writer.store.clone(),
            key: writer.key.clone(),
            timeout,
            high_water: writer.high_water.clone(),
            background: writer.background.clone(),
        };
        writer
            .background
            .clone()
            .spawn(write_loop(writer, sink, state, rx));
        Ok(log)
    }

    /// Writes the high-water mark of the store's newest durable event now (after an
    /// erasure, and at shutdown); a no-op without one. A failure is logged: it weakens the
    /// detection of a rolled-back store, nothing else.
    pub async fn persist_high_water(&self) {
        let Some(hw) = self.high_water.clone() else {
            return;
        };
        let key = self.key.clone();
        let written = self.background.run(move || hw.persist(&key)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!("could not write the audit high-water mark");
        }
    }

    /// Records an event; returns its sequence number once it is on disk.
    pub async fn append(&self, draft: EventDraft) -> Result<u64, AuditError> {
        let (done, confirmed) = oneshot::channel();
        let send_and_wait = async {
            self.queue
                .send(Append { draft, done })
                .await
                .map_err(|_| AuditError::Stopped)?;
            confirmed.await.map_err(|_| AuditError::Stopped)?
        };
        tokio::time::timeout(self.timeout, send_and_wait)
            .await
            .map_err(|_| AuditError::Timeout(self.timeout))?
    }

    /// Events after sequence number `after` that match `filter`: at most `limit`, from at
    /// most `SCAN_BUDGET` events examined. Returns them, the sequence number to resume after
    /// (the last event examined, matching or not), and whether the log's end was reached.
    /// Blocking: call it off the async workers.
    pub fn query(
        &self, filter: &AuditFilter, after: u64, limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let mut page = AuditPage {
            events: Vec::new(),
            cursor: after,
            end: false,
        };
        let mut examined = 0;
        while examined < SCAN_BUDGET {
            let scanned = self.store.audit_scan(page.cursor, SCAN_PAGE)?;
            if scanned.is_empty() {
                page.end = true;
                return Ok(page);
            }
            for (seq, bytes) in scanned {
                page.cursor = seq;
                examined += 1;
                let event = AuditEvent::decode(&bytes)?;
                if filter.matches(&event.draft) {
                    page.events.push(event);
                    if page.events.len() == limit {
                        return Ok(page);
                    }
                }
            }
        }
        Ok(page)
    }

    /// Walks the whole chain.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        verify_store(self.store.as_ref(), &self.key)
    }

    /// Deletes events older than `before`, leaving a signed checkpoint so verification still
    /// succeeds. The newest event is never pruned: it anchors the chain for new events.
    pub fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        let newest = self.store.audit_last()?.map(|(seq, _)| seq);
        let mut last_old: Option<AuditEvent> = None;
        let mut cursor = 0;
        'scan: loop {
            let page = self.store.audit_scan(cursor, SCAN_PAGE)?;
            if page.is_empty() {
                break;
            }
            for (seq, bytes) in page {
                cursor = seq;
                let event = AuditEvent::decode(&bytes)?;
                if event.draft.time >= before || Some(seq) == newest {
                    break 'scan;
                }
                last_old = Some(event);
            }
        }
        let Some(last) = last_old else {
            return Ok(PruneReport {
                deleted: 0,
                through: None,
            });
        };
        let mark = ChainMark::new(&self.key, CHECKPOINT, last.seq, last.mac);
        let deleted = self.store.audit_prune(last.seq, &mark.encode())?;
        Ok(PruneReport {
            deleted,
            through: Some(last.seq),
        })
    }
}

/// Verifies the chain stored in `store` (also used offline by `pii-vault audit verify`).
pub fn verify_store(store: &dyn Store, key: &Key<Audit>) -> Result<VerifyReport, StoreError> {
    let marks = store.audit_marks()?;
    let mut cursor = 0;
    let mut pages = std::iter::from_fn(move || match store.audit_scan(cursor, SCAN_PAGE) {
        Ok(page) if page.is_empty() => None,
        Ok(page) => {
            cursor = page.last().map_or(cursor, |(seq, _)| *seq);
            Some(page.into_iter().map(Ok).collect::<Vec<_>>())
        }
        Err(e) => Some(vec![Err(e)]),
    })
    .flatten();
    verify(
        key,
        marks.checkpoint.as_deref(),
        marks.head.as_deref(),
        &mut pages,
    )
}

/// A batch sealed for the store: the events, their stored rows, the new head mark and the
/// MAC the next batch links to.
struct Chained {
    events: Vec<AuditEvent>,
    rows: Vec<(u64, Vec<u8>)>,
    head: Vec<u8>,
    last_mac: [u8; MAC_LEN],
}

/// Seals `batch` as the continuation of `state`.
fn chain_batch(key: &Key<Audit>, state: &ChainState, batch: &[Append]) -> Chained {
    let mut prev = state.last_mac;
    let events: Vec<AuditEvent> = batch
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let event = AuditEvent::seal(key, state.next_seq + i as u64, a.draft.clone(), prev);
            prev = event.mac;
            event
        })
        .collect();
    let last_seq = state.next_seq + events.len() as u64 - 1;
    let head = ChainMark::new(key, HEAD, last_seq, prev).encode();
    let rows = events.iter().map(|e| (e.seq, e.encode())).collect();
    Chained {
        events,
        rows,
        head,
        last_mac: prev,
    }
}

/// What the writer task writes with.
/// What the audit writer task works with.
pub(in crate::service) struct Writer {
    pub store: Arc<dyn Store>,
    /// Shared with data writes, so a batch of events and the writes before it share a flush.
    pub commit: GroupCommit,
    pub key: Arc<Key<Audit>>,
    pub metrics: Metrics,
    pub high_water: Option<Arc<HighWater>>,
    /// Where the batch appends, the mark's fsyncs and the SIEM mirror run.
    pub background: Background,
    /// The syslog mirror, if configured (it queues to a thread of its own).
    pub syslog: Option<SyslogSink>,
}

async fn write_loop(
    writer: Writer, mut sink: Option<JsonlSink>, mut state: ChainState,
    mut rx: mpsc::Receiver<Append>,
) {
    let Writer {
        store,
        commit,
        key,
        metrics,
        high_water,
        background,
        syslog,
    } = writer;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        // Callers that gave up (deadline, audit timeout) are dropped before their event is
        // written when nothing was returned to them, so there is nothing to record. A
        // write's event stays: its change is already in the store.
        batch.retain(|a| a.draft.operation.is_write() || !a.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let (events, stored) = store_batch(&background, &store, &key, &mut state, &batch).await;
        let result = match stored {
            Ok(()) => commit.durable().await,
            Err(e) => Err(e),
        };
        metrics.audit_append(batch.len(), started.elapsed(), result.is_ok());
        match &result {
            Ok(()) => {
                for (a, e) in batch.drain(..).zip(&events) {
                    let _ = a.done.send(Ok(e.seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit append failed; failing requests closed");
                for a in batch.drain(..) {
                    let _ = a.done.send(Err(AuditError::Store(e.clone())));
                }
            }
        }
        if let (Some(hw), true) = (&high_water, result.is_ok()) {
            if hw.advance(state.next_seq - 1, state.last_mac) {
                // Off the writer's path: the next batch does not wait for this file's fsyncs
                // (writes of the mark are serialized inside `persist`).
                let (hw, key) = (hw.clone(), key.clone());
                background.detach(move || {
                    if hw.persist(&key).is_err() {
                        tracing::warn!("could not write the audit high-water mark");
                    }
                });
            }
        }
        // The SIEM mirrors are written after the callers were answered; their failures are
        // logged by the sinks and never fail a request.
        if let (Some(s), true) = (&syslog, result.is_ok()) {
            s.write(&events);
        }
        if let (Some(mut s), true) = (sink.take(), result.is_ok()) {
            sink = background
                .run(move || {
                    s.write(&events);
                    s
                })
                .await
                .ok();
        }
    }
}

/// Chains `batch` after `state` and stores it with the new head, re-chaining after other
/// writers of a shared store that appended first. Returns the chained events and whether
/// they were stored; `state` moves past them only if they were.
async fn store_batch(
    background: &Background, store: &Arc<dyn Store>, key: &Key<Audit>, state: &mut ChainState,
    batch: &[Append],
) -> (Vec<AuditEvent>, Result<(), StoreError>) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let Chained {
            events,
            rows,
            head,
            last_mac,
        } = chain_batch(key, state, batch);
        let writer = store.clone();
        let stored = background
            .run(move || writer.audit_append(&rows, &head))
            .await
            .unwrap_or_else(|_| Err(StoreError::Backend("audit append panicked".into())));
        match stored {
            Ok(()) => {
                // The batch is in the store: the chain moves on even if the flush fails,
                // so later events link to these.
                state.next_seq += events.len() as u64;
                state.last_mac = last_mac;
                break (events, Ok(()));
            }
            // Another node of a shared store appended first: continue after its events.
            Err(StoreError::Conflict) if attempts < MAX_RECHAIN => {
                tracing::debug!(attempts, "audit batch re-chained after another writer");
                let reread = store.clone();
                match background.run(move || chain_state(reread.as_ref())).await {
                    Ok(Ok(now)) => *state = now,
                    Ok(Err(e)) => break (events, Err(e)),
                    Err(_) => {
                        break (
                            events,
                            Err(StoreError::Backend("audit re-read panicked".into())),
                        )
                    }
                }
            }
            Err(e) => break (events, Err(e)),
        }
    }
}
