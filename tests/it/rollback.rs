//! A store rolled back to an earlier state (sled drops a damaged log tail silently) is
//! refused at start by the audit high-water mark, instead of serving erased subjects again.

use pii_vault::proto::v1 as pb;
use pii_vault::server::ServerError;
use pii_vault::service::HIGH_WATER_FILE;
use tokio::net::TcpListener;

use crate::erasure::erase;
use crate::util::{copy_dir, create_tenant, get, put, text, TestVault};

/// Starts `run` on the stopped vault's config and stops it at once; its result.
async fn start_and_stop(config: &pii_vault::config::Config) -> Result<(), ServerError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    pii_vault::server::run(listener, config.clone(), async {}).await
}

#[tokio::test]
async fn a_store_rolled_back_past_an_erasure_is_refused_until_the_operator_accepts_it() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for who in ["alice", "bob"] {
        put(
            &mut client,
            "acme",
            who,
            vec![text(
                "email",
                pb::Category::Account,
                &format!("{who}@example.com"),
            )],
        )
        .await
        .expect("put");
    }
    drop(client);
    let config = vault.config.clone();
    let dir = vault.stop().await;
    let store = dir.path().join("store");
    let before = dir.path().join("store-before-erasure");
    copy_dir(&store, &before);

    let vault = TestVault::start_on(dir, config.clone(), None).await;
    erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase");
    let dir = vault.stop().await;
    assert!(dir.path().join(HIGH_WATER_FILE).exists());

    // The store as it was before the erasure: what sled recovers to when the log's tail is
    // damaged.
    std::fs::remove_dir_all(&store).expect("remove store");
    std::fs::rename(&before, &store).expect("roll back");
    let refused = start_and_stop(&config)
        .await
        .expect_err("a rolled-back store is refused");
    let message = format!("{refused}");
    assert!(message.contains("rolled back"), "{message}");
    assert!(
        message.contains(HIGH_WATER_FILE),
        "names the file to remove: {message}"
    );
    assert!(
        !message.contains("alice"),
        "no subject ids in the message: {message}"
    );

    // The operator accepts the store as it is by removing the mark.
    std::fs::remove_file(dir.path().join(HIGH_WATER_FILE)).expect("remove the mark");
    start_and_stop(&config)
        .await
        .expect("accepted once the mark is gone");
    let vault = TestVault::start_on(dir, config, None).await;
    let mut client = vault.records().await;
    get(&mut client, "acme", "bob", &["email"])
        .await
        .expect("bob reads");
}

#[tokio::test]
async fn a_damaged_high_water_mark_is_refused_and_a_clean_restart_is_not() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let config = vault.config.clone();
    let dir = vault.stop().await;
    // A clean stop leaves a mark the same store satisfies.
    start_and_stop(&config).await.expect("clean restart");
    let mark = dir.path().join(HIGH_WATER_FILE);
    let mut bytes = std::fs::read(&mark).expect("mark");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&mark, bytes).expect("damage the mark");
    let refused = start_and_stop(&config)
        .await
        .expect_err("a damaged mark is refused");
    assert!(format!("{refused}").contains("damaged"), "{refused}");
    drop(dir);
}
