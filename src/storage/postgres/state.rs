//! The PostgreSQL side of a subject's consents and restriction: read and write in one
//! serializable transaction (retried on serialization failures), so a concurrent change is
//! never lost and an erasure is never undone. The decision is `rules::update_state`.

use tokio_postgres::Transaction;

use crate::domain::{SubjectId, SubjectState, TenantId};
use crate::storage::records::{decode_state, encode_state};
use crate::storage::{rules, StateUpdate, StoreError};

use super::conn::{exec, one, Db};
use super::error::R;

/// `Store::update_subject_state`, inside the transaction `t`.
pub(super) fn update(
    t: &Db<'_, Transaction<'_>>,
    tenant: &TenantId,
    subject: &SubjectId,
    update: &StateUpdate<'_>,
) -> R<SubjectState> {
    let (tid, sid) = (tenant.as_str(), subject.as_str());
    let Some(found) = one(
        t,
        "SELECT EXISTS (SELECT 1 FROM pv_tombstones WHERE tenant = t.id AND subject = $2),
                (SELECT state FROM pv_state WHERE tenant = t.id AND subject = $2)
         FROM pv_tenants t WHERE t.id = $1",
        &[&tid, &sid],
    )?
    else {
        return Err(StoreError::NoTenant.into());
    };
    let stored = match found.get::<_, Option<&[u8]>>(1) {
        Some(bytes) => decode_state(bytes)?,
        None => SubjectState::default(),
    };
    let (write, now) = rules::update_state(found.get::<_, bool>(0), stored, update)?;
    if let Some(next) = write {
        exec(
            t,
            "INSERT INTO pv_state (tenant, subject, state) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, subject) DO UPDATE SET state = EXCLUDED.state",
            &[&tid, &sid, &encode_state(&next)],
        )?;
    }
    Ok(now)
}
