//! Retention: fields past their category's period or their own TTL are gone after the
//! sweeper runs; each deletion is audited. Time is injected: no sleeping.

use std::time::Duration;

use pii_vault::audit::{AuditFilter, Operation};
use pii_vault::domain::{
    Category, FieldName, FieldValue, NewField, Purpose, SubjectId, TenantId, Timestamp,
};
use pii_vault::service::ServiceError;

use crate::util::clocked_vault;

const DAY: u64 = 86_400_000_000;

fn field(name: &str, category: Category, ttl: Option<Duration>) -> NewField {
    NewField {
        expected_version: None,
        name: FieldName::parse(name).expect("name"),
        category,
        value: FieldValue::Text(format!("{name} value")),
        indexed: false,
        ttl,
        transaction_record: false,
    }
}

#[tokio::test]
async fn fields_past_their_retention_are_swept_and_audited() {
    let dir = tempfile::TempDir::new().expect("dir");
    let (vault, clock, _store, call) = clocked_vault(&dir);
    let acme = TenantId::parse("acme").expect("id");
    let alice = SubjectId::parse("alice").expect("id");
    vault.create_tenant(&call, &acme).await.expect("tenant");
    vault
        .put_fields(
            &call,
            &acme,
            &alice,
            &[
                field("chat", Category::Conversation, None),
                field("access_log", Category::Log, None),
                field("email", Category::Account, None),
                field("session", Category::Device, Some(Duration::from_secs(3600))),
            ],
        )
        .await
        .expect("put");
    let purpose = Purpose::parse("support").expect("purpose");
    let names = |fields: Vec<pii_vault::domain::Field>| -> Vec<String> {
        fields
            .into_iter()
            .map(|f| f.meta.name.to_string())
            .collect()
    };
    let read = || vault.get_fields(&call, &acme, &alice, &[], &purpose);

    assert_eq!(vault.sweep_retention().await.expect("sweep"), 0);
    clock.advance_micros(2 * 3_600_000_000);
    assert_eq!(
        vault.sweep_retention().await.expect("sweep"),
        1,
        "the 1-hour TTL ran out"
    );
    assert_eq!(
        names(read().await.expect("read")),
        ["access_log", "chat", "email"]
    );
    clock.advance_micros(89 * DAY);
    assert_eq!(
        vault.sweep_retention().await.expect("sweep"),
        0,
        "day 89: conversations stay"
    );
    // Rewriting the conversation restarts its period.
    vault
        .put_fields(
            &call,
            &acme,
            &alice,
            &[field("chat", Category::Conversation, None)],
        )
        .await
        .expect("rewrite");
    clock.advance_micros(2 * DAY);
    assert_eq!(
        vault.sweep_retention().await.expect("sweep"),
        0,
        "rewritten 2 days ago"
    );
    clock.advance_micros(89 * DAY);
    assert_eq!(
        vault.sweep_retention().await.expect("sweep"),
        1,
        "90 days after the rewrite"
    );
    clock.advance_micros(200 * DAY);
    assert_eq!(
        vault.sweep_retention().await.expect("sweep"),
        1,
        "logs go after 12 months"
    );
    assert_eq!(
        names(read().await.expect("read")),
        ["email"],
        "account data has no time limit"
    );
    let missing = vault
        .get_fields(
            &call,
            &acme,
            &alice,
            &[FieldName::parse("chat").expect("n")],
            &purpose,
        )
        .await
        .expect_err("swept");
    assert!(matches!(missing, ServiceError::FieldNotFound(_)));

    let events = vault
        .audit_log()
        .query(&AuditFilter::default(), 0, 10_000)
        .expect("query")
        .events;
    let sweeps: Vec<_> = events
        .iter()
        .filter(|e| e.draft.operation == Operation::RetentionDelete)
        .filter(|e| e.draft.outcome != pii_vault::audit::Outcome::Intent)
        .map(|e| (e.draft.caller.as_str(), e.draft.fields.join(",")))
        .collect();
    assert_eq!(
        sweeps,
        [
            ("job:pii-vault/retention", "session".to_owned()),
            ("job:pii-vault/retention", "chat".to_owned()),
            ("job:pii-vault/retention", "access_log".to_owned())
        ]
    );
}

#[tokio::test]
async fn transaction_records_outlive_erasure_under_their_own_key_for_seven_years() {
    let dir = tempfile::TempDir::new().expect("dir");
    let (vault, clock, store, call) = clocked_vault(&dir);
    let acme = TenantId::parse("acme").expect("id");
    let alice = SubjectId::parse("alice").expect("id");
    vault.create_tenant(&call, &acme).await.expect("tenant");
    vault
        .put_fields(
            &call,
            &acme,
            &alice,
            &[field("email", Category::Account, None)],
        )
        .await
        .expect("account data");
    let mut txn = field("txn_2026_0042", Category::Payment, None);
    txn.transaction_record = true;
    let mixed = [field("iban_note", Category::Payment, None), txn.clone()];
    assert!(matches!(
        vault.put_fields(&call, &acme, &alice, &mixed).await,
        Err(ServiceError::InvalidArgument(_))
    ));
    vault
        .put_fields(&call, &acme, &alice, &[txn])
        .await
        .expect("transaction record");
    let purpose = Purpose::parse("billing").expect("purpose");
    let all = vault
        .get_fields(&call, &acme, &alice, &[], &purpose)
        .await
        .expect("read");
    let names: Vec<String> = all.iter().map(|f| f.meta.name.to_string()).collect();
    assert_eq!(
        names,
        ["email", "txn_2026_0042"],
        "read back with the subject's other fields"
    );

    let receipt = vault
        .erase_subject(&call, &acme, &alice)
        .await
        .expect("erase");
    assert_eq!(receipt.categories_erased, [Category::Account]);
    let seven_years = (7 * 365 + 2) * DAY;
    assert_eq!(
        receipt.retained,
        [(
            Category::Payment,
            Timestamp(receipt.erased_at.0 + seven_years)
        )]
    );
    assert!(matches!(
        vault.get_fields(&call, &acme, &alice, &[], &purpose).await,
        Err(ServiceError::SubjectErased { .. })
    ));
    // Held, under its own key, until the duty ends.
    let shadow = alice.legal_shadow();
    assert!(store.subject(&acme, &shadow).expect("shadow").is_some());
    clock.advance_micros(seven_years - DAY);
    vault.sweep_retention().await.expect("sweep");
    assert!(
        store.subject(&acme, &shadow).expect("shadow").is_some(),
        "still within the duty"
    );
    clock.advance_micros(2 * DAY);
    vault.sweep_retention().await.expect("sweep");
    assert!(
        store.subject(&acme, &shadow).expect("shadow").is_none(),
        "its key is destroyed"
    );
    assert!(store
        .tombstone(&acme, &shadow)
        .expect("tombstone")
        .is_some());
    assert!(store
        .legal_holds_due(Timestamp(u64::MAX))
        .expect("holds")
        .is_empty());
    let ended = vault
        .audit_log()
        .query(&AuditFilter::default(), 0, 10_000)
        .expect("query")
        .events;
    assert!(ended.iter().any(|e| e.draft.subject == shadow.as_str()
        && e.draft.reason.contains("legal retention duty ended")));
}
