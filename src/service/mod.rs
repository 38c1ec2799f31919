//! Use cases of the vault. Handlers in `api` call these with validated domain types; this
//! layer orders the keyring and the store and decides what is durable when.

mod error;
mod records;
mod tenants;

use std::sync::Arc;

pub use error::ServiceError;
pub use records::SubjectPage;
pub use tenants::TenantPage;

use crate::domain::Clock;
use crate::keyring::Keyring;
use crate::storage::{GroupCommit, Store};

/// Limits on what one request may carry.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted field value, in bytes.
    pub max_value_bytes: usize,
    /// Most fields one `PutFields` or `GetFields` may name.
    pub max_fields_per_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 64 * 1024,
            max_fields_per_request: 1000,
        }
    }
}

/// The vault's use cases, shared by every handler.
pub struct Vault {
    store: Arc<dyn Store>,
    keys: Keyring,
    commit: GroupCommit,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Vault {
    /// Assembles the vault. Must be called inside a tokio runtime (it starts the flusher).
    pub fn new(
        store: Arc<dyn Store>,
        keys: Keyring,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Self {
        Self {
            commit: GroupCommit::start(store.clone()),
            store,
            keys,
            clock,
            limits,
        }
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}
