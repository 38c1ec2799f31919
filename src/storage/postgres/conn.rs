//! A pooled connection with the statements prepared on it, and the helpers that run SQL.
//!
//! tokio-postgres prepares a SQL string passed to `query` again on every call: a round trip
//! (Parse, Describe) before the one that runs it. Each connection here prepares a statement
//! the first time it runs it and keeps it: later calls only bind and execute.
//!
//! A prepared statement belongs to its session: it lives in the connection's `Conn`, so a
//! connection opened again in place of a closed one starts with none. PostgreSQL keeps a
//! statement prepared inside a transaction after that transaction rolls back (the protocol's
//! Parse is not transactional), and one prepared on the client serves the transactions of
//! the same client: the cache is shared by both. A Parse that fails caches nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use crate::domain::TenantId;
use crate::storage::StoreError;

use super::error::{block, Failure, R};

/// Statement parameters, as tokio-postgres takes them.
pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Prepared statements by their SQL text (always a literal in this module's callers).
type Prepared = RefCell<HashMap<&'static str, Statement>>;

/// One connection of the pool.
pub(super) struct Conn {
    pub(super) client: Client,
    /// The statements prepared on this connection so far: they die with it.
    prepared: Prepared,
}

impl Conn {
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            prepared: RefCell::default(),
        }
    }

    /// The connection itself, to run statements on outside a transaction.
    pub(super) fn db(&self) -> Db<'_, Client> {
        Db {
            on: &self.client,
            prepared: &self.prepared,
        }
    }

    /// The client, to open a transaction on, and the connection's prepared statements, to
    /// run in it (see `Db::within`).
    pub(super) fn split(&mut self) -> (&mut Client, &Prepared) {
        (&mut self.client, &self.prepared)
    }
}

/// Where statements run: a connection or a transaction open on it, with the statements
/// prepared on that connection.
pub(super) struct Db<'a, C> {
    on: &'a C,
    /// The statements of `on`'s connection, whether `on` is it or a transaction on it.
    prepared: &'a Prepared,
}

impl<'a, C> Db<'a, C> {
    /// Statements run by `on`, a transaction of the connection whose statements these are.
    pub(super) fn within(on: &'a C, prepared: &'a Prepared) -> Self {
        Self { on, prepared }
    }
}

impl<C: GenericClient> Db<'_, C> {
    /// `sql` prepared on this connection: on its first use here, and kept.
    fn statement(&self, sql: &'static str) -> R<Statement> {
        if let Some(s) = self.prepared.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = block(self.on.prepare(sql))?;
        self.prepared.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }
}

/// The row `sql` returns, if any (an error if it returns several).
pub(super) fn one<C: GenericClient>(
    c: &Db<'_, C>, sql: &'static str, params: &Params<'_>,
) -> R<Option<Row>> {
    let s = c.statement(sql)?;
    block(c.on.query_opt(&s, params))
}

pub(super) fn rows<C: GenericClient>(
    c: &Db<'_, C>, sql: &'static str, params: &Params<'_>,
) -> R<Vec<Row>> {
    let s = c.statement(sql)?;
    block(c.on.query(&s, params))
}

/// Runs `sql`; how many rows it changed.
pub(super) fn exec<C: GenericClient>(
    c: &Db<'_, C>, sql: &'static str, params: &Params<'_>,
) -> R<u64> {
    let s = c.statement(sql)?;
    block(c.on.execute(&s, params))
}

const TENANT_EXISTS: &str = "SELECT 1 FROM pv_tenants WHERE id = $1";

/// Runs `query`, a query of rows of `tenant` only, together with the check that the tenant
/// exists: both are sent at once, in one round trip (tokio-postgres pipelines requests
/// that are waited for together). `NoTenant` if it does not exist (the query then found
/// nothing of it).
fn of_tenant<C: GenericClient, T>(
    c: &Db<'_, C>, tenant: &TenantId, query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> R<T> {
    let check = c.statement(TENANT_EXISTS)?;
    let id = tenant.as_str();
    let check_params: &Params<'_> = &[&id];
    let (exists, found) = futures_executor::block_on(async {
        tokio::join!(c.on.query_opt(&check, check_params), query)
    });
    if exists?.is_none() {
        return Err(Failure::Store(StoreError::NoTenant));
    }
    Ok(found?)
}

/// `one(c, sql, params)` of a tenant that must exist (see `of_tenant`).
pub(super) fn tenant_one<C: GenericClient>(
    c: &Db<'_, C>, tenant: &TenantId, sql: &'static str, params: &Params<'_>,
) -> R<Option<Row>> {
    let s = c.statement(sql)?;
    of_tenant(c, tenant, c.on.query_opt(&s, params))
}

/// `rows(c, sql, params)` of a tenant that must exist (see `of_tenant`).
pub(super) fn tenant_rows<C: GenericClient>(
    c: &Db<'_, C>, tenant: &TenantId, sql: &'static str, params: &Params<'_>,
) -> R<Vec<Row>> {
    let s = c.statement(sql)?;
    of_tenant(c, tenant, c.on.query(&s, params))
}
