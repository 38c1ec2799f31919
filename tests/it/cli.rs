//! The `pii-vault` client commands, run as the real binary against a vault on loopback:
//! environment variables, `--format json` on every command, exit codes (0 done, 1 local or
//! usage problem, 2 the vault refused), error lines, a timeout against a server that
//! accepts TCP and never answers, and no progress output in pipes.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::TestVault;

/// `pii-vault` with no PIIVAULT_* variable of the environment the tests run in.
fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pii-vault"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PIIVAULT_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs `args` against `vault` (its address and data directory given by the environment),
/// with `stdin` written to the command's input.
fn run(vault: &TestVault, args: &[&str], stdin: &str) -> Output {
    let mut child = bin()
        .args(args)
        .env("PIIVAULT_ADDR", format!("https://{}", vault.addr))
        .env("PIIVAULT_DATA_DIR", vault.data_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pii-vault");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(args: &[&str], out: &Output) -> String {
    format!(
        "pii-vault {}: {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Runs `args` with `--format json`: it must succeed and print at least one line, every
/// line a JSON object. Returns the objects.
fn json_lines(vault: &TestVault, args: &[&str], stdin: &str) -> Vec<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = run(vault, &all, stdin);
    assert!(out.status.success(), "{}", show(&all, &out));
    let stdout = text(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", show(&all, &out)))
        })
        .collect();
    assert!(!lines.is_empty(), "no output\n{}", show(&all, &out));
    assert!(lines.iter().all(serde_json::Value::is_object), "{stdout}");
    assert!(!text(&out.stderr).contains('\r'), "{}", show(&all, &out));
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_lines_with_format_json() {
    let vault = TestVault::start().await;
    let export = vault.data_dir().join("alice.json");
    let backup = vault.data_dir().join("vault.backup");
    let (export, backup) = (
        export.to_str().expect("utf-8"),
        backup.to_str().expect("utf-8"),
    );
    let created = json_lines(&vault, &["tenant", "create", "acme"], "");
    assert_eq!(created[0]["tenant"], "acme");
    assert!(
        created[0]["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "RFC 3339: {created:?}"
    );
    let put = json_lines(
        &vault,
        &[
            "put",
            "acme",
            "alice",
            "email=alice@example.com",
            "--kind",
            "email",
            "--indexed",
        ],
        "",
    );
    assert_eq!(put[0]["field"], "email");
    let got = json_lines(
        &vault,
        &["get", "acme", "alice", "--purpose", "support"],
        "",
    );
    assert_eq!(got[0]["value"], "alice@example.com");
    let found = json_lines(&vault, &["find", "acme", "email", "alice@example.com"], "");
    assert_eq!(found[0]["subject"], "alice");
    let token = json_lines(
        &vault,
        &["tokenize", "acme", "alice"],
        "4111 1111 1111 1111\n",
    );
    let token = token[0]["token"].as_str().expect("a token").to_owned();
    let card = json_lines(
        &vault,
        &["detokenize", "acme", &token, "--purpose", "billing"],
        "",
    );
    assert_eq!(card[0]["card_number"], "4111111111111111");
    let consent = [
        "consent",
        "set",
        "acme",
        "alice",
        "marketing",
        "--grant",
        "--source",
        "form-1",
    ];
    assert_eq!(json_lines(&vault, &consent, "")[0]["purpose"], "marketing");
    let restricted = json_lines(&vault, &["restrict", "acme", "alice"], "");
    assert_eq!(restricted[0]["restricted"], true);
    let lifted = json_lines(&vault, &["lift-restriction", "acme", "alice"], "");
    assert_eq!(lifted[0]["restricted"], false);
    let access = json_lines(&vault, &["access", "acme", "alice"], "");
    assert_eq!(access[0]["fields"][0]["field"], "email");
    assert!(!access[0]["recipients"].as_array().expect("list").is_empty());
    for args in [
        &["tenant", "get", "acme"][..],
        &["tenant", "list"],
        &["subjects", "acme"],
        &["consent", "list", "acme", "alice"],
        &["export", "acme", "alice", "--out", export],
        &["backup", "--out", backup],
        &["reindex", "acme"],
        &["policy", "reload"],
        &[
            "audit",
            "query",
            "--tenant",
            "acme",
            "--since",
            "2020-01-01T00:00:00Z",
        ],
        &["audit", "verify", "--online"],
        &["keys", "status"],
        &["health"],
        &["delete", "acme", "alice", "email"],
    ] {
        json_lines(&vault, args, "");
    }
    json_lines(&vault, &["put", "acme", "bob", "name=Bob"], "");
    let receipts = json_lines(&vault, &["erase", "acme", "alice", "bob"], "");
    assert_eq!(receipts.len(), 2, "{receipts:?}");
    // In the order the vault finished them.
    let mut erased: Vec<&str> = receipts
        .iter()
        .filter_map(|r| r["subject"].as_str())
        .collect();
    erased.sort_unstable();
    assert_eq!(erased, ["alice", "bob"]);
    assert!(receipts[0]["erased_by"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert!(receipts[0]["categories_erased"].is_array(), "{receipts:?}");
    assert!(receipts[0]["retained"].is_array(), "{receipts:?}");
    let events = json_lines(
        &vault,
        &["audit", "query", "--operation", "erase_subject"],
        "",
    );
    // Each erasure's intent, then its ending.
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["outcome"] == "ok" || e["outcome"] == "intent"),
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| e["outcome"] == "ok").count(),
        2,
        "{events:?}"
    );
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_choose_the_vault_and_the_certificates() {
    let vault = TestVault::start().await;
    let certs = vault.certs();
    // No certificates in the data directory the command is given: only the variables
    // can lead it to the right ones.
    let empty = tempfile::TempDir::new().expect("temp dir");
    let out = bin()
        .args(["tenant", "create", "envy"])
        .env("PIIVAULT_ADDR", format!("https://{}/", vault.addr))
        .env("PIIVAULT_DATA_DIR", empty.path())
        .env("PIIVAULT_CACERT", &certs.ca)
        .env("PIIVAULT_CLIENT_CERT", &certs.cert)
        .env("PIIVAULT_CLIENT_KEY", &certs.key)
        .env("PIIVAULT_FORMAT", "json")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        show(&["tenant", "create"], &out)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(created["tenant"], "envy");
    // An option given on the command line wins over its variable.
    let out = bin()
        .args(["tenant", "get", "envy", "--data-dir"])
        .arg(vault.data_dir())
        .env("PIIVAULT_ADDR", vault.addr.to_string())
        .env("PIIVAULT_DATA_DIR", empty.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", show(&["tenant", "get"], &out));
    assert!(text(&out.stdout).contains("envy"), "{}", text(&out.stdout));
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_usage_local_problems_and_refusals_apart() {
    let vault = TestVault::start().await;
    let usage = run(&vault, &["get", "acme"], "");
    assert_eq!(usage.status.code(), Some(1), "{}", show(&["get"], &usage));
    let usage = run(&vault, &["--log-format", "xml", "tenant", "list"], "");
    assert_eq!(
        usage.status.code(),
        Some(1),
        "{}",
        show(&["--log-format"], &usage)
    );
    assert!(text(&usage.stderr).contains("possible values: text, json"));
    let help = run(&vault, &["get", "--help"], "");
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("Tenant id"), "positional help");
    let nothing = run(&vault, &["erase", "acme"], "");
    assert_eq!(
        nothing.status.code(),
        Some(1),
        "{}",
        show(&["erase"], &nothing)
    );
    assert!(text(&nothing.stderr).contains("no subject ids given"));

    let missing = bin()
        .args(["tenant", "list", "--addr"])
        .arg(vault.addr.to_string())
        .args(["--data-dir", "/nonexistent/pii-vault-data"])
        .output()
        .expect("run");
    let stderr = text(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("ca.pem").count(), 1, "said once: {stderr}");
    assert!(
        stderr.contains("hint:") && stderr.contains("--data-dir"),
        "{stderr}"
    );

    let plaintext = run(
        &vault,
        &["tenant", "list", "--addr", "http://127.0.0.1:1"],
        "",
    );
    assert_eq!(plaintext.status.code(), Some(1));
    assert!(text(&plaintext.stderr).contains("mutual TLS only"));

    let port = crate::util::free_port();
    let refused = run(
        &vault,
        &["tenant", "list", "--addr", &format!("127.0.0.1:{port}")],
        "",
    );
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(
        !stderr.contains("transport error: transport error"),
        "{stderr}"
    );

    run(&vault, &["tenant", "create", "acme"], "");
    run(&vault, &["put", "acme", "user-42", "name=x"], "");
    let erased = run(&vault, &["erase", "acme", "user-42"], "");
    assert!(erased.status.success(), "{}", show(&["erase"], &erased));
    let receipt = text(&erased.stdout);
    let receipt_id = receipt
        .split_whitespace()
        .find(|w| w.starts_with("er-"))
        .expect("a receipt id")
        .trim_end_matches(',');
    let gone = run(
        &vault,
        &["get", "acme", "user-42", "--purpose", "support"],
        "",
    );
    assert_eq!(gone.status.code(), Some(2), "{}", show(&["get"], &gone));
    assert_eq!(
        text(&gone.stderr).trim_end(),
        format!("error: NOT_FOUND: subject user-42 was erased (receipt {receipt_id})")
    );
    let unknown = run(&vault, &["tenant", "get", "nope"], "");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).starts_with("error: NOT_FOUND: tenant nope not found\nhint: "),
        "{}",
        text(&unknown.stderr)
    );
    let bad = run(
        &vault,
        &["put", "acme", "bob", "email=no-at", "--kind", "email"],
        "",
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).starts_with("error: INVALID_ARGUMENT: fields[0]: email"),
        "{}",
        text(&bad.stderr)
    );
    assert!(
        !text(&bad.stderr).contains("no-at"),
        "the value is never echoed"
    );
    vault.stop().await;
}

#[test]
fn a_server_that_accepts_tcp_but_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts every connection and holds it without a byte of TLS.
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in listener.incoming().take(4) {
            open.push(conn);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let dir = tempfile::TempDir::new().expect("temp dir");
    let pki = pii_vault::certs::DevPki::in_dir(&dir.path().join("tls"));
    pki.create().expect("dev certificates");
    let started = Instant::now();
    let out = bin()
        .args(["tenant", "list", "--connect-timeout", "1", "--addr"])
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        stderr.contains("no connection to") && stderr.contains("within 1 s"),
        "{stderr}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_stays_out_of_pipes() {
    let vault = TestVault::start().await;
    run(&vault, &["tenant", "create", "acme"], "");
    let ids: Vec<String> = (0..30).map(|i| format!("s{i}")).collect();
    for id in &ids {
        run(&vault, &["put", "acme", id, "name=x"], "");
    }
    let out = run(&vault, &["erase", "acme", "--from", "-"], &ids.join("\n"));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 30, "{stdout}");
    assert!(
        stdout.lines().all(|l| l.contains("erased: receipt er-")),
        "{stdout}"
    );
    // No bar, no carriage return, no escape sequence: only the summary.
    assert_eq!(stderr, "erased 30/30 (0 failed)\n");
    let out = run(&vault, &["keys", "rotate-tenant", "acme"], "");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{stderr:?}"
    );
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_tokenize_take_an_idempotency_key_and_put_an_expected_version() {
    let vault = TestVault::start().await;
    json_lines(&vault, &["tenant", "create", "acme"], "");
    let put = |value: &str, extra: &[&str]| {
        let nick = format!("nick={value}");
        let mut args = vec!["put", "acme", "alice", nick.as_str()];
        args.extend_from_slice(extra);
        args.extend(["--category", "profile", "--format", "json"]);
        let out = run(&vault, &args, "");
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let keyed = ["--idempotency-key", "cli-1"];
    let (code, first, _) = put("al", &keyed);
    assert_eq!(code, Some(0));
    assert!(first.contains("\"version\":1"), "{first}");
    let (code, again, _) = put("al", &keyed);
    assert_eq!((code, again), (Some(0), first), "the first answer again");
    let (code, _, stderr) = put("allie", &keyed);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("FAILED_PRECONDITION") && stderr.contains("idempotency key was used"),
        "{stderr}"
    );

    let (code, _, stderr) = put("al", &["--expect-version", "0"]);
    assert_eq!(code, Some(2), "the field exists: {stderr}");
    assert!(
        stderr.contains("ABORTED") && stderr.contains("is at version 1"),
        "{stderr}"
    );
    let (code, out, stderr) = put("al", &["--expect-version", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(out.contains("\"version\":2"), "{out}");

    let tokenize = |key: &str| {
        let t = json_lines(
            &vault,
            &["tokenize", "acme", "alice", "--idempotency-key", key],
            "4111 1111 1111 1111\n",
        );
        t[0]["token"].as_str().expect("a token").to_owned()
    };
    assert_eq!(tokenize("card-1"), tokenize("card-1"));
    assert_ne!(tokenize("card-1"), tokenize("card-2"));
    vault.stop().await;
}
