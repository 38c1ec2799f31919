//! Record formats of fields and of what a write of them says: the stored field, the sealed
//! field a write brings, the write itself and what it answers; and a subject's consents.

use crate::codec::{Reader, Writer};
use crate::crypto::Sealed;
use crate::domain::{Category, Consent, FieldMeta, FieldName, Purpose, SubjectState, Timestamp};

use super::{category_bit, sealed, version, SubjectRecord, RECORD_V1};
use crate::storage::StoreError;

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
    /// The stored version the write requires (0: no such field yet); `None` writes over
    /// whatever is stored.
    pub expected: Option<u64>,
}

impl SealedField {
    /// The metadata of the version this write stores, after the stored `previous` version:
    /// versions count up from 1 and `created_at` stays the first write's.
    pub fn next_meta(&self, previous: Option<&FieldRecord>, write: &SubjectWrite) -> FieldMeta {
        FieldMeta {
            name: self.name.clone(),
            category: self.category,
            version: previous.map_or(1, |p| p.meta.version + 1),
            created_at: previous.map_or(write.now, |p| p.meta.created_at),
            updated_at: write.now,
            updated_by: write.by.clone(),
        }
    }

    /// The record stored for this field as version `meta`.
    pub fn record(&self, meta: FieldMeta) -> FieldRecord {
        FieldRecord {
            meta,
            kind: self.kind,
            sealed: self.sealed.clone(),
            index_entry: self.index_entry.clone(),
            expires_at: self.expires_at,
        }
    }
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
    /// Categories (a category mask) whose stored fields this write may replace: those the
    /// writer's grant covers. The store refuses, inside the write's transaction, to
    /// overwrite a field of any other category (`StoreError::NotGranted`).
    pub may_replace: u32,
    /// The caller's idempotency key, if it sent one: a stored record under it answers
    /// instead of the write (`Store::put_fields`).
    pub idempotency: Option<super::Idempotency>,
}

impl SubjectWrite {
    /// The categories of the fields written, as a category mask.
    pub fn categories(&self) -> u32 {
        self.fields
            .iter()
            .fold(0, |m, f| m | category_bit(f.category))
    }
}

/// A field version written, and the metadata (never the value) of the version it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub meta: FieldMeta,
    pub previous: Option<FieldMeta>,
    /// The answer of an earlier write under the same idempotency key: nothing was written
    /// now (`previous` is then `None`).
    pub replayed: bool,
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
