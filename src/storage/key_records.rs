//! Record formats of key management: the state of a tenant's KEK versions (creation,
//! destruction, usage reservations, the running re-wrap) and of the root key versions.
//! Metadata only: the wrapped keys themselves live in the `keks` tree and the root key file.

use crate::codec::{Reader, Writer};
use crate::crypto::Sealed;
use crate::domain::{SubjectId, Timestamp};

use super::records::{optional_time, read_optional_time, TenantRecord};
use super::StoreError;

const KEY_RECORD_V1: u8 = 1;
/// Destroyed versions kept in a history for `GetKeyStatus`; older entries are forgotten.
const DESTROYED_HISTORY: usize = 16;

fn check_format(r: &mut Reader<'_>, what: &'static str) -> Result<(), StoreError> {
    if r.u8()? == KEY_RECORD_V1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(what))
    }
}

fn count(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// One version of a key that wraps other keys (a tenant KEK or a root key version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersionInfo {
    pub version: u32,
    pub created_at: Timestamp,
    /// When the version was destroyed; `None` while it exists.
    pub destroyed_at: Option<Timestamp>,
    /// Encryptions reserved under this version, persisted before use: an upper bound on how
    /// many keys it ever wrapped, which never goes back after a crash.
    pub reserved: u64,
}

impl KeyVersionInfo {
    pub fn new(version: u32, created_at: Timestamp) -> Self {
        Self {
            version,
            created_at,
            destroyed_at: None,
            reserved: 0,
        }
    }

