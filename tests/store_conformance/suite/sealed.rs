//! The state anchor (`SubjectRecord::state_seq`): a state change moves it in the same
//! transaction, a record whose sequence number is not the anchored one is refused, and an
//! erasure seals its tombstone one past it. The store checks sequence numbers only; seals'
//! tags are the keyring's.

use std::sync::Arc;

use pii_vault::domain::{SubjectState, Timestamp};
use pii_vault::storage::{Erasure, Seal, StateRecord, Store, StoreError, StoreResult, Tombstone};

use super::{create_tenant, new_subject, sealed_field, subject_id, tombstone, write};
use pii_vault::domain::Category;

fn sealed(seq: u64, restricted: u64) -> StateRecord {
    StateRecord {
        state: SubjectState {
            consents: Vec::new(),
            restricted_since: Some(Timestamp(restricted)),
        },
        seal: Some(Seal { seq, tag: [3; 32] }),
    }
}

pub fn the_state_anchor_moves_with_the_state_and_seals_the_tombstone(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let s = subject_id("u");
    let rec = new_subject(&t);
    store
        .put_fields(
            &t.id,
            &s,
            &write(&rec, vec![sealed_field("a", Category::Usage, b"v")], 1),
        )
        .expect("put");
    for seq in 1..=2 {
        let next = move |stored: &StateRecord| -> StoreResult<Option<StateRecord>> {
            assert_eq!(stored.seq(), seq - 1, "the update sees the stored record");
            Ok(Some(sealed(seq, seq * 10)))
        };
        assert_eq!(
            store
                .update_subject_state(&t.id, &s, &next)
                .expect("update"),
            sealed(seq, seq * 10)
        );
        let anchored = store.subject(&t.id, &s).expect("get").expect("subject");
        assert_eq!(
            anchored.state_seq, seq,
            "the anchor moved in the same write"
        );
    }
    assert_eq!(store.subject_state(&t.id, &s).expect("read"), sealed(2, 20));

    // A sealed record that does not move the sequence number forward is not written.
    let stale = |_: &StateRecord| Ok(Some(sealed(2, 99)));
    assert!(matches!(
        store.update_subject_state(&t.id, &s, &stale),
        Err(StoreError::Integrity(_))
    ));
    // An update that refuses the stored record aborts without a write.
    let refuse = |_: &StateRecord| Err(StoreError::Integrity("test"));
    assert!(matches!(
        store.update_subject_state(&t.id, &s, &refuse),
        Err(StoreError::Integrity(_))
    ));
    assert_eq!(store.subject_state(&t.id, &s).expect("read"), sealed(2, 20));

    // A rewrite of the subject's fields keeps the anchor.
    store
        .put_fields(
            &t.id,
            &s,
            &write(&rec, vec![sealed_field("b", Category::Usage, b"w")], 2),
        )
        .expect("rewrite");
    assert_eq!(store.subject_state(&t.id, &s).expect("read"), sealed(2, 20));

    let seal = |t: Tombstone, seq: u64| Tombstone {
        seal: Some(Seal { seq, tag: [4; 32] }),
        ..t
    };
    let Erasure::Erased(written) = store
        .erase_subject(&t.id, &s, &tombstone(50), &seal)
        .expect("erase")
    else {
        panic!("first erasure erases");
    };
    assert_eq!(written.seal.map(|x| x.seq), Some(3), "one past the state");
    assert_eq!(
        store.tombstone(&t.id, &s).expect("tombstone"),
        Some(written),
        "stored as sealed"
    );
    assert_eq!(
        store.subject_state(&t.id, &s).expect("read"),
        StateRecord::default()
    );
}
