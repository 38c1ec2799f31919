//! `pii_vault::client::VaultClient` against a vault on loopback: typed calls, the vault's
//! reasons decoded, retries of what the vault did not do, deadlines.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pii_vault::client::{ClientConfig, FieldWrite, Retry, Value, VaultClient};
use pii_vault::proto::v1::{Category, ErrorReason, Rendering};
use pii_vault::storage::faults::Faults;
use tonic::Code;

use crate::util::{faulty_vault, TestVault};

fn config(vault: &TestVault) -> ClientConfig {
    ClientConfig::new(format!("https://{}", vault.addr), vault.certs())
}

fn email(address: &str) -> FieldWrite {
    FieldWrite::new("email", Category::Account, Value::Email(address.into()))
}

#[tokio::test]
async fn typed_calls_round_trip_and_errors_carry_the_vaults_reason() {
    let vault = TestVault::start().await;
    let client = VaultClient::connect(&config(&vault))
        .await
        .expect("connect");
    client.create_tenant("acme").await.expect("create");
    let again = client.create_tenant("acme").await.expect_err("exists");
    assert_eq!(again.reason(), Some(ErrorReason::TenantExists));
    assert_eq!(again.attempts, 1, "a refusal is not retried");

    let versions = client
        .put("acme", "ada", vec![email(" Ada@Example.com ")])
        .await
        .expect("put");
    assert_eq!(versions, [1]);
    let stale = client
        .put("acme", "ada", vec![email("ada@example.org").if_version(0)])
        .await
        .expect_err("the field exists");
    assert_eq!(stale.reason(), Some(ErrorReason::VersionMismatch));
    assert_eq!(stale.code(), Code::Aborted);
    let read = client
        .get("acme", "ada", &[], "support")
        .await
        .expect("get");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].rendering, Rendering::Revealed);
    assert_eq!(read[0].value, Some(Value::Email("ada@example.com".into())));
    assert!(
        !format!("{read:?}").contains("ada@"),
        "values stay out of Debug"
    );

    // Under the caller's own idempotency key, a write and a tokenization sent again are
    // answered as the first time; `put` and `tokenize` use a fresh key per call.
    let keyed = |v: &str| {
        vec![FieldWrite::new(
            "nick",
            Category::Profile,
            Value::Text(v.into()),
        )]
    };
    let first = client
        .put_with_key("acme", "ada", keyed("a"), "job-7:ada")
        .await
        .expect("keyed put");
    assert_eq!(
        client
            .put_with_key("acme", "ada", keyed("a"), "job-7:ada")
            .await
            .expect("sent again"),
        first
    );
    let reused = client
        .put_with_key("acme", "ada", keyed("b"), "job-7:ada")
        .await
        .expect_err("another write under the key");
    assert_eq!(reused.reason(), Some(ErrorReason::IdempotencyKeyReused));
    assert_eq!(
        client.put("acme", "ada", keyed("a")).await.expect("put"),
        [first[0] + 1],
        "a fresh key per call"
    );
    let token = client
        .tokenize_with_key("acme", "ada", "4242424242424242", "card-9")
        .await
        .expect("tokenize");
    assert_eq!(
        client
            .tokenize_with_key("acme", "ada", "4242424242424242", "card-9")
            .await
            .expect("again"),
        token
    );
    assert_ne!(
        client
            .tokenize("acme", "ada", "4242424242424242")
            .await
            .expect("fresh key"),
        token
    );

    let receipt = client.erase("acme", "ada").await.expect("erase");
    let gone = client
        .get("acme", "ada", &[], "support")
        .await
        .expect_err("erased");
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(gone.reason(), Some(ErrorReason::SubjectErased));
    assert_eq!(
        gone.detail.metadata.get("receipt_id"),
        Some(&receipt.receipt_id)
    );
    assert!(
        gone.to_string().starts_with("NotFound (SUBJECT_ERASED): "),
        "{gone}"
    );
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_vault_did_not_do_is_retried_until_it_succeeds_or_tries_run_out() {
    let (vault, faults) = faulty_vault(|_| {}).await;
    let mut patient = config(&vault);
    patient.retry = Retry {
        attempts: 20,
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    let mut hasty = config(&vault);
    hasty.retry.attempts = 1;
    let patient = VaultClient::connect(&patient).await.expect("connect");
    let hasty = VaultClient::connect(&hasty).await.expect("connect");
    patient.create_tenant("acme").await.expect("create");

    // Every key update loses its race (KEYS_BUSY) until the fault is cleared.
    Faults::set(&faults.lose_key_races, true);
    let failed = hasty
        .put("acme", "bob", vec![email("bob@example.com")])
        .await
        .expect_err("keys busy");
    assert_eq!(failed.reason(), Some(ErrorReason::KeysBusy));
    assert_eq!(failed.attempts, 1);
    let clear = {
        let faults = faults.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            faults.lose_key_races.store(false, Ordering::SeqCst);
        })
    };
    let started = Instant::now();
    patient
        .put("acme", "bob", vec![email("bob@example.com")])
        .await
        .expect("retried until the keys were free");
    assert!(started.elapsed() >= Duration::from_millis(350), "it waited");
    clear.await.expect("clear");
    assert_eq!(
        patient
            .get("acme", "bob", &[], "support")
            .await
            .expect("read")
            .len(),
        1
    );
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_has_a_deadline() {
    let (vault, faults) = faulty_vault(|raw| raw.audit.timeout_ms = Some(10_000)).await;
    let mut config = config(&vault);
    config.timeouts.request = Some(Duration::from_millis(300));
    let client = VaultClient::connect(&config).await.expect("connect");
    client.create_tenant("acme").await.expect("create");
    client
        .put("acme", "c", vec![email("c@example.com")])
        .await
        .expect("put");
    faults.stall_millis.store(3_000, Ordering::SeqCst);
    Faults::set(&faults.stall_audit, true);
    let started = Instant::now();
    let late = client
        .get("acme", "c", &[], "support")
        .await
        .expect_err("the audit write is stuck");
    let took = started.elapsed();
    Faults::set(&faults.stall_audit, false);
    assert!(
        took < Duration::from_millis(2_500),
        "gave up after {took:?}"
    );
    assert!(
        matches!(late.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{late}"
    );
    assert_eq!(late.attempts, 1, "a deadline is not retried");
    vault.stop().await;
}
