//! Usage counting: every key counts its encryptions, and never encrypts past its limit.
//!
//! AES-GCM with random 96-bit nonces stays within NIST SP 800-38D's collision bound only
//! for up to 2^32 encryptions per key, so each key gets a limit far below that (configured,
//! default 2^30) and is replaced, not reused, when it reaches it.
//!
//! Counts are *reserved* in the store ahead of use, a block at a time: the persisted count
//! is the end of the last reserved block, made durable before any encryption from the block
//! happens, and the next block starts there. A crash loses the unused rest of a block but
//! never lets the count go back, so after a restart the count is at least every encryption
//! that happened before. The in-memory blocks below hand out uses between reservations.
//!
//! - KEK and root key blocks are reserved and flushed right here (rare: one flush per block).
//! - DEK blocks live in the subject record; the caller makes the reservation durable (a
//!   shared group-commit flush) before sealing, see `SealGrant::Granted`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::domain::{SubjectId, TenantId, Timestamp};
use crate::storage::{KeyChange, RootKeyState, Store, SubjectRecord};

use super::{KeyringError, RootKeys};

/// Store metadata key holding the root key versions' state (`RootKeyState`).
pub(super) const ROOT_STATE: &str = "root_key_state";
/// Uses reserved at a time for a subject DEK, a tenant KEK and a root key version.
const DEK_BLOCK: u64 = 64;
const KEK_BLOCK: u64 = 1024;
const ROOT_BLOCK: u64 = 16;
/// In-memory DEK blocks kept at most; past it they are all forgotten (their unused rest is
/// wasted, which is safe: counts only go up).
const DEK_BLOCKS_KEPT: usize = 100_000;

/// Encryption limits per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    /// Field values one subject DEK may seal before a new DEK version replaces it.
    pub dek: u64,
    /// Keys one tenant KEK or root key version may wrap before it is rotated.
    pub wrapping: u64,
}

impl Default for KeyLimits {
    fn default() -> Self {
        Self {
            dek: 1 << 30,
            wrapping: 1 << 30,
        }
    }
}

/// The answer to a request for DEK encryptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealGrant {
    /// The uses are granted. With `Some(token)`, the reservation is not known to be durable
    /// yet: flush the store, call `Keyring::seals_durable` with the token, then seal.
    Granted(Option<u64>),
    /// The DEK reached its limit: rotate it (`Keyring::rotate_dek`) and ask again.
    Exhausted,
    /// The subject record changed since it was read: read it again.
    Stale,
}

/// A reserved block of uses: `next` handed out so far, up to `end` (the persisted count).
struct Block {
    next: u64,
    end: u64,
    /// True once the reservation of `end` is known to be on disk.
    durable: bool,
}

/// In-memory blocks by key.
struct Counters<K> {
    blocks: Mutex<HashMap<K, Block>>,
    cap: usize,
}

impl<K: Hash + Eq> Counters<K> {
    fn new(cap: usize) -> Self {
        Self {
            blocks: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Takes `n` uses; `None` when the block (if any) has no room. Otherwise whether the
    /// block is durable and its end.
    fn take(&self, key: &K, n: u64) -> Option<(bool, u64)> {
        let mut map = self.blocks.lock().ok()?;
        let b = map.get_mut(key)?;
        let after = b.next.checked_add(n)?;
        (after <= b.end).then(|| {
            b.next = after;
            (b.durable, b.end)
        })
    }

    fn install(&self, key: K, block: Block) {
        if let Ok(mut map) = self.blocks.lock() {
            if map.len() >= self.cap && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key, block);
        }
    }

    fn mark_durable(&self, key: &K, end: u64) {
        if let Some(b) = self
            .blocks
            .lock()
            .ok()
            .as_deref_mut()
            .and_then(|m| m.get_mut(key))
        {
            if b.end == end {
                b.durable = true;
            }
        }
    }

    /// Uses handed out so far, if a block is held.
    fn used(&self, key: &K) -> Option<u64> {
        self.blocks.lock().ok()?.get(key).map(|b| b.next)
    }

    fn forget(&self, gone: impl Fn(&K) -> bool) {
        if let Ok(mut map) = self.blocks.lock() {
            map.retain(|k, _| !gone(k));
        }
    }
}

/// Every key's counters.
pub(super) struct Usage {
    limits: KeyLimits,
    keks: Counters<(TenantId, u32)>,
    roots: Counters<u32>,
    deks: Counters<(TenantId, SubjectId, u32)>,
    /// Serialises KEK and root reservations, which flush the store.
    extend: Mutex<()>,
}

impl Usage {
    pub(super) fn new(limits: KeyLimits) -> Self {
        Self {
            limits,
            keks: Counters::new(usize::MAX),
            roots: Counters::new(usize::MAX),
            deks: Counters::new(DEK_BLOCKS_KEPT),
            extend: Mutex::new(()),
        }
    }

