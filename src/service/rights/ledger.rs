//! The erasure ledger: every subject erasure and tenant shred, recorded outside the store
//! (beside the root key, never in a backup), so that restoring a backup taken before them
//! does not bring the people back. A restore, and every start, applies the entries the store
//! has not seen (`Vault::apply_erasure_ledger`).
//!
//! One JSON object per line, appended and synced before the erasure it records:
//!
//! ```text
//! {"pii_vault_erasure_ledger":1}
//! {"seq":1,"kind":"subject","tenant":"<hex>","subject":"<hex>","at":1700000000000000,"mac":"<hex>"}
//! {"seq":2,"kind":"tenant","tenant":"<hex>","at":1700000000000001,"mac":"<hex>"}
//! {"seq":3,"kind":"cancel","cancels":2,"at":1700000000000002,"mac":"<hex>"}
//! ```
//!
//! An erasure or shred that fails after its entry was written (the store refused it) is
//! cancelled by a `cancel` entry, so a failed request changes nothing, at a restart either.
//! One cut off by a crash before its answer has no cancel: the next start completes it.
//!
//! `tenant` and `subject` are keyed hashes of the ids (`keyring::LedgerKey`), never the ids;
//! `at` is when the erasure was asked for, in microseconds. `mac` chains each entry to the
//! one before it, so an entry removed, reordered or edited is found at start and the vault
//! refuses to run on that ledger. A last line left half-written by a crash (its erasure was
//! never acknowledged) is cut with a warning.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::domain::{SubjectId, TenantId, Timestamp};
use crate::keyring::{LedgerKey, LEDGER_TAG_LEN};

/// The first line of every ledger.
const HEADER: &str = "{\"pii_vault_erasure_ledger\":1}";

type Tag = [u8; LEDGER_TAG_LEN];

/// What the ledger recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Erased {
    /// A subject of a tenant (their hashes).
    Subject { tenant: Tag, subject: Tag },
    /// A whole tenant.
    Tenant { tenant: Tag },
    /// The erasure or shred of entry `seq` failed: it did not happen.
    Cancel { seq: u64 },
}

/// One entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 1, 2, …: how many entries the ledger held once this one was written.
    pub seq: u64,
    pub erased: Erased,
    pub at: Timestamp,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: u64,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cancels: Option<u64>,
    at: u64,
    mac: String,
}

/// The ledger cannot be read, trusted or written. Says where and why; holds no id.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("erasure ledger {path}: {problem}")]
    Io { path: String, problem: String },
    #[error(
        "erasure ledger {path} is damaged at entry {seq}: {problem}; restore it from where \
         it is kept with the root key (a copy made after the last erasure), never edit it"
    )]
    Damaged {
        path: String,
        seq: u64,
        problem: &'static str,
    },
}

/// The open ledger; appends are serialised.
pub struct ErasureLedger {
    path: PathBuf,
    key: LedgerKey,
    state: Mutex<State>,
}

impl std::fmt::Debug for ErasureLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasureLedger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct State {
    file: File,
    entries: Vec<Entry>,
    last_mac: Tag,
}

