//! Writing, querying, verifying and pruning the audit log.
//!
//! One writer thread owns the chain: callers send drafts, the writer gives each a sequence
//! number and a MAC, stores the batch with the new head (one durable append: a sync of the
//! audit log's segment, or a committed PostgreSQL transaction), and only then answers. A
//! caller waits at most `timeout`; past it the request fails closed.
//!
//! A change is recorded twice: its intent (`Outcome::Intent`), durable before the change is
//! made, and its ending. The head of every batch lists the intents still waiting for their
//! ending; a start after a crash records each as ended unknown, and records a torn tail the
//! store cut (`Operation::AuditRecovery`). An intent whose caller stopped waiting before it
//! was confirmed (the change was then never made) is ended by the writer itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use std::collections::{BTreeMap, BTreeSet};

use crate::audit::{
    node_label, verify_chains, AuditEvent, AuditFilter, ChainMark, Checkpoint, EventDraft, Head,
    Operation, Outcome, VerifyReport, CHECKPOINT, HEAD,
};
use crate::crypto::{Audit, Key, MAC_LEN};
use crate::domain::Timestamp;
use crate::metrics::Metrics;
use crate::storage::{Store, StoreError, TailCut};

use super::super::blocking::Background;
use super::high_water::HighWater;
use super::index::AuditIndex;
use super::sink::JsonlSink;
use super::syslog::SyslogSink;

/// Most events one batch takes.
const MAX_BATCH: usize = 1024;
/// Events read per storage scan.
const SCAN_PAGE: usize = 1024;
/// Most events one query call examines before it returns what it found and where to
/// resume: a filter that matches little never holds a thread for a whole scan.
const SCAN_BUDGET: usize = 32 * SCAN_PAGE;

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
    /// The intent this event ends, if it is the ending of a change.
    ends: Option<u64>,
    /// The writer's own event: nobody waits for it, and it is always written.
    own: bool,
    done: oneshot::Sender<Result<u64, AuditError>>,
}

impl Append {
    /// An event the writer makes itself (nobody waits for it).
    fn own(draft: EventDraft, ends: Option<u64>) -> Self {
        Self {
            draft,
            ends,
            own: true,
            done: oneshot::channel().0,
        }
    }

