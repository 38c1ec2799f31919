//! Versioned record formats: what the store keeps for tenants, subjects and fields.
//! Only sealed bytes and metadata; never a key or a value in the clear.

use crate::crypto::Sealed;
use crate::domain::{
    Category, Consent, FieldMeta, FieldName, Purpose, SubjectState, TenantId, Timestamp,
};

use super::StoreError;
use crate::codec::{Reader, Writer};

const RECORD_V1: u8 = 1;

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
    pub kek_version: u32,
}

impl TenantRecord {
    const WHAT: &'static str = "tenant record";

    pub fn encode(&self) -> Vec<u8> {
        Writer::new()
            .u8(RECORD_V1)
            .str(self.id.as_str())
            .u64(self.created_at.0)
            .u32(self.kek_version)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(buf, Self::WHAT);
        version(&mut r, Self::WHAT)?;
        let id = TenantId::parse(r.str()?).map_err(|_| StoreError::Corrupt(Self::WHAT))?;
        let rec = Self {
            id,
            created_at: Timestamp(r.u64()?),
            kek_version: r.u32()?,
        };
        r.finish()?;
        Ok(rec)
    }
}

/// A subject: its data key, wrapped by a version of the tenant's KEK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectRecord {
    pub created_at: Timestamp,
    /// Version of the DEK itself (bound into its wrap and into every field it seals).
    pub dek_version: u32,
    /// The DEK sealed under the tenant KEK; the envelope names the KEK version.
    pub wrapped_dek: Sealed,
    /// Bit `code` set for every category the subject ever had a field in: lets an erasure
    /// receipt list them without reading the fields.
    pub categories: u32,
    /// Keys of the subject's blind-index entries, so erasure drops them without reading
    /// every field.
    pub index_entries: Vec<Vec<u8>>,
}

impl SubjectRecord {
    const WHAT: &'static str = "subject record";

    pub fn encode(&self) -> Vec<u8> {
        Writer::new()
            .u8(RECORD_V1)
            .u64(self.created_at.0)
            .u32(self.dek_version)
            .bytes(&self.wrapped_dek.encode())
            .u32(self.categories)
            .list(&self.index_entries)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(buf, Self::WHAT);
        version(&mut r, Self::WHAT)?;
        let rec = Self {
            created_at: Timestamp(r.u64()?),
            dek_version: r.u32()?,
            wrapped_dek: sealed(&mut r, Self::WHAT)?,
            categories: r.u32()?,
            index_entries: r.list()?,
        };
        r.finish()?;
        Ok(rec)
    }
}

impl SubjectRecord {
    /// True when both records hold the same data key (what a write was sealed under).
    pub fn same_key(&self, other: &SubjectRecord) -> bool {
        self.dek_version == other.dek_version && self.wrapped_dek == other.wrapped_dek
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
}

impl Tombstone {
    const WHAT: &'static str = "tombstone";

    pub fn encode(&self) -> Vec<u8> {
        Writer::new()
            .u8(RECORD_V1)
            .u64(self.erased_at.0)
            .str(&self.caller)
            .str(&self.receipt_id)
            .u32(self.categories)
            .u8(u8::from(self.purged))
            .u32(self.retained_categories)
            .u64(self.retained_until.0)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(buf, Self::WHAT);
        version(&mut r, Self::WHAT)?;
        let rec = Self {
            erased_at: Timestamp(r.u64()?),
            caller: r.str()?.to_owned(),
            receipt_id: r.str()?.to_owned(),
            categories: r.u32()?,
            purged: r.u8()? != 0,
            retained_categories: r.u32()?,
            retained_until: Timestamp(r.u64()?),
        };
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

/// A stored field: metadata in the clear, the value sealed under the subject's DEK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRecord {
    pub meta: FieldMeta,
    /// Text or bytes (see `FieldValue::kind_code`); bound into the ciphertext's AAD.
    pub kind: u8,
    pub sealed: Sealed,
    /// Key of this field's blind-index entry; empty when the field is not indexed.
    pub index_entry: Vec<u8>,
    /// When the retention sweeper deletes the field (0: never).
    pub expires_at: Timestamp,
}

impl FieldRecord {
    const WHAT: &'static str = "field record";

