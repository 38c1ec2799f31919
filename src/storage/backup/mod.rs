//! Backups of the sled store: the file format, writing one from a running store, checking
//! one, and restoring one into a new store directory.
//!
//! A backup holds the raw key/value pairs of every tree: sealed envelopes, wrapped keys,
//! metadata and the audit log, exactly as stored. It never holds the root key, which
//! lives outside the store; without that key file a backup opens nothing. Ids, field
//! names and audit events are in it as they are in the store, so treat it as sensitive.
//!
//! # Format (version 1)
//!
//! ```text
//! file     = magic "PIIVBAK\0" | version u32 | section* | manifest | sha256
//! section  = 0x01 name            -- the entries that follow belong to this tree
//!          | 0x02 key value       -- one entry
//! manifest = 0x03 json            -- format, creation time, tree names and entry counts
//! sha256   = 32 bytes over everything before it
//! ```
//!
//! Integers are big-endian; `name`, `key`, `value` and `json` are u32-length-prefixed.
//!
//! # Consistency
//!
//! sled has no point-in-time snapshot, and its iterators read a tree page by page as it is
//! at that moment. What a backup of a running vault guarantees:
//! - every write acknowledged before the backup started is in it, in full (acknowledged
//!   writes are applied and flushed, and the store is flushed again first);
//! - every entry in it is a value that was committed at some moment during the backup;
//! - a write running concurrently may be in it, missing, or (for a write that touches
//!   several keys, such as two fields of one subject) partly in it. So that whatever is
//!   in it can still be read, trees are written so that an entry comes before whatever
//!   it depends on (`tree_rank`): field ciphertexts before the subject keys that seal
//!   them, subject keys before tenants and the KEKs that wrap them, and the audit head
//!   (in `meta`) before the audit events, so the chain verifies. A concurrent write thus
//!   leaves at worst a partial update or an orphan, never a ciphertext whose key is
//!   missing.
//! - Not covered: an audit prune or a KEK destruction running during the backup can
//!   leave events or keys missing that the rest of the backup expects. Do not run them at
//!   the same time.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{SegmentLog, StoreError};
use crate::codec::Writer;
use crate::crypto::{Sha256, SHA256_LEN};

/// The tree and `meta` keys the audit log is written under (see `write`).
const AUDIT_TREE: &str = "audit";
const AUDIT_HEAD: &str = "audit_head";
const AUDIT_CHECKPOINT: &str = "audit_checkpoint";

/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"PIIVBAK\0";
const TAG_TREE: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_MANIFEST: u8 = 3;
/// Bytes handed out per piece while writing.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest name, key, value or manifest read back: a damaged length must not make the
/// reader allocate gigabytes.
const MAX_ITEM: u32 = 256 << 20;
/// Entries restored per sled batch.
const RESTORE_BATCH: usize = 4096;

/// What a backup holds: written last in the file, checked on restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// When the backup started, in Unix seconds.
    pub created_unix: u64,
    /// Until when (Unix seconds) the vault that wrote it promised to keep the root key
    /// versions that open it: the start plus its backup window. Absent in backups written
    /// before the window existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restorable_until_unix: Option<u64>,
    /// Every tree in the order written, with its number of entries.
    pub trees: Vec<TreeCount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeCount {
    pub name: String,
    pub records: u64,
}

impl Manifest {
    /// Entries over all trees.
    pub fn records(&self) -> u64 {
        self.trees.iter().map(|t| t.records).sum()
    }
}

/// When a backup is taken and until when it can be restored (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub created_unix: u64,
    pub restorable_until_unix: u64,
}

/// A backup file that cannot be read or restored. Never contains stored bytes.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a pii-vault backup")]
    NotABackup { path: String },
    #[error("{path} is a backup in format {found}; this build reads format {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error("{path}: checksum mismatch: the backup is damaged or incomplete")]
    Checksum { path: String },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("{path} already exists; a backup is restored only into a new store")]
    Exists { path: String },
    #[error("restoring into {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
}

