//! Baselines B2 and B3, measured in this process without gRPC.
//!
//! - B2, the storage and crypto floor of a durable write: seal each value with AES-256-GCM
//!   (the vault's own `aead_seal`), insert it into sled (configured as the vault's store
//!   is), then wait for a flush shared with the other writers, as the vault's group commit
//!   shares them (`storage::GroupCommit`: one task collects every waiter queued so far and
//!   runs one flush for all).
//! - B3, the durability floor: how long the disk takes to write and fsync a small file in
//!   the filesystem the vaults' data directories are on.
//!
//! sled 0.34's `flush` on Linux writes its log buffers and waits with `sync_file_range`,
//! which neither syncs the file's length nor flushes the device's write cache; the vault's
//! store follows it with an fdatasync of sled's log (`SledStore::flush`), and B2 does the
//! same, so both pay for real durability.

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pii_vault::crypto::{aead_seal, fill_random, KEY_LEN, NONCE_LEN};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};

use crate::drive::{Outcome, Target};
use crate::fixture::value;

/// sled's page cache in the vault's default configuration (`storage.cache_capacity_bytes`).
const CACHE_BYTES: u64 = 256 << 20;
/// sled's background flush interval, as `SledStore::open` sets it.
const FLUSH_EVERY_MS: u64 = 500;
/// A dummy key: nothing sealed here is kept or sent.
const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

type Waiter = oneshot::Sender<bool>;

/// A sled store in a temporary directory and its flush task.
pub struct StoreFloor {
    _dir: TempDir,
    tree: sled::Tree,
    flushes: mpsc::UnboundedSender<Waiter>,
}

impl StoreFloor {
    pub fn open() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(FLUSH_EVERY_MS))
            .open()
            .expect("open sled");
        let tree = db.open_tree("fields").expect("open tree");
        let log = std::fs::File::open(dir.path().join("db")).expect("sled's log file");
        let (flushes, rx) = mpsc::unbounded_channel();
        tokio::spawn(flush_loop(db, log, rx));
        Self {
            _dir: dir,
            tree,
            flushes,
        }
    }

    /// A writer of `fields` sealed values per request.
    pub fn target(&self, fields: usize) -> FloorTarget {
        FloorTarget {
            tree: self.tree.clone(),
            flushes: self.flushes.clone(),
            fields,
        }
    }
}

/// One flush for every waiter queued when it starts; each waiter queued after its write.
async fn flush_loop(db: sled::Db, log: std::fs::File, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    let log = std::sync::Arc::new(log);
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let (db, log) = (db.clone(), log.clone());
        let flushed =
            tokio::task::spawn_blocking(move || db.flush().is_ok() && log.sync_data().is_ok())
                .await
                .unwrap_or(false);
        for waiter in batch.drain(..) {
            let _ = waiter.send(flushed);
        }
    }
}

#[derive(Clone)]
pub struct FloorTarget {
    tree: sled::Tree,
    flushes: mpsc::UnboundedSender<Waiter>,
    fields: usize,
}

impl FloorTarget {
    fn write(&self, n: u64) -> bool {
        let plaintext = value(n as usize);
        let mut batch = sled::Batch::default();
        for f in 0..self.fields {
            // Keys as the vault's: subject and field name; the AAD binds the value to it.
            let key = format!("s{}/f{f}", n % 1000);
            let mut nonce = [0u8; NONCE_LEN];
            if fill_random(&mut nonce).is_err() {
                return false;
            }
            let Ok(sealed) = aead_seal(&KEY, &nonce, key.as_bytes(), plaintext.as_bytes()) else {
                return false;
            };
            batch.insert(key.as_bytes(), [&nonce[..], &sealed].concat());
        }
        self.tree.apply_batch(batch).is_ok()
    }
}

impl Target for FloorTarget {
    async fn call(&mut self, n: u64) -> Outcome {
        if !self.write(n) {
            return Outcome::Failed;
        }
        let (tx, rx) = oneshot::channel();
        if self.flushes.send(tx).is_err() {
            return Outcome::Failed;
        }
        match rx.await {
            Ok(true) => Outcome::Ok,
            _ => Outcome::Failed,
        }
    }
}

/// How B3 makes a small write durable.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// Overwrite the first 256 bytes of a 1 MiB file written and synced beforehand, then
    /// `fdatasync`: no metadata changes, the cheapest durable write the filesystem offers.
    Overwrite,
    /// Append 256 bytes and `fsync`: the file's size changes too, so its metadata is synced.
    Append,
}

/// B3: `rounds` small durable writes (or as many as fit in `limit`) in a temporary directory
/// beside the vaults' data directories; returns their latencies in microseconds.
pub fn fsync_latency(probe: Probe, rounds: usize, limit: Duration) -> Histogram<u64> {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    if let Probe::Overwrite = probe {
        file.write_all(&vec![0u8; 1 << 20])
            .expect("preallocate the probe");
        file.sync_all().expect("fsync the probe");
    }
    let mut hist = Histogram::new(3).expect("histogram");
    let block = [b'x'; 256];
    let started = Instant::now();
    for _ in 0..rounds {
        let t0 = Instant::now();
        match probe {
            Probe::Overwrite => {
                file.seek(SeekFrom::Start(0)).expect("seek the probe");
                file.write_all(&block).expect("write the probe");
                file.sync_data().expect("fdatasync the probe");
            }
            Probe::Append => {
                file.write_all(&block).expect("write the probe");
                file.sync_all().expect("fsync the probe");
            }
        }
        let _ = hist.record(t0.elapsed().as_micros() as u64);
        if started.elapsed() > limit {
            break;
        }
    }
    hist
}
