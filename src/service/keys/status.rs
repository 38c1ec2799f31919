//! The state of every key, for `GetKeyStatus`: versions, creation and destruction times,
//! encryption counts against their limits, how many keys each version still wraps, re-wrap
//! progress, the epoch schedule. Never key material.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::audit::Operation;
use crate::authz::act;
use crate::domain::{TenantId, Timestamp};
use crate::keyring::{KeyLimits, Keyring};
use crate::storage::{KeyVersionInfo, RewrapJob};

use super::super::usecase::{no_detail, Check};
use super::super::{Call, ServiceError, Vault};
use super::EpochRun;

/// Tenants listed per store page.
const PAGE: usize = 256;

/// One version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionStatus {
    pub version: u32,
    /// `None` when unknown (a root version from before key management recorded it).
    pub created_at: Option<Timestamp>,
    pub destroyed_at: Option<Timestamp>,
    pub current: bool,
    /// Encryptions counted (an upper bound: reserved uses count as used after a restart).
    pub encryptions: u64,
    /// Keys this version still wraps: DEKs for a KEK version (when counted), tenant KEK
    /// versions plus the audit key for a root version.
    pub wraps: Option<u64>,
    /// A retired root key version: when it was retired and when it is destroyed (the
    /// backup window later).
    pub retired: Option<(Timestamp, Timestamp)>,
}

/// The root key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootStatus {
    pub current: u32,
    /// Versions in the root key file, then destroyed ones still in the history.
    pub versions: Vec<VersionStatus>,
    /// True while a rotation still has to re-wrap and destroy.
    pub rotation_pending: bool,
}

/// One tenant's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantKeyStatus {
    pub tenant: TenantId,
    pub current: u32,
    pub versions: Vec<VersionStatus>,
    pub rewrap: Option<RewrapJob>,
    pub shredded_at: Option<Timestamp>,
    /// Subjects of the tenant, when DEKs were counted.
    pub subjects: Option<u64>,
    /// True if the tenant had erasures since the last key epoch.
    pub epoch_pending: bool,
}

/// Every key of the vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    pub root: RootStatus,
    pub tenants: Vec<TenantKeyStatus>,
    pub last_epoch: Option<Timestamp>,
    pub next_epoch: Timestamp,
    pub epoch_interval: Duration,
    /// The epoch under way (started, perhaps failed and waiting for its retry).
    pub epoch_run: Option<EpochRun>,
    pub limits: KeyLimits,
}

fn version_status(v: &KeyVersionInfo, current: u32, encryptions: u64) -> VersionStatus {
    VersionStatus {
        version: v.version,
        created_at: (v.created_at.0 != 0).then_some(v.created_at),
        destroyed_at: v.destroyed_at,
        current: v.version == current,
        encryptions,
        wraps: None,
        retired: None,
    }
}

impl Vault {
    /// The state of the root key and of one tenant's keys (or every tenant's). With
    /// `count_deks`, every subject record of those tenants is read to count how many DEKs
    /// each KEK version still wraps (O(subjects)); without, the counts are left out.
    pub async fn key_status(
        &self, call: &Call, tenant: Option<&TenantId>, count_deks: bool,
    ) -> Result<KeyStatus, ServiceError> {
        self.use_case(call, Operation::KeyStatus)
            .tenant(tenant.map(ToString::to_string).unwrap_or_default())
            .run(
                Check::action(act::KeyAdmin, tenant),
                |_| self.gather_status(tenant, count_deks),
                no_detail,
            )
            .await
    }