    /// Written even when its caller stopped waiting: the ending of a change (the change
    /// may have happened) and the writer's own events. Anything else whose caller has gone
    /// is dropped unwritten: nothing was returned, and no change was made.
    fn must_write(&self) -> bool {
        self.own
            || self.ends.is_some()
            || (self.draft.operation.is_write() && self.draft.outcome != Outcome::Intent)
            || !self.done.is_closed()
    }
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
    /// By tenant and subject; none on a store other nodes append to.
    index: Option<Arc<AuditIndex>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Where the chain stands: the chain (0, or this node's in a shared log), the next sequence
/// number, the MAC it must link to, and the intents whose ending is not recorded yet.
struct ChainState {
    node: u64,
    next_seq: u64,
    last_mac: [u8; MAC_LEN],
    open: BTreeSet<u64>,
}

/// Whether the heads this node writes list its open intents: not on a store several nodes
/// share (one node's start would end another's intents as unknown while it still runs).
fn tracks_intents(store: &dyn Store) -> bool {
    !store.shared()
}

/// Where this writer continues: on a store several nodes share, a new chain of its own
/// (started at `now`); else the single chain, after its newest event.
fn chain_state(store: &dyn Store, now: Timestamp) -> Result<ChainState, StoreError> {
    if store.shared() {
        return Ok(ChainState {
            node: store.audit_new_node(now)?,
            // Only until the first append: the store gives each batch its places.
            next_seq: store.audit_last()?.map_or(1, |(seq, _)| seq + 1),
            last_mac: [0; MAC_LEN],
            open: BTreeSet::new(),
        });
    }
    let marks = store.audit_marks()?;
    // Several nodes of a shared store write one head: a node cannot tell its own open
    // intents from another's there, so none are tracked (`tracks_intents`).
    let open = match &marks.head {
        Some(bytes) if tracks_intents(store) => {
            Head::decode(bytes)?.open_intents.into_iter().collect()
        }
        _ => BTreeSet::new(),
    };
    if let Some((seq, bytes)) = store.audit_last()? {
        let event = AuditEvent::decode(&bytes)?;
        return Ok(ChainState {
            node: 0,
            next_seq: seq + 1,
            last_mac: event.mac,
            open,
        });
    }
    // Everything was pruned (or nothing was ever written): continue from the checkpoint.
    match marks.checkpoint {
        Some(bytes) => {
            let checkpoint = Checkpoint::decode(&bytes)?;
            Ok(ChainState {
                node: 0,
                next_seq: checkpoint.mark.seq + 1,
                last_mac: checkpoint.links().get(&0).copied().unwrap_or([0; MAC_LEN]),
                open,
            })
        }
        None => Ok(ChainState {
            node: 0,
            next_seq: 1,
            last_mac: [0; MAC_LEN],
            open,
        }),
    }
}

impl AuditLog {
    /// Starts the writer thread, continuing the chain found in the writer's store; a request
    /// waits at most `timeout` for its event.
    pub(in crate::service) fn start(
        writer: Writer, sink: Option<JsonlSink>, timeout: Duration,
    ) -> Result<Self, StoreError> {
        let state = chain_state(writer.store.as_ref(), writer.now)?;
        let index = match writer.store.shared() {
            true => None,
            false => Some(Arc::new(build_index(writer.store.as_ref())?)),
        };
        let (queue, rx) = mpsc::channel(4 * MAX_BATCH);
        let log = Self {
            queue,
            store: writer.store.clone(),
            key: writer.key.clone(),
            timeout,
            high_water: writer.high_water.clone(),
            background: writer.background.clone(),
            index: index.clone(),
        };
        // A thread of its own, not a task: a batch's append waits for the disk, and a task
        // would hand every batch to the blocking pool and back (two wake-ups per batch).
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Backend("the audit writer needs a tokio runtime".into()))?;
        let running = writer.background.token();
        std::thread::Builder::new()
            .name("pv-audit-writer".into())
            .spawn(move || {
                let _running = running;
                // For the high-water mark's fsyncs, started on the blocking pool.
                let _runtime = runtime.enter();
                write_loop(writer, sink, state, rx, index);
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the audit writer: {e}")))?;
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
        self.send(draft, None).await
    }

    /// Records the intent of a change (`draft` with `Outcome::Intent`); returns its
    /// sequence number once it is on disk. Only then may the change be made; its ending is
    /// recorded with `append_ending`.
    pub async fn intend(&self, mut draft: EventDraft) -> Result<u64, AuditError> {
        draft.outcome = Outcome::Intent;
        self.send(draft, None).await
    }

    /// Records how the change whose intent is `intent` ended.
    pub async fn append_ending(&self, draft: EventDraft, intent: u64) -> Result<u64, AuditError> {
        self.send(draft, Some(intent)).await
    }

    async fn send(&self, draft: EventDraft, ends: Option<u64>) -> Result<u64, AuditError> {
        let (done, confirmed) = oneshot::channel();
        let send_and_wait = async {
            self.queue
                .send(Append {
                    draft,
                    ends,
                    own: false,
                    done,
                })
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
        if let Some(index) = &self.index {
            if filter.tenant.is_some() {
                return self.query_indexed(index, filter, page, limit);
            }
        }
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

    /// `query` for a filter naming a tenant: reads the events the index lists for it (and
    /// its subject) instead of scanning the log.
    fn query_indexed(
        &self, index: &AuditIndex, filter: &AuditFilter, mut page: AuditPage, limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let mut examined = 0;
        while examined < SCAN_BUDGET {
            let Some((seqs, last)) = index.candidates(filter, page.cursor, SCAN_PAGE) else {
                break;
            };
            for seq in seqs {
                page.cursor = seq;
                examined += 1;
                // Gone only if pruned meanwhile.
                let Some((_, bytes)) = self
                    .store
                    .audit_scan(seq - 1, 1)?
                    .into_iter()
                    .find(|(s, _)| *s == seq)
                else {
                    continue;
                };
                let event = AuditEvent::decode(&bytes)?;
                if filter.matches(&event.draft) {
                    page.events.push(event);
                    if page.events.len() == limit {
                        return Ok(page);
                    }
                }
            }
            if last {
                page.end = true;
                break;
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
    ///
    /// In a log with several chains, the checkpoint also marks each chain's last pruned
    /// event (carried over from the previous checkpoint for a chain with none pruned now),
    /// where the chain's remaining events link.
    pub fn prune(&self, before: Timestamp) -> Result<PruneReport, StoreError> {
        let previous = self.store.audit_marks()?.checkpoint;
        let mut links: BTreeMap<u64, (u64, [u8; MAC_LEN])> = match previous {
            Some(bytes) => {
                let cp = Checkpoint::decode(&bytes)?;
                match cp.nodes.is_empty() {
                    true => BTreeMap::from([(0, (cp.mark.seq, cp.mark.mac))]),
                    false => cp.nodes.iter().map(|(n, m)| (*n, (m.seq, m.mac))).collect(),
                }
            }
            None => BTreeMap::new(),
        };
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
                links.insert(event.node, (seq, event.mac));
                last_old = Some(event);
            }
        }
        let Some(last) = last_old else {
            return Ok(PruneReport {
                deleted: 0,
                through: None,
            });
        };
        let nodes = match links.keys().all(|node| *node == 0) {
            // The single chain: the mark is where it links.
            true => Vec::new(),
            false => links
                .into_iter()
                .map(|(node, (seq, mac))| {
                    let label = node_label(CHECKPOINT, node);
                    (node, ChainMark::new(&self.key, &label, seq, mac))
                })
                .collect(),
        };
        let checkpoint = Checkpoint {
            mark: ChainMark::new(&self.key, CHECKPOINT, last.seq, last.mac),
            nodes,
        };
        let deleted = self.store.audit_prune(last.seq, &checkpoint.encode())?;
        if let Some(index) = &self.index {
            index.prune(last.seq);
        }
        Ok(PruneReport {
            deleted,
            through: Some(last.seq),
        })
    }
}

/// Indexes every event of the log in `store` (one pass, at start).
fn build_index(store: &dyn Store) -> Result<AuditIndex, StoreError> {
    let index = AuditIndex::default();
    let mut cursor = 0;
    loop {
        let page = store.audit_scan(cursor, SCAN_PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(index);
        };
        cursor = *last;
        let events = page
            .iter()
            .map(|(_, bytes)| AuditEvent::decode(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        index.add(&events);
    }
}

/// Verifies the chain stored in `store` (also used offline by `pii-vault audit verify`).
pub fn verify_store(store: &dyn Store, key: &Key<Audit>) -> Result<VerifyReport, StoreError> {
    let marks = store.audit_marks()?;
    let mut cursor = 0;
    let mut pages = std::iter::from_fn(move || {
        let scanned = match store.audit_scan(cursor, SCAN_PAGE) {
            // A damaged event in the page: the events before it are checked first.
            Err(StoreError::AuditDamaged { seq, .. }) if seq > cursor + 1 => {
                store.audit_scan(cursor, (seq - cursor - 1) as usize)
            }
            other => other,
        };
        match scanned {
            Ok(page) if page.is_empty() => None,
            Ok(page) => {
                cursor = page.last().map_or(cursor, |(seq, _)| *seq);
                Some(page.into_iter().map(Ok).collect::<Vec<_>>())
            }
            Err(e) => Some(vec![Err(e)]),
        }
    })
    .flatten();
    let first_seq = match marks.checkpoint.as_deref().map(Checkpoint::decode) {
        Some(Ok(checkpoint)) => checkpoint.mark.seq + 1,
        _ => 1,
    };
    match verify_chains(
        key,
        marks.checkpoint.as_deref(),
        marks.head.as_deref(),
        &marks.nodes,
        &mut pages,
    ) {
        // The log's files hold a damaged event: reported at its sequence number, like an
        // altered one.
        Err(StoreError::AuditDamaged { seq, what }) => Ok(VerifyReport {
            checked: seq.saturating_sub(first_seq),
            first_seq,
            first_bad: Some(seq),
            problem: Some(format!("event damaged in the log's files ({what})")),
        }),
        other => other,
    }
}

/// A batch sealed for the store: the events, their stored rows, the new head and the MAC
/// the next batch links to.
struct Chained {
    events: Vec<AuditEvent>,
    rows: Vec<(u64, Vec<u8>)>,
    head: Vec<u8>,
    last_mac: [u8; MAC_LEN],
}

/// Seals `drafts` as the continuation of chain `node` from place `first_seq`, after the
/// event whose MAC is `prev`; the head lists the intents still open after it (`open`).
fn chain_batch(
    key: &Key<Audit>, node: u64, first_seq: u64, mut prev: [u8; MAC_LEN],
    drafts: impl IntoIterator<Item = EventDraft>, open: &BTreeSet<u64>,
) -> Chained {
    let events: Vec<AuditEvent> = drafts
        .into_iter()
        .enumerate()
        .map(|(i, draft)| {
            let event = AuditEvent::seal_on(key, node, first_seq + i as u64, draft, prev);
            prev = event.mac;
            event
        })
        .collect();
    let last_seq = first_seq + events.len() as u64 - 1;
    let head = Head {
        mark: ChainMark::new(key, HEAD, last_seq, prev),
        open_intents: open.iter().copied().collect(),
    }
    .encode();
    let rows = events.iter().map(|e| (e.seq, e.encode())).collect();
    Chained {
        events,
        rows,
        head,
        last_mac: prev,
    }
}

/// What the audit writer thread works with.
pub(in crate::service) struct Writer {
    pub store: Arc<dyn Store>,
    pub key: Arc<Key<Audit>>,
    /// When the writer starts (the time of its recovery events).
    pub now: Timestamp,
    /// Where the writer publishes the newest durable sequence number (for the flushes'
    /// data mark, `storage::FlushMark`).
    pub durable_seq: Arc<std::sync::atomic::AtomicU64>,
    pub metrics: Metrics,
    pub high_water: Option<Arc<HighWater>>,
    /// Where the high-water mark's fsyncs run, and what counts the writer as running
    /// (shutdown waits for its last batch).
    pub background: Background,
    /// The syslog mirror, if configured (it queues to a thread of its own).
    pub syslog: Option<SyslogSink>,
}

/// The events a start records: the torn tail the store cut, and each intent whose ending
/// was never recorded (read back from the log, so the event names what the intent named).
fn recovery_events(
    store: &dyn Store, open: &BTreeSet<u64>, cuts: Vec<TailCut>, now: Timestamp,
) -> Vec<Append> {
    let event = |reason: String| EventDraft {
        time: now,
        request_id: String::new(),
        caller: "job:pii-vault/audit".to_owned(),
        operation: Operation::AuditRecovery,
        tenant: String::new(),
        subject: String::new(),
        fields: Vec::new(),
        purpose: String::new(),
        outcome: Outcome::Error,
        reason,
        rule: String::new(),
    };
    let mut out = Vec::new();
    for cut in cuts {
        let after = cut
            .last_seq
            .map_or("no event".to_owned(), |s| format!("event {s}"));
        out.push(Append::own(
            event(format!(
                "cut an unacknowledged torn tail of {} bytes after {after} ({} at byte {})",
                cut.bytes, cut.segment, cut.offset
            )),
            None,
        ));
    }
    for &seq in open {
        let intent = store
            .audit_scan(seq - 1, 1)
            .ok()
            .and_then(|page| page.into_iter().next())
            .filter(|(s, _)| *s == seq)
            .and_then(|(_, bytes)| AuditEvent::decode(&bytes).ok());
        let mut draft = event(format!(
            "ending unknown: the vault stopped before recording how the change of intent {seq} ended"
        ));
        if let Some(intent) = intent {
            draft.operation = intent.draft.operation;
            draft.caller = intent.draft.caller;
            draft.request_id = intent.draft.request_id;
            draft.tenant = intent.draft.tenant;
            draft.subject = intent.draft.subject;
            draft.fields = intent.draft.fields;
            draft.purpose = intent.draft.purpose;
        }
        out.push(Append::own(draft, Some(seq)));
    }
    out
}

/// The ending the writer records for an intent whose caller stopped waiting before it was
/// confirmed: the caller never made the change.
fn abandoned(intent: &EventDraft, seq: u64) -> Append {
    let mut draft = intent.clone();
    draft.outcome = Outcome::Error;
    draft.reason = format!("not made: the request gave up before its intent {seq} was recorded");
    Append::own(draft, Some(seq))
}

/// Runs `work` (a store call of the writer), turning a panic into a failed call: the batch
/// fails closed and the writer goes on with the next one.
fn guarded<T>(work: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        .unwrap_or_else(|_| Err(StoreError::Backend("audit append panicked".into())))
}

/// The writer's loop, on its thread: takes what is queued (up to `MAX_BATCH`), stores it as
/// one batch, answers each caller, then mirrors the batch. Ends when every `AuditLog`
/// handle is gone and the queue is empty.
fn write_loop(
    writer: Writer, mut sink: Option<JsonlSink>, mut state: ChainState,
    mut rx: mpsc::Receiver<Append>, index: Option<Arc<AuditIndex>>,
) {
    let Writer {
        store,
        key,
        now,
        durable_seq,
        metrics,
        high_water,
        background,
        syslog,
    } = writer;
    // What the writer records itself, ahead of its callers' events.
    let cuts = store.audit_tail_cuts();
    let mut cuts_pending = !cuts.is_empty();
    let mut own = recovery_events(store.as_ref(), &state.open, cuts, now);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if own.is_empty() {
            match rx.blocking_recv() {
                Some(first) => batch.push(first),
                None => break,
            }
        } else {
            batch.append(&mut own);
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        batch.retain(Append::must_write);
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let (events, result) = store_batch(&store, &key, &mut state, &batch);
        metrics.audit_append(batch.len(), started.elapsed(), result.is_ok());
        if result.is_ok() {
            if let Some(index) = &index {
                index.add(&events);
            }
            durable_seq.store(state.next_seq - 1, std::sync::atomic::Ordering::SeqCst);
            // The first batch held the recovery events: the cuts are recorded.
            if std::mem::take(&mut cuts_pending)
                && guarded(|| store.audit_tail_cuts_recorded()).is_err()
            {
                tracing::warn!("could not clear the audit log's recorded tail cuts");
            }
        }
        match &result {
            Ok(()) => {
                for (a, e) in batch.drain(..).zip(&events) {
                    // Sending takes only the reply channel: the draft is still there to end
                    // an intent nobody waits for any more.
                    if a.done.send(Ok(e.seq)).is_err() && a.draft.outcome == Outcome::Intent {
                        own.push(abandoned(&a.draft, e.seq));
                    }
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
                // Off the writer's thread: the next batch does not wait for this file's
                // fsyncs (writes of the mark are serialized inside `persist`).
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
        if result.is_ok() {
            if let Some(s) = &syslog {
                s.write(&events);
            }
            let mirrored = sink.as_mut().map(|s| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.write(&events)))
            });
            if let Some(Err(_)) = mirrored {
                // As when the mirror ran on the blocking pool: it stops, the log goes on.
                tracing::error!("the JSON-lines audit mirror panicked; it is no longer written");
                sink = None;
            }
        }
    }
}

/// Chains `batch` after `state` and stores it with the new head. Returns the chained
/// events and whether they were stored; `state` moves past them only if they were.
fn store_batch(
    store: &Arc<dyn Store>, key: &Key<Audit>, state: &mut ChainState, batch: &[Append],
) -> (Vec<AuditEvent>, Result<(), StoreError>) {
    let drafts = || batch.iter().map(|a| a.draft.clone());
    if state.node != 0 {
        // This node's chain in a shared log: the store gives the batch its places.
        let (node, prev) = (state.node, state.last_mac);
        let mut sealed = None;
        let stored = guarded(|| {
            store.audit_append_node(node, &mut |first| {
                let mut chained = chain_batch(key, node, first, prev, drafts(), &BTreeSet::new());
                let stored = (
                    std::mem::take(&mut chained.rows),
                    std::mem::take(&mut chained.head),
                );
                sealed = Some(chained);
                stored
            })
        })
        .and_then(|()| sealed.ok_or_else(|| StoreError::Backend("audit batch not sealed".into())));
        return match stored {
            Ok(Chained {
                events, last_mac, ..
            }) => {
                state.next_seq = events.last().map_or(state.next_seq, |e| e.seq + 1);
                state.last_mac = last_mac;
                (events, Ok(()))
            }
            Err(e) => (Vec::new(), Err(e)),
        };
    }
    let mut open = state.open.clone();
    if tracks_intents(store.as_ref()) {
        for (i, a) in batch.iter().enumerate() {
            if a.draft.outcome == Outcome::Intent {
                open.insert(state.next_seq + i as u64);
            }
            if let Some(intent) = a.ends {
                open.remove(&intent);
            }
        }
    }
    let chained = chain_batch(key, 0, state.next_seq, state.last_mac, drafts(), &open);
    let stored = guarded(|| store.audit_append(&chained.rows, &chained.head));
    if stored.is_ok() {
        state.next_seq += chained.events.len() as u64;
        state.last_mac = chained.last_mac;
        state.open = open;
    }
    (chained.events, stored)
}
