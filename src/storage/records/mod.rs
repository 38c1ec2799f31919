//! Versioned record formats: what the store keeps for tenants, subjects and fields.
//! Only sealed bytes and metadata; never a key or a value in the clear.

use crate::crypto::Sealed;
use crate::domain::{Category, TenantId, Timestamp};

use super::StoreError;
use crate::codec::{Reader, Writer};

const RECORD_V1: u8 = 1;
/// Second format of tenant and subject records (key management: shredding, DEK versions and
/// usage counts), and of tombstones (integrity seals). Version 1 records are still read.
const RECORD_V2: u8 = 2;
/// Third format of subject records: the state sequence number anchor. Older ones are read
/// with `state_seq` 0.
const RECORD_V3: u8 = 3;

fn sealed(r: &mut Reader<'_>, what: &'static str) -> Result<Sealed, StoreError> {
    Sealed::decode(r.bytes()?).map_err(|_| StoreError::Corrupt(what))
}

fn version(r: &mut Reader<'_>, what: &'static str) -> Result<(), StoreError> {
    if r.u8()? == RECORD_V1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(what))
    }
}

/// A tenant and the current version of its key-encryption key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: TenantId,
    pub created_at: Timestamp,
    /// The KEK version that wraps new subject DEKs. Any transaction that stores a DEK wrapped
    /// under version `v` checks that `v` is still this one, so a version that stopped being
    /// current never gains new wraps and can be destroyed once the last one is re-wrapped.
    pub kek_version: u32,
    /// Set when the tenant was shredded (every KEK version destroyed). The record stays so
    /// that reads can say why they fail and the id is never reused.
    pub shredded_at: Option<Timestamp>,
}

impl TenantRecord {
    const WHAT: &'static str = "tenant record";

    pub fn encode(&self) -> Vec<u8> {
        let w = Writer::new()
            .u8(RECORD_V2)
            .str(self.id.as_str())
            .u64(self.created_at.0)
            .u32(self.kek_version);
        optional_time(w, self.shredded_at).finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(buf, Self::WHAT);
        let format = r.u8()?;
        if format != RECORD_V1 && format != RECORD_V2 {
            return Err(StoreError::Corrupt(Self::WHAT));
        }
        let id = TenantId::parse(r.str()?).map_err(|_| StoreError::Corrupt(Self::WHAT))?;
        let created_at = Timestamp(r.u64()?);
        let kek_version = r.u32()?;
        let shredded_at = if format == RECORD_V2 {
            read_optional_time(&mut r)?
        } else {
            None
        };
        r.finish()?;
        Ok(Self {
            id,
            created_at,
            kek_version,
            shredded_at,
        })
    }
}

/// Writes an optional time as a presence byte and the time.
pub(super) fn optional_time(w: Writer, t: Option<Timestamp>) -> Writer {
    match t {
        Some(t) => w.u8(1).u64(t.0),
        None => w.u8(0),
    }
}

pub(super) fn read_optional_time(r: &mut Reader<'_>) -> Result<Option<Timestamp>, StoreError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(Timestamp(r.u64()?))),
        _ => Err(StoreError::Corrupt("optional time")),
    }
}

/// A subject: its data keys, each wrapped by a version of the tenant's KEK.
///
/// A subject has one current DEK, which seals every new field value, and possibly older DEK
/// versions that still seal some of its stored fields (a field ciphertext names its DEK
/// version in its envelope). A DEK is replaced when it reaches its usage limit; an older
/// version is dropped once no stored field uses it any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectRecord {
    pub created_at: Timestamp,
    /// Version of the current DEK (bound into its wrap and into every field it seals).
    pub dek_version: u32,
    /// The current DEK sealed under the tenant KEK; the envelope names the KEK version.
    pub wrapped_dek: Sealed,
    /// Bit `code` set for every category the subject ever had a field in: lets an erasure
    /// receipt list them without reading the fields.
    pub categories: u32,
    /// Keys of the subject's blind-index entries, so erasure drops them without reading
    /// every field.
    pub index_entries: Vec<Vec<u8>>,
    /// Older DEK versions, still needed to open fields they sealed, oldest first.
    pub older_deks: Vec<OlderDek>,
    /// Encryptions reserved under the current DEK: persisted before they are used, so it is
    /// an upper bound on how many values the DEK ever sealed, and never goes back after a
    /// crash. (0 for records written before usage counting existed.)
    pub dek_reserved: u64,
    /// The sequence number of the subject's current state record (`StateRecord::seq`),
    /// rewritten with it in one transaction: the anchor that makes an older copy of the
    /// state record detectable (`sealed`). 0 before the first sealed state change.
    pub state_seq: u64,
}

/// An older DEK version of a subject, wrapped like the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OlderDek {
    pub version: u32,
    pub wrapped: Sealed,
}

