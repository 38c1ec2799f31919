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

mod conn;
mod schema;
mod tls;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, IsolationLevel, NoTls, Row, Transaction};

pub use tls::PgTls;
use tls::{Connector, Session};

use crate::crypto::Sealed;
use crate::domain::{FieldName, SubjectId, SubjectState, TenantId, Timestamp};

use self::conn::{exec, one, rows, tenant_one, tenant_rows, Conn, Db};
use super::records::{
    decode_state, encode_state, Erasure, FieldRecord, SubjectRecord, SubjectWrite, TenantRecord,
    Tombstone, Written,
};
use super::{
    AuditMarks, Fence, FenceHold, FenceMode, KeyChange, KeyUpdate, Store, StoreError, StoreResult,
    SubjectUpdate, TenantKeyState,
};

const AUDIT_HEAD: &str = "audit_head";
const AUDIT_CHECKPOINT: &str = "audit_checkpoint";

/// How often a transaction is tried before its conflict is reported.
const MAX_ATTEMPTS: u32 = 50;

/// Why a database step failed: a store-level answer, or PostgreSQL's own error (kept whole
/// until the retry decision, then reduced to a message without row data).
pub(crate) enum Failure {
    Store(StoreError),
    Pg(tokio_postgres::Error),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<crate::codec::CodecError> for Failure {
    fn from(e: crate::codec::CodecError) -> Self {
        Failure::Store(e.into())
    }
}

impl Failure {
    /// Whether running the transaction again may succeed.
    fn retryable(&self) -> bool {
        let Failure::Pg(e) = self else { return false };
        matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::UNIQUE_VIOLATION
        )
    }

    fn into_store(self) -> StoreError {
        match self {
            Failure::Store(e) => e,
            Failure::Pg(e) => pg_error(&e),
        }
    }
}

/// PostgreSQL's error as a message: the SQLSTATE and primary message only, never the
/// DETAIL line, which can quote key values (subject ids) of the rows involved. A client-side
/// error (connecting, TLS, login) brings its causes, which name what failed (an OS error, a
/// refused certificate) and never the connection string.
fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            StoreError::Backend(format!("PostgreSQL {}: {}", db.code().code(), db.message()))
        }
        None => {
            let mut message = format!("PostgreSQL: {e}");
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                message.push_str(": ");
                message.push_str(&c.to_string());
                cause = c.source();
            }
            StoreError::Backend(message)
        }
    }
}

type R<T> = Result<T, Failure>;

/// Waits for a database future on the calling thread; the connection makes progress on the
/// store's own runtime. Store calls wrap their waits in `off_worker`.
pub(crate) fn block<F: Future<Output = Result<T, tokio_postgres::Error>>, T>(f: F) -> R<T> {
    futures_executor::block_on(f).map_err(Failure::Pg)
}

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
///   thread, as the audit writer's; a thread with only a handle entered) it just runs `f`;
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