impl ErasureLedger {
    /// Opens the ledger at `path`, creating it (mode 0600) if it does not exist, and checks
    /// every entry's chain MAC under `key`.
    pub fn open(path: &Path, key: LedgerKey) -> Result<Self, LedgerError> {
        let io = |e: std::io::Error| LedgerError::Io {
            path: path.display().to_string(),
            problem: e.to_string(),
        };
        let created = !path.exists();
        if created {
            create_private(path).map_err(io)?;
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let (entries, last_mac, good_len) = parse(path, &key, &text)?;
        if good_len < text.len() {
            tracing::warn!(
                path = %path.display(),
                "the erasure ledger ends in a half-written entry (a crash before its erasure \
                 was acknowledged); cut"
            );
            let file = OpenOptions::new().write(true).open(path).map_err(io)?;
            file.set_len(u64::try_from(good_len).unwrap_or(u64::MAX))
                .and_then(|()| file.sync_all())
                .map_err(io)?;
        }
        let mut file = OpenOptions::new().append(true).open(path).map_err(io)?;
        if good_len == 0 {
            file.write_all(format!("{HEADER}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
        }
        if created {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            key,
            state: Mutex::new(State {
                file,
                entries,
                last_mac,
            }),
        })
    }

    /// Where the ledger is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a subject's erasure, durably, before it is done.
    pub fn record_erasure(
        &self, tenant: &TenantId, subject: &SubjectId, at: Timestamp,
    ) -> Result<u64, LedgerError> {
        self.append(
            Erased::Subject {
                tenant: self.key.tenant_tag(tenant),
                subject: self.key.subject_tag(tenant, subject),
            },
            at,
        )
    }

    /// Records a tenant's shred, durably, before it is done.
    pub fn record_shred(&self, tenant: &TenantId, at: Timestamp) -> Result<u64, LedgerError> {
        self.append(
            Erased::Tenant {
                tenant: self.key.tenant_tag(tenant),
            },
            at,
        )
    }

    /// Records that the erasure or shred of entry `seq` failed and did not happen.
    pub fn record_cancel(&self, seq: u64, at: Timestamp) -> Result<u64, LedgerError> {
        self.append(Erased::Cancel { seq }, at)
    }

    /// How many entries the ledger holds.
    pub fn len(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.entries.len() as u64)
            .unwrap_or(0)
    }

    /// Every entry after the first `seen`.
    pub fn entries_after(&self, seen: u64) -> Vec<Entry> {
        self.state
            .lock()
            .map(|s| s.entries.iter().filter(|e| e.seq > seen).copied().collect())
            .unwrap_or_default()
    }

    /// The ledger's hash of a tenant, to compare with entries.
    pub fn tenant_tag(&self, tenant: &TenantId) -> Tag {
        self.key.tenant_tag(tenant)
    }

    /// The ledger's hash of a subject, to compare with entries.
    pub fn subject_tag(&self, tenant: &TenantId, subject: &SubjectId) -> Tag {
        self.key.subject_tag(tenant, subject)
    }

    fn append(&self, erased: Erased, at: Timestamp) -> Result<u64, LedgerError> {
        let io = |e: std::io::Error| LedgerError::Io {
            path: self.path.display().to_string(),
            problem: e.to_string(),
        };
        let mut state = self.state.lock().map_err(|_| LedgerError::Io {
            path: self.path.display().to_string(),
            problem: "an earlier append panicked".into(),
        })?;
        let entry = Entry {
            seq: state.entries.len() as u64 + 1,
            erased,
            at,
        };
        let mac = self.key.entry_mac(&state.last_mac, &body(&entry));
        let mut line =
            serde_json::to_string(&to_line(&entry, &mac)).map_err(|e| LedgerError::Io {
                path: self.path.display().to_string(),
                problem: e.to_string(),
            })?;
        line.push('\n');
        state
            .file
            .write_all(line.as_bytes())
            .and_then(|()| state.file.sync_data())
            .map_err(io)?;
        state.entries.push(entry);
        state.last_mac = mac;
        Ok(entry.seq)
    }
}

/// The bytes an entry's MAC covers.
fn body(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 1 + 2 * LEDGER_TAG_LEN + 8);
    out.extend_from_slice(&e.seq.to_be_bytes());
    match &e.erased {
        Erased::Subject { tenant, subject } => {
            out.push(1);
            out.extend_from_slice(tenant);
            out.extend_from_slice(subject);
        }
        Erased::Tenant { tenant } => {
            out.push(2);
            out.extend_from_slice(tenant);
        }
        Erased::Cancel { seq } => {
            out.push(3);
            out.extend_from_slice(&seq.to_be_bytes());
        }
    }
    out.extend_from_slice(&e.at.0.to_be_bytes());
    out
}

