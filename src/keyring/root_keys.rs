//! Root key rotation: add a version, re-wrap everything the old versions wrap (every
//! tenant KEK version, index key, the audit key, the root key check value), flush, and only
//! then retire the old versions. A retired version wraps nothing but still opens what
//! backups hold, for the backup window (`Keyring::backup_window`); then
//! `destroy_expired_root_versions` destroys it, and with it the last way to open a copy of
//! a key destroyed before it was retired.
//!
//! A crash at any point leaves a source that still holds every version something is
//! wrapped under; `finish_root_rotation` (run at start) completes the rotation.
//!
//! Several nodes sharing a store (PostgreSQL) share one root key file too. Adding and
//! destroying versions hold the store's root key fence exclusively, after reading the file
//! again; every wrap under the root key holds it shared until its wrapped key is stored
//! (`Keyring::root_for_wrap`). So no node wraps under a version another destroys, and a
//! rotation's re-wrap pass finds every key wrapped under an old version. Other nodes read
//! the file again when the store's root key state moves past what they hold
//! (`sync_root`, also run every second by the key worker) or when they meet a key wrapped
//! under a version they lack; that is also when they drop destroyed versions from memory.

use crate::crypto::{Audit, Index, Kek, Key, Sealed};
use crate::domain::{TenantId, Timestamp};
use crate::storage::{FenceMode, RootKeyState};

use super::root_source::destroyed_after;
use super::usage::{root_state, ROOT_STATE};
use super::{
    audit_aad, index_aad, kek_aad, parse_index_key_name, parse_root_check, Keyring, KeyringError,
    RootKeys, AUDIT_KEY, INDEX_KEY_PREFIX, ROOT_CHECK,
};

/// A retired root key version: it opens what backups hold until `destroyed_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetiredRoot {
    pub version: u32,
    pub retired_at: Timestamp,
    pub destroyed_after: Timestamp,
}

/// What a root key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRotation {
    /// The root key version now current (the only one that wraps).
    pub current: u32,
    /// Versions this rotation retired: kept to open backups until the window passes.
    pub retired: Vec<u32>,
    /// Versions destroyed (removed from the key source): retired ones whose window passed.
    pub destroyed: Vec<u32>,
    /// Keys re-wrapped under the current version (tenant KEK versions and the audit key).
    pub rewrapped: u64,
}

impl Keyring {
    /// The current root key version and every version the file holds.
    pub fn root_versions(&self) -> Result<(u32, Vec<u32>), KeyringError> {
        let root = self.root()?;
        Ok((root.current_version(), root.version_numbers()))
    }

    /// The stored state of the root key versions (creation, destruction, reservations, the
    /// last key epoch).
    pub fn root_state(&self) -> Result<RootKeyState, KeyringError> {
        root_state(self.store.as_ref())
    }

    /// Encryptions counted under a root key version with `reserved` persisted.
    pub fn root_encryptions(&self, version: u32, reserved: u64) -> u64 {
        self.usage.root_count(version, reserved)
    }

    /// True while the root key source holds a version that is neither current nor retired,
    /// or the store was last bound to another version (a restored backup): a rotation (or
    /// an automatic one at the usage limit) still has to re-wrap and retire.
    pub fn root_rotation_pending(&self) -> bool {
        let Ok(root) = self.root() else {
            return false;
        };
        let bound = self.store.meta(ROOT_CHECK).ok().flatten();
        let bound = bound.as_deref().and_then(parse_root_check).map(|(v, _)| v);
        root.unconverged() || bound.is_some_and(|v| v != root.current_version())
    }

    /// The retired root key versions still held: when each was retired and when it is
    /// destroyed.
    pub fn retired_root_versions(&self) -> Result<Vec<RetiredRoot>, KeyringError> {
        Ok(self
            .root()?
            .retired()
            .into_iter()
            .map(|(version, retired_at)| RetiredRoot {
                version,
                retired_at,
                destroyed_after: destroyed_after(retired_at, self.backup_window),
            })
            .collect())
    }

