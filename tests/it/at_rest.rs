//! What is on disk is ciphertext: a distinctive value written through the API never
//! appears in any file of the data directory.

use pii_vault::proto::v1 as pb;

use crate::util::{bytes_occur_below, create_tenant, put, text, TestVault};

#[tokio::test]
async fn values_never_reach_the_disk_in_plaintext() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    let secret = "zq-distinctive-4c1d-value-9f2e@example.invalid";
    let field_name = "marker_field_name_7e3b";
    for i in 0..50 {
        put(
            &mut client,
            "acme",
            &format!("user-{i}"),
            vec![text(field_name, pb::Category::Account, secret)],
        )
        .await
        .expect("put");
    }
    drop(client);
    let dir = vault.stop().await;
    let store = dir.path().join("store");
    // The scan can see stored bytes: field names are metadata and stored in the clear.
    assert!(
        bytes_occur_below(&store, field_name.as_bytes()),
        "scanner found no stored data at all"
    );
    assert!(
        !bytes_occur_below(dir.path(), secret.as_bytes()),
        "a field value was found in plaintext on disk"
    );
}
