//! The PostgreSQL backend, for several stateless vault nodes over one database.
//!
//! Tables mirror sled's trees (see `schema.rs`), and their `bytea` columns hold the same
//! encoded records: sealed envelopes, key-wrapped material and metadata. The database never
//! sees a key or a value in the clear.
//!
//! The storage trait is synchronous. Connections run on a private tokio runtime with one
//! worker thread, and a call waits for its result with a plain executor, so it works from
//! any thread, inside the server's runtime or not; it blocks that thread for its round trips,
//! as a sled call blocks it for its disk reads. On a worker of a multi-thread runtime it
//! first hands the worker's other tasks to another thread (`off_worker`): a round trip is
//! much longer than a sled read.
//!
//! Every multi-statement operation is one SERIALIZABLE transaction, retried when PostgreSQL
//! reports a serialization failure, a deadlock or a concurrent insert of the same key. That
//! is why the trait asks the closures it is given to be pure: they may run more than once.
//! A commit is durable when it returns (with the server's default `synchronous_commit`), so
//! `flush` has nothing left to do.
//!
//! Connections use TLS with a verified server certificate unless told not to (`tls.rs`).
//!
//! What a write changes is decided by `rules`, once for both backends; this one reads what
//! the rules need and applies their plans with statements in the same transaction
//! (`fields.rs`, `erasure.rs`). The functions of the modules below take the connection or
//! the transaction they run on; the `Store` impl here picks it: `read` for statements on a
//! pooled connection, `tx` for a transaction (the one retry loop, in `pool.rs`).

mod audit;
mod conn;
mod erasure;
mod error;
mod fields;
mod keys;
mod lease;
mod pool;
mod rows;
mod schema;
mod state;
mod tls;

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

#[cfg(feature = "testing")]
pub use tls::MakeRustls;
pub use tls::PgTls;
use tls::{Connector, Session};
use tokio_postgres::IsolationLevel;

use crate::crypto::Sealed;
use crate::domain::{FieldName, SubjectId, TenantId, Timestamp};

use self::conn::{exec, one, rows, tenant_one, tenant_rows, Conn};
use self::lease::LeaseSession;
use self::pool::open_client;
use self::rows::{meta_value, prefix_end};
use super::records::{
    Erasure, FieldRecord, StateRecord, SubjectRecord, SubjectWrite, TenantRecord, Tombstone,
    Written,
};
use super::{
    AuditMarks, Fence, FenceMode, KeyChange, KeyUpdate, LegacyPage, LegacySeal, SealBatch,
    StateUpdate, Store, StoreError, StoreResult, SubjectUpdate, TenantKeyState, TombstoneSeal,
};

