//! Record integrity keys: the per-tenant key that seals subjects' state records and
//! tombstones (`storage::records::sealed` says what a seal binds and what its anchor
//! detects), and `RecordSealer`, which computes and checks seals.
//!
//! The key is derived, never stored: HKDF-SHA-256 from the store's audit key, with the
//! label `RECORD_KEY_LABEL` as salt and the tenant id as info. Not from the tenant KEK nor
//! from the blind-index keys: both are rotated, and their old versions destroyed, at every
//! key epoch of a tenant with erasures, which would leave every stored seal unverifiable
//! (or need every record of the tenant re-sealed each epoch). The audit key is never
//! rotated, only re-wrapped under each new root key version, and every node of a shared
//! store reads the same one, so each node derives the same tenant key.
//!
//! Records written before seals existed have none. A store this version created (it had no
//! tenant when the keyring first opened it) records `RECORD_SEALS` in its metadata, and
//! then an unsealed record is refused like a forged one. A store created by an earlier
//! version has no such entry: there an unsealed state record is accepted as sequence
//! number 0 while its subject record anchors 0 (the first change seals it and moves the
//! anchor, after which an unsealed copy is refused too), and an unsealed tombstone is
//! accepted. `Keyring::seal_legacy_records`, run by every start before the vault serves,
//! closes that window: it seals every unsealed state record and tombstone, records
//! `RECORD_SEALS`, and from then on unsealed records are refused there too. A node of a
//! shared store that opened it before another node finished the migration keeps accepting
//! unsealed records until it restarts or migrates itself (no node writes one).

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::crypto::{mac_eq, Audit, Key, RecordMac, MAC_LEN};
use crate::domain::{SubjectId, SubjectState, TenantId};
use crate::storage::{RecordKind, Seal, StateRecord, StoreError, Tombstone};

use super::{Keyring, KeyringError};

/// Subjects, tombstones or tenants read per page by the migration.
const MIGRATION_PAGE: usize = 512;

/// HKDF salt of record integrity keys.
const RECORD_KEY_LABEL: &str = "pii-vault record integrity key v1";
/// The label every record seal's MAC starts with.
const SEAL_LABEL: &str = "pii-vault record seal v1";
/// Store metadata key present when every state record and tombstone must be sealed.
pub(super) const RECORD_SEALS: &str = "record_seals";

/// The tenant's record integrity key, from the audit key.
pub(super) fn derive_record_key(
    audit: &Key<Audit>, tenant: &TenantId,
) -> Result<Key<RecordMac>, KeyringError> {
    Ok(audit.derive(RECORD_KEY_LABEL, &[tenant.as_str().as_bytes()])?)
}

/// Seals and checks the state records and tombstones of one tenant's subjects. Pure: safe
/// to call inside a store transaction.
pub struct RecordSealer {
    tenant: TenantId,
    key: Arc<Key<RecordMac>>,
    /// Whether unsealed (pre-seal) records are still accepted (module comment).
    legacy: bool,
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSealer")
            .field("tenant", &self.tenant)
            .field("legacy", &self.legacy)
            .finish_non_exhaustive()
    }
}

impl RecordSealer {
    fn tag(
        &self, subject: &SubjectId, kind: RecordKind, seq: u64, content: &[u8],
    ) -> [u8; MAC_LEN] {
        self.key.mac(
            SEAL_LABEL,
            &[
                kind.label().as_bytes(),
                self.tenant.as_str().as_bytes(),
                subject.as_str().as_bytes(),
                &seq.to_be_bytes(),
                content,
            ],
        )
    }

    fn check(
        &self, subject: &SubjectId, kind: RecordKind, seal: Option<&Seal>, content: &[u8],
        harmless: bool,
    ) -> Result<(), StoreError> {
        let why = match seal {
            Some(s) if mac_eq(&self.tag(subject, kind, s.seq, content), &s.tag) => return Ok(()),
            Some(_) => "bad seal",
            None if self.legacy || harmless => return Ok(()),
            None => "no seal",
        };
        tracing::error!(
            tenant = %self.tenant,
            record = kind.label(),
            reason = why,
            "subject state record failed its integrity check; refused"
        );
        Err(StoreError::Integrity(why))
    }

    /// `state` sealed as the subject's state record number `seq`.
    pub fn seal_state(&self, subject: &SubjectId, state: SubjectState, seq: u64) -> StateRecord {
        let mut record = StateRecord { state, seal: None };
        let tag = self.tag(subject, RecordKind::State, seq, &record.content());
        record.seal = Some(Seal { seq, tag });
        record
    }