    fn write(&self, w: Writer) -> Writer {
        optional_time(
            w.u32(self.version).u64(self.created_at.0),
            self.destroyed_at,
        )
        .u64(self.reserved)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, StoreError> {
        Ok(Self {
            version: r.u32()?,
            created_at: Timestamp(r.u64()?),
            destroyed_at: read_optional_time(r)?,
            reserved: r.u64()?,
        })
    }
}

/// Versions of a key, oldest first, with helpers shared by tenant KEKs and the root key.
fn write_versions(mut w: Writer, versions: &[KeyVersionInfo]) -> Writer {
    w = w.u32(count(versions.len()));
    for v in versions {
        w = v.write(w);
    }
    w
}

fn read_versions(r: &mut Reader<'_>) -> Result<Vec<KeyVersionInfo>, StoreError> {
    (0..r.u32()?).map(|_| KeyVersionInfo::read(r)).collect()
}

/// Marks `version` destroyed at `now` and forgets the oldest destroyed entries beyond the
/// history length.
fn destroy_in(versions: &mut Vec<KeyVersionInfo>, version: u32, now: Timestamp) {
    if let Some(v) = versions.iter_mut().find(|v| v.version == version) {
        v.destroyed_at.get_or_insert(now);
    }
    let destroyed = versions.iter().filter(|v| v.destroyed_at.is_some()).count();
    let mut excess = destroyed.saturating_sub(DESTROYED_HISTORY);
    versions.retain(|v| {
        if excess > 0 && v.destroyed_at.is_some() {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

/// A background re-wrap of a tenant's DEKs under a new KEK version, with its progress:
/// persisted after every batch, so a restarted vault resumes where it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewrapJob {
    /// The KEK version every DEK is re-wrapped under.
    pub target: u32,
    pub started_at: Timestamp,
    /// Last subject of the last finished batch of this pass; `None` at the start of a pass.
    pub cursor: Option<SubjectId>,
    /// Subjects examined and DEKs re-wrapped so far (all passes).
    pub scanned: u64,
    pub rewrapped: u64,
    /// Subjects of the tenant when the job (or its current pass) started: the progress
    /// denominator. Approximate while writes go on.
    pub total: u64,
    /// Passes over the subjects so far (a pass that still finds old wraps starts another).
    pub passes: u32,
}

/// The key state of one tenant: its KEK versions and its running re-wrap, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantKeyState {
    /// KEK versions, oldest first, destroyed ones included (a bounded history).
    pub versions: Vec<KeyVersionInfo>,
    pub rewrap: Option<RewrapJob>,
}

impl TenantKeyState {
    const WHAT: &'static str = "tenant key state";

    /// The state of a tenant that never had one stored (created before key management, or
    /// never rotated): its first KEK, created with the tenant.
    pub fn initial(tenant: &TenantRecord) -> Self {
        Self {
            versions: vec![KeyVersionInfo::new(tenant.kek_version, tenant.created_at)],
            rewrap: None,
        }
    }

    pub fn version(&self, version: u32) -> Option<&KeyVersionInfo> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn version_mut(&mut self, version: u32) -> Option<&mut KeyVersionInfo> {
        self.versions.iter_mut().find(|v| v.version == version)
    }

    /// Versions that still exist (not destroyed).
    pub fn live_versions(&self) -> impl Iterator<Item = &KeyVersionInfo> {
        self.versions.iter().filter(|v| v.destroyed_at.is_none())
    }

    /// Marks a version destroyed.
    pub fn destroy(&mut self, version: u32, now: Timestamp) {
        destroy_in(&mut self.versions, version, now);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = write_versions(Writer::new().u8(KEY_RECORD_V1), &self.versions);
        match &self.rewrap {
            None => w = w.u8(0),
            Some(j) => {
                w = w.u8(1).u32(j.target).u64(j.started_at.0);
                w = match &j.cursor {
                    Some(c) => w.u8(1).str(c.as_str()),
                    None => w.u8(0),
                };
                w = w.u64(j.scanned).u64(j.rewrapped).u64(j.total).u32(j.passes);
            }
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(buf, Self::WHAT);
        check_format(&mut r, Self::WHAT)?;
        let versions = read_versions(&mut r)?;
        let rewrap = match r.u8()? {
            0 => None,
            1 => {
                let target = r.u32()?;
                let started_at = Timestamp(r.u64()?);
                let cursor = match r.u8()? {
                    0 => None,
                    1 => Some(
                        SubjectId::parse(r.str()?).map_err(|_| StoreError::Corrupt(Self::WHAT))?,
                    ),
                    _ => return Err(StoreError::Corrupt(Self::WHAT)),
                };
                Some(RewrapJob {
                    target,
                    started_at,
                    cursor,
                    scanned: r.u64()?,
                    rewrapped: r.u64()?,
                    total: r.u64()?,
                    passes: r.u32()?,
                })
            }
            _ => return Err(StoreError::Corrupt(Self::WHAT)),
        };
        r.finish()?;
        Ok(Self { versions, rewrap })
    }
}

/// The state of the root key versions kept in the store (the keys themselves are in the
/// root key file): creation and destruction times, usage reservations, the last key epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootKeyState {
    pub versions: Vec<KeyVersionInfo>,
    /// When the last key epoch completed.
    pub last_epoch: Option<Timestamp>,
}

impl RootKeyState {
    const WHAT: &'static str = "root key state";

    pub fn version(&self, version: u32) -> Option<&KeyVersionInfo> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The entry of `version`, created (at `now`) if the state has none yet.
    pub fn version_mut(&mut self, version: u32, now: Timestamp) -> &mut KeyVersionInfo {
        let at = match self.versions.iter().position(|v| v.version == version) {
            Some(i) => i,
            None => {
                self.versions.push(KeyVersionInfo::new(version, now));
                self.versions.len() - 1
            }
        };
        &mut self.versions[at]
    }

    pub fn destroy(&mut self, version: u32, now: Timestamp) {
        destroy_in(&mut self.versions, version, now);
    }

    pub fn encode(&self) -> Vec<u8> {
        optional_time(
            write_versions(Writer::new().u8(KEY_RECORD_V1), &self.versions),
            self.last_epoch,
        )
        .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(buf, Self::WHAT);
        check_format(&mut r, Self::WHAT)?;
        let state = Self {
            versions: read_versions(&mut r)?,
            last_epoch: read_optional_time(&mut r)?,
        };
        r.finish()?;
        Ok(state)
    }
}

/// One atomic change of a tenant's keys, computed from its current records by the caller of
/// `Store::update_tenant_keys`.
#[derive(Clone, Debug)]
pub struct KeyChange {
    /// The tenant record to store (its current KEK version, its shredded mark).
    pub tenant: TenantRecord,
    pub state: TenantKeyState,
    /// Wrapped KEK versions to store.
    pub put_keks: Vec<(u32, Sealed)>,
    /// KEK versions to delete from the store (destroyed).
    pub delete_keks: Vec<u32>,
    /// Mark the tenant for the next key epoch (its old keys may survive in stale pages).
    pub mark_epoch: bool,
}

impl KeyChange {
    /// A change that rewrites the tenant's records and nothing else.
    pub fn records(tenant: TenantRecord, state: TenantKeyState) -> Self {
        Self {
            tenant,
            state,
            put_keks: Vec::new(),
            delete_keks: Vec::new(),
            mark_epoch: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;

    #[test]
    fn records_round_trip() {
        let tenant = TenantRecord {
            id: TenantId::parse("acme").expect("id"),
            created_at: Timestamp(5),
            kek_version: 2,
            shredded_at: None,
        };
        let mut state = TenantKeyState::initial(&tenant);
        state.versions.push(KeyVersionInfo::new(3, Timestamp(9)));
        state.rewrap = Some(RewrapJob {
            target: 3,
            started_at: Timestamp(9),
            cursor: Some(SubjectId::parse("u1").expect("id")),
            scanned: 10,
            rewrapped: 7,
            total: 100,
            passes: 1,
        });
        assert_eq!(TenantKeyState::decode(&state.encode()).ok(), Some(state));
        let root = RootKeyState {
            versions: vec![KeyVersionInfo::new(1, Timestamp(1))],
            last_epoch: Some(Timestamp(3)),
        };
        assert_eq!(RootKeyState::decode(&root.encode()).ok(), Some(root));
        let shredded = TenantRecord {
            shredded_at: Some(Timestamp(7)),
            ..tenant
        };
        assert_eq!(
            TenantRecord::decode(&shredded.encode()).ok(),
            Some(shredded)
        );
    }

    #[test]
    fn destroyed_history_is_bounded() {
        let mut state = RootKeyState::default();
        for v in 1..40 {
            state.version_mut(v, Timestamp(u64::from(v)));
            state.destroy(v, Timestamp(100));
        }
        state.version_mut(40, Timestamp(40));
        assert_eq!(state.versions.len(), DESTROYED_HISTORY + 1);
        assert!(state.version(40).is_some_and(|v| v.destroyed_at.is_none()));
    }
}
