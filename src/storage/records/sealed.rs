//! Integrity seals of a subject's consent/restriction record and of its tombstone: what the
//! store keeps so that a record rolled back to an older copy, swapped in from another
//! subject or forged is refused when it is read (issue 16, item 6).
//!
//! A seal is a sequence number and an HMAC-SHA-256 tag. The keyring computes and checks the
//! tag (`keyring::RecordSealer`); the store knows no keys and only keeps the bytes. The tag
//! binds the tenant, the subject, the kind of record (`RecordKind`), the sequence number
//! and the record's content (`StateRecord::content`, `Tombstone::content`).
//!
//! The sequence number is anchored in the subject record (`SubjectRecord::state_seq`),
//! which every state change rewrites in the same store transaction: an older copy of the
//! state record has a valid tag of its own, but a sequence number behind the anchor, and
//! the store refuses it (`rules::check_state_anchor`). A deleted state record reads as
//! sequence number 0 and is refused the same way. A tombstone takes the next sequence
//! number after the subject's last state record.
//!
//! What this does not detect: rolling back the subject record together with its state
//! record (two records edited consistently, or the whole store restored to a snapshot:
//! the audit high-water mark refuses the latter at start); the deletion of a tombstone
//! (the erasure removed everything else of the subject, so nothing is left to anchor it);
//! a tombstone rolled back to its copy from before the purge (`purged` is housekeeping
//! that the store sets without keys, so it is outside the tag: the purger runs again).

use crate::codec::{Reader, Writer};
use crate::crypto::MAC_LEN;
use crate::domain::SubjectState;

use super::field::{decode_state, encode_state};
use super::StoreError;

/// First format of the state record: the state alone (written before seals existed).
const STATE_V1: u8 = 1;
/// Second format: the state's content, its sequence number and tag.
const STATE_V2: u8 = 2;

/// Which of a subject's records a seal is for; part of what the tag binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    State,
    Tombstone,
}

impl RecordKind {
    pub fn label(self) -> &'static str {
        match self {
            RecordKind::State => "subject-state",
            RecordKind::Tombstone => "tombstone",
        }
    }
}

/// A record's seal: its place in the subject's sequence of state records, and the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    pub seq: u64,
    pub tag: [u8; MAC_LEN],
}

impl Seal {
    fn write(w: Writer, seal: &Seal) -> Writer {
        w.u64(seal.seq).bytes(&seal.tag)
    }

    fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Seal, StoreError> {
        let seq = r.u64()?;
        let tag = <[u8; MAC_LEN]>::try_from(r.bytes()?).map_err(|_| StoreError::Corrupt(what))?;
        Ok(Seal { seq, tag })
    }
}

/// Writes an optional seal as a presence byte and the seal.
pub(super) fn write_optional_seal(w: Writer, seal: Option<&Seal>) -> Writer {
    match seal {
        Some(s) => Seal::write(w.u8(1), s),
        None => w.u8(0),
    }
}

pub(super) fn read_optional_seal(
    r: &mut Reader<'_>, what: &'static str,
) -> Result<Option<Seal>, StoreError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(Seal::read(r, what)?)),
        _ => Err(StoreError::Corrupt(what)),
    }
}

/// A subject's consents and restriction as stored, with the seal they were written with.
/// `seal` is `None` for a record never written (the default state) or written before seals
/// existed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateRecord {
    pub state: SubjectState,
    pub seal: Option<Seal>,
}

impl StateRecord {
    const WHAT: &'static str = "subject state";

    /// The record's sequence number: 0 when it has no seal.
    pub fn seq(&self) -> u64 {
        self.seal.map_or(0, |s| s.seq)
    }

    /// The bytes the tag covers.
    pub fn content(&self) -> Vec<u8> {
        encode_state(&self.state)
    }

    pub fn encode(&self) -> Vec<u8> {
        let w = Writer::new().u8(STATE_V2).bytes(&self.content());
        write_optional_seal(w, self.seal.as_ref()).finish()
    }

    /// Reads either format; a first-format record has no seal.
    pub fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        if buf.first() == Some(&STATE_V1) {
            return Ok(Self {
                state: decode_state(buf)?,
                seal: None,
            });
        }
        let mut r = Reader::new(buf, Self::WHAT);
        if r.u8()? != STATE_V2 {
            return Err(StoreError::Corrupt(Self::WHAT));
        }
        let state = decode_state(r.bytes()?)?;
        let seal = read_optional_seal(&mut r, Self::WHAT)?;
        r.finish()?;
        Ok(Self { state, seal })
    }
}
