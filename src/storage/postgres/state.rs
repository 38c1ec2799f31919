//! The PostgreSQL side of a subject's consents and restriction: read and write in one
//! serializable transaction (retried on serialization failures), so a concurrent change is
//! never lost, an erasure is never undone and the subject record's anchor moves with the
//! state record it anchors. The decision is `rules::update_state`.

use tokio_postgres::{GenericClient, Transaction};

use crate::domain::{SubjectId, TenantId};
use crate::storage::records::{StateRecord, SubjectRecord};
use crate::storage::{rules, StateUpdate, StoreError};

use super::conn::{exec, one, Db};
use super::error::R;
use super::rows::put_subject;

/// The tenant's existence, the subject's tombstone, state record and subject record, in
/// one statement (so one snapshot).
struct Read {
    erased: bool,
    stored: StateRecord,
    record: Option<SubjectRecord>,
}

fn read_all<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId, subject: &SubjectId) -> R<Read> {
    let Some(found) = one(
        c,
        "SELECT EXISTS (SELECT 1 FROM pv_tombstones WHERE tenant = t.id AND subject = $2),
                (SELECT state FROM pv_state WHERE tenant = t.id AND subject = $2),
                (SELECT record FROM pv_subjects WHERE tenant = t.id AND subject = $2)
         FROM pv_tenants t WHERE t.id = $1",
        &[&tenant.as_str(), &subject.as_str()],
    )?
    else {
        return Err(StoreError::NoTenant.into());
    };
    let stored = found
        .get::<_, Option<&[u8]>>(1)
        .map(StateRecord::decode)
        .transpose()?
        .unwrap_or_default();
    let record = found
        .get::<_, Option<&[u8]>>(2)
        .map(SubjectRecord::decode)
        .transpose()?;
    Ok(Read {
        erased: found.get::<_, bool>(0),
        stored,
        record,
    })
}

/// `Store::subject_state`: the state record, checked against its anchor.
pub(super) fn read<C: GenericClient>(
    c: &Db<'_, C>, tenant: &TenantId, subject: &SubjectId,
) -> R<StateRecord> {
    let read = read_all(c, tenant, subject)?;
    rules::check_state_anchor(read.record.as_ref(), &read.stored)?;
    Ok(read.stored)
}

/// `Store::update_subject_state`, inside the transaction `t`.
pub(super) fn update(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, update: &StateUpdate<'_>,
) -> R<StateRecord> {
    let read = read_all(t, tenant, subject)?;
    let (write, now) = rules::update_state(read.erased, read.record, read.stored, update)?;
    if let Some(write) = write {
        exec(
            t,
            "INSERT INTO pv_state (tenant, subject, state) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, subject) DO UPDATE SET state = EXCLUDED.state",
            &[&tenant.as_str(), &subject.as_str(), &write.state.encode()],
        )?;
        if let Some(rec) = write.subject {
            put_subject(t, tenant, subject, &rec)?;
        }
    }
    Ok(now)
}
