//! The audit log's high-water mark, in a file beside the store.
//!
//! sled cannot tell damage in its log from a torn write: it recovers the store as it was
//! before the damaged spot and silently drops the rest. The vault would then serve that older
//! state: overwritten values back, erased subjects back. The newest durable audit event marks
//! how far the audit log must reach. That mark (sequence number and MAC, itself MACed with the
//! audit key) is written to a file outside the store after every erasure, at most a second
//! after other changes, and at shutdown. At start an audit log that ends before the mark, or
//! holds another event at its place, is refused.
//!
//! The audit log has files of its own, so the data store is checked too: each flush stores
//! the audit sequence number durable at that moment in the store's metadata
//! (`storage::DATA_MARK`), and the file records the newest one a flush completed. A store
//! whose stored mark is older was rolled back.
//!
//! The file is replaced atomically (write, fsync, rename, fsync the directory), so a crash
//! leaves the old mark or the new one. Removing it accepts the store as it is.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit::{AuditEvent, ChainMark};
use crate::crypto::{Audit, Key, MAC_LEN};
use crate::storage::Store;

/// The mark's file name in the data directory.
pub const HIGH_WATER_FILE: &str = "audit-high-water";
/// Label of the high-water mark's own MAC.
const LABEL: &str = "audit-high-water-v1";
/// Label of the data store's mark (its MAC covers the number, and a zero chain MAC).
const DATA_LABEL: &str = "data-high-water-v1";
/// Longest a durable change waits before the mark covers it (erasures never wait).
pub const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Why the store was refused at start.
#[derive(Debug, thiserror::Error)]
pub enum HighWaterError {
    #[error(
        "the store ends at audit event {found} but its high-water mark {path} records event \
         {recorded} as durable: the store was rolled back or damaged. Restore a backup, or \
         remove {path} to serve the store as it is"
    )]
    RolledBack {
        path: String,
        recorded: u64,
        found: u64,
    },
    #[error(
        "the data store's last flush covered audit event {found} but its high-water mark \
         {path} records a flush that covered event {recorded}: the store was rolled back or \
         damaged. Restore a backup, or remove {path} to serve the store as it is"
    )]
    DataRolledBack {
        path: String,
        recorded: u64,
        found: u64,
    },
    #[error(
        "audit event {seq} in the store is not the one the high-water mark {path} recorded: \
         the store was replaced or damaged. Restore a backup, or remove {path} to serve the \
         store as it is"
    )]
    Diverged { path: String, seq: u64 },
    #[error("the high-water mark {path} is damaged or was not written with this vault's audit key; remove it to serve the store as it is")]
    BadMark { path: String },
    #[error("high-water mark {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the store for the high-water check: {0}")]
    Store(#[from] crate::storage::StoreError),
}

struct State {
    /// Newest durable event known (sequence number, MAC).
    durable: Option<(u64, [u8; MAC_LEN])>,
    /// Sequence number in the file.
    persisted: u64,
    /// The data mark the newest flush made durable, and the one in the file.
    data: u64,
    data_persisted: u64,
    last_write: Instant,
}

/// The mark of one store.
pub struct HighWater {
    path: PathBuf,
    state: Mutex<State>,
}

impl HighWater {
    /// Checks `store` against the mark in `path` (if there is one) and returns the keeper.
    pub fn check(
        path: PathBuf, store: &dyn Store, key: &Key<Audit>,
    ) -> Result<Self, HighWaterError> {
        let shown = path.display().to_string();
        let (mut persisted, mut data_persisted) = (0, 0);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bad = || HighWaterError::BadMark {
                    path: shown.clone(),
                };
                let (mark, data) = decode(&bytes).ok_or_else(bad)?;
                if !mark.is_valid(key, LABEL)
                    || !data.as_ref().is_none_or(|d| d.is_valid(key, DATA_LABEL))
                {
                    return Err(bad());
                }
                let found = store.audit_last()?.map_or(0, |(seq, _)| seq);
                if found < mark.seq {
                    return Err(HighWaterError::RolledBack {
                        path: shown,
                        recorded: mark.seq,
                        found,
                    });
                }
                let at_mark = store.audit_scan(mark.seq.saturating_sub(1), 1)?;
                if let Some((seq, bytes)) = at_mark.first().filter(|(seq, _)| *seq == mark.seq) {
                    let same = AuditEvent::decode(bytes).is_ok_and(|e| e.mac == mark.mac);
                    if !same {
                        return Err(HighWaterError::Diverged {
                            path: shown,
                            seq: *seq,
                        });
                    }
                }
                if let Some(data) = data {
                    let found = crate::storage::stored_mark(store)?;
                    if found < data.seq {
                        return Err(HighWaterError::DataRolledBack {
                            path: shown,
                            recorded: data.seq,
                            found,
                        });
                    }
                    data_persisted = data.seq;
                }
                // Pruned up to or past the mark: the sequence check above is all there is.
                persisted = mark.seq;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(HighWaterError::Io {
                    path: shown,
                    source,
                })
            }
        }
        Ok(Self {
            path,
            state: Mutex::new(State {
                durable: None,
                persisted,
                data: data_persisted,
                data_persisted,
                last_write: Instant::now(),
            }),
        })
    }

    /// Records that a flush of the data store made `seq` its stored mark.
    pub fn advance_data(&self, seq: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.data = s.data.max(seq);
        }
    }

    /// Records that events up to `seq` (ending with `mac`) are durable. True when the file
    /// is due for a write (see `PERSIST_EVERY`).
    pub fn advance(&self, seq: u64, mac: [u8; MAC_LEN]) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if s.durable.is_none_or(|(known, _)| seq > known) {
            s.durable = Some((seq, mac));
        }
        s.last_write.elapsed() >= PERSIST_EVERY
    }

    /// Writes the newest durable mark to the file, if it moved since the last write.
    pub fn persist(&self, key: &Key<Audit>) -> std::io::Result<()> {
        let Ok(mut s) = self.state.lock() else {
            return Err(std::io::Error::other("high-water state poisoned"));
        };
        s.last_write = Instant::now();
        let Some((seq, mac)) = s.durable else {
            return Ok(());
        };
        if seq <= s.persisted && s.data <= s.data_persisted {
            return Ok(());
        }
        let data = ChainMark::new(key, DATA_LABEL, s.data, [0; MAC_LEN]);
        crate::storage::replace_file(
            &self.path,
            &encode(&ChainMark::new(key, LABEL, seq, mac), &data),
        )?;
        s.persisted = seq;
        s.data_persisted = s.data;
        Ok(())
    }
}

/// The file: the audit log's mark, then the data store's (length-prefixed). A file of an
/// earlier version holds the first alone.
fn encode(mark: &ChainMark, data: &ChainMark) -> Vec<u8> {
    crate::codec::Writer::new()
        .bytes(&mark.encode())
        .bytes(&data.encode())
        .finish()
}

fn decode(bytes: &[u8]) -> Option<(ChainMark, Option<ChainMark>)> {
    if let Ok(mark) = ChainMark::decode(bytes) {
        return Some((mark, None));
    }
    let mut r = crate::codec::Reader::new(bytes, "high-water mark");
    let mark = ChainMark::decode(r.bytes().ok()?).ok()?;
    let data = ChainMark::decode(r.bytes().ok()?).ok()?;
    r.finish().ok()?;
    Some((mark, Some(data)))
}