    pub fn encode(&self) -> Vec<u8> {
        Writer::new()
            .u8(RECORD_V1)
            .str(self.meta.name.as_str())
            .u8(self.meta.category.code())
            .u8(self.kind)
            .u64(self.meta.version)
            .u64(self.meta.created_at.0)
            .u64(self.meta.updated_at.0)
            .bytes(&self.sealed.encode())
            .bytes(&self.index_entry)
            .u64(self.expires_at.0)
            .str(&self.meta.updated_by)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |_| StoreError::Corrupt(Self::WHAT);
        let mut r = Reader::new(buf, Self::WHAT);
        version(&mut r, Self::WHAT)?;
        let name = FieldName::parse(r.str()?).map_err(corrupt)?;
        let category = Category::from_code(i64::from(r.u8()?)).map_err(corrupt)?;
        let kind = r.u8()?;
        let (version, created_at, updated_at) =
            (r.u64()?, Timestamp(r.u64()?), Timestamp(r.u64()?));
        let sealed = sealed(&mut r, Self::WHAT)?;
        let index_entry = r.bytes()?.to_vec();
        let expires_at = Timestamp(r.u64()?);
        let rec = Self {
            meta: FieldMeta {
                name,
                category,
                version,
                created_at,
                updated_at,
                updated_by: r.str()?.to_owned(),
            },
            kind,
            sealed,
            index_entry,
            expires_at,
        };
        r.finish()?;
        Ok(rec)
    }
}

/// A field sealed and ready to store; the store assigns its version and times.
#[derive(Clone, Debug)]
pub struct SealedField {
    pub name: FieldName,
    pub category: Category,
    pub kind: u8,
    pub sealed: Sealed,
    /// Blind-index entry key to store for this field; empty for none.
    pub index_entry: Vec<u8>,
    /// When the field expires (0: never).
    pub expires_at: Timestamp,
}

/// One atomic write of a subject's fields.
#[derive(Clone, Debug)]
pub struct SubjectWrite {
    /// The subject record the fields were sealed for: stored if the subject does not exist
    /// yet, and otherwise required to equal the stored one (else `StoreError::Conflict`).
    pub subject: SubjectRecord,
    pub fields: Vec<SealedField>,
    pub now: Timestamp,
    /// Identity of the caller writing.
    pub by: String,
}

/// A field version written, and the metadata (never the value) of the version it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub meta: FieldMeta,
    pub previous: Option<FieldMeta>,
}

/// Encodes a subject's consents and restriction.
pub fn encode_state(state: &SubjectState) -> Vec<u8> {
    let mut w = Writer::new()
        .u8(RECORD_V1)
        .u64(state.restricted_since.map_or(0, |t| t.0))
        .u32(u32::try_from(state.consents.len()).unwrap_or(u32::MAX));
    for c in &state.consents {
        w = w
            .str(c.purpose.as_str())
            .u8(u8::from(c.granted))
            .u64(c.at.0)
            .str(&c.source);
    }
    w.finish()
}

pub fn decode_state(buf: &[u8]) -> Result<SubjectState, StoreError> {
    const WHAT: &str = "subject state";
    let mut r = Reader::new(buf, WHAT);
    version(&mut r, WHAT)?;
    let restricted = r.u64()?;
    let count = r.u32()?;
    let mut consents = Vec::new();
    for _ in 0..count {
        consents.push(Consent {
            purpose: Purpose::parse(r.str()?).map_err(|_| StoreError::Corrupt(WHAT))?,
            granted: r.u8()? != 0,
            at: Timestamp(r.u64()?),
            source: r.str()?.to_owned(),
        });
    }
    r.finish()?;
    Ok(SubjectState {
        consents,
        restricted_since: (restricted != 0).then_some(Timestamp(restricted)),
    })
}