/// Order in which trees are written: an entry before what it depends on (see the module
/// documentation). Extend this when adding a tree that refers to another.
fn tree_rank(name: &str) -> u8 {
    match name {
        "meta" => 0,
        "audit" => 1,
        n if n.ends_with("/fields") => 2,
        n if n.ends_with("/subjects") => 4,
        "tenants" => 5,
        "keks" => 6,
        _ => 3,
    }
}

/// Buffers the file's bytes, hashes them, and hands them out in pieces.
struct Out<'a> {
    buf: Vec<u8>,
    hash: Sha256,
    emit: &'a mut dyn FnMut(Vec<u8>) -> bool,
}

impl Out<'_> {
    fn push(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), StoreError> {
        let chunk = std::mem::take(&mut self.buf);
        self.hash.update(&chunk);
        if (self.emit)(chunk) {
            Ok(())
        } else {
            Err(StoreError::Backend("backup receiver went away".into()))
        }
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Writes a backup of every tree of `db` and of the audit log `audit`, handing the file's
/// bytes to `emit` in order; stops when `emit` returns false.
///
/// The audit log goes in the form format 1 has always had: its events as the `audit` tree,
/// its head and checkpoint records as `meta` entries (`audit_head`, `audit_checkpoint`). A
/// restored store moves them into segment files when it is first opened.
pub(super) fn write(
    db: &sled::Db, audit: &SegmentLog, stamp: Stamp, emit: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<Manifest, StoreError> {
    let mut names = db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8(n.to_vec()).map_err(|_| StoreError::Corrupt("tree name")))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort_by(|a, b| (tree_rank(a), a).cmp(&(tree_rank(b), b)));
    let mut out = Out {
        buf: Vec::with_capacity(CHUNK_BYTES * 2),
        hash: Sha256::new(),
        emit,
    };
    out.push(MAGIC)?;
    out.push(&FORMAT_VERSION.to_be_bytes())?;
    let mut manifest = Manifest {
        format: FORMAT_VERSION,
        created_unix: stamp.created_unix,
        restorable_until_unix: Some(stamp.restorable_until_unix),
        trees: Vec::with_capacity(names.len()),
    };
    if !names.iter().any(|n| n == AUDIT_TREE) {
        names.insert(1.min(names.len()), AUDIT_TREE.to_owned());
    }
    for name in names {
        out.push(&Writer::new().u8(TAG_TREE).str(&name).finish())?;
        let mut records = 0u64;
        let mut entry = |k: &[u8], v: &[u8]| {
            records += 1;
            out.push(&Writer::new().u8(TAG_ENTRY).bytes(k).bytes(v).finish())
        };
        if name == AUDIT_TREE {
            // The head was read first (with `meta`), so every event it vouches for follows.
            let mut after = 0;
            loop {
                let page = audit.scan(after, 4096)?;
                let Some((last, _)) = page.last() else { break };
                after = *last;
                for (seq, bytes) in &page {
                    entry(&seq.to_be_bytes(), bytes)?;
                }
            }
        } else {
            let tree = db.open_tree(&name).map_err(backend)?;
            for kv in tree.iter() {
                let (k, v) = kv.map_err(backend)?;
                entry(&k, &v)?;
            }
            if name == "meta" {
                let marks = audit.marks();
                for (key, mark) in [
                    (AUDIT_HEAD, marks.head),
                    (AUDIT_CHECKPOINT, marks.checkpoint),
                ] {
                    if let Some(mark) = mark {
                        entry(key.as_bytes(), &mark)?;
                    }
                }
            }
        }
        manifest.trees.push(TreeCount { name, records });
    }
    let json = serde_json::to_vec(&manifest)
        .map_err(|e| StoreError::Backend(format!("backup manifest: {e}")))?;
    out.push(&Writer::new().u8(TAG_MANIFEST).bytes(&json).finish())?;
    out.send()?;
    let sum = out.hash.finish().to_vec();
    if !(out.emit)(sum) {
        return Err(StoreError::Backend("backup receiver went away".into()));
    }
    Ok(manifest)
}

/// Checks a backup file: checksum, format, and that its entries match its manifest.
pub fn verify(path: &Path) -> Result<Manifest, BackupError> {
    read(path, &mut Check)
}

/// Restores the backup at `path` into `store_dir`, which must not exist. The file is
/// checked completely before anything is written; the store is built next to
/// `store_dir` and moved into place only once complete.
pub fn restore(path: &Path, store_dir: &Path) -> Result<Manifest, BackupError> {
    if store_dir.exists() {
        return Err(BackupError::Exists {
            path: store_dir.display().to_string(),
        });
    }
    verify(path)?;
    let scratch = scratch_dir(store_dir);
    let io_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| BackupError::Io { path, source }
    };
    if scratch.exists() {
        // Left by an earlier restore that failed; it is ours to replace.
        std::fs::remove_dir_all(&scratch).map_err(io_err(&scratch))?;
    }
    let result = Restore::open(&scratch, store_dir).and_then(|mut target| {
        let manifest = read(path, &mut target)?;
        target.finish()?;
        Ok(manifest)
    });
    match result {
        Ok(manifest) => {
            std::fs::rename(&scratch, store_dir).map_err(io_err(store_dir))?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            Err(e)
        }
    }
}

