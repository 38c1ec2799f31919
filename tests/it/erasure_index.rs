//! Erasure covers the blind index: an erased person's values find nothing, their legal
//! shadow's included; a key epoch gives every tenant with erasures a new index key (the old
//! one destroyed, live subjects re-indexed); a shredded tenant keeps no index key or entry.

use pb::key_service_client::KeyServiceClient;
use pb::record_service_client::RecordServiceClient;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::Store;
use tonic::transport::Channel;

use crate::erasure::erase;
use crate::util::create_tenant;

fn email(address: &str, transaction_record: bool) -> pb::FieldInput {
    pb::FieldInput {
        name: "email".into(),
        // Transaction records are payment fields.
        category: if transaction_record {
            pb::Category::Payment as i32
        } else {
            pb::Category::Account as i32
        },
        value: Some(pb::Value {
            kind: Some(pb::value::Kind::Email(address.into())),
        }),
        indexed: true,
        ttl_seconds: 0,
        transaction_record,
        expected_version: None,
    }
}

async fn put(records: &mut RecordServiceClient<Channel>, subject: &str, field: pb::FieldInput) {
    records
        .put_fields(pb::PutFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
            fields: vec![field],
            idempotency_key: String::new(),
        })
        .await
        .expect("put");
}

async fn find(records: &mut RecordServiceClient<Channel>, address: &str) -> Vec<String> {
    records
        .find_subjects(pb::FindSubjectsRequest {
            tenant_id: "acme".into(),
            field_name: "email".into(),
            value: email(address, false).value,
            purpose: "support".into(),
        })
        .await
        .expect("find")
        .into_inner()
        .subject_ids
}

/// The versions of the tenant's index keys in the store.
fn index_key_versions(store: &dyn Store) -> Vec<String> {
    store
        .meta_scan("index_key/acme/")
        .expect("meta scan")
        .into_iter()
        .map(|(name, _)| name.trim_start_matches("index_key/acme/").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_of_an_erased_person_finds_anything_and_a_shred_leaves_no_index() {
    let (vault, store) = crate::util::vault_with_store().await;
    let acme = pii_vault::domain::TenantId::parse("acme").expect("tenant id");
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;

    // Alice's own email, and a payment record of hers under a legal retention duty (kept
    // in her shadow) with another address; Bob stays.
    put(&mut records, "alice", email("alice@example.com", false)).await;
    put(
        &mut records,
        "alice",
        email("alice.billing@example.com", true),
    )
    .await;
    put(&mut records, "bob", email("bob@example.com", false)).await;
    assert_eq!(find(&mut records, "alice@example.com").await, ["alice"]);
    // Each index entry names its subject: Alice, her shadow, Bob.
    let entries = || store.index_scan(&acme, b"").expect("scan").len();
    assert_eq!(entries(), 3);

    erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase");
    assert!(find(&mut records, "alice@example.com").await.is_empty());
    assert!(find(&mut records, "alice.billing@example.com")
        .await
        .is_empty());
    assert_eq!(
        entries(),
        1,
        "neither Alice's entry nor her shadow's (kept for its duty) is left, only Bob's"
    );

    // The epoch: a new index key, the old one destroyed; Bob is found under the new one.
    assert_eq!(index_key_versions(store.as_ref()), ["0000000001"]);
    let mut keys = KeyServiceClient::new(vault.channel().await);
    keys.run_key_epoch(pb::RunKeyEpochRequest {})
        .await
        .expect("epoch");
    assert_eq!(index_key_versions(store.as_ref()), ["0000000002"]);
    assert_eq!(find(&mut records, "bob@example.com").await, ["bob"]);
    assert!(find(&mut records, "alice.billing@example.com")
        .await
        .is_empty());
    assert_eq!(entries(), 1, "the re-index brought the shadow's entry back");

    keys.shred_tenant(pb::ShredTenantRequest {
        tenant_id: "acme".into(),
        confirm_tenant_id: "acme".into(),
    })
    .await
    .expect("shred");
    assert!(
        index_key_versions(store.as_ref()).is_empty(),
        "no index key left"
    );
    assert!(
        store.index_scan(&acme, b"").expect("scan").is_empty(),
        "no index entry left"
    );
    vault.stop().await;
}
