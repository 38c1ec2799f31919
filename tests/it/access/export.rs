//! The portable export at scale and after erasure: 100,000 fields stream in bounded chunks
//! while the exporter holds one page; an erased subject has no report and no export (nor a
//! file from `pii-vault export`), also after a restart; field pages cover a subject exactly.

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pii_vault::domain::{SubjectId, TenantId};
use pii_vault::proto::v1 as pb;
use pii_vault::service::{EXPORT_CHUNK, EXPORT_SCHEMA};
use pii_vault::storage::faults::FaultyStore;
use pii_vault::storage::{SledStore, Store};
use serde::Deserialize;
use serde_json::Value as Json;
use tonic::Code;

use super::{access, assert_erased, export_chunks, records, rights};
use crate::erasure::erase;
use crate::util::{create_tenant, put, test_config, text, TestVault};

/// Resident and peak resident set of this process, in KiB (Linux).
fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

#[derive(Deserialize)]
struct ExportDoc {
    schema: String,
    subject: String,
    field_count: u64,
    fields: Vec<ExportField>,
    recipient_count: u64,
    recipients: Vec<Json>,
}

#[derive(Deserialize)]
struct ExportField {
    name: String,
    category: String,
    value: Option<String>,
    rendering: String,
    version: u64,
}

const BIG: usize = 100_000;
const BATCH: usize = 1000;

fn big_value(i: usize) -> String {
    format!("value {i:06} of a subject with very many fields")
}

#[tokio::test]
async fn a_subject_with_100000_fields_exports_in_bounded_chunks_and_memory() {
    let dir = tempfile::TempDir::new().expect("dir");
    let config = test_config(dir.path(), |_| {});
    let sled = SledStore::open(&config.store_dir(), 1 << 24).expect("open");
    let store = FaultyStore::new(Arc::new(sled));
    let faults = store.faults.clone();
    let vault = TestVault::start_on(dir, config, Some(Arc::new(store))).await;
    create_tenant(&vault, "acme").await;
    let channel = vault.channel().await;
    let mut client = records(&channel);
    for batch in 0..BIG / BATCH {
        let fields = (batch * BATCH..(batch + 1) * BATCH)
            .map(|i| text(&format!("f{i:06}"), pb::Category::Usage, &big_value(i)))
            .collect();
        put(&mut client, "acme", "big", fields)
            .await
            .expect("put batch");
    }
    crate::util::get(&mut client, "acme", "big", &["f000007"])
        .await
        .expect("one read, to be listed as a recipient");

    // Reset the peak RSS counter (Linux: writing 5 to clear_refs), so VmHWM below is the
    // peak during the export alone. Other tests run in this process too: the RSS figures are
    // printed as evidence, the asserted bound is the store's page counters.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = rss_kib();
    let loads_before = faults.whole_field_loads.load(Ordering::SeqCst);
    faults.largest_field_page.store(0, Ordering::SeqCst);

    // Stream the document to a file, never holding it in memory here either.
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut file = std::io::BufWriter::new(out.reopen().expect("reopen"));
    let mut stream = rights(&channel)
        .export_subject(pb::ExportSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: "big".into(),
            purpose: "data_subject_request".into(),
        })
        .await
        .expect("export starts")
        .into_inner();
    let (mut chunks, mut bytes, mut largest) = (0usize, 0usize, 0usize);
    while let Some(chunk) = stream.message().await.expect("chunk") {
        assert!(!chunk.data.is_empty(), "no empty chunks");
        assert!(
            chunk.data.len() <= EXPORT_CHUNK,
            "chunk of {} bytes",
            chunk.data.len()
        );
        largest = largest.max(chunk.data.len());
        chunks += 1;
        bytes += chunk.data.len();
        file.write_all(&chunk.data).expect("write");
    }
    file.flush().expect("flush");
    drop(file);
    let after = rss_kib();

    let largest_page = faults.largest_field_page.load(Ordering::SeqCst);
    let loads = faults.whole_field_loads.load(Ordering::SeqCst) - loads_before;
    if let (Some((rss0, _)), Some((rss1, peak))) = (before, after) {
        eprintln!(
            "export of {BIG} fields: {bytes} bytes in {chunks} chunks (largest {largest}); \
             store pages of at most {largest_page} fields, {loads} whole-subject loads; \
             RSS {rss0} KiB before, {rss1} KiB after, peak during export {peak} KiB \
             (peak reset: {reset}, +{} KiB)",
            peak.saturating_sub(rss0)
        );
    }
    assert_eq!(
        loads, 0,
        "the export never loads all fields of the subject at once"
    );
    assert!(
        (1..=128).contains(&largest_page),
        "the exporter holds one page of at most 128 field records, saw {largest_page}"
    );
    assert!(
        chunks >= bytes / EXPORT_CHUNK,
        "{chunks} chunks for {bytes} bytes"
    );
    assert_eq!(
        largest, EXPORT_CHUNK,
        "full chunks while the document is large"
    );

    let doc: ExportDoc = serde_json::from_reader(BufReader::new(
        std::fs::File::open(out.path()).expect("open"),
    ))
    .expect("the concatenated chunks are one JSON document");
    assert_eq!(
        (doc.schema.as_str(), doc.subject.as_str()),
        (EXPORT_SCHEMA, "big")
    );
    assert_eq!(doc.field_count, BIG as u64);
    assert_eq!(doc.fields.len(), BIG);
    let mut seen = vec![false; BIG];
    for f in &doc.fields {
        let i: usize = f.name[1..].parse().expect("f<index>");
        assert!(!seen[i], "{} listed twice", f.name);
        seen[i] = true;
        assert_eq!(
            f.value.as_deref(),
            Some(big_value(i).as_str()),
            "{}",
            f.name
        );
        assert_eq!(
            (f.category.as_str(), f.rendering.as_str(), f.version),
            ("usage", "revealed", 1)
        );
    }
    assert!(seen.iter().all(|s| *s), "every field is present");
    assert_eq!(doc.recipient_count, 1);
    assert_eq!(doc.recipients[0]["fields"][0], "f000007");
}