fn to_line(e: &Entry, mac: &Tag) -> Line {
    let (kind, tenant, subject, cancels) = match &e.erased {
        Erased::Subject { tenant, subject } => (
            "subject",
            Some(hex::encode(tenant)),
            Some(hex::encode(subject)),
            None,
        ),
        Erased::Tenant { tenant } => ("tenant", Some(hex::encode(tenant)), None, None),
        Erased::Cancel { seq } => ("cancel", None, None, Some(*seq)),
    };
    Line {
        seq: e.seq,
        kind: kind.into(),
        tenant,
        subject,
        cancels,
        at: e.at.0,
        mac: hex::encode(mac),
    }
}

/// Parses and checks the ledger's text: its entries, the last MAC and how many bytes of
/// the text are whole lines that checked (a torn last line is not counted).
fn parse(
    path: &Path, key: &LedgerKey, text: &str,
) -> Result<(Vec<Entry>, Tag, usize), LedgerError> {
    let damaged = |seq: u64, problem: &'static str| LedgerError::Damaged {
        path: path.display().to_string(),
        seq,
        problem,
    };
    let mut entries = Vec::new();
    let mut last_mac = [0u8; LEDGER_TAG_LEN];
    let mut good = 0usize;
    let mut rest = text;
    let mut first = true;
    while !rest.is_empty() {
        let Some(end) = rest.find('\n') else {
            // A line without its newline: the crash came mid-append. Cut it.
            break;
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if first {
            if line != HEADER {
                return Err(damaged(0, "the first line is not a ledger header"));
            }
            first = false;
            good += end + 1;
            continue;
        }
        let seq = entries.len() as u64 + 1;
        let raw: Line =
            serde_json::from_str(line).map_err(|_| damaged(seq, "an entry does not parse"))?;
        let tag = |hex_text: &str| {
            let mut t = [0u8; LEDGER_TAG_LEN];
            hex::decode_to_slice(hex_text, &mut t)
                .map(|()| t)
                .map_err(|_| damaged(seq, "a hash is not 64 hex digits"))
        };
        let erased = match (
            raw.kind.as_str(),
            raw.tenant.as_deref(),
            raw.subject.as_deref(),
            raw.cancels,
        ) {
            ("subject", Some(t), Some(s), None) => Erased::Subject {
                tenant: tag(t)?,
                subject: tag(s)?,
            },
            ("tenant", Some(t), None, None) => Erased::Tenant { tenant: tag(t)? },
            ("cancel", None, None, Some(cancelled)) if cancelled < seq => {
                Erased::Cancel { seq: cancelled }
            }
            _ => return Err(damaged(seq, "an entry has an unknown kind")),
        };
        if raw.seq != seq {
            return Err(damaged(seq, "entries are missing or out of order"));
        }
        let entry = Entry {
            seq,
            erased,
            at: Timestamp(raw.at),
        };
        let mac = key.entry_mac(&last_mac, &body(&entry));
        if !key.same_mac(&mac, &tag(&raw.mac)?) {
            return Err(damaged(
                seq,
                "an entry's MAC does not check (edited, or another vault's ledger)",
            ));
        }
        entries.push(entry);
        last_mac = mac;
        good += end + 1;
    }
    if first && !text.is_empty() && good == 0 && text.len() > HEADER.len() + 1 {
        return Err(damaged(0, "the first line is not a ledger header"));
    }
    Ok((entries, last_mac, good))
}