    async fn gather_status(
        &self, only: Option<&TenantId>, count_deks: bool,
    ) -> Result<KeyStatus, ServiceError> {
        let tenant_ids: Vec<TenantId> = match only {
            Some(t) => {
                self.store.tenant(t)?.ok_or(ServiceError::TenantNotFound)?;
                vec![t.clone()]
            }
            None => self.all_tenant_ids()?,
        };
        // Read before the marks: an epoch clears its marks before it ends, so a status that
        // shows no epoch under way never shows the marks that epoch has cleared.
        let epoch_run = self.epoch_run()?;
        let pending: BTreeSet<TenantId> = self
            .store
            .epoch_pending()?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let mut root_wraps: BTreeMap<u32, u64> = BTreeMap::new();
        let mut tenants = Vec::with_capacity(tenant_ids.len());
        for id in tenant_ids {
            let pending = pending.contains(&id);
            tenants.push(
                self.tenant_status(id, count_deks, pending, &mut root_wraps)
                    .await?,
            );
        }
        // On a shared store, show the root key file as the last rotation left it, on any node.
        self.key_op(Keyring::sync_root).await?;
        let (current, in_file) = self.keys.root_versions()?;
        let state = self.keys.root_state()?;
        let retired = self.keys.retired_root_versions()?;
        let mut root_versions: Vec<VersionStatus> = in_file
            .iter()
            .map(|v| {
                let info = state
                    .version(*v)
                    .cloned()
                    .unwrap_or_else(|| KeyVersionInfo::new(*v, Timestamp(0)));
                let used = self.keys.root_encryptions(*v, info.reserved);
                let mut s = version_status(&info, current, used);
                s.retired = retired
                    .iter()
                    .find(|r| r.version == *v)
                    .map(|r| (r.retired_at, r.destroyed_after));
                // Root wraps are only counted when every tenant was looked at.
                if only.is_none() {
                    s.wraps = Some(root_wraps.get(v).copied().unwrap_or(0));
                }
                s
            })
            .collect();
        root_versions.extend(
            state
                .versions
                .iter()
                .filter(|v| v.destroyed_at.is_some() && !in_file.contains(&v.version))
                .map(|v| version_status(v, current, v.reserved)),
        );
        root_versions.sort_by_key(|v| v.version);
        if only.is_none() {
            if let Some(audit) = self.audit_key_root_version()? {
                if let Some(v) = root_versions.iter_mut().find(|v| v.version == audit) {
                    v.wraps = Some(v.wraps.unwrap_or(0) + 1);
                }
            }
        }
        Ok(KeyStatus {
            root: RootStatus {
                current,
                versions: root_versions,
                rotation_pending: self.keys.root_rotation_pending(),
            },
            tenants,
            last_epoch: state.last_epoch,
            next_epoch: self.next_epoch()?,
            epoch_interval: self.key_epoch_interval,
            epoch_run,
            limits: self.keys.limits(),
        })
    }

    /// One tenant's keys; counts the root versions its KEK versions are wrapped under into
    /// `root_wraps`.
    async fn tenant_status(
        &self, id: TenantId, count_deks: bool, epoch_pending: bool,
        root_wraps: &mut BTreeMap<u32, u64>,
    ) -> Result<TenantKeyStatus, ServiceError> {
        let (record, state) = self.keys.tenant_keys(&id)?;
        let counts = if count_deks {
            let t = id.clone();
            Some(self.key_op(move |k| k.count_wraps(&t)).await?)
        } else {
            None
        };
        let mut versions: Vec<VersionStatus> = state
            .versions
            .iter()
            .map(|v| {
                let used = self.keys.kek_encryptions(&id, v.version, v.reserved);
                let mut s = version_status(v, record.kek_version, used);
                if let Some(c) = &counts {
                    s.wraps = Some(c.by_kek.get(&v.version).copied().unwrap_or(0));
                }
                s
            })
            .collect();
        versions.sort_by_key(|v| v.version);
        for (_, wrapped) in self.store.keks(&id)? {
            *root_wraps.entry(wrapped.key_version()).or_default() += 1;
        }
        Ok(TenantKeyStatus {
            epoch_pending,
            tenant: id,
            current: record.kek_version,
            versions,
            rewrap: state.rewrap,
            shredded_at: record.shredded_at,
            subjects: counts.map(|c| c.subjects),
        })
    }

    fn all_tenant_ids(&self) -> Result<Vec<TenantId>, ServiceError> {
        let mut out = Vec::new();
        let mut after: Option<TenantId> = None;
        loop {
            let page = self.store.tenants(after.as_ref(), PAGE)?;
            out.extend(page.iter().map(|t| t.id.clone()));
            if page.len() < PAGE {
                return Ok(out);
            }
            after = page.last().map(|t| t.id.clone());
        }
    }

    /// The root version the audit key is wrapped under.
    fn audit_key_root_version(&self) -> Result<Option<u32>, ServiceError> {
        Ok(self
            .store
            .meta("audit_key")?
            .and_then(|b| crate::crypto::Sealed::decode(&b).ok())
            .map(|s| s.key_version()))
    }
}