    /// True if a retired root key version's backup window has passed: the key worker then
    /// runs `destroy_expired_root_versions`.
    pub fn root_destruction_due(&self) -> Result<bool, KeyringError> {
        let now = self.clock.now();
        Ok(self
            .retired_root_versions()?
            .iter()
            .any(|r| r.destroyed_after <= now))
    }

    /// Destroys every retired root key version whose backup window has passed. Returns the
    /// versions destroyed.
    pub fn destroy_expired_root_versions(&self) -> Result<Vec<u32>, KeyringError> {
        let _one = self.root_rotation.lock();
        if !self.root_destruction_due()? {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let _fence = self.store.root_fence(FenceMode::Exclusive)?;
        if self.store.shared() {
            self.reload_root()?;
        }
        let destroyed = self
            .root
            .write()
            .map_err(|_| KeyringError::Missing("root key (lock poisoned)"))?
            .destroy_expired(now, self.backup_window)?;
        if !destroyed.is_empty() {
            self.update_root_state(|s| {
                for v in &destroyed {
                    s.destroy(*v, now);
                }
            })?;
            tracing::info!(
                destroyed = %super::version_list(&destroyed),
                "retired root key versions destroyed: the backup window has passed"
            );
        }
        Ok(destroyed)
    }

    /// On a store shared by several nodes: reads the root key file again if the store's
    /// root key state says another node changed it (a newer version, or a version this node
    /// holds destroyed). Returns whether it did. Errors if the file lacks the newest
    /// version: this node does not share the other nodes' file.
    ///
    /// The state is read again before that conclusion: the shared fence does not exclude
    /// this node's own rotation (one database session holds both), so the state read first
    /// may predate a rotation that has since added a version and destroyed the one it named,
    /// rewriting the file. Only a file that lacks the newest version of a state read twice
    /// alike is not shared.
    pub fn sync_root(&self) -> Result<bool, KeyringError> {
        if !self.store.shared() {
            return Ok(false);
        }
        let mut missing = None;
        for _ in 0..3 {
            let state = self.root_state()?;
            let newest = state
                .versions
                .iter()
                .filter(|v| v.destroyed_at.is_none())
                .map(|v| v.version)
                .max();
            let stale = |root: &RootKeys| {
                newest.is_some_and(|n| root.version(n).is_none())
                    || root
                        .version_numbers()
                        .iter()
                        .any(|v| state.version(*v).is_some_and(|i| i.destroyed_at.is_some()))
            };
            if !stale(&*self.root()?) {
                return Ok(missing.is_some());
            }
            self.reload_root()?;
            match newest {
                Some(n) if self.root()?.version(n).is_none() => {
                    if missing == Some(n) {
                        return Err(KeyringError::RootFileNotShared(n));
                    }
                    missing = Some(n);
                }
                _ => return Ok(true),
            }
        }
        Err(KeyringError::RootFileNotShared(missing.unwrap_or_default()))
    }

    /// Reads the root key file again, replacing the versions in memory; versions the file
    /// no longer holds are dropped (zeroized), and with them every cached DEK.
    pub(super) fn reload_root(&self) -> Result<(), KeyringError> {
        let mut root = self
            .root
            .write()
            .map_err(|_| KeyringError::Missing("root key (lock poisoned)"))?;
        let fresh = root.reload()?;
        let before = root.version_numbers();
        let dropped: Vec<u32> = before
            .iter()
            .copied()
            .filter(|v| fresh.version(*v).is_none())
            .collect();
        let changed = !dropped.is_empty() || fresh.version_numbers() != before;
        *root = fresh;
        let current = root.current_version();
        drop(root);
        if !dropped.is_empty() {
            // As on the node that rotated: keys derived under the old root leave memory.
            self.dek_cache.forget_all();
        }
        if changed {
            tracing::info!(
                current,
                dropped = %super::version_list(&dropped),
                "root key file read again"
            );
        }
        Ok(())
    }

    /// Records something about the root key state (read-modify-compare-and-swap).
    fn update_root_state(&self, edit: impl Fn(&mut RootKeyState)) -> Result<(), KeyringError> {
        self.edit_meta(ROOT_STATE, "root key state", |stored| {
            let mut state = stored
                .map(RootKeyState::decode)
                .transpose()?
                .unwrap_or_default();
            edit(&mut state);
            Ok(state.encode())
        })
        .map(drop)
    }

    /// Records when the last key epoch completed.
    pub fn record_epoch(&self) -> Result<(), KeyringError> {
        let now = self.clock.now();
        self.update_root_state(|s| s.last_epoch = Some(now))
    }

    /// Adds a root key version and makes it current (the file is rewritten atomically).
    /// Nothing is re-wrapped yet.
    pub(super) fn add_root_version(&self) -> Result<u32, KeyringError> {
        let _fence = self.store.root_fence(FenceMode::Exclusive)?;
        if self.store.shared() {
            // Another node may have changed the file: never write back an older copy.
            self.reload_root()?;
        }
        let version = {
            let mut root = self
                .root
                .write()
                .map_err(|_| KeyringError::Missing("root key (lock poisoned)"))?;
            root.add_version()?
        };
        let now = self.clock.now();
        self.update_root_state(|s| {
            s.version_mut(version, now);
        })?;
        tracing::info!(version, "root key version added");
        Ok(version)
    }

    /// Rotates the root key: a new version, everything re-wrapped under it, the old
    /// versions destroyed.
    pub fn rotate_root(&self) -> Result<RootRotation, KeyringError> {
        let _one = self.root_rotation.lock();
        self.add_root_version()?;
        self.converge_root()
    }

    /// Completes a root rotation that a crash or an automatic rotation left half-done.
    pub fn finish_root_rotation(&self) -> Result<Option<RootRotation>, KeyringError> {
        let _one = self.root_rotation.lock();
        if !self.root_rotation_pending() {
            return Ok(None);
        }
        self.converge_root().map(Some)
    }

    /// Re-wraps everything under the current root version, then destroys the others. Holds
    /// the root write guard throughout, so no wrap under an old version can happen.
    fn converge_root(&self) -> Result<RootRotation, KeyringError> {
        let fence = self.store.root_fence(FenceMode::Exclusive)?;
        if self.store.shared() {
            self.reload_root()?;
        }
        let mut root = self
            .root
            .write()
            .map_err(|_| KeyringError::Missing("root key (lock poisoned)"))?;
        let version = root.current().version();
        let rewrapped = self.rewrap_keks(&root)?
            + self.rewrap_audit_key(&root)?
            + self.rewrap_index_keys(&root)?;
        self.record_root_check(&root)?;
        let store = self.store.as_ref();
        // Everything the old versions wrapped is now under the current one, on disk.
        store.flush()?;
        if !fence.held() {
            // Another node may have wrapped under an old version since the fence was lost.
            return Err(KeyringError::Contended(
                "root key fence (its database session ended)",
            ));
        }
        let now = self.clock.now();
        let (retired, destroyed) = root.retire_others(now, self.backup_window)?;
        drop(root);
        self.update_root_state(|s| {
            s.version_mut(version, now);
            for v in &destroyed {
                s.destroy(*v, now);
            }
        })?;
        // Nothing a DEK depends on changed bytes, but a root rotation is when operators
        // expect every key derived from the old root to leave memory.
        self.dek_cache.forget_all();
        tracing::info!(
            version,
            retired = %super::version_list(&retired),
            destroyed = %super::version_list(&destroyed),
            rewrapped,
            "root key rotation complete"
        );
        Ok(RootRotation {
            current: version,
            retired,
            destroyed,
            rewrapped,
        })
    }

    /// Re-wraps every tenant KEK version not under the current root version; returns how
    /// many it re-wrapped.
    fn rewrap_keks(&self, root: &RootKeys) -> Result<u64, KeyringError> {
        let store = self.store.as_ref();
        let current = root.current();
        let version = current.version();
        let mut rewrapped = 0u64;
        let mut after: Option<TenantId> = None;
        loop {
            let tenants = store.tenants(after.as_ref(), 256)?;
            for t in &tenants {
                for (kek_version, wrapped) in store.keks(&t.id)? {
                    if wrapped.key_version() == version {
                        continue;
                    }
                    let old = root
                        .version(wrapped.key_version())
                        .ok_or(KeyringError::Missing("root key version"))?;
                    let kek: Key<Kek> = old.unwrap_key(&wrapped, kek_version, &kek_aad(&t.id))?;
                    self.usage.count_root_wrap(version, store)?;
                    let new = current.wrap(&kek, &kek_aad(&t.id))?;
                    // A KEK version destroyed meanwhile stays destroyed.
                    if store.replace_kek(&t.id, kek_version, &wrapped, &new)? {
                        rewrapped += 1;
                    }
                }
            }
            if tenants.len() < 256 {
                return Ok(rewrapped);
            }
            after = tenants.last().map(|t| t.id.clone());
        }
    }

    /// Re-wraps the audit key under the current root version if it is not; 1 if it did.
    fn rewrap_audit_key(&self, root: &RootKeys) -> Result<u64, KeyringError> {
        let store = self.store.as_ref();
        let current = root.current();
        let version = current.version();
        let Some(stored) = store.meta(AUDIT_KEY)? else {
            return Ok(0);
        };
        let wrapped = Sealed::decode(&stored).map_err(|_| KeyringError::Missing("audit key"))?;
        if wrapped.key_version() == version {
            return Ok(0);
        }
        let old = root
            .version(wrapped.key_version())
            .ok_or(KeyringError::Missing("root key version"))?;
        let key: Key<Audit> = old.unwrap_key(&wrapped, 1, &audit_aad())?;
        self.usage.count_root_wrap(version, store)?;
        let new = current.wrap(&key, &audit_aad())?.encode();
        if !store.meta_swap(AUDIT_KEY, Some(&stored), &new)? {
            return Err(KeyringError::Contended("audit key"));
        }
        Ok(1)
    }

    /// Re-wraps the blind-index keys (`index_key/<tenant>/<version>`, wrapped by the root key
    /// too) not under the current root version; returns how many it re-wrapped.
    fn rewrap_index_keys(&self, root: &RootKeys) -> Result<u64, KeyringError> {
        let store = self.store.as_ref();
        let current = root.current();
        let version = current.version();
        let mut rewrapped = 0u64;
        for (name, stored) in store.meta_scan(INDEX_KEY_PREFIX)? {
            let wrapped =
                Sealed::decode(&stored).map_err(|_| KeyringError::Missing("index key"))?;
            if wrapped.key_version() == version {
                continue;
            }
            let (tenant, index_version) = parse_index_key_name(&name)?;
            let old = root
                .version(wrapped.key_version())
                .ok_or(KeyringError::Missing("root key version"))?;
            let key: Key<Index> = old.unwrap_key(&wrapped, index_version, &index_aad(&tenant))?;
            self.usage.count_root_wrap(version, store)?;
            let new = current.wrap(&key, &index_aad(&tenant))?.encode();
            if !store.meta_swap(&name, Some(&stored), &new)? {
                return Err(KeyringError::Contended("index key"));
            }
            rewrapped += 1;
        }
        Ok(rewrapped)
    }

    /// Stores the current root version's check value (what a start compares its key file with).
    fn record_root_check(&self, root: &RootKeys) -> Result<(), KeyringError> {
        let store = self.store.as_ref();
        let current = root.current();
        let check = store.meta(ROOT_CHECK)?;
        let bound = check.as_deref().and_then(parse_root_check);
        if bound.is_some_and(|(v, c)| v == current.version() && current.check_matches(c)) {
            return Ok(());
        }
        let mut mine = current.version().to_be_bytes().to_vec();
        mine.extend_from_slice(&current.check_value()?);
        if !store.meta_swap(ROOT_CHECK, check.as_deref(), &mine)? {
            return Err(KeyringError::Contended("root key check value"));
        }
        Ok(())
    }
}