impl SubjectRecord {
    const WHAT: &'static str = "subject record";

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new()
            .u8(RECORD_V3)
            .u64(self.created_at.0)
            .u32(self.dek_version)
            .bytes(&self.wrapped_dek.encode())
            .u32(self.categories)
            .list(&self.index_entries)
            .u64(self.dek_reserved)
            .u32(u32::try_from(self.older_deks.len()).unwrap_or(u32::MAX));
        for d in &self.older_deks {
            w = w.u32(d.version).bytes(&d.wrapped.encode());
        }
        w.u64(self.state_seq).finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(buf, Self::WHAT);
        let format = r.u8()?;
        if !(RECORD_V1..=RECORD_V3).contains(&format) {
            return Err(StoreError::Corrupt(Self::WHAT));
        }
        let mut rec = Self {
            created_at: Timestamp(r.u64()?),
            dek_version: r.u32()?,
            wrapped_dek: sealed(&mut r, Self::WHAT)?,
            categories: r.u32()?,
            index_entries: r.list()?,
            older_deks: Vec::new(),
            dek_reserved: 0,
            state_seq: 0,
        };
        if format >= RECORD_V2 {
            rec.dek_reserved = r.u64()?;
            for _ in 0..r.u32()? {
                rec.older_deks.push(OlderDek {
                    version: r.u32()?,
                    wrapped: sealed(&mut r, Self::WHAT)?,
                });
            }
        }
        if format == RECORD_V3 {
            rec.state_seq = r.u64()?;
        }
        r.finish()?;
        Ok(rec)
    }
}

impl SubjectRecord {
    /// True when both records hold the same current data key (what a write was sealed
    /// under). A re-wrap or a new DEK version makes it false, so a racing write retries.
    pub fn same_key(&self, other: &SubjectRecord) -> bool {
        self.dek_version == other.dek_version && self.wrapped_dek == other.wrapped_dek
    }

    /// True when both records hold exactly the same wrapped DEKs, current and older.
    pub fn same_deks(&self, other: &SubjectRecord) -> bool {
        self.same_key(other) && self.older_deks == other.older_deks
    }

    /// Every wrapped DEK of the subject as (DEK version, wrap), the current one last.
    pub fn wrapped_deks(&self) -> impl Iterator<Item = (u32, &Sealed)> {
        self.older_deks
            .iter()
            .map(|d| (d.version, &d.wrapped))
            .chain(std::iter::once((self.dek_version, &self.wrapped_dek)))
    }

    /// The wrap of DEK version `version`, current or older.
    pub fn wrapped_dek_version(&self, version: u32) -> Option<&Sealed> {
        self.wrapped_deks()
            .find(|(v, _)| *v == version)
            .map(|(_, w)| w)
    }
}

/// The bit of a category in a category mask.
pub fn category_bit(c: Category) -> u32 {
    1 << c.code()
}

/// The categories set in a mask, in code order.
pub fn categories_in(mask: u32) -> Vec<Category> {
    Category::ALL
        .into_iter()
        .filter(|c| mask & category_bit(*c) != 0)
        .collect()
}

/// What stays of an erased subject: when, by whom, the receipt, and whether its field
/// ciphertexts were purged yet (they are noise without the DEK; purging is housekeeping).
/// Sealed like the state record (`sealed`); `purged` is outside the seal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub erased_at: Timestamp,
    pub caller: String,
    pub receipt_id: String,
    /// Categories the subject had (a category mask).
    pub categories: u32,
    pub purged: bool,
    /// Categories kept under a legal retention duty (a category mask), and until when.
    pub retained_categories: u32,
    pub retained_until: Timestamp,
    /// The integrity seal; `None` for a tombstone written before seals existed (and for
    /// one not sealed yet: `Store::erase_subject` seals it).
    pub seal: Option<Seal>,
}

impl Tombstone {
    const WHAT: &'static str = "tombstone";

    pub fn encode(&self) -> Vec<u8> {
        let w = Writer::new()
            .u8(RECORD_V2)
            .u64(self.erased_at.0)
            .str(&self.caller)
            .str(&self.receipt_id)
            .u32(self.categories)
            .u8(u8::from(self.purged))
            .u32(self.retained_categories)
            .u64(self.retained_until.0);
        write_optional_seal(w, self.seal.as_ref()).finish()
    }

    /// The bytes the seal's tag covers: everything but `purged` and the seal.
    pub fn content(&self) -> Vec<u8> {
        Writer::new()
            .u64(self.erased_at.0)
            .str(&self.caller)
            .str(&self.receipt_id)
            .u32(self.categories)
            .u32(self.retained_categories)
            .u64(self.retained_until.0)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(buf, Self::WHAT);
        let format = r.u8()?;
        if format != RECORD_V1 && format != RECORD_V2 {
            return Err(StoreError::Corrupt(Self::WHAT));
        }
        let mut rec = Self {
            erased_at: Timestamp(r.u64()?),
            caller: r.str()?.to_owned(),
            receipt_id: r.str()?.to_owned(),
            categories: r.u32()?,
            purged: r.u8()? != 0,
            retained_categories: r.u32()?,
            retained_until: Timestamp(r.u64()?),
            seal: None,
        };
        if format == RECORD_V2 {
            rec.seal = read_optional_seal(&mut r, Self::WHAT)?;
        }
        r.finish()?;
        Ok(rec)
    }
}

/// The result of an erasure in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Erasure {
    /// The subject's key and record are gone; the tombstone was written.
    Erased(Tombstone),
    /// Erased before: the earlier tombstone.
    AlreadyErased(Tombstone),
    /// No such subject, now or before.
    NotFound,
}

mod field;
mod idempotency;
mod sealed;
#[cfg(test)]
mod tests;

pub use field::{FieldRecord, SealedField, SubjectWrite, Written};
pub use idempotency::{Idempotency, IdempotencyRecord, IDEMPOTENCY_HASH_LEN};
use sealed::{read_optional_seal, write_optional_seal};
pub use sealed::{RecordKind, Seal, StateRecord};