fn ts(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn to_ts(v: i64, what: &'static str) -> R<Timestamp> {
    u64::try_from(v)
        .map(Timestamp)
        .map_err(|_| Failure::Store(StoreError::Corrupt(what)))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn tenant_id(s: &str) -> R<TenantId> {
    TenantId::parse(s).map_err(|_| Failure::Store(StoreError::Corrupt("tenant id")))
}

fn subject_id(s: &str) -> R<SubjectId> {
    SubjectId::parse(s).map_err(|_| Failure::Store(StoreError::Corrupt("subject id")))
}

fn field_name(s: &str) -> R<FieldName> {
    FieldName::parse(s).map_err(|_| Failure::Store(StoreError::Corrupt("field name")))
}

fn sealed(bytes: &[u8], what: &'static str) -> R<Sealed> {
    Sealed::decode(bytes).map_err(|_| Failure::Store(StoreError::Corrupt(what)))
}

/// The first byte string after every string that starts with `prefix`; `None` if there is
/// none (the prefix is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
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

    /// Runs `f` with a connection of the pool to itself, waiting for one if all are busy.
    fn with_client<T>(&self, f: impl FnOnce(&mut Conn) -> R<T>) -> StoreResult<T> {
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

    /// The lease session, locked.
    fn lease_session(&self) -> StoreResult<std::sync::MutexGuard<'_, LeaseSession>> {
        self.leases
            .lock()
            .map_err(|_| StoreError::Backend("PostgreSQL lease session poisoned".into()))
    }

    /// A new connection in place of a closed one.
    fn reconnect(&self) -> StoreResult<Client> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the PostgreSQL store is closing".into()))?;
        tracing::warn!("a PostgreSQL connection closed; opening it again");
        open_client(runtime, &self.session)
    }

    /// One statement on a pooled connection.
    fn read<T>(&self, f: impl FnOnce(&Db<'_, Client>) -> R<T>) -> StoreResult<T> {
        self.with_client(|c| f(&c.db()))
    }

    /// Runs `body` in a SERIALIZABLE transaction, again while it fails retryably.
    fn tx<T>(&self, body: impl Fn(&Db<'_, Transaction<'_>>) -> R<T>) -> StoreResult<T> {
        self.with_client(|c| {
            let (client, prepared) = c.split();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let outcome: R<T> = (|| {
                    let tx = block(
                        client
                            .build_transaction()
                            .isolation_level(IsolationLevel::Serializable)
                            .start(),
                    )?;
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
fn open_client(runtime: &tokio::runtime::Runtime, session: &Session) -> StoreResult<Client> {
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

/// The session that holds this node's job leases and root key fences: PostgreSQL advisory
/// locks, which the server releases when the session ends (when this node stops or dies).
struct LeaseSession {
    client: Client,
    /// The jobs this node holds.
    jobs: HashSet<String>,
    /// Counts the sessions opened after the first: a fence taken on an earlier session was
    /// lost with it.
    generation: u64,
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

/// Runs one connection until it closes.
async fn drive<F: Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %pg_error(&e), "PostgreSQL connection closed");
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

/// The tenant's record; `NoTenant` if there is none.
fn tenant_record<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId) -> R<TenantRecord> {
    match one(
        c,
        "SELECT record FROM pv_tenants WHERE id = $1",
        &[&tenant.as_str()],
    )? {
        Some(row) => Ok(TenantRecord::decode(row.get(0))?),
        None => Err(Failure::Store(StoreError::NoTenant)),
    }
}

/// The KEK version new DEKs must be wrapped under; `None` once the tenant is shredded.
fn current_kek<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId) -> R<Option<u32>> {
    let rec = tenant_record(c, tenant)?;
    Ok(rec.shredded_at.is_none().then_some(rec.kek_version))
}

fn require_tenant<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId) -> R<()> {
    tenant_record(c, tenant).map(|_| ())
}

fn subject_row<C: GenericClient>(
    c: &Db<'_, C>,
    tenant: &TenantId,
    subject: &SubjectId,
) -> R<Option<SubjectRecord>> {
    one(c, SUBJECT_RECORD, &[&tenant.as_str(), &subject.as_str()])?
        .map(|r| decode_subject(&r))
        .transpose()
}

const SUBJECT_RECORD: &str = "SELECT record FROM pv_subjects WHERE tenant = $1 AND subject = $2";

fn decode_subject(row: &Row) -> R<SubjectRecord> {
    Ok(SubjectRecord::decode(row.get(0))?)
}

fn put_subject<C: GenericClient>(
    c: &Db<'_, C>,
    tenant: &TenantId,
    subject: &SubjectId,
    record: &SubjectRecord,
) -> R<()> {
    exec(
        c,
        "INSERT INTO pv_subjects (tenant, subject, record) VALUES ($1, $2, $3)
         ON CONFLICT (tenant, subject) DO UPDATE SET record = EXCLUDED.record",
        &[&tenant.as_str(), &subject.as_str(), &record.encode()],
    )?;
    Ok(())
}

fn field_row<C: GenericClient>(
    c: &Db<'_, C>,
    tenant: &TenantId,
    subject: &SubjectId,
    name: &FieldName,
) -> R<Option<FieldRecord>> {
    one(
        c,
        FIELD_RECORD,
        &[&tenant.as_str(), &subject.as_str(), &name.as_str()],
    )?
    .map(|r| decode_field(&r))
    .transpose()
}

const FIELD_RECORD: &str =
    "SELECT record FROM pv_fields WHERE tenant = $1 AND subject = $2 AND name = $3";

fn decode_field(row: &Row) -> R<FieldRecord> {
    Ok(FieldRecord::decode(row.get(0))?)
}

fn put_field<C: GenericClient>(
    c: &Db<'_, C>,
    tenant: &TenantId,
    subject: &SubjectId,
    field: &FieldRecord,
) -> R<()> {
    exec(
        c,
        "INSERT INTO pv_fields (tenant, subject, name, record) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, subject, name) DO UPDATE SET record = EXCLUDED.record",
        &[
            &tenant.as_str(),
            &subject.as_str(),
            &field.meta.name.as_str(),
            &field.encode(),
        ],
    )?;
    Ok(())
}

/// Removes a blind-index entry and its mention in the subject record; true if it was there.
fn unindex<C: GenericClient>(
    c: &Db<'_, C>,
    tenant: &TenantId,
    record: &mut SubjectRecord,
    entry: &[u8],
) -> R<bool> {
    if entry.is_empty() {
        return Ok(false);
    }
    exec(
        c,
        "DELETE FROM pv_index WHERE tenant = $1 AND entry = $2",
        &[&tenant.as_str(), &entry],
    )?;
    let before = record.index_entries.len();
    record.index_entries.retain(|e| e != entry);
    Ok(record.index_entries.len() != before)
}

fn add_index<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId, entry: &[u8]) -> R<()> {
    exec(
        c,
        "INSERT INTO pv_index (tenant, entry) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&tenant.as_str(), &entry],
    )?;
    Ok(())
}

fn mark_epoch<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId) -> R<()> {
    exec(
        c,
        "INSERT INTO pv_epoch_pending (tenant, erasures) VALUES ($1, 1)
         ON CONFLICT (tenant) DO UPDATE SET erasures = pv_epoch_pending.erasures + 1",
        &[&tenant.as_str()],
    )?;
    Ok(())
}

fn meta_value<C: GenericClient>(c: &Db<'_, C>, key: &str) -> R<Option<Vec<u8>>> {
    Ok(one(c, "SELECT value FROM pv_meta WHERE key = $1", &[&key])?.map(|r| r.get(0)))
}

fn set_meta<C: GenericClient>(c: &Db<'_, C>, key: &str, value: &[u8]) -> R<()> {
    exec(
        c,
        "INSERT INTO pv_meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&key, &value],
    )?;
    Ok(())
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
            Ok(rows(
                c,
                "SELECT key, value FROM pv_meta WHERE starts_with(key, $1) ORDER BY key",
                &[&prefix],
            )?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
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
        self.tx(|t| {
            let id = tenant.id.as_str();
            if one(t, "SELECT 1 FROM pv_tenants WHERE id = $1", &[&id])?.is_some() {
                return Ok(false);
            }
            exec(
                t,
                "INSERT INTO pv_tenants (id, record) VALUES ($1, $2)",
                &[&id, &tenant.encode()],
            )?;
            exec(
                t,
                "INSERT INTO pv_keks (tenant, version, wrapped) VALUES ($1, $2, $3)",
                &[&id, &(tenant.kek_version as i32), &wrapped_kek.encode()],
            )?;
            Ok(true)
        })
    }

    fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>> {
        self.read(|c| match tenant_record(c, id) {
            Ok(r) => Ok(Some(r)),
            Err(Failure::Store(StoreError::NoTenant)) => Ok(None),
            Err(e) => Err(e),
        })
    }

    fn tenants(&self, after: Option<&TenantId>, n: usize) -> StoreResult<Vec<TenantRecord>> {
        self.read(|c| {
            rows(
                c,
                "SELECT record FROM pv_tenants WHERE $1::text IS NULL OR id > $1
                 ORDER BY id LIMIT $2",
                &[&after.map(|a| a.as_str()), &limit(n)],
            )?
            .iter()
            .map(|r| Ok(TenantRecord::decode(r.get(0))?))
            .collect()
        })
    }

    fn kek(&self, tenant: &TenantId, version: u32) -> StoreResult<Option<Sealed>> {
        self.read(|c| {
            one(
                c,
                "SELECT wrapped FROM pv_keks WHERE tenant = $1 AND version = $2",
                &[&tenant.as_str(), &(version as i32)],
            )?
            .map(|r| sealed(r.get(0), "wrapped KEK"))
            .transpose()
        })
    }

    fn keks(&self, tenant: &TenantId) -> StoreResult<Vec<(u32, Sealed)>> {
        self.read(|c| {
            rows(
                c,
                "SELECT version, wrapped FROM pv_keks WHERE tenant = $1 ORDER BY version",
                &[&tenant.as_str()],
            )?
            .iter()
            .map(|r| Ok((r.get::<_, i32>(0) as u32, sealed(r.get(1), "wrapped KEK")?)))
            .collect()
        })
    }

    fn replace_kek(
        &self,
        tenant: &TenantId,
        version: u32,
        expected: &Sealed,
        new: &Sealed,
    ) -> StoreResult<bool> {
        self.read(|c| {
            let n = exec(
                c,
                "UPDATE pv_keks SET wrapped = $4
                 WHERE tenant = $1 AND version = $2 AND wrapped = $3",
                &[
                    &tenant.as_str(),
                    &(version as i32),
                    &expected.encode(),
                    &new.encode(),
                ],
            )?;
            Ok(n == 1)
        })
    }

    fn tenant_keys(&self, tenant: &TenantId) -> StoreResult<Option<TenantKeyState>> {
        self.read(|c| {
            one(
                c,
                "SELECT state FROM pv_key_state WHERE tenant = $1",
                &[&tenant.as_str()],
            )?
            .map(|r| Ok(TenantKeyState::decode(r.get(0))?))
            .transpose()
        })
    }

    fn all_tenant_keys(&self) -> StoreResult<Vec<(TenantId, TenantKeyState)>> {
        self.read(|c| {
            rows(
                c,
                "SELECT tenant, state FROM pv_key_state ORDER BY tenant",
                &[],
            )?
            .iter()
            .map(|r| Ok((tenant_id(r.get(0))?, TenantKeyState::decode(r.get(1))?)))
            .collect()
        })
    }

    fn update_tenant_keys(
        &self,
        tenant: &TenantId,
        update: &KeyUpdate<'_>,
    ) -> StoreResult<Option<KeyChange>> {
        self.tx(|t| {
            let id = tenant.as_str();
            let Some(row) = one(
                t,
                "SELECT record FROM pv_tenants WHERE id = $1 FOR UPDATE",
                &[&id],
            )?
            else {
                return Err(StoreError::NoTenant.into());
            };
            let record = TenantRecord::decode(row.get(0))?;
            let state = match one(
                t,
                "SELECT state FROM pv_key_state WHERE tenant = $1",
                &[&id],
            )? {
                Some(r) => TenantKeyState::decode(r.get(0))?,
                None => TenantKeyState::initial(&record),
            };
            let Some(change) = update(&record, &state) else {
                return Ok(None);
            };
            exec(
                t,
                "UPDATE pv_tenants SET record = $2 WHERE id = $1",
                &[&id, &change.tenant.encode()],
            )?;
            exec(
                t,
                "INSERT INTO pv_key_state (tenant, state) VALUES ($1, $2)
                 ON CONFLICT (tenant) DO UPDATE SET state = EXCLUDED.state",
                &[&id, &change.state.encode()],
            )?;
            for (version, wrapped) in &change.put_keks {
                exec(
                    t,
                    "INSERT INTO pv_keks (tenant, version, wrapped) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant, version) DO UPDATE SET wrapped = EXCLUDED.wrapped",
                    &[&id, &(*version as i32), &wrapped.encode()],
                )?;
            }
            for version in &change.delete_keks {
                exec(
                    t,
                    "DELETE FROM pv_keks WHERE tenant = $1 AND version = $2",
                    &[&id, &(*version as i32)],
                )?;
            }
            if change.mark_epoch {
                mark_epoch(t, tenant)?;
            }
            Ok(Some(change))
        })
    }

    fn subject(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
    ) -> StoreResult<Option<SubjectRecord>> {
        self.read(|c| {
            let found = tenant_one(
                c,
                tenant,
                SUBJECT_RECORD,
                &[&tenant.as_str(), &subject.as_str()],
            )?;
            found.map(|r| decode_subject(&r)).transpose()
        })
    }

    fn subjects(
        &self,
        tenant: &TenantId,
        after: Option<&SubjectId>,
        n: usize,
    ) -> StoreResult<Vec<SubjectId>> {
        self.read(|c| {
            tenant_rows(
                c,
                tenant,
                "SELECT subject FROM pv_subjects
                 WHERE tenant = $1 AND ($2::text IS NULL OR subject > $2)
                 ORDER BY subject LIMIT $3",
                &[&tenant.as_str(), &after.map(|a| a.as_str()), &limit(n)],
            )?
            .iter()
            .map(|r| subject_id(r.get(0)))
            .collect()
        })
    }

    fn subject_records(
        &self,
        tenant: &TenantId,
        after: Option<&SubjectId>,
        n: usize,
    ) -> StoreResult<Vec<(SubjectId, SubjectRecord)>> {
        self.read(|c| {
            tenant_rows(
                c,
                tenant,
                "SELECT subject, record FROM pv_subjects
                 WHERE tenant = $1 AND ($2::text IS NULL OR subject > $2)
                 ORDER BY subject LIMIT $3",
                &[&tenant.as_str(), &after.map(|a| a.as_str()), &limit(n)],
            )?
            .iter()
            .map(|r| Ok((subject_id(r.get(0))?, SubjectRecord::decode(r.get(1))?)))
            .collect()
        })
    }

    fn update_subjects(
        &self,
        tenant: &TenantId,
        subjects: &[SubjectId],
        update: &SubjectUpdate<'_>,
    ) -> StoreResult<Vec<bool>> {
        self.tx(|t| {
            let Some(current) = current_kek(t, tenant)? else {
                return Ok(vec![false; subjects.len()]);
            };
            let mut changed = Vec::with_capacity(subjects.len());
            for id in subjects {
                let Some(stored) = subject_row(t, tenant, id)? else {
                    changed.push(false);
                    continue;
                };
                match update(id, &stored, current) {
                    Some(new) => {
                        put_subject(t, tenant, id, &new)?;
                        changed.push(true);
                    }
                    None => changed.push(false),
                }
            }
            Ok(changed)
        })
    }

    fn put_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        write: &SubjectWrite,
    ) -> StoreResult<Vec<Written>> {
        let mask = write.categories();
        self.tx(|t| {
            // The tenant, whether the subject was erased, and its record: one statement.
            let Some(found) = one(
                t,
                "SELECT t.record,
                        EXISTS (SELECT 1 FROM pv_tombstones WHERE tenant = t.id AND subject = $2),
                        (SELECT record FROM pv_subjects WHERE tenant = t.id AND subject = $2)
                 FROM pv_tenants t WHERE t.id = $1",
                &[&tenant.as_str(), &subject.as_str()],
            )?
            else {
                return Err(StoreError::NoTenant.into());
            };
            let tenant_rec = TenantRecord::decode(found.get(0))?;
            let current = tenant_rec
                .shredded_at
                .is_none()
                .then_some(tenant_rec.kek_version);
            if found.get::<_, bool>(1) {
                return Err(StoreError::Erased.into());
            }
            let stored = found
                .get::<_, Option<&[u8]>>(2)
                .map(SubjectRecord::decode)
                .transpose()?;
            let mut dirty = stored.is_none();
            let mut record = match stored {
                None => {
                    // A new DEK must be wrapped under the current KEK version (see sled).
                    if current != Some(write.subject.wrapped_dek.key_version()) {
                        return Err(StoreError::Conflict.into());
                    }
                    write.subject.clone()
                }
                Some(rec) if rec.same_key(&write.subject) => rec,
                Some(_) => return Err(StoreError::Conflict.into()),
            };
            if record.categories | mask != record.categories {
                record.categories |= mask;
                dirty = true;
            }
            let mut written = Vec::with_capacity(write.fields.len());
            for f in &write.fields {
                let previous = field_row(t, tenant, subject, &f.name)?;
                if let Some(old) = previous.as_ref().filter(|p| p.index_entry != f.index_entry) {
                    dirty |= unindex(t, tenant, &mut record, &old.index_entry)?;
                }
                if !f.index_entry.is_empty() && !record.index_entries.contains(&f.index_entry) {
                    add_index(t, tenant, &f.index_entry)?;
                    record.index_entries.push(f.index_entry.clone());
                    dirty = true;
                }
                let meta = f.next_meta(previous.as_ref(), write);
                if let Some(old) = previous.as_ref().filter(|p| p.expires_at.0 != 0) {
                    exec(
                        t,
                        "DELETE FROM pv_expiry
                         WHERE tenant = $1 AND at = $2 AND subject = $3 AND name = $4",
                        &[
                            &tenant.as_str(),
                            &ts(old.expires_at),
                            &subject.as_str(),
                            &f.name.as_str(),
                        ],
                    )?;
                }
                if f.expires_at.0 != 0 {
                    exec(
                        t,
                        "INSERT INTO pv_expiry (tenant, at, subject, name) VALUES ($1, $2, $3, $4)
                         ON CONFLICT DO NOTHING",
                        &[
                            &tenant.as_str(),
                            &ts(f.expires_at),
                            &subject.as_str(),
                            &f.name.as_str(),
                        ],
                    )?;
                }
                let stored_field = f.record(meta.clone());
                put_field(t, tenant, subject, &stored_field)?;
                written.push(Written {
                    meta,
                    previous: previous.map(|p| p.meta),
                });
            }
            if dirty {
                put_subject(t, tenant, subject, &record)?;
            }
            Ok(written)
        })
    }

    fn fields(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Vec<FieldRecord>> {
        self.fields_page(tenant, subject, None, usize::MAX)
    }

    fn fields_page(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        after: Option<&FieldName>,
        n: usize,
    ) -> StoreResult<Vec<FieldRecord>> {
        self.read(|c| {
            tenant_rows(
                c,
                tenant,
                "SELECT record FROM pv_fields
                 WHERE tenant = $1 AND subject = $2 AND ($3::text IS NULL OR name > $3)
                 ORDER BY name LIMIT $4",
                &[
                    &tenant.as_str(),
                    &subject.as_str(),
                    &after.map(|a| a.as_str()),
                    &limit(n),
                ],
            )?
            .iter()
            .map(|r| Ok(FieldRecord::decode(r.get(0))?))
            .collect()
        })
    }

    fn field(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        name: &FieldName,
    ) -> StoreResult<Option<FieldRecord>> {
        self.read(|c| {
            let found = tenant_one(
                c,
                tenant,
                FIELD_RECORD,
                &[&tenant.as_str(), &subject.as_str(), &name.as_str()],
            )?;
            found.map(|r| decode_field(&r)).transpose()
        })
    }

    fn delete_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        names: &[FieldName],
    ) -> StoreResult<u32> {
        self.tx(|t| {
            require_tenant(t, tenant)?;
            let mut record = subject_row(t, tenant, subject)?;
            let mut deleted = 0u32;
            let mut dirty = false;
            for name in names {
                let Some(old) = one(
                    t,
                    "DELETE FROM pv_fields WHERE tenant = $1 AND subject = $2 AND name = $3
                     RETURNING record",
                    &[&tenant.as_str(), &subject.as_str(), &name.as_str()],
                )?
                else {
                    continue;
                };
                deleted += 1;
                let old = FieldRecord::decode(old.get(0))?;
                if let Some(rec) = record.as_mut() {
                    dirty |= unindex(t, tenant, rec, &old.index_entry)?;
                }
            }
            if let (true, Some(rec)) = (dirty, record) {
                put_subject(t, tenant, subject, &rec)?;
            }
            Ok(deleted)
        })
    }

    fn subject_state(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<SubjectState> {
        self.read(|c| {
            match tenant_one(
                c,
                tenant,
                "SELECT state FROM pv_state WHERE tenant = $1 AND subject = $2",
                &[&tenant.as_str(), &subject.as_str()],
            )? {
                Some(r) => Ok(decode_state(r.get(0))?),
                None => Ok(SubjectState::default()),
            }
        })
    }

    fn set_subject_state(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        state: &SubjectState,
    ) -> StoreResult<()> {
        self.tx(|t| {
            require_tenant(t, tenant)?;
            exec(
                t,
                "INSERT INTO pv_state (tenant, subject, state) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant, subject) DO UPDATE SET state = EXCLUDED.state",
                &[&tenant.as_str(), &subject.as_str(), &encode_state(state)],
            )?;
            Ok(())
        })
    }

    fn expired(
        &self,
        tenant: &TenantId,
        now: Timestamp,
        n: usize,
    ) -> StoreResult<Vec<(SubjectId, FieldName, Timestamp)>> {
        self.read(|c| {
            tenant_rows(
                c,
                tenant,
                "SELECT subject, name, at FROM pv_expiry WHERE tenant = $1 AND at <= $2
                 ORDER BY at, subject, name LIMIT $3",
                &[&tenant.as_str(), &ts(now), &limit(n)],
            )?
            .iter()
            .map(|r| {
                Ok((
                    subject_id(r.get(0))?,
                    field_name(r.get(1))?,
                    to_ts(r.get(2), "expiry entry")?,
                ))
            })
            .collect()
        })
    }

    fn delete_expired(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        name: &FieldName,
        expires_at: Timestamp,
    ) -> StoreResult<bool> {
        self.tx(|t| {
            require_tenant(t, tenant)?;
            exec(
                t,
                "DELETE FROM pv_expiry WHERE tenant = $1 AND at = $2 AND subject = $3 AND name = $4",
                &[&tenant.as_str(), &ts(expires_at), &subject.as_str(), &name.as_str()],
            )?;
            let Some(field) = field_row(t, tenant, subject, name)? else {
                return Ok(false);
            };
            if field.expires_at != expires_at {
                // Rewritten since: it has a new expiry entry of its own.
                return Ok(false);
            }
            exec(
                t,
                "DELETE FROM pv_fields WHERE tenant = $1 AND subject = $2 AND name = $3",
                &[&tenant.as_str(), &subject.as_str(), &name.as_str()],
            )?;
            if let Some(mut rec) = subject_row(t, tenant, subject)? {
                if unindex(t, tenant, &mut rec, &field.index_entry)? {
                    put_subject(t, tenant, subject, &rec)?;
                }
            }
            Ok(true)
        })
    }

    fn index_scan(&self, tenant: &TenantId, prefix: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
        let end = prefix_end(prefix);
        self.read(|c| {
            Ok(tenant_rows(
                c,
                tenant,
                "SELECT entry FROM pv_index
                 WHERE tenant = $1 AND entry >= $2 AND ($3::bytea IS NULL OR entry < $3)
                 ORDER BY entry",
                &[&tenant.as_str(), &prefix, &end],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn reindex_field(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        name: &FieldName,
        entry: &[u8],
    ) -> StoreResult<()> {
        self.tx(|t| {
            require_tenant(t, tenant)?;
            let (Some(mut rec), Some(mut field)) = (
                subject_row(t, tenant, subject)?,
                field_row(t, tenant, subject, name)?,
            ) else {
                // Erased or deleted meanwhile: nothing to re-index.
                return Ok(());
            };
            unindex(t, tenant, &mut rec, &field.index_entry)?;
            add_index(t, tenant, entry)?;
            rec.index_entries.push(entry.to_vec());
            field.index_entry = entry.to_vec();
            put_field(t, tenant, subject, &field)?;
            put_subject(t, tenant, subject, &rec)?;
            Ok(())
        })
    }

    fn erase_subject(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        tombstone: &Tombstone,
    ) -> StoreResult<Erasure> {
        let shadow = subject.legal_shadow();
        self.tx(|t| {
            require_tenant(t, tenant)?;
            let (tid, sid) = (tenant.as_str(), subject.as_str());
            if let Some(earlier) = one(
                t,
                "SELECT tombstone FROM pv_tombstones WHERE tenant = $1 AND subject = $2",
                &[&tid, &sid],
            )? {
                return Ok(Erasure::AlreadyErased(Tombstone::decode(earlier.get(0))?));
            }
            let Some(removed) = one(
                t,
                "DELETE FROM pv_subjects WHERE tenant = $1 AND subject = $2 RETURNING record",
                &[&tid, &sid],
            )?
            else {
                return Ok(Erasure::NotFound);
            };
            let record = SubjectRecord::decode(removed.get(0))?;
            let mut written = Tombstone {
                categories: record.categories,
                ..tombstone.clone()
            };
            match subject_row(t, tenant, &shadow)? {
                Some(shadow_record) => {
                    written.retained_categories = shadow_record.categories;
                    exec(
                        t,
                        "INSERT INTO pv_legal_holds (until, tenant, shadow) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                        &[&ts(tombstone.retained_until), &tid, &shadow.as_str()],
                    )?;
                }
                None => written.retained_until = Timestamp(0),
            }
            exec(
                t,
                "INSERT INTO pv_tombstones (tenant, subject, tombstone, purged)
                 VALUES ($1, $2, $3, $4)",
                &[&tid, &sid, &written.encode(), &written.purged],
            )?;
            exec(
                t,
                "DELETE FROM pv_state WHERE tenant = $1 AND subject = $2",
                &[&tid, &sid],
            )?;
            for entry in &record.index_entries {
                exec(
                    t,
                    "DELETE FROM pv_index WHERE tenant = $1 AND entry = $2",
                    &[&tid, entry],
                )?;
            }
            mark_epoch(t, tenant)?;
            Ok(Erasure::Erased(written))
        })
    }

    fn tombstone(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Option<Tombstone>> {
        self.read(|c| {
            tenant_one(
                c,
                tenant,
                "SELECT tombstone FROM pv_tombstones WHERE tenant = $1 AND subject = $2",
                &[&tenant.as_str(), &subject.as_str()],
            )?
            .map(|r| Ok(Tombstone::decode(r.get(0))?))
            .transpose()
        })
    }

    fn purge_fields(&self, tenant: &TenantId, subject: &SubjectId, n: usize) -> StoreResult<usize> {
        self.tx(|t| {
            require_tenant(t, tenant)?;
            let (tid, sid) = (tenant.as_str(), subject.as_str());
            let deleted = exec(
                t,
                "DELETE FROM pv_fields WHERE tenant = $1 AND subject = $2 AND name IN (
                     SELECT name FROM pv_fields WHERE tenant = $1 AND subject = $2
                     ORDER BY name LIMIT $3)",
                &[&tid, &sid, &limit(n)],
            )?;
            if deleted == 0 {
                if let Some(row) = one(
                    t,
                    "SELECT tombstone FROM pv_tombstones WHERE tenant = $1 AND subject = $2",
                    &[&tid, &sid],
                )? {
                    let mut stone = Tombstone::decode(row.get(0))?;
                    if !stone.purged {
                        stone.purged = true;
                        exec(
                            t,
                            "UPDATE pv_tombstones SET tombstone = $3, purged = true
                             WHERE tenant = $1 AND subject = $2",
                            &[&tid, &sid, &stone.encode()],
                        )?;
                    }
                }
            }
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }

    fn unpurged(&self) -> StoreResult<Vec<(TenantId, SubjectId)>> {
        self.read(|c| {
            rows(
                c,
                "SELECT tenant, subject FROM pv_tombstones WHERE NOT purged ORDER BY tenant, subject",
                &[],
            )?
            .iter()
            .map(|r| Ok((tenant_id(r.get(0))?, subject_id(r.get(1))?)))
            .collect()
        })
    }

    fn legal_holds_due(
        &self,
        now: Timestamp,
    ) -> StoreResult<Vec<(TenantId, SubjectId, Timestamp)>> {
        self.read(|c| {
            rows(
                c,
                "SELECT until, tenant, shadow FROM pv_legal_holds WHERE until <= $1
                 ORDER BY until, tenant, shadow",
                &[&ts(now)],
            )?
            .iter()
            .map(|r| {
                Ok((
                    tenant_id(r.get(1))?,
                    subject_id(r.get(2))?,
                    to_ts(r.get(0), "legal hold")?,
                ))
            })
            .collect()
        })
    }

    fn clear_legal_hold(
        &self,
        tenant: &TenantId,
        shadow: &SubjectId,
        until: Timestamp,
    ) -> StoreResult<()> {
        self.read(|c| {
            exec(
                c,
                "DELETE FROM pv_legal_holds WHERE until = $1 AND tenant = $2 AND shadow = $3",
                &[&ts(until), &tenant.as_str(), &shadow.as_str()],
            )
            .map(|_| ())
        })
    }

    fn epoch_pending(&self) -> StoreResult<Vec<(TenantId, u64)>> {
        self.read(|c| {
            rows(
                c,
                "SELECT tenant, erasures FROM pv_epoch_pending ORDER BY tenant",
                &[],
            )?
            .iter()
            .map(|r| {
                let n: i64 = r.get(1);
                Ok((tenant_id(r.get(0))?, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
        })
    }

    fn clear_epoch_pending(&self, tenant: &TenantId, seen: u64) -> StoreResult<()> {
        // Only if no erasure happened since `seen` was read: a later one needs the next epoch.
        self.read(|c| {
            exec(
                c,
                "DELETE FROM pv_epoch_pending WHERE tenant = $1 AND erasures = $2",
                &[&tenant.as_str(), &seq(seen)],
            )
            .map(|_| ())
        })
    }

    fn audit_append(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()> {
        let seqs: Vec<i64> = events.iter().map(|(s, _)| seq(*s)).collect();
        let bodies: Vec<&[u8]> = events.iter().map(|(_, b)| b.as_slice()).collect();
        self.tx(|t| {
            // One chain for all nodes: a batch must continue the newest stored event. If
            // another node appended first, `Conflict` tells the writer to re-chain the batch
            // after it (SERIALIZABLE makes two appends of the same place conflict).
            let Some(first) = seqs.first() else {
                return Ok(());
            };
            let last: Option<i64> =
                one(t, "SELECT max(seq) FROM pv_audit", &[])?.and_then(|r| r.get(0));
            if last.is_some_and(|last| last + 1 != *first) {
                return Err(StoreError::Conflict.into());
            }
            exec(
                t,
                "INSERT INTO pv_audit (seq, event) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                &[&seqs, &bodies],
            )?;
            set_meta(t, AUDIT_HEAD, head)
        })
    }

    fn audit_scan(&self, after: u64, n: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.read(|c| {
            rows(
                c,
                "SELECT seq, event FROM pv_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq(after), &limit(n)],
            )?
            .iter()
            .map(|r| {
                let s: i64 = r.get(0);
                let s = u64::try_from(s).map_err(|_| StoreError::Corrupt("audit key"))?;
                Ok((s, r.get(1)))
            })
            .collect()
        })
    }

    fn audit_last(&self) -> StoreResult<Option<(u64, Vec<u8>)>> {
        self.read(|c| {
            one(
                c,
                "SELECT seq, event FROM pv_audit ORDER BY seq DESC LIMIT 1",
                &[],
            )?
            .map(|r| {
                let s: i64 = r.get(0);
                let s = u64::try_from(s).map_err(|_| StoreError::Corrupt("audit key"))?;
                Ok((s, r.get(1)))
            })
            .transpose()
        })
    }

    fn audit_marks(&self) -> StoreResult<AuditMarks> {
        self.read(|c| {
            Ok(AuditMarks {
                head: meta_value(c, AUDIT_HEAD)?,
                checkpoint: meta_value(c, AUDIT_CHECKPOINT)?,
            })
        })
    }

    fn audit_prune(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64> {
        // The checkpoint and the deletion commit together.
        self.tx(|t| {
            set_meta(t, AUDIT_CHECKPOINT, checkpoint)?;
            exec(t, "DELETE FROM pv_audit WHERE seq <= $1", &[&seq(through)])
        })
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

/// The lease session's side of the `Store` trait.
impl PgStore {
    fn take_lease(&self, job: &str) -> StoreResult<bool> {
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

    fn take_fence(&self, mode: FenceMode) -> StoreResult<Fence<'_>> {
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

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_string_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
