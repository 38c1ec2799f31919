//! Tenant shredding.

use pb::key_service_client::KeyServiceClient;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{SledStore, Store};
use tonic::Code;

use super::*;
use crate::util::{create_tenant, get, put, text, text_of, TestVault};

/// Every way of reaching a shredded tenant's data fails with "shredded"; others work.
async fn assert_acme_shredded(vault: &TestVault) {
    let channel = vault.channel().await;
    let mut client = pb::record_service_client::RecordServiceClient::new(channel.clone());
    for s in ["alice", "bob"] {
        let err = get(&mut client, "acme", s, &[]).await.expect_err("read");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains("shredded"), "{err:?}");
    }
    let err = put(
        &mut client,
        "acme",
        "dave",
        vec![text("email", pb::Category::Account, "d@example.com")],
    )
    .await
    .expect_err("write");
    assert!(err.message().contains("shredded"), "{err:?}");
    let carol = get(&mut client, "globex", "carol", &[])
        .await
        .expect("other tenant");
    assert_eq!(text_of(&carol[0]), "carol@example.com");
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel.clone());
    let err = tenants
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect_err("get tenant");
    assert!(err.message().contains("shredded"), "{err:?}");
    let again = tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect_err("a shredded id is not reused");
    assert_eq!(again.code(), Code::AlreadyExists);
    let mut keys = KeyServiceClient::new(channel);
    let err = keys
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect_err("no keys to rotate");
    assert_eq!(err.code(), Code::NotFound);
    let s = status(&mut keys, "acme", false).await;
    assert!(s.tenants[0].shredded_at.is_some());
    assert!(s.tenants[0]
        .versions
        .iter()
        .all(|v| v.destroyed_at.is_some()));
}

#[tokio::test]
async fn a_shredded_tenant_is_unreadable_also_after_a_restart() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    create_tenant(&vault, "globex").await;
    let mut client = vault.records().await;
    for (t, s) in [("acme", "alice"), ("acme", "bob"), ("globex", "carol")] {
        put(
            &mut client,
            t,
            s,
            vec![text(
                "email",
                pb::Category::Account,
                &format!("{s}@example.com"),
            )],
        )
        .await
        .expect("put");
    }
    let mut keys = keys_client(&vault).await;
    let wrong = keys
        .shred_tenant(pb::ShredTenantRequest {
            tenant_id: "acme".into(),
            confirm_tenant_id: "globex".into(),
        })
        .await
        .expect_err("confirmation must match");
    assert_eq!(wrong.code(), Code::InvalidArgument);
    let shred = keys
        .shred_tenant(pb::ShredTenantRequest {
            tenant_id: "acme".into(),
            confirm_tenant_id: "acme".into(),
        })
        .await
        .expect("shred")
        .into_inner();
    assert_eq!(shred.destroyed_versions, [1]);

    assert_acme_shredded(&vault).await;
    drop((client, keys));
    let vault = vault.restart().await;
    assert_acme_shredded(&vault).await;
    // The next epoch clears the tenant's mark (its KEKs' stale copies die with the root).
    let mut keys = keys_client(&vault).await;
    assert!(status(&mut keys, "acme", false).await.tenants[0].epoch_pending);
    let epoch = keys
        .run_key_epoch(pb::RunKeyEpochRequest {})
        .await
        .expect("epoch")
        .into_inner();
    assert_eq!(epoch.shredded_tenant_ids, ["acme"]);
    assert!(!status(&mut keys, "acme", false).await.tenants[0].epoch_pending);
    assert_acme_shredded(&vault).await;
    let dir = vault.stop().await;
    let store = SledStore::open(&dir.path().join("store"), 16 << 20).expect("open");
    assert!(store.keks(&tid("acme")).expect("keks").is_empty());
}
