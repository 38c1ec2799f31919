//! The programs in `examples/` (built by `cargo test --all-targets`, or `cargo build
//! --examples`) run against a vault on loopback, configured by the environment as their
//! documentation says.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::util::TestVault;

/// The example binary `name`, beside this test binary's directory; `None` (skipped, or
/// failed under CI) when the examples were not built.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent()?.parent()?.join("examples");
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: build the examples (cargo build --release --examples)",
        path.display()
    );
    eprintln!("==== SKIPPED: {name} not built (cargo build --release --examples) ====");
    None
}

fn run(vault: &TestVault, path: &PathBuf, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(path)
        .args(args)
        .env("PIIVAULT_ADDR", vault.addr.to_string())
        .env("PIIVAULT_DATA_DIR", vault.data_dir())
        .env_remove("PIIVAULT_CACERT")
        .env_remove("PIIVAULT_CLIENT_CERT")
        .env_remove("PIIVAULT_CLIENT_KEY")
        .env_remove("PIIVAULT_TIMEOUT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_examples_run_against_a_vault() {
    let (Some(store), Some(erase), Some(rotate)) = (
        example("store_and_read"),
        example("erasure_job"),
        example("key_rotation"),
    ) else {
        return;
    };
    let vault = TestVault::start().await;
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();

    let out = run(&vault, &store, &["demo", "user-1"], "");
    let text = stdout(&out);
    assert!(text.contains("created tenant demo"), "{text}");
    assert!(text.contains("read email"), "{text}");
    assert!(text.contains("nobody: not held"), "{text}");
    assert!(
        !text.contains("ada@example.com"),
        "the example never prints a value"
    );
    run(&vault, &store, &["demo", "user-2"], "");

    let out = run(
        &vault,
        &erase,
        &["demo"],
        "user-1\n# a comment\nuser-2\nnever-held\n",
    );
    let receipts: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(receipts.len(), 2, "{receipts:?}");
    assert_eq!(receipts[0]["subject"], "user-1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("erased 2, not held 1, failed 0"));

    let out = run(&vault, &rotate, &["demo"], "");
    let text = stdout(&out);
    assert!(text.contains("rotated: v1 -> v2"), "{text}");
    assert!(text.contains("re-wrap to v2 complete"), "{text}");
    assert!(text.contains("epoch done"), "{text}");
    vault.stop().await;
}
