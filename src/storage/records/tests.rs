//! Round trips and old formats of the subject record.

use super::*;

fn sealed(version: u32) -> Sealed {
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&[7u8; 12 + 16 + 32]);
    Sealed::decode(&bytes).expect("envelope")
}

#[test]
fn version_1_subject_records_still_decode() {
    let v1 = Writer::new()
        .u8(RECORD_V1)
        .u64(5)
        .u32(1)
        .bytes(&sealed(3).encode())
        .u32(0b101)
        .list(&[b"entry".to_vec()])
        .finish();
    let rec = SubjectRecord::decode(&v1).expect("v1 decodes");
    assert_eq!(rec.index_entries, [b"entry".to_vec()]);
    assert_eq!(rec.dek_version, 1);
    assert_eq!(rec.wrapped_dek.key_version(), 3);
    assert_eq!((rec.categories, rec.dek_reserved), (0b101, 0));
    assert!(rec.older_deks.is_empty());
    // Re-encoded as version 2, it round-trips.
    assert_eq!(SubjectRecord::decode(&rec.encode()).ok(), Some(rec));
}

#[test]
fn subject_records_with_older_deks_round_trip() {
    let rec = SubjectRecord {
        created_at: Timestamp(9),
        dek_version: 3,
        wrapped_dek: sealed(2),
        categories: 1,
        index_entries: vec![vec![1, 2, 3]],
        older_deks: vec![
            OlderDek {
                version: 1,
                wrapped: sealed(1),
            },
            OlderDek {
                version: 2,
                wrapped: sealed(2),
            },
        ],
        dek_reserved: 64,
        state_seq: 7,
    };
    assert_eq!(SubjectRecord::decode(&rec.encode()).ok(), Some(rec.clone()));
    let versions: Vec<u32> = rec.wrapped_deks().map(|(v, _)| v).collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(rec.wrapped_dek_version(2).map(Sealed::key_version), Some(2));
    let mut moved = rec.clone();
    moved.dek_reserved = 100;
    assert!(
        moved.same_deks(&rec),
        "a reservation does not change the keys"
    );
    moved.older_deks.pop();
    assert!(moved.same_key(&rec) && !moved.same_deks(&rec));
}

#[test]
fn unsealed_state_records_and_tombstones_of_the_first_format_still_decode() {
    use crate::domain::{Consent, Purpose, SubjectState};

    let mut state = SubjectState::default();
    state.set_consent(Consent {
        purpose: Purpose::parse("marketing").expect("purpose"),
        granted: true,
        at: Timestamp(3),
        source: "form".into(),
    });
    state.restricted_since = Some(Timestamp(4));
    // The first format is the state alone, which is also what a seal covers.
    let v1 = StateRecord {
        state: state.clone(),
        seal: None,
    }
    .content();
    let read = StateRecord::decode(&v1).expect("first format");
    assert_eq!(read.seq(), 0);
    assert_eq!((read.state, read.seal), (state.clone(), None));
    let sealed = StateRecord {
        state,
        seal: Some(Seal {
            seq: 9,
            tag: [5; 32],
        }),
    };
    assert_eq!(
        StateRecord::decode(&sealed.encode()).ok(),
        Some(sealed.clone())
    );
    let mut cut = sealed.encode();
    cut.pop();
    assert!(StateRecord::decode(&cut).is_err(), "a short tag is corrupt");

    let stone = Tombstone {
        erased_at: Timestamp(1),
        caller: "cn:e".into(),
        receipt_id: "r".into(),
        categories: 2,
        purged: true,
        retained_categories: 0,
        retained_until: Timestamp(0),
        seal: None,
    };
    let v1 = crate::codec::Writer::new()
        .u8(1)
        .u64(1)
        .str("cn:e")
        .str("r")
        .u32(2)
        .u8(1)
        .u32(0)
        .u64(0)
        .finish();
    assert_eq!(Tombstone::decode(&v1).ok(), Some(stone.clone()));
    let sealed = Tombstone {
        seal: Some(Seal {
            seq: 2,
            tag: [1; 32],
        }),
        ..stone
    };
    assert_eq!(Tombstone::decode(&sealed.encode()).ok(), Some(sealed));
}