#[tokio::test]
async fn an_erased_subject_has_no_report_and_no_export_also_after_a_restart() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let channel = vault.channel().await;
    put(
        &mut records(&channel),
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "alice@example.com")],
    )
    .await
    .expect("put");

    // The export command writes the document to a file (only under its name when complete).
    let file = vault.data_dir().join("alice.json");
    // Run off the test's runtime thread, which also serves the vault.
    let cli = |out: std::path::PathBuf| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"));
        cmd.args(["export", "acme", "alice", "--out"])
            .arg(out)
            .arg("--addr")
            .arg(vault.addr.to_string())
            .arg("--data-dir")
            .arg(vault.data_dir());
        async move {
            tokio::task::spawn_blocking(move || cmd.output())
                .await
                .expect("join")
                .expect("run export")
        }
    };
    let done = cli(file.clone()).await;
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let doc: Json = serde_json::from_slice(&std::fs::read(&file).expect("file")).expect("json");
    assert_eq!(doc["schema"], EXPORT_SCHEMA);
    assert_eq!(doc["fields"][0]["value"], "alice@example.com");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the export holds personal data");
    }

    erase(channel.clone(), "acme", "alice")
        .await
        .expect("erase");
    assert_erased(&access(&channel, "acme", "alice").await.expect_err("access"));
    assert_erased(
        &export_chunks(&channel, "acme", "alice", "data_subject_request")
            .await
            .expect_err("export"),
    );
    let gone = vault.data_dir().join("gone.json");
    let failed = cli(gone.clone()).await;
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("erased"));
    assert!(!gone.exists());
    assert!(!vault.data_dir().join("gone.json.partial").exists());

    // Never known: NOT_FOUND without "erased".
    let unknown = access(&channel, "acme", "carol")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(!unknown.message().contains("erased"));

    drop(channel);
    let vault = vault.restart().await;
    let channel = vault.channel().await;
    assert_erased(
        &access(&channel, "acme", "alice")
            .await
            .expect_err("after restart"),
    );
    assert_erased(
        &export_chunks(&channel, "acme", "alice", "data_subject_request")
            .await
            .expect_err("after restart"),
    );
}

#[tokio::test]
async fn field_pages_cover_one_subject_exactly() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for (subject, n) in [("a", 7), ("a0", 2), ("b", 3)] {
        let fields = (0..n)
            .map(|i| text(&format!("n{i}"), pb::Category::Usage, "x"))
            .collect();
        put(&mut client, "acme", subject, fields)
            .await
            .expect("put");
    }
    drop(client);
    let dir = vault.stop().await;
    let store = SledStore::open(&dir.path().join("store"), 1 << 20).expect("open");
    let acme = TenantId::parse("acme").expect("id");
    let a = SubjectId::parse("a").expect("id");
    let mut names = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = store.fields_page(&acme, &a, names.last(), 3).expect("page");
        sizes.push(page.len());
        if page.is_empty() {
            break;
        }
        names.extend(page.into_iter().map(|r| r.meta.name));
    }
    assert_eq!(sizes, [3, 3, 1, 0]);
    let all: Vec<_> = store
        .fields(&acme, &a)
        .expect("fields")
        .into_iter()
        .map(|r| r.meta.name)
        .collect();
    assert_eq!(
        names, all,
        "pages are the whole subject, in order, and nothing else"
    );
    let missing = SubjectId::parse("nobody").expect("id");
    assert!(store
        .fields_page(&acme, &missing, None, 3)
        .expect("page")
        .is_empty());
}