    /// Checks a stored state record's seal (its sequence number is checked by the store
    /// against the subject record). An unsealed default state is what a subject that never
    /// set one reads.
    pub fn check_state(&self, subject: &SubjectId, record: &StateRecord) -> Result<(), StoreError> {
        let default = record.state == SubjectState::default();
        let content = record.content();
        self.check(
            subject,
            RecordKind::State,
            record.seal.as_ref(),
            &content,
            default,
        )
    }

    /// `tombstone` sealed with sequence number `seq`.
    pub fn seal_tombstone(&self, subject: &SubjectId, tombstone: Tombstone, seq: u64) -> Tombstone {
        let tag = self.tag(subject, RecordKind::Tombstone, seq, &tombstone.content());
        Tombstone {
            seal: Some(Seal { seq, tag }),
            ..tombstone
        }
    }

    /// Checks a stored tombstone's seal.
    pub fn check_tombstone(
        &self, subject: &SubjectId, tombstone: &Tombstone,
    ) -> Result<(), StoreError> {
        let content = tombstone.content();
        self.check(
            subject,
            RecordKind::Tombstone,
            tombstone.seal.as_ref(),
            &content,
            false,
        )
    }
}

/// What `Keyring::seal_legacy_records` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LegacySeals {
    /// State records sealed.
    pub states: u64,
    /// Tombstones sealed.
    pub tombstones: u64,
    /// State records left unsealed because they failed the anchor check already (they stay
    /// refused, as they were before the migration).
    pub refused: u64,
}

impl Keyring {
    /// Seals every state record and tombstone that a store written by an earlier version
    /// holds without a seal, then records that seals are required (module comment). Does
    /// nothing (`None`) on a store that requires them already. Safe to run while the store
    /// is in use and on several nodes at once: each state record is sealed by
    /// compare-and-swap and each tombstone in a transaction, and a sealed record is left
    /// as it is.
    pub fn seal_legacy_records(&self) -> Result<Option<LegacySeals>, KeyringError> {
        if !self.legacy_records.load(Ordering::Acquire) {
            return Ok(None);
        }
        let mut done = LegacySeals::default();
        let mut after = None;
        loop {
            let tenants = self.store.tenants(after.as_ref(), MIGRATION_PAGE)?;
            let Some(last) = tenants.last() else { break };
            after = Some(last.id.clone());
            for tenant in &tenants {
                self.seal_tenant(&tenant.id, &mut done)?;
            }
        }
        self.store.meta_init(RECORD_SEALS, b"required")?;
        self.legacy_records.store(false, Ordering::Release);
        tracing::info!(
            states = done.states,
            tombstones = done.tombstones,
            refused = done.refused,
            "sealed the state records and tombstones an earlier version wrote; seals are required from now on"
        );
        Ok(Some(done))
    }