/// What reading a backup does with its trees and entries.
trait Visit {
    fn tree(&mut self, name: &str) -> Result<(), BackupError>;
    fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError>;
}

/// Checks a backup file as `verify` does and, in the same read, returns the value of one
/// of its `meta` entries (the root key check value, say).
pub fn verify_with_meta(
    path: &Path, key: &str,
) -> Result<(Manifest, Option<Vec<u8>>), BackupError> {
    let mut probe = MetaProbe {
        key: key.as_bytes(),
        in_meta: false,
        found: None,
    };
    let manifest = read(path, &mut probe)?;
    Ok((manifest, probe.found))
}

/// Finds one entry of the `meta` tree.
struct MetaProbe<'k> {
    key: &'k [u8],
    in_meta: bool,
    found: Option<Vec<u8>>,
}

impl Visit for MetaProbe<'_> {
    fn tree(&mut self, name: &str) -> Result<(), BackupError> {
        self.in_meta = name == "meta";
        Ok(())
    }

    fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        if self.in_meta && key == self.key {
            self.found = Some(value.to_vec());
        }
        Ok(())
    }
}

/// Reads without writing anything.
struct Check;

impl Visit for Check {
    fn tree(&mut self, _: &str) -> Result<(), BackupError> {
        Ok(())
    }

    fn entry(&mut self, _: &[u8], _: &[u8]) -> Result<(), BackupError> {
        Ok(())
    }
}

/// Writes the entries into a new sled store, in batches.
struct Restore {
    db: sled::Db,
    tree: Option<sled::Tree>,
    batch: sled::Batch,
    pending: usize,
    /// The store directory being restored, for error messages.
    shown: String,
}

impl Restore {
    fn open(scratch: &Path, store_dir: &Path) -> Result<Self, BackupError> {
        let shown = store_dir.display().to_string();
        let db = super::open_waiting_for_lock(&sled::Config::new().path(scratch)).map_err(|e| {
            BackupError::Store {
                path: shown.clone(),
                source: backend(e),
            }
        })?;
        Ok(Self {
            db,
            tree: None,
            batch: sled::Batch::default(),
            pending: 0,
            shown,
        })
    }

    fn err(&self, e: sled::Error) -> BackupError {
        BackupError::Store {
            path: self.shown.clone(),
            source: backend(e),
        }
    }