    pub(super) fn limits(&self) -> KeyLimits {
        self.limits
    }

    /// Checks that one request's `n` seals can fit under one DEK at all.
    pub(super) fn check_request(&self, n: usize) -> Result<u64, KeyringError> {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        if n > self.limits.dek {
            return Err(KeyringError::LimitReached(format!(
                "one request may seal at most {} values (keys.max_encryptions_per_dek)",
                self.limits.dek
            )));
        }
        Ok(n)
    }

    /// Counts one wrap under a tenant KEK version, reserving (durably) a new block first
    /// when needed. `LimitReached` when the version may wrap no more.
    pub(super) fn count_kek_wrap(
        &self, tenant: &TenantId, version: u32, store: &dyn Store,
    ) -> Result<(), KeyringError> {
        let key = (tenant.clone(), version);
        if self.keks.take(&key, 1).is_some() {
            return Ok(());
        }
        let _one_at_a_time = self.extend.lock();
        if self.keks.take(&key, 1).is_some() {
            return Ok(());
        }
        let limit = self.limits.wrapping;
        for _ in 0..5 {
            let before = match store.tenant_keys(tenant)? {
                Some(state) => state.version(version).map(|v| v.reserved),
                None => Some(0),
            }
            .ok_or(KeyringError::Missing("tenant key version"))?;
            if before >= limit {
                return Err(KeyringError::LimitReached(format!(
                    "tenant key version {version} wrapped {before} keys"
                )));
            }
            let end = before.saturating_add(KEK_BLOCK).min(limit);
            let change = store.update_tenant_keys(tenant, &|rec, state| {
                let v = state.version(version)?;
                if v.destroyed_at.is_some() || v.reserved != before {
                    return None;
                }
                let mut state = state.clone();
                state.version_mut(version)?.reserved = end;
                Some(KeyChange::records(rec.clone(), state))
            })?;
            if change.is_some() {
                // Durable before the first use of the block.
                store.flush()?;
                self.keks.install(
                    key,
                    Block {
                        next: before + 1,
                        end,
                        durable: true,
                    },
                );
                return Ok(());
            }
        }
        Err(KeyringError::Contended("tenant key usage count"))
    }

    /// True if the current root version may wrap at least one more key.
    pub(super) fn root_has_room(
        &self, root: &RootKeys, store: &dyn Store,
    ) -> Result<bool, KeyringError> {
        let version = root.current_version();
        if let Ok(map) = self.roots.blocks.lock() {
            if map.get(&version).is_some_and(|b| b.next < b.end) {
                return Ok(true);
            }
        }
        let reserved = root_state(store)?
            .version(version)
            .map_or(0, |v| v.reserved);
        Ok(reserved < self.limits.wrapping)
    }

