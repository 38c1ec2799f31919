//! A tenant as the vault's callers see it: its id, when it was created, and the version of
//! its key (KEK) that wraps new subject keys. How it is stored (and whether it was
//! shredded) is the store's business; a shredded tenant is never handed out.

use super::{TenantId, Timestamp};

/// One tenant of the vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub created_at: Timestamp,
    /// The current KEK version: rotations move it on, so callers can see that one happened.
    pub key_version: u32,
}
