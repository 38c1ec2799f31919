//! Retention: fields past their category's period or their own TTL are gone after the
//! sweeper runs; each deletion is audited. Time is injected: no sleeping.

use std::sync::Arc;
use std::time::Duration;

use pii_vault::audit::{AuditFilter, Operation};
use pii_vault::authz::{Authz, PeerIdentity, Policy, PurposeRules};
use pii_vault::domain::{
    Category, FieldName, FieldValue, ManualClock, NewField, Purpose, SubjectId, TenantId, Timestamp,
};
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::service::{Call, ServiceError, Vault, VaultSettings};
use pii_vault::storage::{SledStore, Store};

const DAY: u64 = 86_400_000_000;

fn field(name: &str, category: Category, ttl: Option<Duration>) -> NewField {
    NewField {
        name: FieldName::parse(name).expect("name"),
        category,
        value: FieldValue::Text(format!("{name} value")),
        indexed: false,
        ttl,
    }
}

#[tokio::test]
async fn fields_past_their_retention_are_swept_and_audited() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 1 << 22).expect("open"));
    let keys = Keyring::open(RootKeys::generate().expect("root"), store.clone()).expect("keys");
    let policy = Policy::parse(&Policy::dev_default_text("spiffe://test/admin")).expect("policy");
    let authz = Arc::new(Authz::fixed(policy, PurposeRules::default()));
    let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000_000)));
    let vault =
        Vault::open(store, keys, authz, clock.clone(), VaultSettings::default()).expect("vault");
    let call = Call {
        caller: PeerIdentity::new("spiffe://test/admin"),
        request_id: "r".into(),
    };
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
        .0;
    let sweeps: Vec<_> = events
        .iter()
        .filter(|e| e.draft.operation == Operation::RetentionDelete)
        .map(|e| (e.draft.caller.as_str(), e.draft.fields.join(",")))
        .collect();
    assert_eq!(
        sweeps,
        [
            ("pii-vault/retention", "session".to_owned()),
            ("pii-vault/retention", "chat".to_owned()),
            ("pii-vault/retention", "access_log".to_owned())
        ]
    );
}
