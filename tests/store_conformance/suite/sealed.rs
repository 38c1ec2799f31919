//! The state anchor (`SubjectRecord::state_seq`): a state change moves it in the same
//! transaction, a record whose sequence number is not the anchored one is refused, and an
//! erasure seals its tombstone one past it. The store checks sequence numbers only; seals'
//! tags are the keyring's.

use std::sync::Arc;

use pii_vault::domain::{SubjectId, SubjectState, Timestamp};
use pii_vault::storage::{Erasure, Seal, StateRecord, Store, StoreError, StoreResult, Tombstone};

use super::{create_tenant, new_subject, sealed_field, subject_id, tenant_id, tombstone, write};
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

/// Erases `subject` of `t`, storing its tombstone without a seal (as a version before seals
/// wrote it) or with one.
fn erase_with(store: &dyn Store, t: &super::Tenant, subject: &str, sealed: bool) {
    let s = subject_id(subject);
    store
        .put_fields(
            &t.id,
            &s,
            &write(
                &new_subject(t),
                vec![sealed_field("a", Category::Usage, b"v")],
                1,
            ),
        )
        .expect("put");
    let seal = move |stone: Tombstone, seq: u64| Tombstone {
        seal: sealed.then_some(Seal { seq, tag: [4; 32] }),
        ..stone
    };
    store
        .erase_subject(&t.id, &s, &tombstone(50), &seal)
        .expect("erase");
}

/// The tag the migration's seal writes for `subject`: its id's bytes, so the check can
/// see that each tombstone was sealed for its own subject.
fn legacy_tag(subject: &SubjectId) -> [u8; 32] {
    let mut tag = [0u8; 32];
    for (t, b) in tag.iter_mut().zip(subject.as_str().bytes()) {
        *t = b;
    }
    tag
}

pub fn legacy_tombstones_are_sealed_once_page_by_page(store: Arc<dyn Store>) {
    let t = create_tenant(store.as_ref(), "acme");
    let other = create_tenant(store.as_ref(), "globex");
    for (subject, sealed) in [
        ("a", false),
        ("b", true),
        ("c", false),
        ("d", false),
        ("e", true),
    ] {
        erase_with(store.as_ref(), &t, subject, sealed);
    }
    erase_with(store.as_ref(), &other, "a", false);
    let seal = |subject: &SubjectId, stone: Tombstone| Tombstone {
        seal: Some(Seal {
            seq: 1,
            tag: legacy_tag(subject),
        }),
        ..stone
    };
    let migrate = || {
        let (mut sealed, mut pages, mut after) = (0, 0, None);
        loop {
            let page = store
                .seal_legacy_tombstones(&t.id, after.as_ref(), 2, &seal)
                .expect("seal a page");
            sealed += page.sealed;
            pages += 1;
            match page.last {
                Some(last) => after = Some(last),
                None => break (sealed, pages),
            }
        }
    };
    assert_eq!(migrate(), (3, 4), "three unsealed of five, two per page");
    for (subject, legacy) in [
        ("a", true),
        ("b", false),
        ("c", true),
        ("d", true),
        ("e", false),
    ] {
        let s = subject_id(subject);
        let stone = store.tombstone(&t.id, &s).expect("read").expect("kept");
        let tag = if legacy { legacy_tag(&s) } else { [4; 32] };
        assert_eq!(stone.seal.map(|x| x.tag), Some(tag), "{subject}");
        assert_eq!(stone.caller, tombstone(50).caller, "the rest is kept");
    }
    assert_eq!(migrate().0, 0, "a second pass seals nothing");
    let untouched = store
        .tombstone(&other.id, &subject_id("a"))
        .expect("read")
        .expect("kept");
    assert_eq!(
        untouched.seal, None,
        "another tenant's tombstones are its own"
    );
    assert!(matches!(
        store.seal_legacy_tombstones(&tenant_id("nobody"), None, 2, &seal),
        Err(StoreError::NoTenant)
    ));
}