    /// Counts one wrap under root key version `version`, reserving a block when needed.
    pub(super) fn count_root_wrap(
        &self, version: u32, store: &dyn Store,
    ) -> Result<(), KeyringError> {
        if self.roots.take(&version, 1).is_some() {
            return Ok(());
        }
        let _one_at_a_time = self.extend.lock();
        if self.roots.take(&version, 1).is_some() {
            return Ok(());
        }
        let limit = self.limits.wrapping;
        for _ in 0..5 {
            let stored = store.meta(ROOT_STATE)?;
            let mut state = decode_root_state(stored.as_deref())?;
            // A version without an entry yet predates usage counting (or was just added).
            let entry = state.version_mut(version, Timestamp(0));
            let before = entry.reserved;
            if before >= limit {
                return Err(KeyringError::LimitReached(format!(
                    "root key version {version} wrapped {before} keys"
                )));
            }
            let end = before.saturating_add(ROOT_BLOCK).min(limit);
            entry.reserved = end;
            if store.meta_swap(ROOT_STATE, stored.as_deref(), &state.encode())? {
                store.flush()?;
                self.roots.install(
                    version,
                    Block {
                        next: before + 1,
                        end,
                        durable: true,
                    },
                );
                return Ok(());
            }
        }
        Err(KeyringError::Contended("root key usage count"))
    }

    /// Grants `n` seals under the subject's current DEK, reserving a block in its record
    /// when the in-memory one has no room. See `SealGrant`.
    pub(super) fn reserve_seals(
        &self, tenant: &TenantId, subject: &SubjectId, record: &SubjectRecord, n: usize,
        store: &dyn Store,
    ) -> Result<SealGrant, KeyringError> {
        let n = self.check_request(n)?;
        let key = (tenant.clone(), subject.clone(), record.dek_version);
        if let Some((durable, end)) = self.deks.take(&key, n) {
            return Ok(SealGrant::Granted((!durable).then_some(end)));
        }
        let before = record.dek_reserved;
        let limit = self.limits.dek;
        if before.saturating_add(n) > limit {
            return Ok(SealGrant::Exhausted);
        }
        let end = before.saturating_add(n.max(DEK_BLOCK)).min(limit);
        let version = record.dek_version;
        let changed =
            store.update_subjects(tenant, std::slice::from_ref(subject), &|_, s, _| {
                (s.dek_version == version && s.dek_reserved == before).then(|| SubjectRecord {
                    dek_reserved: end,
                    ..s.clone()
                })
            })?;
        if !changed.first().copied().unwrap_or(false) {
            return Ok(SealGrant::Stale);
        }
        self.deks.install(
            key,
            Block {
                next: before + n,
                end,
                durable: false,
            },
        );
        Ok(SealGrant::Granted(Some(end)))
    }

    pub(super) fn seals_durable(
        &self, tenant: &TenantId, subject: &SubjectId, dek_version: u32, token: u64,
    ) {
        self.deks
            .mark_durable(&(tenant.clone(), subject.clone(), dek_version), token);
    }

    /// Encryptions counted under a KEK version: the uses handed out in this process, else
    /// the persisted reservation (everything reserved before a restart counts as used).
    pub(super) fn kek_count(&self, tenant: &TenantId, version: u32, reserved: u64) -> u64 {
        self.keks
            .used(&(tenant.clone(), version))
            .unwrap_or(reserved)
    }

    pub(super) fn root_count(&self, version: u32, reserved: u64) -> u64 {
        self.roots.used(&version).unwrap_or(reserved)
    }

    pub(super) fn dek_count(
        &self, tenant: &TenantId, subject: &SubjectId, rec: &SubjectRecord,
    ) -> u64 {
        self.deks
            .used(&(tenant.clone(), subject.clone(), rec.dek_version))
            .unwrap_or(rec.dek_reserved)
    }

    pub(super) fn forget_tenant(&self, tenant: &TenantId) {
        self.keks.forget(|(t, _)| t == tenant);
        self.deks.forget(|(t, _, _)| t == tenant);
    }
}

/// The stored root key state (empty if none was stored yet).
pub(super) fn root_state(store: &dyn Store) -> Result<RootKeyState, KeyringError> {
    decode_root_state(store.meta(ROOT_STATE)?.as_deref())
}

fn decode_root_state(bytes: Option<&[u8]>) -> Result<RootKeyState, KeyringError> {
    Ok(bytes
        .map(RootKeyState::decode)
        .transpose()?
        .unwrap_or_default())
}
