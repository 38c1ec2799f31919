//! The programs in `examples/` run against a vault on loopback, configured as their
//! documentation says.

use pii_vault::client::ClientConfig;

use crate::util::TestVault;

// Each example's `run` is the whole program but for reading the environment, stdin and
// stdout, which `main` hands it; `cargo test --all-targets` builds the examples' own files
// as test harnesses, not as the programs, so this test compiles their sources in.
#[allow(dead_code)] // main
#[path = "../../examples/erasure_job.rs"]
mod erasure_job;
#[allow(dead_code)] // main
#[path = "../../examples/key_rotation.rs"]
mod key_rotation;
#[allow(dead_code)] // main
#[path = "../../examples/store_and_read.rs"]
mod store_and_read;

/// What the examples' `ClientConfig::from_env` reads, set as their documentation says.
fn config(vault: &TestVault) -> ClientConfig {
    let addr = vault.addr.to_string();
    let data_dir = vault.data_dir().display().to_string();
    ClientConfig::from_lookup(|name| match name {
        "PIIVAULT_ADDR" => Some(addr.clone()),
        "PIIVAULT_DATA_DIR" => Some(data_dir.clone()),
        _ => None,
    })
    .expect("the examples' configuration")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_examples_run_against_a_vault() {
    let vault = TestVault::start().await;

    let mut out = Vec::new();
    store_and_read::run(config(&vault), &args(&["demo", "user-1"]), &mut out)
        .await
        .expect("store_and_read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("created tenant demo"), "{text}");
    assert!(text.contains("read email"), "{text}");
    assert!(text.contains("nobody: not held"), "{text}");
    assert!(
        !text.contains("ada@example.com"),
        "the example never prints a value"
    );
    store_and_read::run(config(&vault), &args(&["demo", "user-2"]), &mut Vec::new())
        .await
        .expect("store_and_read for a second subject");

    let (mut receipts, mut log) = (Vec::new(), Vec::new());
    let ids = "user-1\n# a comment\nuser-2\nnever-held\n".as_bytes();
    erasure_job::run(
        config(&vault),
        &args(&["demo"]),
        ids,
        &mut receipts,
        &mut log,
    )
    .await
    .expect("erasure_job");
    let receipts: Vec<serde_json::Value> = String::from_utf8_lossy(&receipts)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(receipts.len(), 2, "{receipts:?}");
    assert_eq!(receipts[0]["subject"], "user-1");
    assert_eq!(receipts[1]["subject"], "user-2");
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("never-held: not held"), "{log}");
    assert!(log.contains("erased 2, not held 1, failed 0"), "{log}");

    let mut out = Vec::new();
    key_rotation::run(config(&vault), &args(&["demo"]), &mut out)
        .await
        .expect("key_rotation");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("rotated: v1 -> v2"), "{text}");
    assert!(text.contains("re-wrap to v2 complete"), "{text}");
    assert!(text.contains("epoch done"), "{text}");

    // An erasure job whose vault is gone fails (its `main` exits 1); it never reports success.
    let gone = config(&vault);
    let _data = vault.stop().await;
    let mut log = Vec::new();
    let failed = erasure_job::run(
        gone,
        &args(&["demo"]),
        "user-3\n".as_bytes(),
        &mut Vec::new(),
        &mut log,
    )
    .await;
    assert!(failed.is_err(), "{}", String::from_utf8_lossy(&log));
}