/// Creates the ledger file, readable and writable by the owner only.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> (TenantId, SubjectId) {
        (
            TenantId::parse("acme").expect("tenant"),
            SubjectId::parse(&format!("user-{n}")).expect("subject"),
        )
    }

    /// A ledger with three entries (two erasures, one shred); returns its path.
    fn three(dir: &Path) -> PathBuf {
        let path = dir.join("erasure.ledger");
        let ledger = ErasureLedger::open(&path, LedgerKey::fixed(1)).expect("open");
        for n in 0..2 {
            let (t, s) = ids(n);
            ledger
                .record_erasure(&t, &s, Timestamp(10 + n as u64))
                .expect("append");
        }
        ledger
            .record_shred(&TenantId::parse("beta").expect("tenant"), Timestamp(20))
            .expect("append");
        path
    }

    fn damaged_at(path: &Path, key: u8) -> (u64, String) {
        match ErasureLedger::open(path, LedgerKey::fixed(key)) {
            Err(LedgerError::Damaged { seq, problem, .. }) => (seq, problem.to_owned()),
            other => panic!("expected a damaged ledger, got {other:?}"),
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_name_no_id() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = three(dir.path());
        let ledger = ErasureLedger::open(&path, LedgerKey::fixed(1)).expect("reopen");
        assert_eq!(ledger.len(), 3);
        let after = ledger.entries_after(1);
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let (t, s) = ids(1);
        assert_eq!(
            after[0].erased,
            Erased::Subject {
                tenant: ledger.tenant_tag(&t),
                subject: ledger.subject_tag(&t, &s),
            }
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("acme") && !text.contains("user-") && !text.contains("beta"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "owner only");
        }
    }

    #[test]
    fn a_cancel_names_an_earlier_entry_and_survives_a_reopen() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = three(dir.path());
        let ledger = ErasureLedger::open(&path, LedgerKey::fixed(1)).expect("open");
        assert_eq!(ledger.record_cancel(2, Timestamp(40)).expect("cancel"), 4);
        drop(ledger);
        let ledger = ErasureLedger::open(&path, LedgerKey::fixed(1)).expect("reopen");
        assert_eq!(ledger.entries_after(3)[0].erased, Erased::Cancel { seq: 2 });
        // A cancel of an entry that comes after it is no ledger this code wrote.
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("\"cancels\":2", "\"cancels\":9")).expect("write");
        let (seq, problem) = damaged_at(&path, 1);
        assert_eq!(seq, 4);
        assert!(problem.contains("unknown kind"), "{problem}");
    }

    #[test]
    fn a_half_written_last_line_is_cut_and_appends_go_on() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = three(dir.path());
        let whole = std::fs::read(&path).expect("read");
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"seq\":4,\"kind\":\"subj");
        std::fs::write(&path, &torn).expect("write");
        let ledger = ErasureLedger::open(&path, LedgerKey::fixed(1)).expect("cut, not refused");
        assert_eq!(ledger.len(), 3);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            whole,
            "the torn line is gone"
        );
        let (t, s) = ids(9);
        assert_eq!(
            ledger
                .record_erasure(&t, &s, Timestamp(30))
                .expect("append"),
            4
        );
        drop(ledger);
        assert_eq!(
            ErasureLedger::open(&path, LedgerKey::fixed(1))
                .expect("reopen")
                .len(),
            4
        );
    }

    #[test]
    fn an_edited_removed_or_foreign_entry_is_refused_where_it_is() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = three(dir.path());
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();

        // Another vault's key: the first entry's MAC does not check.
        assert_eq!(damaged_at(&path, 2).0, 1);

        // The second entry's time moved by one microsecond.
        let edited = text.replacen("\"at\":11", "\"at\":12", 1);
        assert_ne!(edited, text);
        std::fs::write(&path, &edited).expect("write");
        let (seq, problem) = damaged_at(&path, 1);
        assert_eq!(seq, 2);
        assert!(problem.contains("MAC"), "{problem}");

        // The second entry removed.
        let removed = [lines[0], lines[1], lines[3]].join("\n") + "\n";
        std::fs::write(&path, removed).expect("write");
        let (seq, problem) = damaged_at(&path, 1);
        assert_eq!(seq, 2);
        assert!(problem.contains("missing or out of order"), "{problem}");

        // Not a ledger at all.
        std::fs::write(&path, "hello\n").expect("write");
        assert_eq!(damaged_at(&path, 1).0, 0);
    }
}