/// Runs `f`, which blocks its thread on the database, without taking an async worker away
/// from the runtime that called the store.
///
/// The store is synchronous, and the service calls it straight from the server runtime's
/// workers: blocked for a network round trip, each would hold up every task queued on it,
/// so a node had at most one store call in flight per core, however many connections the
/// pool has. On a multi-thread runtime's worker, `block_in_place` hands the worker's queue
/// to another thread for as long as `f` blocks.
///
/// Why that is safe here (tokio's caveats for `block_in_place`):
/// - It panics on a current-thread runtime, so it is used only when the current runtime is
///   a multi-thread one. On a thread that is not one of its workers (a `spawn_blocking`
///   thread; a thread with only a handle entered, as the audit writer's) it just runs `f`;
///   nested calls also just run `f`. It is never reached from the store's private runtime:
///   only the connections and their connect tasks run there, and no store call is made
///   from one of them.
/// - Other futures of the calling task (branches of a `join!` or `select!`, a `timeout`
///   around the call) wait until `f` returns: as they did before, when the whole worker
///   was blocked.
/// - A `std::sync::Mutex` guard held by the caller stays held on this thread, as before;
///   other tasks, now free to run, may wait for it and block a worker. That cannot
///   deadlock: `f` never waits for a task of the caller's runtime. Its connections are
///   driven by the store's own runtime, and a call waiting for a free connection waits for
///   another store call, itself running on a thread of its own.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A pool of connections to one PostgreSQL database.
pub struct PgStore {
    /// Free slots: a connection, or `None` for one to open again (it closed: the database
    /// restarted, the network failed). A slot is never lost.
    pool: Mutex<Vec<Option<Conn>>>,
    returned: Condvar,
    /// How to open a connection: the connection string (it may hold a password: never
    /// printed) and its TLS connector.
    session: Session,
    /// The session that holds this node's job leases and root key fences.
    leases: Mutex<LeaseSession>,
    /// Drives the connections; shut down without blocking when the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl PgStore {
    /// Connects `connections` clients to the database at `url` (a libpq-style connection
    /// string or URL), protected as `tls` says, and migrates its schema.
    pub fn connect(url: &str, connections: usize, tls: &PgTls) -> StoreResult<Self> {
        let session = Session::new(url, tls)?;
        if matches!(session.connector, Connector::Plain) {
            tracing::warn!(
                "PostgreSQL connections are not encrypted (storage.postgres_tls = \"disable\")"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pii-vault-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Backend(format!("cannot start the PostgreSQL runtime: {e}"))
            })?;
        // One more connection than the pool: the session holding the job leases.
        let mut clients = Vec::with_capacity(connections.max(1) + 1);
        for _ in 0..=connections.max(1) {
            clients.push(Some(open_client(&runtime, &session)?));
        }
        let lease_session = clients.pop().flatten().expect("at least two connections");
        let store = Self {
            pool: Mutex::new(clients.into_iter().map(|c| c.map(Conn::new)).collect()),
            returned: Condvar::new(),
            session,
            leases: Mutex::new(LeaseSession {
                client: lease_session,
                jobs: HashSet::new(),
                generation: 0,
            }),
            runtime: Some(runtime),
        };
        store.with_client(|c| schema::migrate(&mut c.client).map(|_| ()))?;
        Ok(store)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.clear();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for PgStore {
    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(|c| meta_value(c, key))
    }

    fn meta_init(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        self.tx(|t| {
            exec(
                t,
                "INSERT INTO pv_meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&key, &value],
            )?;
            Ok(meta_value(t, key)?.unwrap_or_default())
        })
    }

    fn meta_scan(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.read(|c| {
            let found = rows(
                c,
                "SELECT key, value FROM pv_meta WHERE starts_with(key, $1) ORDER BY key",
                &[&prefix],
            )?;
            Ok(found.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn meta_remove(&self, key: &str) -> StoreResult<()> {
        self.read(|c| exec(c, "DELETE FROM pv_meta WHERE key = $1", &[&key]).map(|_| ()))
    }

    fn meta_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> StoreResult<bool> {
        self.tx(|t| {
            let n = match expected {
                None => exec(
                    t,
                    "INSERT INTO pv_meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&key, &value],
                )?,
                Some(old) => exec(
                    t,
                    "UPDATE pv_meta SET value = $3 WHERE key = $1 AND value = $2",
                    &[&key, &old, &value],
                )?,
            };
            Ok(n == 1)
        })
    }

    fn create_tenant(&self, tenant: &TenantRecord, wrapped_kek: &Sealed) -> StoreResult<bool> {
        self.tx(|t| keys::add_tenant(t, tenant, wrapped_kek))
    }

    fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>> {
        self.read(|c| keys::find_tenant(c, id))
    }

    fn tenants(&self, after: Option<&TenantId>, n: usize) -> StoreResult<Vec<TenantRecord>> {
        self.read(|c| keys::tenant_page(c, after, n))
    }

    fn kek(&self, tenant: &TenantId, version: u32) -> StoreResult<Option<Sealed>> {
        self.read(|c| keys::find_kek(c, tenant, version))
    }

    fn keks(&self, tenant: &TenantId) -> StoreResult<Vec<(u32, Sealed)>> {
        self.read(|c| keys::tenant_keks(c, tenant))
    }

    fn replace_kek(&self, t: &TenantId, v: u32, old: &Sealed, new: &Sealed) -> StoreResult<bool> {
        self.read(|c| keys::swap_kek(c, t, v, old, new))
    }

    fn tenant_keys(&self, tenant: &TenantId) -> StoreResult<Option<TenantKeyState>> {
        self.read(|c| keys::key_state(c, tenant))
    }

    fn all_tenant_keys(&self) -> StoreResult<Vec<(TenantId, TenantKeyState)>> {
        self.read(keys::every_tenant_keys)
    }

    fn update_tenant_keys(
        &self, t: &TenantId, f: &KeyUpdate<'_>,
    ) -> StoreResult<Option<KeyChange>> {
        self.tx(|tx| keys::apply_key_update(tx, t, f))
    }

    fn subject(&self, t: &TenantId, s: &SubjectId) -> StoreResult<Option<SubjectRecord>> {
        self.read(|c| keys::find_subject(c, t, s))
    }

    fn subjects(
        &self, t: &TenantId, after: Option<&SubjectId>, n: usize,
    ) -> StoreResult<Vec<SubjectId>> {
        self.read(|c| keys::subject_ids(c, t, after, n))
    }

    fn subject_records(
        &self, t: &TenantId, after: Option<&SubjectId>, n: usize,
    ) -> StoreResult<Vec<(SubjectId, SubjectRecord)>> {
        self.read(|c| keys::subject_page(c, t, after, n))
    }

    fn update_subjects(
        &self, t: &TenantId, ids: &[SubjectId], f: &SubjectUpdate<'_>,
    ) -> StoreResult<Vec<bool>> {
        self.tx(|tx| keys::update_subjects(tx, t, ids, f))
    }

    fn put_fields(
        &self, t: &TenantId, s: &SubjectId, w: &SubjectWrite,
    ) -> StoreResult<Vec<Written>> {
        self.tx(|tx| fields::put(tx, t, s, w))
    }

    fn fields(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Vec<FieldRecord>> {
        self.read(|c| fields::field_page(c, tenant, subject, None, usize::MAX))
    }

    fn fields_page(
        &self, t: &TenantId, s: &SubjectId, after: Option<&FieldName>, n: usize,
    ) -> StoreResult<Vec<FieldRecord>> {
        self.read(|c| fields::field_page(c, t, s, after, n))
    }

    fn field(
        &self, t: &TenantId, s: &SubjectId, n: &FieldName,
    ) -> StoreResult<Option<FieldRecord>> {
        self.read(|c| {
            let found = tenant_one(
                c,
                t,
                rows::FIELD_RECORD,
                &[&t.as_str(), &s.as_str(), &n.as_str()],
            )?;
            found.map(|r| rows::decode_field(&r)).transpose()
        })
    }

    fn delete_fields(&self, t: &TenantId, s: &SubjectId, names: &[FieldName]) -> StoreResult<u32> {
        self.tx(|tx| fields::delete(tx, t, s, names))
    }

    fn subject_state(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<StateRecord> {
        self.read(|c| state::read(c, tenant, subject))
    }

    fn update_subject_state(
        &self, t: &TenantId, s: &SubjectId, update: &StateUpdate<'_>,
    ) -> StoreResult<StateRecord> {
        self.tx(|tx| state::update(tx, t, s, update))
    }

    fn expired(
        &self, t: &TenantId, now: Timestamp, n: usize,
    ) -> StoreResult<Vec<(SubjectId, FieldName, Timestamp)>> {
        self.read(|c| fields::expiry_page(c, t, now, n))
    }

    fn delete_expired(
        &self, t: &TenantId, s: &SubjectId, name: &FieldName, at: Timestamp,
    ) -> StoreResult<bool> {
        self.tx(|tx| fields::expire(tx, t, s, name, at))
    }

    fn clear_index(&self, tenant: &TenantId) -> StoreResult<u64> {
        self.tx(|t| {
            rows::require_tenant(t, tenant)?;
            conn::exec(
                t,
                "DELETE FROM pv_index WHERE tenant = $1",
                &[&tenant.as_str()],
            )
        })
    }

    fn index_scan(&self, tenant: &TenantId, prefix: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
        let end = prefix_end(prefix);
        self.read(|c| {
            let found = tenant_rows(
                c,
                tenant,
                "SELECT entry FROM pv_index
                 WHERE tenant = $1 AND entry >= $2 AND ($3::bytea IS NULL OR entry < $3)
                 ORDER BY entry",
                &[&tenant.as_str(), &prefix, &end],
            )?;
            Ok(found.iter().map(|r| r.get(0)).collect())
        })
    }

    fn reindex_field(
        &self, t: &TenantId, s: &SubjectId, n: &FieldName, e: &[u8],
    ) -> StoreResult<()> {
        self.tx(|tx| fields::reindex(tx, t, s, n, e))
    }

    fn erase_subject(
        &self, t: &TenantId, s: &SubjectId, stone: &Tombstone, seal: &TombstoneSeal<'_>,
    ) -> StoreResult<Erasure> {
        self.tx(|tx| erasure::erase(tx, t, s, stone, seal))
    }

    fn tombstone(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Option<Tombstone>> {
        self.read(|c| erasure::tombstone(c, tenant, subject))
    }

    fn seal_legacy_tombstones(
        &self, t: &TenantId, after: Option<&SubjectId>, n: usize, seal: &LegacySeal<'_>,
    ) -> StoreResult<LegacyPage> {
        self.tx(|tx| erasure::seal_legacy(tx, t, after, n, seal))
    }

    fn prune_idempotency(&self, tenant: &TenantId, now: Timestamp, n: usize) -> StoreResult<usize> {
        self.tx(|t| fields::prune_idempotency(t, tenant, now, n))
    }

    fn purge_fields(&self, tenant: &TenantId, subject: &SubjectId, n: usize) -> StoreResult<usize> {
        self.tx(|t| erasure::purge(t, tenant, subject, n))
    }

    fn unpurged(&self) -> StoreResult<Vec<(TenantId, SubjectId)>> {
        self.read(erasure::unpurged)
    }

    fn legal_holds_due(
        &self, now: Timestamp,
    ) -> StoreResult<Vec<(TenantId, SubjectId, Timestamp)>> {
        self.read(|c| erasure::holds_due(c, now))
    }

    fn clear_legal_hold(
        &self, t: &TenantId, shadow: &SubjectId, until: Timestamp,
    ) -> StoreResult<()> {
        self.read(|c| erasure::clear_hold(c, t, shadow, until))
    }

    fn epoch_pending(&self) -> StoreResult<Vec<(TenantId, u64)>> {
        self.read(erasure::epoch_marks)
    }

    fn clear_epoch_pending(&self, tenant: &TenantId, seen: u64) -> StoreResult<()> {
        self.read(|c| erasure::clear_epoch_mark(c, tenant, seen))
    }

    fn audit_append(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()> {
        self.tx(|t| audit::append(t, events, head))
    }

    fn audit_new_node(&self, started: Timestamp) -> StoreResult<u64> {
        self.tx(|t| audit::new_node(t, started))
    }

    fn audit_append_node(&self, node: u64, seal: SealBatch<'_>) -> StoreResult<()> {
        self.tx_at(IsolationLevel::ReadCommitted, |t| {
            audit::append_node(t, node, &mut *seal)
        })
    }

    fn audit_scan(&self, after: u64, n: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.read(|c| audit::scan(c, after, n))
    }

    fn audit_last(&self) -> StoreResult<Option<(u64, Vec<u8>)>> {
        self.read(audit::last)
    }

    fn audit_marks(&self) -> StoreResult<AuditMarks> {
        self.read(audit::marks)
    }

    fn audit_prune(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64> {
        self.tx(|t| audit::prune(t, through, checkpoint))
    }

    fn shared(&self) -> bool {
        true
    }

    fn job_lease(&self, job: &str) -> StoreResult<bool> {
        off_worker(|| self.take_lease(job))
    }

    fn root_fence(&self, mode: FenceMode) -> StoreResult<Fence<'_>> {
        off_worker(|| self.take_fence(mode))
    }

    fn flush(&self) -> StoreResult<()> {
        // Every write committed before it returned.
        Ok(())
    }

    fn disk_bytes(&self) -> StoreResult<Option<u64>> {
        self.read(|c| {
            let size = one(c, "SELECT pg_database_size(current_database())", &[])?;
            Ok(size.and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok()))
        })
    }
}