    fn seal_tenant(&self, tenant: &TenantId, done: &mut LegacySeals) -> Result<(), KeyringError> {
        let sealer = self.record_sealer(tenant)?;
        let mut after = None;
        loop {
            let subjects = self
                .store
                .subjects(tenant, after.as_ref(), MIGRATION_PAGE)?;
            let Some(last) = subjects.last().cloned() else {
                break;
            };
            for subject in &subjects {
                let sealed = Cell::new(false);
                let seal = |stored: &StateRecord| {
                    let legacy = stored.seal.is_none() && stored.state != SubjectState::default();
                    sealed.set(legacy);
                    Ok(legacy.then(|| {
                        sealer.seal_state(subject, stored.state.clone(), stored.seq() + 1)
                    }))
                };
                match self.store.update_subject_state(tenant, subject, &seal) {
                    Ok(_) => done.states += u64::from(sealed.get()),
                    // Erased meanwhile: its state went with it.
                    Err(StoreError::Erased) => {}
                    Err(StoreError::Integrity(_)) => done.refused += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            after = Some(last);
        }
        let mut after = None;
        loop {
            let page = self.store.seal_legacy_tombstones(
                tenant,
                after.as_ref(),
                MIGRATION_PAGE,
                &|subject, stone| sealer.seal_tombstone(subject, stone, 1),
            )?;
            done.tombstones += page.sealed as u64;
            match page.last {
                Some(last) => after = Some(last),
                None => return Ok(()),
            }
        }
    }

    /// The sealer of `tenant`'s records; its key is derived on first use and cached.
    pub fn record_sealer(&self, tenant: &TenantId) -> Result<RecordSealer, KeyringError> {
        let cached = self
            .record_keys
            .read()
            .ok()
            .and_then(|m| m.get(tenant).cloned());
        let key = match cached {
            Some(key) => key,
            None => {
                let key = Arc::new(derive_record_key(&self.audit_key()?, tenant)?);
                if let Ok(mut map) = self.record_keys.write() {
                    map.insert(tenant.clone(), key.clone());
                }
                key
            }
        };
        Ok(RecordSealer {
            tenant: tenant.clone(),
            key,
            legacy: self.legacy_records.load(Ordering::Acquire),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Consent, Purpose, Timestamp};

    fn sealer(tenant: &str, legacy: bool) -> RecordSealer {
        let audit: Key<Audit> = Key::from_secret_bytes(1, crate::crypto::Zeroizing::new([7u8; 32]));
        let tenant = TenantId::parse(tenant).expect("tenant");
        RecordSealer {
            key: Arc::new(derive_record_key(&audit, &tenant).expect("derive")),
            tenant,
            legacy,
        }
    }

    fn id(s: &str) -> SubjectId {
        SubjectId::parse(s).expect("subject")
    }

    fn granted() -> SubjectState {
        let mut state = SubjectState::default();
        state.set_consent(Consent {
            purpose: Purpose::parse("marketing").expect("purpose"),
            granted: true,
            at: Timestamp(5),
            source: "form".into(),
        });
        state
    }

    #[test]
    fn a_sealed_state_record_checks_and_survives_its_encoding() {
        let s = sealer("acme", false);
        let rec = s.seal_state(&id("alice"), granted(), 3);
        assert_eq!(rec.seq(), 3);
        let decoded = StateRecord::decode(&rec.encode()).expect("decodes");
        assert_eq!(decoded, rec);
        s.check_state(&id("alice"), &decoded).expect("checks");
    }

    #[test]
    fn a_seal_binds_tenant_subject_kind_seq_and_content() {
        let s = sealer("acme", false);
        let rec = s.seal_state(&id("alice"), granted(), 3);
        let bad = |r: &StateRecord, sealer: &RecordSealer, who: &str| {
            matches!(
                sealer.check_state(&id(who), r),
                Err(StoreError::Integrity(_))
            )
        };
        assert!(bad(&rec, &s, "bob"), "another subject");
        assert!(
            bad(&rec, &sealer("other", false), "alice"),
            "another tenant"
        );
        let mut seq = rec.clone();
        seq.seal = seq.seal.map(|x| Seal { seq: 4, ..x });
        assert!(bad(&seq, &s, "alice"), "another sequence number");
        let mut content = rec.clone();
        content.state.consents[0].granted = false;
        assert!(bad(&content, &s, "alice"), "other content");
        let mut tag = rec.clone();
        if let Some(seal) = tag.seal.as_mut() {
            seal.tag[0] ^= 1;
        }
        assert!(bad(&tag, &s, "alice"), "a flipped tag");
        // The same bytes sealed as a tombstone's are not a state record's.
        let stone = s.seal_tombstone(&id("alice"), tombstone(), 3);
        let as_state = StateRecord {
            state: granted(),
            seal: stone.seal,
        };
        assert!(bad(&as_state, &s, "alice"), "another kind");
    }

    fn tombstone() -> Tombstone {
        Tombstone {
            erased_at: Timestamp(9),
            caller: "uri:spiffe://t/eraser".into(),
            receipt_id: "er-1".into(),
            categories: 3,
            purged: false,
            retained_categories: 0,
            retained_until: Timestamp(0),
            seal: None,
        }
    }

    #[test]
    fn a_tombstone_seal_covers_all_but_the_purge_flag() {
        let s = sealer("acme", false);
        let stone = s.seal_tombstone(&id("alice"), tombstone(), 2);
        let decoded = Tombstone::decode(&stone.encode()).expect("decodes");
        assert_eq!(decoded, stone);
        s.check_tombstone(&id("alice"), &decoded).expect("checks");
        let purged = Tombstone {
            purged: true,
            ..stone.clone()
        };
        s.check_tombstone(&id("alice"), &purged)
            .expect("purging is housekeeping");
        let forged = Tombstone {
            receipt_id: "er-2".into(),
            ..stone
        };
        assert!(s.check_tombstone(&id("alice"), &forged).is_err());
    }

    #[test]
    fn unsealed_records_pass_only_as_legacy_or_as_the_default_state() {
        let strict = sealer("acme", false);
        let legacy = sealer("acme", true);
        let unsealed = StateRecord {
            state: granted(),
            seal: None,
        };
        assert!(strict.check_state(&id("alice"), &unsealed).is_err());
        legacy
            .check_state(&id("alice"), &unsealed)
            .expect("legacy store");
        strict
            .check_state(&id("alice"), &StateRecord::default())
            .expect("never set");
        assert!(strict.check_tombstone(&id("alice"), &tombstone()).is_err());
        legacy
            .check_tombstone(&id("alice"), &tombstone())
            .expect("legacy store");
    }
}
