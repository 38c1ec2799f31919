//! Idempotency records: what a write made under a caller's idempotency key stored, so that
//! the same request sent again (a retry after a lost answer) gets the first answer instead
//! of writing again, and a different request under the same key is refused.

use crate::codec::{Reader, Writer};
use crate::domain::{Category, FieldMeta, FieldName, Timestamp};

use super::{version, StoreError, RECORD_V1};

/// Length of a scope and of a fingerprint.
pub const IDEMPOTENCY_HASH_LEN: usize = 32;

/// A write's claim of an idempotency key, checked and stored in the write's transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// Where the record is kept under the subject: a hash of the caller's identity, the
    /// operation and the caller's key (so two callers' keys never meet).
    pub scope: [u8; IDEMPOTENCY_HASH_LEN],
    /// A MAC of the whole request under a key of the subject's, so that it says nothing
    /// about the values once the subject is erased.
    pub fingerprint: [u8; IDEMPOTENCY_HASH_LEN],
    /// When the record stops answering (and may be pruned).
    pub expires_at: Timestamp,
}

/// What a write stored under its idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub fingerprint: [u8; IDEMPOTENCY_HASH_LEN],
    pub expires_at: Timestamp,
    /// The metadata the write answered, in its order.
    pub written: Vec<FieldMeta>,
}

impl IdempotencyRecord {
    const WHAT: &'static str = "idempotency record";

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new()
            .u8(RECORD_V1)
            .bytes(&self.fingerprint)
            .u64(self.expires_at.0)
            .u32(u32::try_from(self.written.len()).unwrap_or(u32::MAX));
        for m in &self.written {
            w = w
                .str(m.name.as_str())
                .u8(m.category.code())
                .u64(m.version)
                .u64(m.created_at.0)
                .u64(m.updated_at.0)
                .str(&m.updated_by);
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |_| StoreError::Corrupt(Self::WHAT);
        let mut r = Reader::new(buf, Self::WHAT);
        version(&mut r, Self::WHAT)?;
        let fingerprint = r
            .bytes()?
            .try_into()
            .map_err(|_| StoreError::Corrupt(Self::WHAT))?;
        let expires_at = Timestamp(r.u64()?);
        let count = r.u32()?;
        let mut written = Vec::new();
        for _ in 0..count {
            written.push(FieldMeta {
                name: FieldName::parse(r.str()?).map_err(corrupt)?,
                category: Category::from_code(i64::from(r.u8()?)).map_err(corrupt)?,
                version: r.u64()?,
                created_at: Timestamp(r.u64()?),
                updated_at: Timestamp(r.u64()?),
                updated_by: r.str()?.to_owned(),
            });
        }
        r.finish()?;
        Ok(Self {
            fingerprint,
            expires_at,
            written,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_to_what_was_encoded_and_a_cut_one_is_corrupt() {
        let record = IdempotencyRecord {
            fingerprint: [7; IDEMPOTENCY_HASH_LEN],
            expires_at: Timestamp(99),
            written: vec![FieldMeta {
                name: FieldName::parse("email").expect("name"),
                category: Category::Account,
                version: 3,
                created_at: Timestamp(1),
                updated_at: Timestamp(2),
                updated_by: "uri:spiffe://example.org/billing".into(),
            }],
        };
        let bytes = record.encode();
        assert_eq!(IdempotencyRecord::decode(&bytes).expect("decodes"), record);
        assert!(matches!(
            IdempotencyRecord::decode(&bytes[..bytes.len() - 1]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
