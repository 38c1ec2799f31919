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
