//! Durability across a restart on the same data directory, and the root-key guard rails.

use pii_vault::proto::v1 as pb;

use crate::util::{create_tenant, get, put, test_config, text, text_of, TestVault};

#[tokio::test]
async fn everything_reads_back_after_a_restart() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    create_tenant(&vault, "globex").await;
    let mut client = vault.records().await;
    for i in 0..20 {
        put(
            &mut client,
            if i % 2 == 0 { "acme" } else { "globex" },
            &format!("user-{i}"),
            vec![
                text(
                    "email",
                    pb::Category::Account,
                    &format!("user{i}@example.com"),
                ),
                text("bio", pb::Category::Profile, &format!("bio {i}")),
            ],
        )
        .await
        .expect("put");
    }
    drop(client);
    let vault = vault.restart().await;
    let mut client = vault.records().await;
    for i in 0..20 {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        let got = get(&mut client, tenant, &format!("user-{i}"), &[])
            .await
            .expect("get");
        assert_eq!(got.len(), 2);
        assert_eq!(text_of(&got[0]), format!("bio {i}"));
        assert_eq!(text_of(&got[1]), format!("user{i}@example.com"));
    }
    let tenants = vault
        .tenants()
        .await
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tenants;
    assert_eq!(tenants.len(), 2);
}

#[tokio::test]
async fn refuses_a_root_key_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::TempDir::new().expect("dir");
    let config = test_config(dir.path(), |_| {});
    std::fs::set_permissions(
        &config.root_key_file,
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = pii_vault::server::run(listener, config, std::future::pending())
        .await
        .expect_err("must refuse");
    let msg = err.to_string();
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(msg.contains("root.key"), "{msg}");
}

#[tokio::test]
async fn refuses_a_root_key_that_does_not_match_the_data_directory() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let config = vault.config.clone();
    let dir = vault.stop().await;
    // Replace the root key with a fresh one: the data directory must not accept it.
    pii_vault::keyring::RootKeys::generate()
        .expect("generate")
        .save(&config.root_key_file)
        .expect("save");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = pii_vault::server::run(listener, config.clone(), std::future::pending())
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("does not match"), "{err}");
    // And bootstrap must not invent a key for a data directory that has data.
    std::fs::remove_file(&config.root_key_file).expect("rm");
    let err = pii_vault::dev::bootstrap(&config, pii_vault::dev::StartMode::Dev)
        .expect_err("must refuse");
    assert!(err.to_string().contains("is missing"), "{err}");
    drop(dir);
}