    fn apply(&mut self) -> Result<(), BackupError> {
        if let Some(tree) = &self.tree {
            let batch = std::mem::take(&mut self.batch);
            tree.apply_batch(batch).map_err(|e| self.err(e))?;
        }
        self.pending = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<(), BackupError> {
        self.apply()?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl Visit for Restore {
    fn tree(&mut self, name: &str) -> Result<(), BackupError> {
        self.apply()?;
        self.tree = Some(self.db.open_tree(name).map_err(|e| self.err(e))?);
        Ok(())
    }

    fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        self.batch.insert(key, value);
        self.pending += 1;
        if self.pending >= RESTORE_BATCH {
            self.apply()?;
        }
        Ok(())
    }
}

fn scratch_dir(store_dir: &Path) -> PathBuf {
    let mut name = store_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    store_dir.with_file_name(name)
}

/// Reads a backup: verifies the checksum in a first pass, then walks the sections with
/// `visit`, and checks the manifest against what it saw.
fn read(path: &Path, visit: &mut dyn Visit) -> Result<Manifest, BackupError> {
    let shown = path.display().to_string();
    let io = |source| BackupError::Io {
        path: shown.clone(),
        source,
    };
    let invalid = |problem: &str| BackupError::Invalid {
        path: shown.clone(),
        problem: problem.to_owned(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    let header = (MAGIC.len() + 4) as u64;
    let body_len = match len.checked_sub(SHA256_LEN as u64) {
        Some(n) if n >= header => n,
        _ => return Err(BackupError::NotABackup { path: shown }),
    };

    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let mut hash = Sha256::new();
    let mut body = (&mut file).take(body_len);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let mut stored = [0u8; SHA256_LEN];
    file.read_exact(&mut stored).map_err(io)?;
    let mut r = Items(BufReader::new(File::open(path).map_err(io)?).take(body_len));
    let mut magic = [0u8; 8];
    r.exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup { path: shown });
    }
    if hash.finish() != stored {
        return Err(BackupError::Checksum { path: shown });
    }
    let found = r.u32().map_err(io)?;
    if found != FORMAT_VERSION {
        return Err(BackupError::Version { path: shown, found });
    }

    let mut seen: Vec<TreeCount> = Vec::new();
    let manifest = loop {
        match r.u8().map_err(|_| invalid("ends without a manifest"))? {
            TAG_TREE => {
                let name = String::from_utf8(r.item().map_err(io)?)
                    .map_err(|_| invalid("a tree name is not UTF-8"))?;
                visit.tree(&name)?;
                seen.push(TreeCount { name, records: 0 });
            }
            TAG_ENTRY => {
                let tree = seen
                    .last_mut()
                    .ok_or_else(|| invalid("an entry precedes every tree"))?;
                let (k, v) = (r.item().map_err(io)?, r.item().map_err(io)?);
                visit.entry(&k, &v)?;
                tree.records += 1;
            }
            TAG_MANIFEST => {
                let json = r.item().map_err(io)?;
                break serde_json::from_slice::<Manifest>(&json)
                    .map_err(|_| invalid("the manifest does not parse"))?;
            }
            _ => return Err(invalid("unknown section")),
        }
    };
    if r.u8().is_ok() {
        return Err(invalid("data after the manifest"));
    }
    if manifest.format != FORMAT_VERSION || manifest.trees != seen {
        return Err(invalid("the manifest does not match the contents"));
    }
    Ok(manifest)
}

/// Reads the primitives of the format.
struct Items<R>(R);

impl<R: Read> Items<R> {
    fn exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact(buf)
    }

    fn u8(&mut self) -> std::io::Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn item(&mut self) -> std::io::Result<Vec<u8>> {
        let len = self.u32()?;
        if len > MAX_ITEM {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "an item is larger than any the vault writes",
            ));
        }
        let mut v = vec![0u8; len as usize];
        self.exact(&mut v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests;
