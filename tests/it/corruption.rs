//! Corruption of a stopped vault's files: known data is written and the vault stopped, then
//! random bytes of sled's files or of the root key file are flipped, or a file is cut short,
//! one case per seed. The vault is started on the damaged copy and every field read. It
//! may refuse to start (with a message), or answer a read with an error, or serve the value
//! last written; it must never serve plaintext that was not written there (AEAD catches
//! altered ciphertext).
//!
//! sled cannot tell damage in its log from a torn write, so it recovers the store as it was
//! before the damaged spot and drops the rest without an error. Served, that older state
//! would answer a field's previous value ("rolled back") and subjects erased after that
//! point ("resurrected"). The audit high-water mark kept beside the store
//! (`service::high_water`) makes the vault refuse such a store at start; both counts must
//! stay 0.
//!
//! `cargo test --release --test it corruption -- --nocapture` prints the outcome table;
//! `PIIVAULT_CORRUPTION_CASES=200` runs more cases, `PIIVAULT_CORRUPTION_SEED` repeats a run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pii_vault::proto::v1 as pb;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::process::VaultProcess;
use crate::util::{files_below, get, put, text, text_of};

#[allow(dead_code)] // shared with the crash harness, which uses all of it
#[path = "../crash/rng.rs"]
mod rng;
use rng::Rng;

const TENANT: &str = "acme";
const SUBJECTS: usize = 24;
/// Subjects erased after their writes: they must stay unreadable.
const ERASED: usize = 4;
const FIELDS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Every field is written twice: round 2 is the value to serve, round 1 a stale one.
fn value(subject: usize, field: &str, round: u32) -> String {
    format!("s{subject}.{field}.v{round}")
}

fn subject(i: usize) -> String {
    format!("subject-{i}")
}

/// What one damaged copy did.
#[derive(Default)]
struct Outcomes {
    cases: u64,
    /// The vault refused to start (exited with a message).
    refused: u64,
    /// It started and every read answered the value last written.
    served_intact: u64,
    /// It started and some reads answered an error.
    served_with_errors: u64,
    /// It exited while serving the reads.
    died: u64,
    reads_correct: u64,
    /// Per-read errors by status code.
    read_errors: BTreeMap<String, u64>,
    /// Reads that answered the field's previous value (the store rolled back).
    stale: u64,
    /// Reads of erased subjects that answered the subject's own earlier data.
    resurrected: u64,
    /// Reads that answered a value never written to that field: must stay 0.
    wrong: Vec<String>,
    /// The first lines of the refusals' messages, with how often each was seen.
    refusals: BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_files_are_refused_or_fail_reads_but_never_yield_wrong_plaintext() {
    let cases: u64 = std::env::var("PIIVAULT_CORRUPTION_CASES")
        .ok()
        .map_or(16, |v| {
            v.parse().expect("PIIVAULT_CORRUPTION_CASES is a number")
        });
    let seed: u64 = std::env::var("PIIVAULT_CORRUPTION_SEED")
        .ok()
        .map_or_else(Rng::clock_seed, |v| {
            v.parse().expect("PIIVAULT_CORRUPTION_SEED is a number")
        });
    println!(
        "corruption: {cases} cases, seed {seed} (repeat with PIIVAULT_CORRUPTION_SEED={seed})"
    );
    let base = TempDir::new().expect("temp dir");
    let template = base.path().join("template");
    write_known_data(&template, &base.path().join("setup.log")).await;
    let mut out = Outcomes::default();
    for case in 0..cases {
        let mut rng = Rng::new(seed.wrapping_add(case));
        let dir = base.path().join(format!("case{case}"));
        copy_dir(&template, &dir);
        let damage = corrupt(&dir, case, &mut rng);
        let log = base.path().join(format!("case{case}.log"));
        let result = serve_and_read(&dir, &log, &mut out).await;
        println!("  case {case:3}: {damage:<58} -> {result}");
        out.cases += 1;
        std::fs::remove_dir_all(&dir).expect("remove the case's copy");
    }
    println!(
        "corruption outcomes over {} cases: refused to start {}, served intact {}, served with per-read errors {}, died while serving {}",
        out.cases, out.refused, out.served_intact, out.served_with_errors, out.died
    );
    println!(
        "  reads: correct {}, errors {:?}, rolled back to the previous value {}, erased subjects resurrected {}, wrong plaintext {}",
        out.reads_correct,
        out.read_errors,
        out.stale,
        out.resurrected,
        out.wrong.len()
    );
    for (message, n) in &out.refusals {
        println!("  refused ({n}x): {message}");
    }
    assert!(
        out.wrong.is_empty(),
        "plaintext never written there was served:\n{}",
        out.wrong.join("\n")
    );
    assert_eq!(out.died, 0, "the vault died while serving a damaged store");
    assert_eq!(
        (out.stale, out.resurrected),
        (0, 0),
        "a rolled-back store was served (previous values, erased subjects)"
    );
}

/// Starts a vault on `data`, writes every field twice, erases the first subjects and stops.
async fn write_known_data(data: &Path, log: &Path) {
    let vault = VaultProcess::start(data, log, &[]).await;
    let channel = vault.channel().await;
    pb::tenant_service_client::TenantServiceClient::new(channel.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: TENANT.into(),
        })
        .await
        .expect("create tenant");
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    for round in 1..=2 {
        for i in 0..SUBJECTS {
            let fields = FIELDS
                .iter()
                .map(|f| text(f, pb::Category::Profile, &value(i, f, round)))
                .collect();
            put(&mut records, TENANT, &subject(i), fields)
                .await
                .expect("put");
        }
    }
    let mut rights = pb::subject_rights_service_client::SubjectRightsServiceClient::new(channel);
    for i in 0..ERASED {
        rights
            .erase_subject(pb::EraseSubjectRequest {
                tenant_id: TENANT.into(),
                subject_id: subject(i),
            })
            .await
            .expect("erase");
    }
    vault.terminate();
    let status = vault.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "clean stop: {status}");
}

