//! The key of the erasure ledger (`service/rights/ledger.rs`): keyed hashes of the tenants
//! and subjects erased, and the MAC chain over the ledger's entries.
//!
//! It is derived from the audit key, which a root rotation re-wraps but never replaces and
//! which every backup holds (wrapped): so a restored store yields the same key and finds
//! the erased ids among its own by their hashes, while the ledger file alone, without the
//! root key, gives no way to test a guessed id.

use crate::crypto::{mac_eq, Key, RecordMac, MAC_LEN};
use crate::domain::{SubjectId, TenantId};

use super::{Keyring, KeyringError};

/// Length of the ledger's tags and MACs (HMAC-SHA-256).
pub const LEDGER_TAG_LEN: usize = MAC_LEN;

/// Keyed hashes for the erasure ledger. No `Clone`; `Debug` prints nothing secret.
pub struct LedgerKey(Key<RecordMac>);

impl std::fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerKey([secret])")
    }
}

impl LedgerKey {
    /// Test only: a ledger key from fixed bytes, so ledger tests need no store.
    #[cfg(any(test, feature = "testing"))]
    pub fn fixed(byte: u8) -> Self {
        Self(Key::from_secret_bytes(
            1,
            crate::crypto::Zeroizing::new([byte; 32]),
        ))
    }

    /// The ledger's name for a tenant.
    pub fn tenant_tag(&self, tenant: &TenantId) -> [u8; MAC_LEN] {
        self.0
            .mac("erasure-ledger tenant", &[tenant.as_str().as_bytes()])
    }

    /// The ledger's name for a subject of a tenant.
    pub fn subject_tag(&self, tenant: &TenantId, subject: &SubjectId) -> [u8; MAC_LEN] {
        self.0.mac(
            "erasure-ledger subject",
            &[tenant.as_str().as_bytes(), subject.as_str().as_bytes()],
        )
    }

    /// Compares two MACs in constant time.
    pub fn same_mac(&self, a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
        mac_eq(a, b)
    }

    /// The chain MAC of one entry: its encoded body after the previous entry's MAC.
    pub fn entry_mac(&self, previous: &[u8; MAC_LEN], body: &[u8]) -> [u8; MAC_LEN] {
        self.0.mac("erasure-ledger entry", &[previous, body])
    }
}

impl Keyring {
    /// The erasure ledger's key (derived from the audit key, see the module comment).
    pub fn ledger_key(&self) -> Result<LedgerKey, KeyringError> {
        let audit = self.audit_key()?;
        Ok(LedgerKey(audit.derive("erasure-ledger", &[])?))
    }
}