fn copy_dir(from: &Path, to: &Path) {
    for file in files_below(from) {
        let target = to.join(file.strip_prefix(from).expect("below"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&file, &target).expect("copy");
    }
}

/// Damages the copy in `dir` as case `case` says; describes what it did.
fn corrupt(dir: &Path, case: u64, rng: &mut Rng) -> String {
    let root_key = dir.join("root.key");
    let mut store_files = files_below(&dir.join("store"));
    store_files.sort();
    let file = match case % 4 {
        0 | 1 => {
            // sled's log file `db` holds the data; the others (conf, snapshots) are small.
            let db = store_files.iter().find(|f| f.ends_with("db")).cloned();
            match db {
                Some(db) if rng.percent(75) => db,
                _ => rng.pick(&store_files).clone(),
            }
        }
        _ => root_key,
    };
    let mut bytes = std::fs::read(&file).expect("read the file to damage");
    let name = file.strip_prefix(dir).expect("below").display().to_string();
    let what = if case.is_multiple_of(2) && !bytes.is_empty() {
        // Flip bytes, mostly where something was written (sled preallocates zeroes).
        let written: Vec<usize> = (0..bytes.len()).filter(|i| bytes[*i] != 0).collect();
        let flips = 1 + rng.below(if case.is_multiple_of(4) { 16 } else { 4 }) as usize;
        for _ in 0..flips {
            let at = if !written.is_empty() && rng.percent(75) {
                *rng.pick(&written)
            } else {
                rng.below(bytes.len() as u64) as usize
            };
            bytes[at] ^= 1 + rng.below(255) as u8;
        }
        format!("{flips} byte(s) flipped in {name} ({} B)", bytes.len())
    } else {
        let len = bytes.len();
        bytes.truncate(rng.below(len.max(1) as u64) as usize);
        format!("{name} cut from {len} to {} B", bytes.len())
    };
    std::fs::write(&file, &bytes).expect("write the damaged file");
    what
}

/// Starts the vault on the damaged copy and reads everything; a one-line result.
async fn serve_and_read(dir: &Path, log: &Path, out: &mut Outcomes) -> String {
    let mut vault = VaultProcess::spawn(dir, log, &[], "info");
    match vault.ready_or_exit(Duration::from_secs(30)).await {
        Err(Some(status)) => {
            out.refused += 1;
            let message = refusal(&vault.log_text()).replace(&dir.display().to_string(), "DIR");
            assert!(!status.success(), "a refusal exits non-zero");
            assert!(
                !message.is_empty(),
                "a refusal says why:\n{}",
                vault.log_text()
            );
            *out.refusals.entry(message.clone()).or_default() += 1;
            return format!("refused: {message}");
        }
        Err(None) => panic!(
            "the vault neither started nor exited:\n{}",
            vault.log_text()
        ),
        Ok(()) => {}
    }
    let channel = vault.channel().await;
    let before = (
        out.reads_correct,
        out.stale + out.resurrected + out.wrong.len() as u64,
    );
    let mut errors = 0;
    for i in 0..SUBJECTS {
        errors += read_subject(&channel, i, out).await;
    }
    let alive = vault.is_running();
    vault.kill();
    if !alive {
        out.died += 1;
        return format!("died while serving:\n{}", vault.log_text());
    }
    let off = out.stale + out.resurrected + out.wrong.len() as u64 - before.1;
    let correct = out.reads_correct - before.0;
    if errors == 0 && off == 0 {
        out.served_intact += 1;
        "served every value".into()
    } else {
        out.served_with_errors += u64::from(errors > 0);
        format!("served: {correct} correct, {errors} error(s), {off} from an earlier state")
    }
}

/// Reads each field of subject `i` (every field at once for an erased one); the number
/// of reads that answered an error.
async fn read_subject(channel: &Channel, i: usize, out: &mut Outcomes) -> u64 {
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    let erased = i < ERASED;
    let names: Vec<&[&str]> = if erased {
        vec![&[]]
    } else {
        FIELDS.iter().map(std::slice::from_ref).collect()
    };
    let mut errors = 0;
    for names in names {
        let fields = match get(&mut records, TENANT, &subject(i), names).await {
            Ok(fields) => fields,
            Err(_) if erased => {
                out.reads_correct += 1;
                continue;
            }
            Err(status) => {
                errors += 1;
                *out.read_errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                continue;
            }
        };
        for f in &fields {
            let got = text_of(f);
            let written =
                |round| FIELDS.contains(&f.name.as_str()) && got == value(i, &f.name, round);
            if erased && (written(1) || written(2)) {
                out.resurrected += 1;
            } else if !erased && written(2) {
                out.reads_correct += 1;
            } else if !erased && written(1) {
                out.stale += 1;
            } else {
                out.wrong
                    .push(format!("{}.{} served {got:?}", subject(i), f.name));
            }
        }
        if !erased && fields.len() != 1 {
            out.wrong.push(format!(
                "{} read {names:?}, got {} fields",
                subject(i),
                fields.len()
            ));
        }
    }
    errors
}

/// The error a refusing vault printed: its last line that is not a JSON log line, else
/// the message of its last error-level log line.
fn refusal(log: &str) -> String {
    let plain = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with('{'));
    let message = plain.map(str::to_owned).or_else(|| {
        log.lines()
            .rev()
            .find(|l| l.contains("\"ERROR\""))
            .map(str::to_owned)
    });
    let mut m = message.unwrap_or_default();
    m.truncate(160);
    m
}
